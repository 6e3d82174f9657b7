// rms_norm_backward: dx of y = x * rstd * w, per row (dx written, `=`):
//   dx = rstd * (w*dy - x * rstd^2 * mean(w*dy*x))
// (dw += sum_rows(dy * x * rstd) is kernels::reduce_rows, Mode::RmsProduct.)
// dy, x, dx: [rows, cols]  weight: [cols] as DTYPE (see rms_norm.wgsl)  rstd: [rows] (saved).
// One workgroup of 256 per row. Dispatch: grid_2d(rows).

override DTYPE: u32 = 0u;

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<u32>;
@group(0) @binding(4) var<storage, read> rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;

const WG: u32 = 256u;
fn load_w(i: u32) -> f32 {
    if (DTYPE == 0u) { return bitcast<f32>(weight[i]); }
    return decode_half(DTYPE, weight[i >> 1u], (i & 1u) == 1u);
}

@compute @workgroup_size(256)
fn rms_norm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    let rs = rstd[r];
    var acc = 0.0;
    for (var c = lid; c < p.cols; c += WG) { acc += load_w(c) * dy[base + c] * x[base + c]; }
    let m = reduce_sum(acc, lid) / f32(p.cols);
    for (var c = lid; c < p.cols; c += WG) {
        dx[base + c] = rs * (load_w(c) * dy[base + c] - x[base + c] * (rs * rs * m));
    }
}
