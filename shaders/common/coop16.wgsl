// coop16: the fragment API of the tile programs on real cooperative matrices, 16x16x16 f16 x f16
// -> f32 (Vulkan VK_KHR_cooperative_matrix on NVIDIA/AMD; wgpu EXPERIMENTAL_COOPERATIVE_MATRIX).
// The same API is provided by coop8 (Metal's 8x8x8) and by coop_emulated (any adapter); a tile
// program is written against it once (docs/kernels.md):
//   FRAG                          fragment edge (16 here)
//   CoopElem, coop_elem(f32), coop_f32(CoopElem)   operand storage type in workgroup memory
//   FragA, FragB, FragC           a FRAGxFRAG operand A, operand B, f32 accumulator of one subgroup
//   CoopIds, coop_init(ids), coop_warp(ids), coop_warps(ids), coop_lane(ids), coop_lanes(ids)
//   frag_zero() -> FragC
//   frag_a_rows(off, ld) / frag_a_cols(off, ld): A[i][k] = coop_in[off + i*ld + k] / [off + k*ld + i]
//   frag_b_rows(off, ld) / frag_b_cols(off, ld): B[k][j] = coop_in[off + k*ld + j] / [off + j*ld + k]
//   frag_mma(a, b, c) -> c + a·b
//   frag_store_rows(c, off, ld): coop_out[off + i*ld + j] = C[i][j]
// The kernel declares `coop_in: array<CoopElem, ...>` and `coop_out: array<f32, ...>` in
// workgroup memory and `WG` (its workgroup size). Loads read coop_in when called (emulation: when
// multiplied), so a program never writes a staged region between loading and multiplying it.
// Offsets and strides are bound with `let` before coopLoad/coopStore: naga 30.0.2 panics on
// computed ones for storage pointers (docs/kernels.md).
enable f16;
enable wgpu_cooperative_matrix;

const FRAG: u32 = 16u;
alias CoopElem = f16;
alias FragA = coop_mat16x16<f16, A>;
alias FragB = coop_mat16x16<f16, B>;
alias FragC = coop_mat16x16<f32, C>;

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
