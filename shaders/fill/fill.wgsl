// fill: y = value over n f32 elements (zeroing gradient accumulators before a backward run).
// y: [n]. 256 invocations per workgroup, one element each; a 2D grid past 65535 workgroups.
// Dispatch: [min(ceil(n/256), 65535), ceil(ceil(n/256) / 65535), 1].

struct Params {
    n: u32,
    row_pitch: u32, // elements per grid row = 256 * groups in x
    value: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row_pitch + gid.x;
    if (i < p.n) { y[i] = p.value; }
}
