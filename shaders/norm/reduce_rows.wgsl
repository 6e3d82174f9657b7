// reduce_rows: per-sample column sums over grouped row ranges, without float atomics:
//   out[vrow(r), :] += sum over the rows r of one sample of term(r, :)
//   term = a                       (mode 0, e.g. d_shift = sum dy)
//        = a * c                   (mode 1, e.g. d_gate = sum dy * y)
//        = a * (c - mean[r]) * rstd[r]   (mode 2, d_scale of a LayerNorm: sum dy * xhat)
//        = a * c * rstd[r]         (mode 3, d_weight of an RMSNorm: sum dy * x * rstd)
// Up to 4 problems; problem q owns rows [row0, row0 + samples * rows_per_sample); local row
// l = b * rows_per_sample + j goes to vector row vrow = b (j < split) or b + alt_rows (j >= split,
// Edit-2511 zero_cond_t), stored at out[out_offset + vrow * out_stride + col].
// a, c: [rows, cols]  mean, rstd: [rows]  partial: [total_chunks, cols]  out: caller's layout.
// Two passes (one bind list for both):
//   reduce_rows_partial: each chunk of <= chunk_rows rows of one sample (and one side of split)
//     -> partial[chunk, col]. Dispatch [ceil(cols / 256), total_chunks, 1].
//   reduce_rows_finish: one invocation per (sample, col) sums its chunks and adds them to out.
//     Dispatch [ceil(cols / 256), total_samples, 1]. Problems must write disjoint out rows.

struct Problem {
    row0: u32,
    samples: u32,
    rows_per_sample: u32,
    split: u32,       // min(split, rows_per_sample)
    alt_rows: u32,
    out_offset: u32,
    out_stride: u32,
    chunk0: u32,      // first chunk of this problem (prefix sum over problems)
    sample0: u32,     // first sample of this problem (prefix sum over problems)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct Params {
    cols: u32,
    n_problems: u32,
    chunk_rows: u32,
    mode: u32,
    problems: array<Problem, 4>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> c: array<f32>;
@group(0) @binding(3) var<storage, read> mean: array<f32>;
@group(0) @binding(4) var<storage, read> rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> partial: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

// Chunks before and after the split inside one sample.
fn chunks_lo(q: Problem) -> u32 { return (q.split + p.chunk_rows - 1u) / p.chunk_rows; }
fn chunks_hi(q: Problem) -> u32 { return (q.rows_per_sample - q.split + p.chunk_rows - 1u) / p.chunk_rows; }

fn term(r: u32, col: u32) -> f32 {
    let i = r * p.cols + col;
    switch p.mode {
        case 0u: { return a[i]; }
        case 1u: { return a[i] * c[i]; }
        case 2u: { return a[i] * ((c[i] - mean[r]) * rstd[r]); }
        default: { return a[i] * (c[i] * rstd[r]); }
    }
}

@compute @workgroup_size(256)
fn reduce_rows_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = wid.x * 256u + lid;
    let g = wid.y;
    for (var qi = 0u; qi < p.n_problems; qi++) {
        let q = p.problems[qi];
        let nlo = chunks_lo(q);
        let nck = nlo + chunks_hi(q);
        if (g < q.chunk0 || g >= q.chunk0 + q.samples * nck) { continue; }
        let b = (g - q.chunk0) / nck;
        let k = (g - q.chunk0) % nck;
        var t0 = k * p.chunk_rows;
        var t1 = min(t0 + p.chunk_rows, q.split);
        if (k >= nlo) {
            t0 = q.split + (k - nlo) * p.chunk_rows;
            t1 = min(t0 + p.chunk_rows, q.rows_per_sample);
        }
        if (col >= p.cols) { return; }
        let rbase = q.row0 + b * q.rows_per_sample;
        var acc = 0.0;
        for (var t = t0; t < t1; t++) { acc += term(rbase + t, col); }
        partial[g * p.cols + col] = acc;
        return;
    }
}

@compute @workgroup_size(256)
fn reduce_rows_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = wid.x * 256u + lid;
    let g = wid.y;
    if (col >= p.cols) { return; }
    for (var qi = 0u; qi < p.n_problems; qi++) {
        let q = p.problems[qi];
        if (g < q.sample0 || g >= q.sample0 + q.samples) { continue; }
        let b = g - q.sample0;
        let nlo = chunks_lo(q);
        let nck = nlo + chunks_hi(q);
        let first = q.chunk0 + b * nck;
        var lo = 0.0;
        for (var k = 0u; k < nlo; k++) { lo += partial[(first + k) * p.cols + col]; }
        var hi = 0.0;
        for (var k = nlo; k < nck; k++) { hi += partial[(first + k) * p.cols + col]; }
        if (nlo > 0u) { out[q.out_offset + b * q.out_stride + col] += lo; }
        if (nck > nlo) { out[q.out_offset + (b + q.alt_rows) * q.out_stride + col] += hi; }
        return;
    }
}
