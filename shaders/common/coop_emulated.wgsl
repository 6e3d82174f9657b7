// coop_emulated: the fragment API of coop16 (see there) done by ordinary invocations, for
// adapters without cooperative matrices. Listed after elem_f32 or elem_f16 (the operand type)
// and frag16 or frag8 (the fragment edge). A "subgroup" is 32 consecutive invocations of the
// workgroup (coop_warp = local index / 32), whatever the hardware's subgroup size; lane l owns
// accumulator elements l·P .. l·P + P - 1 of the row-major FRAGxFRAG tile (P = FRAG²/32: 8 or 2).
// An A or B fragment is where it lies in coop_in (offset and strides), read when multiplied;
// products of f16 values are exact in f32 and accumulate in f32, k in order.

const COOP_LANES: u32 = 32u;
const COOP_PER_LANE: u32 = FRAG * FRAG / COOP_LANES;

struct FragA { off: u32, si: u32, sk: u32 }  // A[i][k] = coop_in[off + i*si + k*sk]
struct FragB { off: u32, sk: u32, sj: u32 }  // B[k][j] = coop_in[off + k*sk + j*sj]
struct FragC { v: array<f32, COOP_PER_LANE> }

struct CoopIds {
    @builtin(local_invocation_index) lix: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
}

var<private> coop_lane_id: u32;

fn coop_init(ids: CoopIds) { coop_lane_id = ids.lix % COOP_LANES; }
fn coop_warp(ids: CoopIds) -> u32 { return ids.lix / COOP_LANES; }
fn coop_warps(ids: CoopIds) -> u32 { return WG / COOP_LANES; }
fn coop_lane(ids: CoopIds) -> u32 { return ids.lix % COOP_LANES; }
fn coop_lanes(ids: CoopIds) -> u32 { return COOP_LANES; }
fn frag_zero() -> FragC { return FragC(); }
fn frag_a_rows(off: u32, ld: u32) -> FragA { return FragA(off, ld, 1u); }
fn frag_a_cols(off: u32, ld: u32) -> FragA { return FragA(off, 1u, ld); }
fn frag_b_rows(off: u32, ld: u32) -> FragB { return FragB(off, ld, 1u); }
fn frag_b_cols(off: u32, ld: u32) -> FragB { return FragB(off, 1u, ld); }

fn frag_mma(a: FragA, b: FragB, c: FragC) -> FragC {
    // A lane's P elements lie in one row of the tile (P divides FRAG): its A row is read once.
    let e0 = coop_lane_id * COOP_PER_LANE;
    let ai = a.off + (e0 / FRAG) * a.si;
    var arow: array<f32, FRAG>;
    for (var k = 0u; k < FRAG; k += 1u) { arow[k] = coop_f32(coop_in[ai + k * a.sk]); }
    var r = c;
    for (var q = 0u; q < COOP_PER_LANE; q += 1u) {
        let bj = b.off + ((e0 + q) % FRAG) * b.sj;
        var s = r.v[q];
        for (var k = 0u; k < FRAG; k += 1u) {
            s += arow[k] * coop_f32(coop_in[bj + k * b.sk]);
        }
        r.v[q] = s;
    }
    return r;
}

fn frag_store_rows(c: FragC, off: u32, ld: u32) {
    for (var q = 0u; q < COOP_PER_LANE; q += 1u) {
        let e = coop_lane_id * COOP_PER_LANE + q;
        coop_out[off + (e / FRAG) * ld + e % FRAG] = c.v[q];
    }
}
