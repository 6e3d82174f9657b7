// layer_norm_mod: LayerNorm without affine fused with adaLN modulation, per row r:
//   mean = sum(x)/cols, var = sum((x - mean)^2)/cols (biased, two-pass, f32), rstd = 1/sqrt(var + eps)
//   y = (x - mean) * rstd * (1 + scale) + shift      (modulate = 0: y = (x - mean) * rstd)
// shift/scale are per-sample vectors in `modv`: for local row l = b * rows_per_sample + j of a
// problem, vector row vr = b (j < split) or b + alt_rows (j >= split, Edit-2511 zero_cond_t), and
//   shift = modv[shift_offset + vr * sample_stride + col], scale = modv[scale_offset + vr * sample_stride + col].
// Saves mean[r], rstd[r] for the backward. x, y: [rows, cols]  mean, rstd: [rows].
// Up to 4 problems (row ranges, e.g. the text and image streams) in one dispatch.
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
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> modv: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstd_out: array<f32>;

const WG: u32 = 256u;
// (problem index, local row) of the v-th row over all problems; problem index n_problems = none.
fn locate(v: u32) -> vec2<u32> {
    var rest = v;
    for (var q = 0u; q < p.n_problems; q++) {
        let n = p.problems[q].samples * p.problems[q].rows_per_sample;
        if (rest < n) { return vec2<u32>(q, rest); }
        rest -= n;
    }
    return vec2<u32>(p.n_problems, 0u);
}

// Element offset of the sample's vector row (add shift_offset or scale_offset).
fn vec_base(q: Problem, l: u32) -> u32 {
    let b = l / q.rows_per_sample;
    let j = l % q.rows_per_sample;
    return select(b, b + q.alt_rows, j >= q.split) * q.sample_stride;
}

@compute @workgroup_size(256)
fn layer_norm_mod(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let loc = locate(wid.y * nwg.x + wid.x);
    if (loc.x >= p.n_problems) { return; }
    let q = p.problems[loc.x];
    let r = q.row0 + loc.y;
    let base = r * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) { s += x[base + c]; }
    let mean = reduce_sum(s, lid) / f32(p.cols);
    var ss = 0.0;
    for (var c = lid; c < p.cols; c += WG) { let d = x[base + c] - mean; ss += d * d; }
    let rstd = inverseSqrt(reduce_sum(ss, lid) / f32(p.cols) + p.eps);
    if (lid == 0u) { mean_out[r] = mean; rstd_out[r] = rstd; }
    let vb = vec_base(q, loc.y);
    for (var c = lid; c < p.cols; c += WG) {
        let xh = (x[base + c] - mean) * rstd;
        if (p.modulate != 0u) {
            y[base + c] = xh * (1.0 + modv[q.scale_offset + vb + c]) + modv[q.shift_offset + vb + c];
        } else {
            y[base + c] = xh;
        }
    }
}
