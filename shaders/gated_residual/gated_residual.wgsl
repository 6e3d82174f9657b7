// gated_residual: a per-sample gated product over grouped rows, for the block's gated residuals:
//   accumulate = 1 (forward):   out[r, c] += gate[vr, c] * a[r, c]      (x = x + gate * branch)
//   accumulate = 0 (backward):  out[r, c]  = gate[vr, c] * a[r, c]      (d_branch = gate * dx)
//   accumulate = 2 (training):  out[r, c]  = res[r, c] + gate[vr, c] * a[r, c]   (out is a new tensor)
// (d_gate += sum_rows dx * branch is kernels::reduce_rows, Mode::Product.)
// gate[vr, c] = modv[gate_offset + vr * sample_stride + c]; for local row l = b * rows_per_sample + j
// of a problem, vr = b (j < split) or b + alt_rows (j >= split, Edit-2511 zero_cond_t).
// a, res, out: [rows, cols] (res is bound but unread unless accumulate = 2). Up to 4 problems. One workgroup of 256 per (row, 256-column tile), rows in
// problem order. Dispatch: grid_2d(total problem rows * ceil(cols / 256)).

struct Problem {
    row0: u32,
    samples: u32,
    rows_per_sample: u32,
    split: u32,
    alt_rows: u32,
    sample_stride: u32,
    gate_offset: u32,
    _pad0: u32,
}

struct Params {
    cols: u32,
    n_problems: u32,
    accumulate: u32,
    _pad0: u32,
    problems: array<Problem, 4>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> modv: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> res: array<f32>;

fn locate(v: u32) -> vec2<u32> {
    var rest = v;
    for (var q = 0u; q < p.n_problems; q++) {
        let n = p.problems[q].samples * p.problems[q].rows_per_sample;
        if (rest < n) { return vec2<u32>(q, rest); }
        rest -= n;
    }
    return vec2<u32>(p.n_problems, 0u);
}

@compute @workgroup_size(256)
fn gated_residual(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let tiles = (p.cols + 255u) / 256u;
    let g = wid.y * nwg.x + wid.x;
    let c = (g % tiles) * 256u + lid;
    let loc = locate(g / tiles);
    if (loc.x >= p.n_problems || c >= p.cols) { return; }
    let q = p.problems[loc.x];
    let b = loc.y / q.rows_per_sample;
    let vr = select(b, b + q.alt_rows, loc.y % q.rows_per_sample >= q.split);
    let i = (q.row0 + loc.y) * p.cols + c;
    let v = modv[q.gate_offset + vr * q.sample_stride + c] * a[i];
    if (p.accumulate == 2u) {
        out[i] = res[i] + v;
    } else if (p.accumulate == 1u) {
        out[i] += v;
    } else {
        out[i] = v;
    }
}
