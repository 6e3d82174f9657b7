// rms_norm: y = x * rstd * weight, rstd = 1/sqrt(mean(x^2) + eps) (f32); saves rstd for the backward.
// (diffusers RMSNorm; with an f32 path there is no intermediate cast to the weight dtype.)
// x, y: [rows, cols]  weight: [cols] stored as DTYPE (0 f32, 1 f16, 2 bf16; halves packed 2 per u32)
// rstd: [rows]. One workgroup of 256 per row. Dispatch: grid_2d(rows).

override DTYPE: u32 = 0u;

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd_out: array<f32>;

const WG: u32 = 256u;
fn load_w(i: u32) -> f32 {
    if (DTYPE == 0u) { return bitcast<f32>(weight[i]); }
    return decode_half(DTYPE, weight[i >> 1u], (i & 1u) == 1u);
}

@compute @workgroup_size(256)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    var ss = 0.0;
    for (var c = lid; c < p.cols; c += WG) { let v = x[base + c]; ss += v * v; }
    let rstd = inverseSqrt(reduce_sum(ss, lid) / f32(p.cols) + p.eps);
    if (lid == 0u) { rstd_out[r] = rstd; }
    for (var c = lid; c < p.cols; c += WG) { y[base + c] = (x[base + c] * rstd) * load_w(c); }
}
