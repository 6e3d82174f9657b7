// coop8: the fragment API (see coop16) on real 8x8x8 cooperative matrices, f16 x f16 -> f32:
// Metal simdgroup matrices (wgpu reports only 8x8 there; naga names a 16x16 one that Metal lacks).
// The API and its contract: coop16.wgsl.
enable f16;
enable wgpu_cooperative_matrix;

const FRAG: u32 = 8u;
alias CoopElem = f16;
alias FragA = coop_mat8x8<f16, A>;
alias FragB = coop_mat8x8<f16, B>;
alias FragC = coop_mat8x8<f32, C>;

struct CoopIds {
    @builtin(local_invocation_index) lix: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) nsg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
}

fn coop_elem(v: f32) -> CoopElem { return f16(v); }
fn coop_f32(v: CoopElem) -> f32 { return f32(v); }
fn coop_init(ids: CoopIds) {}
fn coop_warp(ids: CoopIds) -> u32 { return ids.sg; }
fn coop_warps(ids: CoopIds) -> u32 { return ids.nsg; }
fn coop_lane(ids: CoopIds) -> u32 { return ids.lane; }
fn coop_lanes(ids: CoopIds) -> u32 { return ids.lanes; }
fn frag_zero() -> FragC { return FragC(); }
fn frag_a_rows(off: u32, ld: u32) -> FragA { let o = off; let s = ld; return coopLoadT<FragA>(&coop_in[o], s); }
fn frag_a_cols(off: u32, ld: u32) -> FragA { let o = off; let s = ld; return coopLoad<FragA>(&coop_in[o], s); }
fn frag_b_rows(off: u32, ld: u32) -> FragB { let o = off; let s = ld; return coopLoadT<FragB>(&coop_in[o], s); }
fn frag_b_cols(off: u32, ld: u32) -> FragB { let o = off; let s = ld; return coopLoad<FragB>(&coop_in[o], s); }
fn frag_mma(a: FragA, b: FragB, c: FragC) -> FragC { return coopMultiplyAdd(a, b, c); }
fn frag_store_rows(c: FragC, off: u32, ld: u32) { let o = off; let s = ld; coopStoreT(c, &coop_out[o], s); }
