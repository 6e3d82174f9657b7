// channel_norm_denom: the denominator of the VAE's channel-first RMS norm, per pixel of a pixels-major image:
//   denom[r] = max(‖x[r, :]‖₂, 1e-12)
// (diffusers QwenImageRMS_norm: F.normalize(x, dim=1)·scale·gamma; F.normalize clamps the L2 norm at eps = 1e-12
// instead of adding eps to the mean square). The consumer, conv/conv2d.wgsl with PRENORM, applies
// x / denom · sqrt(C) · gamma (and SiLU) while gathering, so the normalised tensor is never stored.
// x: [rows, C] f32 (one row = one pixel)   denom: [rows] f32.
// 256 invocations = 8 rows × 32 lanes per workgroup; a row's lanes stride over C (coalesced) and reduce
// through workgroup memory. Dispatch: grid_2d(ceil(rows / 8)).

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,      // 1e-12
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> denom: array<f32>;

const LANES: u32 = 32u;
var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn channel_norm_denom(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let r = (wid.y * nwg.x + wid.x) * (256u / LANES) + lid / LANES;
    let lane = lid % LANES;
    var ss = 0.0;
    if (r < p.rows) {
        for (var c = lane; c < p.cols; c += LANES) { let v = x[r * p.cols + c]; ss += v * v; }
    }
    partial[lid] = ss;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s = s >> 1u) {
        if (lane < s) { partial[lid] += partial[lid + s]; }
        workgroupBarrier();
    }
    if (r < p.rows && lane == 0u) { denom[r] = max(sqrt(partial[lid]), p.eps); }
}
