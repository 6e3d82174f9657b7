// sq_norm: squared L2 norm of gradient buffers, for global-norm clipping, without float atomics.
//   sq_norm_partial: partial[partial_offset + g] = sum of x[i]^2 over workgroup g's 4096 elements
//     Dispatch: grid_2d(ceil(n / 4096)); run once per tensor, each into its own partial range.
//   sq_norm_finish: out[0] = sum of partial[0 .. n_partials] (written, `=`). Dispatch: [1, 1, 1].
// x: [n]  partial: [total partials]  out: [1]. Workgroups of 256, tree sum in workgroup memory.

struct Params {
    n: u32,
    partial_offset: u32,
    n_partials: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partial: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
const PER_GROUP: u32 = 4096u;
@compute @workgroup_size(256)
fn sq_norm_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let g = wid.y * nwg.x + wid.x;
    let start = g * PER_GROUP;
    if (start >= p.n) { return; }
    var acc = 0.0;
    for (var i = start + lid; i < min(start + PER_GROUP, p.n); i += WG) { acc += x[i] * x[i]; }
    let total = reduce_sum(acc, lid);
    if (lid == 0u) { partial[p.partial_offset + g] = total; }
}

@compute @workgroup_size(256)
fn sq_norm_finish(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < p.n_partials; i += WG) { acc += partial[i]; }
    let total = reduce_sum(acc, lid);
    if (lid == 0u) { out[0] = total; }
}
