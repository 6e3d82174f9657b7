// reduce: the workgroup sum of one f32 (reduce_sum) or of two at once (reduce_sum2), or the maximum (reduce_max), per
// invocation, for kernels of REDUCE_WG = 256 invocations (@workgroup_size(256)). It owns its
// workgroup scratch `reduce_scratch` / `reduce_scratch2` (the one exception to "preludes hold pure
// functions"); every invocation must call it (barriers), and it returns the same total to all of
// them. Tree order: pairs (i, i + s) for s = 128, 64, ..., 1.

const REDUCE_WG: u32 = 256u;
var<workgroup> reduce_scratch: array<f32, 256>;

fn reduce_sum(v: f32, lid: u32) -> f32 {
    reduce_scratch[lid] = v;
    workgroupBarrier();
    for (var s = REDUCE_WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { reduce_scratch[lid] += reduce_scratch[lid + s]; }
        workgroupBarrier();
    }
    let total = reduce_scratch[0];
    workgroupBarrier();
    return total;
}

var<workgroup> reduce_scratch2: array<vec2<f32>, 256>;

fn reduce_sum2(v: vec2<f32>, lid: u32) -> vec2<f32> {
    reduce_scratch2[lid] = v;
    workgroupBarrier();
    for (var s = REDUCE_WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { reduce_scratch2[lid] += reduce_scratch2[lid + s]; }
        workgroupBarrier();
    }
    let total = reduce_scratch2[0];
    workgroupBarrier();
    return total;
}

// The workgroup maximum (same tree as reduce_sum, through reduce_scratch).
fn reduce_max(v: f32, lid: u32) -> f32 {
    reduce_scratch[lid] = v;
    workgroupBarrier();
    for (var s = REDUCE_WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { reduce_scratch[lid] = max(reduce_scratch[lid], reduce_scratch[lid + s]); }
        workgroupBarrier();
    }
    let total = reduce_scratch[0];
    workgroupBarrier();
    return total;
}
