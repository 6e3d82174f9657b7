// gemm: y = epilogue(alpha·x·Wᵀ + b + t·Bᵀ) for up to 4 row-range problems in one dispatch.
//   x: [M, K] f32 (row stride K)   W: problem p's [N, K] block at element w_off in `weight`
//   (DTYPE: f32; f16/bf16 packed 2 per u32, low half first; quantized and fp8 formats as stored,
//   decoded in the load stage by common/quant: K and w_off in whole blocks)   bias: [N] at bias_off
//   LoRA side path: t [M, R] f32 (already scaled), B: [N, R] f32 at lora_off; R = p.rank
//   epilogue, in this order: acc = alpha·x·Wᵀ (+ b) (+ t·Bᵀ); (GELU tanh); (·gate); (+ residual)
//   gate: row [N] of the row's sample: gate[gate_off + srow·gate_stride + n], srow = b + (j >= split ? alt : 0)
//   y, res: element (m, n) at m·ldy + y_col0 + n. RESIDUAL 1: y = res + g·acc; 2: y += g·acc (in place).
// Problem p owns rows [row0, row0 + rows); rows outside every problem are not touched.
// Two entry points, same bindings, same results up to f32 summation order:
//   gemm: each invocation computes a 4x4 block of y in registers (no workgroup memory), 8x8
//     invocations per workgroup = a 32x32 tile (the fast path on CPU Vulkan: lavapipe).
//     Dispatch: [ceil(N/32), ceil(max_rows/32), problems].
//   gemm_tiled: 64x64 tiles staged through workgroup memory (discrete GPUs), see below.
//     Dispatch: [ceil(N/64), ceil(max_rows/64), problems].
// Vector weight loads (4 consecutive k) need runs the packing allows: for halves an even K and w_off,
// for fp8 both multiples of 4 (else scalar loads, any K works); block formats always (whole blocks).
// Cost: quantized weights take 1-7 u32 loads and ~10-30 integer ops per 4 weights (f16: 2 loads;
// common/quant header); measured 0.65-1.55x the f16 GEMM time on lavapipe (docs/quantize-kernels.md).

override DTYPE: u32 = 0u;     // weight storage: DType::code (0 f32, 1 f16, 2 bf16, 3.. common/quant)
override HAS_BIAS: bool = false;
override LORA: bool = false;
override GELU: bool = false;
override GATE: bool = false;
override RESIDUAL: u32 = 0u;  // 0 none, 1 from `res`, 2 in place (reads y)

struct Problem {
    row0: u32,
    rows: u32,
    w_off: u32,           // element offset of this problem's W [N, K]
    bias_off: u32,        // element offset of its bias [N]
    lora_off: u32,        // element offset of its LoRA B [N, R]
    rows_per_sample: u32, // S: row r belongs to sample (r - row0) / S, token (r - row0) % S
    gate_off: u32,        // element offset of sample 0's gate row
    gate_stride: u32,     // elements between samples' gate rows
    gate_split: u32,      // tokens j >= split read sample row b + gate_alt (zero_cond_t)
    gate_alt: u32,
    alpha: f32,           // scale of x·Wᵀ (1 for a plain linear; s for a LoRA down-projection)
    _pad: u32,
}

struct Params {
    n: u32,
    k: u32,
    rank: u32,      // LoRA R (columns of t and B)
    problems: u32,
    ldy: u32,       // row stride of y and res
    y_col0: u32,    // first column of y written
    _pad0: u32,
    _pad1: u32,
    prob: array<Problem, 4>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> res: array<f32>;
@group(0) @binding(5) var<storage, read> gate: array<f32>;
@group(0) @binding(6) var<storage, read> lora_t: array<f32>;
@group(0) @binding(7) var<storage, read> lora_b: array<f32>;
@group(0) @binding(8) var<storage, read_write> y: array<f32>;

// One weight element at element index i (any alignment).
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

// Whether W rows of problem pr can be read 4-wide (see the header): every row start
// w_off + n·K keeps the alignment of w_off when K has it.
fn w4_aligned(w_off: u32) -> bool {
    let mask = select(1u, 3u, DTYPE >= 3u);
    return DTYPE == 0u || ((p.k | w_off) & mask) == 0u;
}

fn load_x4(i: u32) -> vec4<f32> {
    return vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
}

fn gate_index(pr: Problem, m: u32, n: u32) -> u32 {
    let local = m - pr.row0;
    let j = local % pr.rows_per_sample;
    let srow = local / pr.rows_per_sample + select(0u, pr.gate_alt, j >= pr.gate_split);
    return pr.gate_off + srow * pr.gate_stride + n;
}

// Writes one output element: v = alpha·(x·Wᵀ)[m, n], l = (t·Bᵀ)[m, n].
fn store(pr: Problem, m: u32, n: u32, v: f32, l: f32) {
    var a = pr.alpha * v;
    if (HAS_BIAS) { a += bias[pr.bias_off + n]; }
    if (LORA) { a += l; }
    if (GELU) { a = act_gelu_tanh(a); }
    if (GATE) { a *= gate[gate_index(pr, m, n)]; }
    let yi = m * p.ldy + p.y_col0 + n;
    if (RESIDUAL == 1u) { a += res[yi]; }
    if (RESIDUAL == 2u) { a += y[yi]; }
    y[yi] = a;
}

@compute @workgroup_size(8, 8, 1)
fn gemm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let pr = p.prob[wid.z];
    let n0 = gid.x * 4u;
    let r0 = gid.y * 4u;
    if (n0 >= p.n || r0 >= pr.rows) { return; }
    let K = p.k;
    // Clamped rows/columns: edge invocations compute duplicates and skip their stores.
    let last_r = pr.rows - 1u;
    let xb0 = (pr.row0 + r0) * K;
    let xb1 = (pr.row0 + min(r0 + 1u, last_r)) * K;
    let xb2 = (pr.row0 + min(r0 + 2u, last_r)) * K;
    let xb3 = (pr.row0 + min(r0 + 3u, last_r)) * K;
    let wb0 = pr.w_off + n0 * K;
    let wb1 = pr.w_off + min(n0 + 1u, p.n - 1u) * K;
    let wb2 = pr.w_off + min(n0 + 2u, p.n - 1u) * K;
    let wb3 = pr.w_off + min(n0 + 3u, p.n - 1u) * K;
    // acc_i holds row i, columns n0..n0+3.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let kv = select(0u, K & ~3u, w4_aligned(pr.w_off));
    for (var k = 0u; k < kv; k += 4u) {
        let w0 = load_w4(wb0 + k);
        let w1 = load_w4(wb1 + k);
        let w2 = load_w4(wb2 + k);
        let w3 = load_w4(wb3 + k);
        let x0 = load_x4(xb0 + k);
        let x1 = load_x4(xb1 + k);
        let x2 = load_x4(xb2 + k);
        let x3 = load_x4(xb3 + k);
        acc0 += vec4<f32>(dot(x0, w0), dot(x0, w1), dot(x0, w2), dot(x0, w3));
        acc1 += vec4<f32>(dot(x1, w0), dot(x1, w1), dot(x1, w2), dot(x1, w3));
        acc2 += vec4<f32>(dot(x2, w0), dot(x2, w1), dot(x2, w2), dot(x2, w3));
        acc3 += vec4<f32>(dot(x3, w0), dot(x3, w1), dot(x3, w2), dot(x3, w3));
    }
    for (var k = kv; k < K; k += 1u) {
        let w = vec4<f32>(load_w1(wb0 + k), load_w1(wb1 + k), load_w1(wb2 + k), load_w1(wb3 + k));
        acc0 += x[xb0 + k] * w;
        acc1 += x[xb1 + k] * w;
        acc2 += x[xb2 + k] * w;
        acc3 += x[xb3 + k] * w;
    }
    // LoRA side path: a rank-R update of the same 4x4 block, kept apart because alpha scales x·Wᵀ only.
    var l0 = vec4<f32>(0.0);
    var l1 = vec4<f32>(0.0);
    var l2 = vec4<f32>(0.0);
    var l3 = vec4<f32>(0.0);
    if (LORA) {
        let R = p.rank;
        let tb = (pr.row0 + r0) * R;
        for (var r = 0u; r < R; r += 1u) {
            let bv = vec4<f32>(lora_b[pr.lora_off + n0 * R + r],
                               lora_b[pr.lora_off + min(n0 + 1u, p.n - 1u) * R + r],
                               lora_b[pr.lora_off + min(n0 + 2u, p.n - 1u) * R + r],
                               lora_b[pr.lora_off + min(n0 + 3u, p.n - 1u) * R + r]);
            l0 += lora_t[tb + r] * bv;
            l1 += lora_t[(pr.row0 + min(r0 + 1u, last_r)) * R + r] * bv;
            l2 += lora_t[(pr.row0 + min(r0 + 2u, last_r)) * R + r] * bv;
            l3 += lora_t[(pr.row0 + min(r0 + 3u, last_r)) * R + r] * bv;
        }
    }
    let m = pr.row0 + r0;
    for (var j = 0u; j < 4u; j += 1u) {
        let n = n0 + j;
        if (n < p.n) {
            store(pr, m, n, acc0[j], l0[j]);
            if (r0 + 1u < pr.rows) { store(pr, m + 1u, n, acc1[j], l1[j]); }
            if (r0 + 2u < pr.rows) { store(pr, m + 2u, n, acc2[j], l2[j]); }
            if (r0 + 3u < pr.rows) { store(pr, m + 3u, n, acc3[j], l3[j]); }
        }
    }
}

// ---- gemm_tiled: the same computation through workgroup memory, for discrete GPUs ----------
// 16x16 invocations per workgroup own a 64x64 tile of y; each K step stages a 64x16 slab of x
// and of W (decoded to f32) in workgroup memory with coalesced loads (16 consecutive k per row),
// stored k-major so that invocation (tx, ty) reads its 4 rows (4ty..4ty+3) and its 4 columns
// (4tx..4tx+3) as one vec4 each: 16 FMAs per 2 workgroup-memory loads. Quantized and fp8 weights
// are decoded 4 consecutive k at a time while staged (invocation t: column t/4, k 4·(t%4)..+3),
// so each block header is read once per 4 weights, never a dequantized copy in global memory.
// (On lavapipe barriers and workgroup memory are ~10x slower: the launcher picks `gemm` there.)
// Dispatch: [ceil(N/64), ceil(max_rows/64), problems].

const TB: u32 = 64u;   // tile rows = tile columns
const TK: u32 = 16u;   // K step
const LDV: u32 = 17u;  // vec4s per slab row: 64 values + 4 padding (fewer bank conflicts on stores)

var<workgroup> xs: array<vec4<f32>, 272>;  // [TK][LDV]: xs[kk][r/4][r%4] = x(tile row r, k0 + kk)
var<workgroup> ws: array<vec4<f32>, 272>;  // [TK][LDV]: W(tile column c, k0 + kk)

@compute @workgroup_size(16, 16, 1)
fn gemm_tiled(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let pr = p.prob[wid.z];
    let rb = wid.y * TB;   // first tile row, relative to row0
    let cb = wid.x * TB;   // first tile column
    if (rb >= pr.rows) { return; }  // uniform across the workgroup
    let K = p.k;
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * 16u + tx;
    let w4 = DTYPE >= 3u && w4_aligned(pr.w_off);  // uniform across the workgroup
    var acc0 = vec4<f32>(0.0);  // row 4ty, columns 4tx..4tx+3
    var acc1 = vec4<f32>(0.0);  // row 4ty + 1
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < K; k0 += TK) {
        for (var q = 0u; q < 4u; q += 1u) {
            let e = tid + 256u * q;
            let r = e / TK;
            let kk = e % TK;
            let kg = k0 + kk;
            var xv = 0.0;
            if (rb + r < pr.rows && kg < K) { xv = x[(pr.row0 + rb + r) * K + kg]; }
            xs[kk * LDV + r / 4u][r % 4u] = xv;
            if (!w4) {
                var wv = 0.0;
                if (cb + r < p.n && kg < K) { wv = load_w1(pr.w_off + (cb + r) * K + kg); }
                ws[kk * LDV + r / 4u][r % 4u] = wv;
            }
        }
        if (w4) {
            let c = tid / 4u;
            let kk = 4u * (tid % 4u);
            var wv = vec4<f32>(0.0);
            // K % 4 == 0 here, so a run that starts inside K ends inside it.
            if (cb + c < p.n && k0 + kk < K) { wv = load_w4(pr.w_off + (cb + c) * K + k0 + kk); }
            for (var e = 0u; e < 4u; e += 1u) { ws[(kk + e) * LDV + c / 4u][c % 4u] = wv[e]; }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk += 1u) {
            let a = xs[kk * LDV + ty];
            let b = ws[kk * LDV + tx];
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
    }
    let r0 = rb + 4u * ty;   // relative to row0
    let n0 = cb + 4u * tx;
    if (r0 >= pr.rows || n0 >= p.n) { return; }
    let last_r = pr.rows - 1u;
    let last_c = p.n - 1u;
    var l0 = vec4<f32>(0.0);
    var l1 = vec4<f32>(0.0);
    var l2 = vec4<f32>(0.0);
    var l3 = vec4<f32>(0.0);
    if (LORA) {
        let R = p.rank;
        for (var r = 0u; r < R; r += 1u) {
            let bv = vec4<f32>(lora_b[pr.lora_off + n0 * R + r],
                               lora_b[pr.lora_off + min(n0 + 1u, last_c) * R + r],
                               lora_b[pr.lora_off + min(n0 + 2u, last_c) * R + r],
                               lora_b[pr.lora_off + min(n0 + 3u, last_c) * R + r]);
            l0 += lora_t[(pr.row0 + r0) * R + r] * bv;
            l1 += lora_t[(pr.row0 + min(r0 + 1u, last_r)) * R + r] * bv;
            l2 += lora_t[(pr.row0 + min(r0 + 2u, last_r)) * R + r] * bv;
            l3 += lora_t[(pr.row0 + min(r0 + 3u, last_r)) * R + r] * bv;
        }
    }
    let m = pr.row0 + r0;
    for (var j = 0u; j < 4u; j += 1u) {
        let n = n0 + j;
        if (n < p.n) {
            store(pr, m, n, acc0[j], l0[j]);
            if (r0 + 1u < pr.rows) { store(pr, m + 1u, n, acc1[j], l1[j]); }
            if (r0 + 2u < pr.rows) { store(pr, m + 2u, n, acc2[j], l2[j]); }
            if (r0 + 3u < pr.rows) { store(pr, m + 3u, n, acc3[j], l3[j]); }
        }
    }
}

// ---- gemm_coop: the tile program on cooperative matrices (fragment API: common/coop16) -------
// The same function with f16 operands and f32 accumulation (`--precision mixed`): each x row is
// first scaled by a power of two 2^s (s = 14 - floor(log2 max|x_row|), clamped to ±100), so its
// largest value lies in [2^14, 2^15) and no row overflows f16; the epilogue multiplies by 2^-s
// (both exact). Weights are decoded to f32 (any DTYPE, as above) and rounded to f16 while staged.
// Workgroup: WARPS_M x WARPS_N subgroups of LANES invocations; subgroup (wm, wn) owns a WTM x WTN
// warp tile of the TM x TN workgroup tile (TM = WARPS_M·WTM, TN = WARPS_N·WTN) as ACC_M x ACC_N
// accumulator fragments. K advances BK at a time through two staging buffers in coop_in (stage
// slab s+1 while multiplying slab s: one barrier per slab), rows padded by PAD elements. The
// epilogue stores one fragment per subgroup to coop_out and finishes it with scalar lanes
// (`store` above: bias, LoRA t·Bᵀ in f32, GELU, gate, residual).
// Dispatch: [ceil(N/TN), ceil(max_rows/TM), problems].

override WARPS_M: u32 = 2u;
override WARPS_N: u32 = 2u;
override LANES: u32 = 32u;     // invocations per subgroup (the emulation's 32, or the adapter's fixed size)
override BK: u32 = 32u;        // K step, a multiple of FRAG (and of 4)
override WTM: u32 = 32u;       // warp tile rows, a multiple of FRAG, at most 64
override WTN: u32 = 32u;       // warp tile columns, a multiple of FRAG, at most 64
override ACC_M: u32 = WTM / FRAG;
override ACC_N: u32 = WTN / FRAG;
const MAX_ACC: u32 = (64u / FRAG) * (64u / FRAG);  // accumulators a subgroup can hold (the array size)
const PAD: u32 = 8u;           // elements of padding per staged row (16 bytes of f16)
override WG: u32 = WARPS_M * WARPS_N * LANES;
override TM: u32 = WARPS_M * WTM;
override TN: u32 = WARPS_N * WTN;
override LDS: u32 = BK + PAD;                   // staged row stride
override STAGE: u32 = (TM + TN) * LDS;          // one staging buffer: A rows, then B rows
override COOP_IN_LEN: u32 = 2u * STAGE;
override COOP_OUT_LEN: u32 = WARPS_M * WARPS_N * FRAG * FRAG;

var<workgroup> coop_in: array<CoopElem, COOP_IN_LEN>;
var<workgroup> coop_out: array<f32, COOP_OUT_LEN>;
var<workgroup> row_amax: array<atomic<u32>, TM>;
var<workgroup> row_exp: array<i32, TM>;   // the row's shift s

// Stages K slab `k0` of x (rows rb.., scaled, rounded) and W (columns cb..) into buffer `buf`.
fn stage_slab(pr: Problem, rb: u32, cb: u32, k0: u32, buf: u32, lix: u32, w4: bool) {
    let K = p.k;
    let base = buf * STAGE;
    for (var e = lix; e < TM * BK; e += WG) {
        let r = e / BK;
        let kk = e % BK;
        var v = 0.0;
        if (rb + r < pr.rows && k0 + kk < K) { v = ldexp(x[(pr.row0 + rb + r) * K + k0 + kk], row_exp[r]); }
        coop_in[base + r * LDS + kk] = coop_elem(v);
    }
    let wb = base + TM * LDS;
    if (w4) {
        for (var e = lix; e < TN * BK / 4u; e += WG) {
            let c = e / (BK / 4u);
            let kk = 4u * (e % (BK / 4u));
            var v = vec4<f32>(0.0);
            // K % 4 == 0 here, so a run that starts inside K ends inside it.
            if (cb + c < p.n && k0 + kk < K) { v = load_w4(pr.w_off + (cb + c) * K + k0 + kk); }
            for (var q = 0u; q < 4u; q += 1u) { coop_in[wb + c * LDS + kk + q] = coop_elem(v[q]); }
        }
    } else {
        for (var e = lix; e < TN * BK; e += WG) {
            let c = e / BK;
            let kk = e % BK;
            var v = 0.0;
            if (cb + c < p.n && k0 + kk < K) { v = load_w1(pr.w_off + (cb + c) * K + k0 + kk); }
            coop_in[wb + c * LDS + kk] = coop_elem(v);
        }
    }
}

@compute @workgroup_size(WG, 1, 1)
fn gemm_coop(ids: CoopIds) {
    coop_init(ids);
    let wid = ids.wid;
    let lix = ids.lix;
    let pr = p.prob[wid.z];
    let rb = wid.y * TM;   // first tile row, relative to row0
    let cb = wid.x * TN;   // first tile column
    if (rb >= pr.rows) { return; }  // uniform across the workgroup
    let K = p.k;
    // Row scales: the largest |x| of each tile row over all of K.
    for (var r = lix; r < TM; r += WG) { atomicStore(&row_amax[r], 0u); }
    workgroupBarrier();
    for (var r = 0u; r < TM; r += 1u) {
        if (rb + r < pr.rows) {
            var mx = 0.0;
            let xb = (pr.row0 + rb + r) * K;
            for (var k = lix; k < K; k += WG) { mx = max(mx, abs(x[xb + k])); }
            atomicMax(&row_amax[r], bitcast<u32>(mx));
        }
    }
    workgroupBarrier();
    for (var r = lix; r < TM; r += WG) { row_exp[r] = rowscale_shift(atomicLoad(&row_amax[r])); }
    workgroupBarrier();

    let warp = coop_warp(ids);
    let wm = warp / WARPS_N;
    let wn = warp % WARPS_N;
    let w4 = ((K | pr.w_off) & 3u) == 0u;  // uniform
    var acc: array<FragC, MAX_ACC>;
    for (var i = 0u; i < ACC_M * ACC_N; i += 1u) { acc[i] = frag_zero(); }
    let slabs = (K + BK - 1u) / BK;
    stage_slab(pr, rb, cb, 0u, 0u, lix, w4);
    workgroupBarrier();
    for (var s = 0u; s < slabs; s += 1u) {
        let buf = s & 1u;
        if (s + 1u < slabs) { stage_slab(pr, rb, cb, (s + 1u) * BK, buf ^ 1u, lix, w4); }
        let a0 = buf * STAGE + (wm * WTM) * LDS;
        let b0 = buf * STAGE + (TM + wn * WTN) * LDS;
        for (var kf = 0u; kf < BK; kf += FRAG) {
            var bf: array<FragB, 64u / FRAG>;
            for (var j = 0u; j < ACC_N; j += 1u) { bf[j] = frag_b_cols(b0 + j * FRAG * LDS + kf, LDS); }
            for (var i = 0u; i < ACC_M; i += 1u) {
                let af = frag_a_rows(a0 + i * FRAG * LDS + kf, LDS);
                for (var j = 0u; j < ACC_N; j += 1u) { acc[i * ACC_N + j] = frag_mma(af, bf[j], acc[i * ACC_N + j]); }
            }
        }
        workgroupBarrier();
    }
    // Epilogue, one fragment per subgroup at a time through its FRAGxFRAG slot of coop_out.
    let slot = warp * FRAG * FRAG;
    let lane = coop_lane(ids);
    let lanes = coop_lanes(ids);
    for (var i = 0u; i < ACC_M; i += 1u) {
        for (var j = 0u; j < ACC_N; j += 1u) {
            frag_store_rows(acc[i * ACC_N + j], slot, FRAG);
            workgroupBarrier();
            for (var q = lane; q < FRAG * FRAG; q += lanes) {
                let r = wm * WTM + i * FRAG + q / FRAG;   // tile row
                let n = cb + wn * WTN + j * FRAG + q % FRAG;
                if (rb + r < pr.rows && n < p.n) {
                    let m = pr.row0 + rb + r;
                    var l = 0.0;
                    if (LORA) {
                        let R = p.rank;
                        for (var t = 0u; t < R; t += 1u) { l += lora_t[m * R + t] * lora_b[pr.lora_off + n * R + t]; }
                    }
                    store(pr, m, n, ldexp(coop_out[slot + q], -row_exp[r]), l);
                }
            }
            workgroupBarrier();
        }
    }
}
