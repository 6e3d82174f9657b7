//! reduce_rows (per-sample column sums, two passes, no atomics) vs the f64 reference, in every
//! mode, across chunk boundaries, zero_cond_t splits and several problems per dispatch.

use crate::kernels::norm::reduce_rows::{self, cpu, Mode, SampleRows, Target, CHUNK_ROWS};
use crate::kernels::test_util::*;
use crate::rng::Rng;
use crate::testing::{assert_close, test_gpu, Tol};

// Sums of up to ~300 O(1) products added onto O(1) values: f32 rounding grows like sqrt(rows)·eps.
const TOL: Tol = Tol { abs: 2e-5, rel: 2e-5, rel_l2: 2e-6 };

fn check(gpu: &crate::gpu::Gpu, mode: Mode, cols: usize, rows: usize, targets: &[Target], out_len: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let (a, c) = (normal(&mut rng, rows * cols, 1.0), normal(&mut rng, rows * cols, 1.0));
    let mean = normal(&mut rng, rows, 0.3);
    let rstd = rng.vec_uniform(rows, 0.5, 2.0);
    let out0 = normal(&mut rng, out_len, 1.0);
    let (ta, tc) = (up(gpu, &a, &[rows, cols]), up(gpu, &c, &[rows, cols]));
    let (tm, tr, out) = (up(gpu, &mean, &[rows]), up(gpu, &rstd, &[rows]), up(gpu, &out0, &[out_len]));
    let scratch = poisoned(gpu, &[reduce_rows::scratch_elems(targets, cols)]);
    let args = reduce_rows::Args {
        mode,
        a: &ta,
        c: Some(&tc),
        mean: Some(&tm),
        rstd: Some(&tr),
        targets,
        scratch: &scratch,
        out: &out,
    };
    gpu.run(&reduce_rows::launch(gpu, &args).unwrap()).unwrap();
    let mut want = f64s(&out0);
    let (a64, c64, m64, r64) = (f64s(&a), f64s(&c), f64s(&mean), f64s(&rstd));
    cpu::reduce_rows(mode, &a64, Some(&c64), Some(&m64), Some(&r64), cols, targets, &mut want);
    let s = assert_close(&format!("{mode:?} cols={cols} rows={rows}"), &out.to_f32(gpu).unwrap(), &f32s(&want), TOL);
    eprintln!("{mode:?} cols={cols} rows={rows}: max_abs {:.2e} rel_l2 {:.2e}", s.max_abs, s.rel_l2);
}

#[test]
fn reduce_rows_matches_reference_in_every_mode_with_split_and_two_problems() {
    let gpu = test_gpu();
    let cols = 48;
    let (b, s_txt, s_img) = (2, 3, 2 * CHUNK_ROWS + 5);
    let stride = 3 * cols; // out rows are [shift | scale | gate]-like: write into the "gate" slot
    let targets = [
        Target { rows: SampleRows::plain(0, b, s_txt), out_offset: 2 * b * stride + 2 * cols, out_stride: stride },
        // split inside the second chunk; reference tokens go to rows b + B
        Target {
            rows: SampleRows {
                row0: b * s_txt,
                samples: b,
                rows_per_sample: s_img,
                split: CHUNK_ROWS + 7,
                alt_rows: b,
            },
            out_offset: 2 * cols,
            out_stride: stride,
        },
    ];
    for (i, mode) in [Mode::Sum, Mode::Product, Mode::LayerNormProduct, Mode::RmsProduct].into_iter().enumerate() {
        check(&gpu, mode, cols, b * (s_txt + s_img), &targets, 3 * b * stride, i as u64);
    }
}

#[test]
fn reduce_rows_handles_awkward_row_and_column_counts() {
    let gpu = test_gpu();
    for (i, &rows) in [1usize, 3, 17, 65, 257].iter().enumerate() {
        for cols in [1, 16, 300] {
            let t = [Target { rows: SampleRows::plain(0, 1, rows), out_offset: 0, out_stride: 0 }];
            check(&gpu, Mode::Product, cols, rows, &t, cols, 10 + i as u64);
        }
    }
    // split = 0 (every token takes the alternate row) and one problem per sample of three
    let t = [Target {
        rows: SampleRows { row0: 0, samples: 3, rows_per_sample: 17, split: 0, alt_rows: 3 },
        out_offset: 0,
        out_stride: 16,
    }];
    check(&gpu, Mode::Sum, 16, 51, &t, 6 * 16, 20);
    let t: Vec<Target> =
        (0..4).map(|q| Target { rows: SampleRows::plain(q * 5, 1, 5), out_offset: q * 16, out_stride: 16 }).collect();
    check(&gpu, Mode::LayerNormProduct, 16, 20, &t, 64, 21);
}
