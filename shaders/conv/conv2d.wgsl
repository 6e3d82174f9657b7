// conv2d: 2-D convolution as an implicit GEMM (no im2col buffer): y[m, n] = epilogue(alpha·Σ_k A[m, k]·W[n, k]).
//   m: output pixel oy·out_w + ox (M = out_h·out_w)   n: output channel (N = co)   k = (ky·KW + kx)·CI + ci
//   A[m, k] is gathered from x on the fly: (uy, ux) = (oy·stride + ky − pad_top, ox·stride + kx − pad_left) in
//   the input seen UP = 1 or 2 times nearest-upsampled (uy, ux index a UP·in_h × UP·in_w image); zero outside it,
//   else x[(x_pix0 + (uy/UP)·in_w + ux/UP)·CI + ci]. Any stride, any (asymmetric) zero padding.
//   x: pixels-major [pixels, CI] f32   W: [N, KH, KW, CI] at w_off (DTYPE 0 f32, 1 f16, 2 bf16; halves packed 2 per u32)
//   PRENORM: the gathered value is the VAE's channel RMS norm of x (then SiLU if SILU), computed on the fly:
//     x[pix, ci] / denom[pix] · norm_scale · gamma[ci], denom [pixels] = max(‖x[pix, :]‖₂, 1e-12) (norm/channel_norm_denom),
//     norm_scale = sqrt(CI); padding taps stay zero (the conv pads the normalised activation).
//   bias: [N] f32   epilogue: acc·alpha (+ bias[n]) (+ res[yi] | + y[yi] in place); yi = (y_row0 + m)·N + n, or
//   with TRANSPOSE_Y yi = n·ldt + y_row0 + m (y is [N, ldt]: the VAE attention's Vᵀ). res has y's layout.
// Used for every conv of the VAE (3×3, 1×1, stride-2 downsample, upsample + conv) and, as a 1×1 conv over an
// S×1 image, for the mid-block attention's Q·Kᵀ and P·V (W = an f32 activation).
// Two entry points, same bindings, same results up to f32 summation order (like gemm/gemm.wgsl):
//   conv2d: 4×4 outputs per invocation in registers, 8×8 invocations = a 32×32 tile (CPU adapters: lavapipe).
//     Dispatch: [ceil(N/32), min(T, 65535), ceil(T/65535)] with T = ceil(M/32) row tiles.
//   conv2d_tiled: 64×64 tiles, 64×16 slabs of A (gathered) and W staged in workgroup memory (GPUs).
//     Dispatch: [ceil(N/64), min(T, 65535), ceil(T/65535)] with T = ceil(M/64).

override DTYPE: u32 = 0u;
override HAS_BIAS: bool = false;
override RESIDUAL: u32 = 0u;  // 0 none, 1 from `res`, 2 in place (y += …)
override TRANSPOSE_Y: bool = false;
override PRENORM: bool = false;
override SILU: bool = false;  // with PRENORM: SiLU after the norm

struct Params {
    in_h: u32,
    in_w: u32,
    ci: u32,
    n: u32,
    out_h: u32,
    out_w: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad_top: u32,
    pad_left: u32,
    up: u32,        // 1, or 2 for a nearest ×2 upsampled input
    x_pix0: u32,    // first input pixel
    y_row0: u32,    // first output row (pixel) written
    ldt: u32,       // row stride of y when TRANSPOSE_Y
    w_off: u32,     // element offset of W
    alpha: f32,
    norm_scale: f32,  // PRENORM: sqrt(CI) as Python computes it
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> res: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> denom: array<f32>;
@group(0) @binding(7) var<storage, read> gamma: array<f32>;

fn load_w(i: u32) -> f32 {
    if (DTYPE == 0u) { return bitcast<f32>(weight[i]); }
    return decode_half(DTYPE, weight[i >> 1u], (i & 1u) == 1u);
}

// The input pixel that tap (ky, kx) of output pixel (oy, ox) reads, or -1 where it falls into the zero padding.
fn tap_pixel(oy: u32, ox: u32, ky: u32, kx: u32) -> i32 {
    let uy = i32(oy * p.stride + ky) - i32(p.pad_top);
    let ux = i32(ox * p.stride + kx) - i32(p.pad_left);
    if (uy < 0 || ux < 0 || uy >= i32(p.in_h * p.up) || ux >= i32(p.in_w * p.up)) { return -1; }
    return i32(p.x_pix0 + (u32(uy) / p.up) * p.in_w + u32(ux) / p.up);
}

// A[m, k] for input pixel `pix` (-1: padding) and channel c, normalised (and SiLU'd) when PRENORM.
fn gather(pix: i32, c: u32) -> f32 {
    if (pix < 0) { return 0.0; }
    let q = u32(pix);
    var v = x[q * p.ci + c];
    if (PRENORM) {
        v = v / denom[q] * p.norm_scale * gamma[c];
        if (SILU) { v = v / (1.0 + exp(-v)); }
    }
    return v;
}

fn store(m: u32, n: u32, acc: f32) {
    var a = p.alpha * acc;
    if (HAS_BIAS) { a += bias[n]; }
    var yi = (p.y_row0 + m) * p.n + n;
    if (TRANSPOSE_Y) { yi = n * p.ldt + p.y_row0 + m; }
    if (RESIDUAL == 1u) { a += res[yi]; }
    if (RESIDUAL == 2u) { a += y[yi]; }
    y[yi] = a;
}

// Row tile index of this workgroup (the grid folds row tiles into y and z).
fn row_tile(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.z * nwg.y + wid.y;
}

@compute @workgroup_size(8, 8, 1)
fn conv2d(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let M = p.out_h * p.out_w;
    let m0 = (row_tile(wid, nwg) * 8u + lid.y) * 4u;
    let n0 = (wid.x * 8u + lid.x) * 4u;
    if (m0 >= M || n0 >= p.n) { return; }
    let K = p.kh * p.kw * p.ci;
    // Output pixels of the 4 rows (clamped: edge invocations compute duplicates and skip their stores).
    var oy: array<u32, 4>;
    var ox: array<u32, 4>;
    for (var r = 0u; r < 4u; r += 1u) {
        let m = min(m0 + r, M - 1u);
        oy[r] = m / p.out_w;
        ox[r] = m % p.out_w;
    }
    let wb0 = p.w_off + n0 * K;
    let wb1 = p.w_off + min(n0 + 1u, p.n - 1u) * K;
    let wb2 = p.w_off + min(n0 + 2u, p.n - 1u) * K;
    let wb3 = p.w_off + min(n0 + 3u, p.n - 1u) * K;
    var acc0 = vec4<f32>(0.0);  // row m0, columns n0..n0+3
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var ky = 0u; ky < p.kh; ky += 1u) {
        for (var kx = 0u; kx < p.kw; kx += 1u) {
            let q0 = tap_pixel(oy[0], ox[0], ky, kx);
            let q1 = tap_pixel(oy[1], ox[1], ky, kx);
            let q2 = tap_pixel(oy[2], ox[2], ky, kx);
            let q3 = tap_pixel(oy[3], ox[3], ky, kx);
            let kb = (ky * p.kw + kx) * p.ci;
            for (var c = 0u; c < p.ci; c += 1u) {
                let w = vec4<f32>(load_w(wb0 + kb + c), load_w(wb1 + kb + c), load_w(wb2 + kb + c),
                                  load_w(wb3 + kb + c));
                acc0 += gather(q0, c) * w;
                acc1 += gather(q1, c) * w;
                acc2 += gather(q2, c) * w;
                acc3 += gather(q3, c) * w;
            }
        }
    }
    for (var j = 0u; j < 4u; j += 1u) {
        let n = n0 + j;
        if (n < p.n) {
            store(m0, n, acc0[j]);
            if (m0 + 1u < M) { store(m0 + 1u, n, acc1[j]); }
            if (m0 + 2u < M) { store(m0 + 2u, n, acc2[j]); }
            if (m0 + 3u < M) { store(m0 + 3u, n, acc3[j]); }
        }
    }
}

// ---- conv2d_tiled: the same computation through workgroup memory, for GPUs -------------------------------
// The tile machinery of gemm/gemm.wgsl::gemm_tiled: 16×16 invocations own a 64×64 tile of y; each K step stages a
// 64×16 slab of A and of W (decoded to f32) k-major, so invocation (tx, ty) reads its 4 rows and 4 columns as one
// vec4 each. The A loader is the gather: invocation tid loads rows tid/16 + 16q (q = 0..3) at k0 + tid%16, so its
// 4 output pixels are computed once, and each K step costs one k → (tap, ci) split per invocation.

const TB: u32 = 64u;
const TK: u32 = 16u;
const LDV: u32 = 17u;

var<workgroup> xs: array<vec4<f32>, 272>;  // [TK][LDV]: A(tile row r, k0 + kk)
var<workgroup> ws: array<vec4<f32>, 272>;  // [TK][LDV]: W(tile column c, k0 + kk)

@compute @workgroup_size(16, 16, 1)
fn conv2d_tiled(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let M = p.out_h * p.out_w;
    let rb = row_tile(wid, nwg) * TB;
    let cb = wid.x * TB;
    if (rb >= M) { return; }  // uniform across the workgroup
    let K = p.kh * p.kw * p.ci;
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * 16u + tx;
    let kk = tid % TK;
    let r_first = tid / TK;  // this invocation loads rows r_first + 16q
    var oy: array<u32, 4>;
    var ox: array<u32, 4>;
    for (var q = 0u; q < 4u; q += 1u) {
        let m = min(rb + r_first + 16u * q, M - 1u);
        oy[q] = m / p.out_w;
        ox[q] = m % p.out_w;
    }
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < K; k0 += TK) {
        let k = k0 + kk;
        let tap = k / p.ci;
        let c = k - tap * p.ci;
        let ky = tap / p.kw;
        let kx = tap - ky * p.kw;
        for (var q = 0u; q < 4u; q += 1u) {
            let r = r_first + 16u * q;
            var av = 0.0;
            if (rb + r < M && k < K) { av = gather(tap_pixel(oy[q], ox[q], ky, kx), c); }
            xs[kk * LDV + r / 4u][r % 4u] = av;
            var wv = 0.0;
            if (cb + r < p.n && k < K) { wv = load_w(p.w_off + (cb + r) * K + k); }
            ws[kk * LDV + r / 4u][r % 4u] = wv;
        }
        workgroupBarrier();
        for (var j = 0u; j < TK; j += 1u) {
            let a = xs[j * LDV + ty];
            let b = ws[j * LDV + tx];
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
    }
    let m0 = rb + 4u * ty;
    let n0 = cb + 4u * tx;
    if (m0 >= M || n0 >= p.n) { return; }
    for (var j = 0u; j < 4u; j += 1u) {
        let n = n0 + j;
        if (n < p.n) {
            store(m0, n, acc0[j]);
            if (m0 + 1u < M) { store(m0 + 1u, n, acc1[j]); }
            if (m0 + 2u < M) { store(m0 + 2u, n, acc2[j]); }
            if (m0 + 3u < M) { store(m0 + 3u, n, acc3[j]); }
        }
    }
}
