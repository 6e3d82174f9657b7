// rms_norm_backward: dx of y = x * rstd * w, per row (dx written, `=`):
//   dx = rstd * (w*dy - x * rstd^2 * mean(w*dy*x))
// (dw += sum_rows(dy * x * rstd) is kernels::reduce_rows, Mode::RmsProduct.)
// dy, x, dx: [rows, cols]  weight: [cols] as WDT (see rms_norm.wgsl)  rstd: [rows] (saved).
// One workgroup of 256 per row. Dispatch: grid_2d(rows).

override WDT: u32 = 0u;

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
var<workgroup> red: array<f32, 256>;

fn wg_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

fn load_w(i: u32) -> f32 {
    if (WDT == 0u) { return bitcast<f32>(weight[i]); }
    let w = weight[i >> 1u];
    if (WDT == 1u) { return unpack2x16float(w)[i & 1u]; }
    return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u));
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
    let m = wg_sum(acc, lid) / f32(p.cols);
    for (var c = lid; c < p.cols; c += WG) {
        dx[base + c] = rs * (load_w(c) * dy[base + c] - x[base + c] * (rs * rs * m));
    }
}
