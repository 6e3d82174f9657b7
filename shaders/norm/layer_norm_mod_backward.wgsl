// layer_norm_mod_backward: dx of y = xhat * (1 + scale) + shift, xhat = (x - mean) * rstd, per row:
//   g = dy * (1 + scale)   (modulate = 0: g = dy)
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))      (dx is written, `=`)
// d_shift / d_scale are per-sample row sums: see kernels::reduce_rows (Mode::Sum, LayerNormProduct).
// Same problems, modulation addressing and Params as layer_norm_mod.wgsl.
// dy, x, dx: [rows, cols]  mean, rstd: [rows] (saved by the forward).
// One workgroup of 256 per row, in problem order. Dispatch: grid_2d(total problem rows).

struct Problem {
    row0: u32,
    samples: u32,
    rows_per_sample: u32,
    split: u32,
    alt_rows: u32,
    sample_stride: u32,
    shift_offset: u32,
    scale_offset: u32,
}

struct Params {
    cols: u32,
    n_problems: u32,
    eps: f32,
    modulate: u32,
    problems: array<Problem, 4>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> modv: array<f32>;
@group(0) @binding(4) var<storage, read> mean: array<f32>;
@group(0) @binding(5) var<storage, read> rstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;

const WG: u32 = 256u;
fn locate(v: u32) -> vec2<u32> {
    var rest = v;
    for (var q = 0u; q < p.n_problems; q++) {
        let n = p.problems[q].samples * p.problems[q].rows_per_sample;
        if (rest < n) { return vec2<u32>(q, rest); }
        rest -= n;
    }
    return vec2<u32>(p.n_problems, 0u);
}

fn vec_base(q: Problem, l: u32) -> u32 {
    let b = l / q.rows_per_sample;
    let j = l % q.rows_per_sample;
    return select(b, b + q.alt_rows, j >= q.split) * q.sample_stride;
}

fn grad_in(q: Problem, vb: u32, i: u32, c: u32) -> f32 {
    if (p.modulate != 0u) { return dy[i] * (1.0 + modv[q.scale_offset + vb + c]); }
    return dy[i];
}

@compute @workgroup_size(256)
fn layer_norm_mod_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let loc = locate(wid.y * nwg.x + wid.x);
    if (loc.x >= p.n_problems) { return; }
    let q = p.problems[loc.x];
    let r = q.row0 + loc.y;
    let base = r * p.cols;
    let m = mean[r];
    let rs = rstd[r];
    let vb = vec_base(q, loc.y);
    var acc = vec2<f32>(0.0);
    for (var c = lid; c < p.cols; c += WG) {
        let g = grad_in(q, vb, base + c, c);
        acc += vec2<f32>(g, g * ((x[base + c] - m) * rs));
    }
    let sums = reduce_sum2(acc, lid) / f32(p.cols);
    for (var c = lid; c < p.cols; c += WG) {
        let g = grad_in(q, vb, base + c, c);
        let xh = (x[base + c] - m) * rs;
        dx[base + c] = rs * (g - sums.x - xh * sums.y);
    }
}
