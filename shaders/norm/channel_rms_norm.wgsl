// channel_rms_norm: the VAE's channel-first RMS norm on a pixels-major image, optionally followed by SiLU:
//   y[r, c] = act(x[r, c] / max(‖x[r, :]‖₂, 1e-12) · sqrt(C) · gamma[c]),  act = SiLU (x·sigmoid(x)) or identity.
// (diffusers QwenImageRMS_norm: F.normalize(x, dim=1) · scale · gamma, bias 0; F.normalize clamps the L2 norm
// at eps = 1e-12 instead of adding eps to the mean square. Same operation order as torch.)
// x, y: [rows, C] f32 (one row = one pixel)   gamma: [C] f32.
// 256 invocations = 8 rows × 32 lanes per workgroup; a row's lanes stride over C (coalesced) and reduce
// through workgroup memory. Dispatch: grid_2d(ceil(rows / 8)).

override SILU: bool = false;

struct Params {
    rows: u32,
    cols: u32,
    scale: f32,    // sqrt(C), as Python computes it (f64 rounded to f32)
    eps: f32,      // 1e-12
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const LANES: u32 = 32u;
var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn channel_rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let r = (wid.y * nwg.x + wid.x) * (256u / LANES) + lid / LANES;
    let lane = lid % LANES;
    let valid = r < p.rows;
    let base = r * p.cols;
    var ss = 0.0;
    if (valid) {
        for (var c = lane; c < p.cols; c += LANES) { let v = x[base + c]; ss += v * v; }
    }
    partial[lid] = ss;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s = s >> 1u) {
        if (lane < s) { partial[lid] += partial[lid + s]; }
        workgroupBarrier();
    }
    let denom = max(sqrt(partial[lid - lane]), p.eps);
    if (!valid) { return; }
    for (var c = lane; c < p.cols; c += LANES) {
        var v = x[base + c] / denom * p.scale * gamma[c];
        if (SILU) { v = v / (1.0 + exp(-v)); }
        y[base + c] = v;
    }
}
