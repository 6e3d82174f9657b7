// softmax_rows: y[r, :] = softmax(x[r, :]) = exp(x − max) / Σ exp(x − max), per row (f32).
// The mid-block attention of the VAE: rows of scores Q·Kᵀ/sqrt(C) (already scaled), one chunk of query rows.
// x, y: [rows, cols] f32. One workgroup of 256 per row; three passes over the row (max, sum, write).
// Dispatch: grid_2d(rows).

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn softmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= p.rows) { return; }  // uniform across the workgroup
    let base = r * p.cols;
    var m = -3.4028235e38;
    for (var c = lid; c < p.cols; c += REDUCE_WG) { m = max(m, x[base + c]); }
    m = reduce_max(m, lid);
    var s = 0.0;
    for (var c = lid; c < p.cols; c += REDUCE_WG) { s += exp(x[base + c] - m); }
    let inv = 1.0 / reduce_sum(s, lid);
    for (var c = lid; c < p.cols; c += REDUCE_WG) { y[base + c] = exp(x[base + c] - m) * inv; }
}
