// gemm_dx: the input gradient of y = x·Wᵀ: dx (= or +=) alpha · dy·W, per row-range problem.
//   dy: [M, N] f32   W: problem p's [N, K] block at element w_off in `weight` (DTYPE: f32, f16/bf16
//   packed 2 per u32, or a quantized/fp8 format decoded by common/quant: K and w_off in whole
//   blocks)   dx: [M, K] f32. ACCUMULATE: dx += ... (residual branches add up).
//   Problem p owns rows [row0, row0 + rows); other rows of dx are not touched.
// Each invocation computes a 4x4 block of dx (4 rows x 4 columns) as a sum of outer products
// over n (W rows are contiguous in k: one vec4 load per n). 8x8 invocations per workgroup = a
// 32x32 tile, no workgroup memory. Vector loads of 4 columns need an even K and w_off for halves,
// multiples of 4 for fp8; otherwise scalar loads (any K works). Block formats always load 4-wide
// (one block header read per 4 weights).
// Dispatch: [ceil(K/32), ceil(max_rows/32), problems].

override DTYPE: u32 = 0u;     // weight storage: DType::code (0 f32, 1 f16, 2 bf16, 3.. common/quant)
override ACCUMULATE: bool = false;

struct Problem {
    row0: u32,
    rows: u32,
    w_off: u32,   // element offset of this problem's W [N, K]
    alpha: f32,
}

struct Params {
    n: u32,       // reduction length (columns of dy, rows of W)
    k: u32,       // columns of dx
    problems: u32,
    ldy: u32,      // row stride of dy
    dy_col0: u32,  // first dy column used (y was a column slice of a wider output)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    prob: array<Problem, 4>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

fn load_w1(i: u32) -> f32 {
    if (DTYPE == 0u) { return bitcast<f32>(weight[i]); }
    if (DTYPE >= 3u) { return quant_load_w1(DTYPE, i); }
    return decode_half(DTYPE, weight[i >> 1u], (i & 1u) == 1u);
}

// Four weight elements from element index i (i even for half types, a multiple of 4 for the
// quantized and fp8 ones).
fn load_w4(i: u32) -> vec4<f32> {
    if (DTYPE == 0u) {
        return vec4<f32>(bitcast<f32>(weight[i]), bitcast<f32>(weight[i + 1u]),
                         bitcast<f32>(weight[i + 2u]), bitcast<f32>(weight[i + 3u]));
    }
    if (DTYPE >= 3u) { return quant_load_w4(DTYPE, i); }
    return decode_half4(DTYPE, weight[i >> 1u], weight[(i >> 1u) + 1u]);
}

fn store(m: u32, c: u32, v: f32) {
    let i = m * p.k + c;
    if (ACCUMULATE) { dx[i] += v; } else { dx[i] = v; }
}

@compute @workgroup_size(8, 8, 1)
fn gemm_dx(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let pr = p.prob[wid.z];
    let c0 = gid.x * 4u;
    let r0 = gid.y * 4u;
    let K = p.k;
    if (c0 >= K || r0 >= pr.rows) { return; }
    let N = p.n;
    let last_r = pr.rows - 1u;
    let db0 = (pr.row0 + r0) * p.ldy + p.dy_col0;
    let db1 = (pr.row0 + min(r0 + 1u, last_r)) * p.ldy + p.dy_col0;
    let db2 = (pr.row0 + min(r0 + 2u, last_r)) * p.ldy + p.dy_col0;
    let db3 = (pr.row0 + min(r0 + 3u, last_r)) * p.ldy + p.dy_col0;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    // Row starts w_off + n·K keep w_off's alignment when K has it (see the header).
    let mask = select(1u, 3u, DTYPE >= 3u);
    let vec_ok = c0 + 3u < K && (DTYPE == 0u || ((K | pr.w_off) & mask) == 0u);
    // Clamped columns for the scalar path: edge invocations compute duplicates, skip their stores.
    let c1 = min(c0 + 1u, K - 1u);
    let c2 = min(c0 + 2u, K - 1u);
    let c3 = min(c0 + 3u, K - 1u);
    for (var n = 0u; n < N; n += 1u) {
        let wb = pr.w_off + n * K;
        var w: vec4<f32>;
        if (vec_ok) {
            w = load_w4(wb + c0);
        } else {
            w = vec4<f32>(load_w1(wb + c0), load_w1(wb + c1), load_w1(wb + c2), load_w1(wb + c3));
        }
        acc0 += dy[db0 + n] * w;
        acc1 += dy[db1 + n] * w;
        acc2 += dy[db2 + n] * w;
        acc3 += dy[db3 + n] * w;
    }
    let m = pr.row0 + r0;
    for (var j = 0u; j < 4u; j += 1u) {
        let c = c0 + j;
        if (c < K) {
            store(m, c, pr.alpha * acc0[j]);
            if (r0 + 1u < pr.rows) { store(m + 1u, c, pr.alpha * acc1[j]); }
            if (r0 + 2u < pr.rows) { store(m + 2u, c, pr.alpha * acc2[j]); }
            if (r0 + 3u < pr.rows) { store(m + 3u, c, pr.alpha * acc3[j]); }
        }
    }
}
