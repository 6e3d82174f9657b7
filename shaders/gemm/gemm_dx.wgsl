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

// ---- gemm_dx_coop: the tile program (fragment API: common/coop16), f16 operands --------------
// dx[m, c] (= or +=) alpha · Σ_n dy[m, n] W[n, c], as gemm_dx, with the forward's tile layout
// (gemm.wgsl `gemm_coop`): each dy row scaled by its power of two 2^s before rounding to f16
// (gradients are often far below f16's normal range), W rounded to f16 while staged, f32
// accumulators, the result multiplied by 2^-s. The reduction runs over n in slabs of BK: dy rows
// are staged as A (TM x BK, row-major), the W slab as B (BK rows n x TN columns c, row-major,
// contiguous in c as W is). Dispatch: [ceil(K/TN), ceil(max_rows/TM), problems].

override WARPS_M: u32 = 2u;
override WARPS_N: u32 = 2u;
override LANES: u32 = 32u;
override BK: u32 = 32u;        // n step, a multiple of FRAG (and of 4)
override WTM: u32 = 32u;
override WTN: u32 = 32u;
override ACC_M: u32 = WTM / FRAG;
override ACC_N: u32 = WTN / FRAG;
const MAX_ACC: u32 = (64u / FRAG) * (64u / FRAG);
const PAD: u32 = 8u;
override WG: u32 = WARPS_M * WARPS_N * LANES;
override TM: u32 = WARPS_M * WTM;
override TN: u32 = WARPS_N * WTN;
override LDA: u32 = BK + PAD;                   // staged dy row stride
override LDB: u32 = TN + PAD;                   // staged W row stride
override STAGE: u32 = TM * LDA + BK * LDB;      // one staging buffer: dy rows, then the W slab
override COOP_IN_LEN: u32 = 2u * STAGE;
override COOP_OUT_LEN: u32 = WARPS_M * WARPS_N * FRAG * FRAG;

var<workgroup> coop_in: array<CoopElem, COOP_IN_LEN>;
var<workgroup> coop_out: array<f32, COOP_OUT_LEN>;
var<workgroup> row_amax: array<atomic<u32>, TM>;
var<workgroup> row_exp: array<i32, TM>;

fn stage_slab(pr: Problem, rb: u32, cb: u32, n0: u32, buf: u32, lix: u32, w4: bool) {
    let N = p.n;
    let K = p.k;
    let base = buf * STAGE;
    for (var e = lix; e < TM * BK; e += WG) {
        let r = e / BK;
        let nn = e % BK;
        var v = 0.0;
        if (rb + r < pr.rows && n0 + nn < N) {
            v = ldexp(dy[(pr.row0 + rb + r) * p.ldy + p.dy_col0 + n0 + nn], row_exp[r]);
        }
        coop_in[base + r * LDA + nn] = coop_elem(v);
    }
    let wb = base + TM * LDA;
    if (w4) {
        for (var e = lix; e < BK * TN / 4u; e += WG) {
            let nn = e / (TN / 4u);
            let c = 4u * (e % (TN / 4u));
            var v = vec4<f32>(0.0);
            // K % 4 == 0 here, so a run that starts inside K ends inside it.
            if (n0 + nn < N && cb + c < K) { v = load_w4(pr.w_off + (n0 + nn) * K + cb + c); }
            for (var q = 0u; q < 4u; q += 1u) { coop_in[wb + nn * LDB + c + q] = coop_elem(v[q]); }
        }
    } else {
        for (var e = lix; e < BK * TN; e += WG) {
            let nn = e / TN;
            let c = e % TN;
            var v = 0.0;
            if (n0 + nn < N && cb + c < K) { v = load_w1(pr.w_off + (n0 + nn) * K + cb + c); }
            coop_in[wb + nn * LDB + c] = coop_elem(v);
        }
    }
}

@compute @workgroup_size(WG, 1, 1)
fn gemm_dx_coop(ids: CoopIds) {
    coop_init(ids);
    let wid = ids.wid;
    let lix = ids.lix;
    let pr = p.prob[wid.z];
    let rb = wid.y * TM;
    let cb = wid.x * TN;
    if (rb >= pr.rows) { return; }  // uniform across the workgroup
    let N = p.n;
    let K = p.k;
    for (var r = lix; r < TM; r += WG) { atomicStore(&row_amax[r], 0u); }
    workgroupBarrier();
    for (var r = 0u; r < TM; r += 1u) {
        if (rb + r < pr.rows) {
            var mx = 0.0;
            let db = (pr.row0 + rb + r) * p.ldy + p.dy_col0;
            for (var n = lix; n < N; n += WG) { mx = max(mx, abs(dy[db + n])); }
            atomicMax(&row_amax[r], bitcast<u32>(mx));
        }
    }
    workgroupBarrier();
    for (var r = lix; r < TM; r += WG) { row_exp[r] = rowscale_shift(atomicLoad(&row_amax[r])); }
    workgroupBarrier();

    let warp = coop_warp(ids);
    let wm = warp / WARPS_N;
    let wn = warp % WARPS_N;
    let mask = select(1u, 3u, DTYPE >= 3u);
    let w4 = K % 4u == 0u && (DTYPE == 0u || ((K | pr.w_off) & mask) == 0u);  // uniform
    var acc: array<FragC, MAX_ACC>;
    for (var i = 0u; i < ACC_M * ACC_N; i += 1u) { acc[i] = frag_zero(); }
    let slabs = (N + BK - 1u) / BK;
    stage_slab(pr, rb, cb, 0u, 0u, lix, w4);
    workgroupBarrier();
    for (var s = 0u; s < slabs; s += 1u) {
        let buf = s & 1u;
        if (s + 1u < slabs) { stage_slab(pr, rb, cb, (s + 1u) * BK, buf ^ 1u, lix, w4); }
        let a0 = buf * STAGE + (wm * WTM) * LDA;
        let b0 = buf * STAGE + TM * LDA + wn * WTN;
        for (var kf = 0u; kf < BK; kf += FRAG) {
            var bf: array<FragB, 64u / FRAG>;
            for (var j = 0u; j < ACC_N; j += 1u) { bf[j] = frag_b_rows(b0 + kf * LDB + j * FRAG, LDB); }
            for (var i = 0u; i < ACC_M; i += 1u) {
                let af = frag_a_rows(a0 + i * FRAG * LDA + kf, LDA);
                for (var j = 0u; j < ACC_N; j += 1u) { acc[i * ACC_N + j] = frag_mma(af, bf[j], acc[i * ACC_N + j]); }
            }
        }
        workgroupBarrier();
    }
    let slot = warp * FRAG * FRAG;
    let lane = coop_lane(ids);
    let lanes = coop_lanes(ids);
    for (var i = 0u; i < ACC_M; i += 1u) {
        for (var j = 0u; j < ACC_N; j += 1u) {
            frag_store_rows(acc[i * ACC_N + j], slot, FRAG);
            workgroupBarrier();
            for (var q = lane; q < FRAG * FRAG; q += lanes) {
                let r = wm * WTM + i * FRAG + q / FRAG;
                let c = cb + wn * WTN + j * FRAG + q % FRAG;
                if (rb + r < pr.rows && c < K) {
                    store(pr.row0 + rb + r, c, pr.alpha * ldexp(coop_out[slot + q], -row_exp[r]));
                }
            }
            workgroupBarrier();
        }
    }
}
