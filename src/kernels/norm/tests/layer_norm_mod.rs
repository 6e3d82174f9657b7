//! layer_norm_mod forward and backward vs the f64 CPU reference (outputs poisoned), and the CPU
//! backward vs central finite differences of L = Σ y·dy.

use crate::gpu::Gpu;
use crate::kernels::norm::layer_norm_mod::{self, cpu, BackwardArgs, Group, EPS};
use crate::kernels::norm::reduce_rows::SampleRows;
use crate::kernels::test_util::*;
use crate::rng::Rng;
use crate::testing::{assert_close, test_gpu, Tol};

// Outputs are O(1) (xhat·(1+scale) + shift); f32 row statistics over `cols` terms carry
// ~sqrt(cols)·eps relative error, so 1e-5 abs/rel holds with margin up to 3072 columns.
const FWD: Tol = Tol { abs: 2e-5, rel: 2e-5, rel_l2: 2e-6 };
// Backward: dx subtracts two row means (cancellation), dmod sums up to ~20 rows of dy·xhat.
const BWD: Tol = Tol { abs: 5e-5, rel: 5e-5, rel_l2: 5e-6 };

/// Joint text+image rows of B samples with an Edit-2511 split on the image stream, both streams
/// reading their (shift, scale) from one modulation buffer laid out like [img_mod (2B rows) | txt_mod (B rows)].
struct Setup {
    cols: usize,
    rows: usize,
    groups: Vec<Group>,
    mod_len: usize,
}

fn joint_setup(b: usize, s_txt: usize, s_img: usize, split: usize, cols: usize) -> Setup {
    let stride = 6 * cols; // [shift1 | scale1 | gate1 | shift2 | scale2 | gate2]
    let txt_base = 2 * b * stride;
    let groups = vec![
        // text stream uses mod2 (chunks 3, 4) of txt_mod, no split
        Group {
            rows: SampleRows::plain(0, b, s_txt),
            shift_offset: txt_base + 3 * cols,
            scale_offset: txt_base + 4 * cols,
            sample_stride: stride,
        },
        // image stream uses mod1 (chunks 0, 1) of img_mod; reference tokens read rows b + B
        Group {
            rows: SampleRows { row0: b * s_txt, samples: b, rows_per_sample: s_img, split, alt_rows: b },
            shift_offset: 0,
            scale_offset: cols,
            sample_stride: stride,
        },
    ];
    Setup { cols, rows: b * (s_txt + s_img), groups, mod_len: 3 * b * stride }
}

fn single_setup(rows: usize, cols: usize) -> Setup {
    // norm_out order: scale = chunk 0, shift = chunk 1 of a [1, 2·cols] vector
    let groups = vec![Group {
        rows: SampleRows::plain(0, 1, rows),
        shift_offset: cols,
        scale_offset: 0,
        sample_stride: 2 * cols,
    }];
    Setup { cols, rows, groups, mod_len: 2 * cols }
}

struct Run {
    y: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    dx: Vec<f32>,
    dmod: Vec<f32>,
}

fn run_gpu(gpu: &Gpu, s: &Setup, x: &[f32], modv: Option<&[f32]>, dy: &[f32], dmod0: &[f32]) -> Run {
    let tx = up(gpu, x, &[s.rows, s.cols]);
    let tm = modv.map(|m| up(gpu, m, &[m.len()]));
    let (y, mean, rstd) = (poisoned(gpu, &[s.rows, s.cols]), poisoned(gpu, &[s.rows]), poisoned(gpu, &[s.rows]));
    let fwd = layer_norm_mod::Args {
        x: &tx,
        modv: tm.as_ref(),
        groups: &s.groups,
        eps: EPS,
        y: &y,
        mean: &mean,
        rstd: &rstd,
    };
    gpu.run(&[layer_norm_mod::launch_forward(gpu, &fwd).unwrap()]).unwrap();
    let (tdy, dx) = (up(gpu, dy, &[s.rows, s.cols]), poisoned(gpu, &[s.rows, s.cols]));
    let dmod = up(gpu, dmod0, &[dmod0.len()]);
    let scratch = poisoned(gpu, &[layer_norm_mod::scratch_elems(&s.groups, s.cols).max(1)]);
    let bwd = BackwardArgs {
        x: &tx,
        modv: tm.as_ref(),
        groups: &s.groups,
        mean: &mean,
        rstd: &rstd,
        dy: &tdy,
        dx: &dx,
        dmod: tm.as_ref().map(|_| (&dmod, &scratch)),
    };
    gpu.run(&layer_norm_mod::launch_backward(gpu, &bwd).unwrap()).unwrap();
    let get = |t: &crate::tensor::Tensor| t.to_f32(gpu).unwrap();
    Run { y: get(&y), mean: get(&mean), rstd: get(&rstd), dx: get(&dx), dmod: get(&dmod) }
}

/// Runs forward + backward on the GPU and compares everything with the f64 reference.
fn check(gpu: &Gpu, s: &Setup, seed: u64, x_mean: f32, x_std: f32, modulate: bool) {
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = normal(&mut rng, s.rows * s.cols, x_std).iter().map(|v| v + x_mean).collect();
    let modv = normal(&mut rng, s.mod_len, 0.5);
    let dy = normal(&mut rng, s.rows * s.cols, 1.0);
    let dmod0 = normal(&mut rng, s.mod_len, 1.0); // `+=` onto existing gradients
    let mv = modulate.then_some(&modv[..]);
    let got = run_gpu(gpu, s, &x, mv, &dy, &dmod0);
    let (x64, m64) = (f64s(&x), f64s(&modv));
    let mm = modulate.then_some(&m64[..]);
    let (y, mean, rstd) = cpu::forward(&x64, s.cols, mm, &s.groups, EPS as f64);
    let name = format!("rows={} cols={} mean={x_mean} mod={modulate}", s.rows, s.cols);
    let st = assert_close(&format!("y {name}"), &got.y, &f32s(&y), FWD);
    assert_close(&format!("mean {name}"), &got.mean, &f32s(&mean), Tol { abs: 1e-6 * x_std as f64, ..FWD });
    assert_close(&format!("rstd {name}"), &got.rstd, &f32s(&rstd), FWD);
    let mut dmod = f64s(&dmod0);
    let dx = cpu::backward(&x64, s.cols, mm, &s.groups, EPS as f64, &f64s(&dy), Some(&mut dmod));
    // dx scales like rstd = 1/x_std
    let sdx = assert_close(&format!("dx {name}"), &got.dx, &f32s(&dx), Tol { abs: BWD.abs / x_std as f64, ..BWD });
    if modulate {
        assert_close(&format!("dmod {name}"), &got.dmod, &f32s(&dmod), BWD);
    }
    eprintln!(
        "{name}: y max_abs {:.2e} rel_l2 {:.2e}; dx max_abs {:.2e} rel_l2 {:.2e}",
        st.max_abs, st.rel_l2, sdx.max_abs, sdx.rel_l2
    );
}

#[test]
fn layer_norm_mod_matches_reference_on_joint_text_image_rows_with_zero_cond_split() {
    let gpu = test_gpu();
    for (b, s_txt, s_img, split, cols) in [(2, 3, 17, 12, 64), (1, 1, 65, 65, 16), (3, 17, 5, 0, 48), (2, 1, 3, 1, 300)]
    {
        check(&gpu, &joint_setup(b, s_txt, s_img, split, cols), 1, 0.0, 1.0, true);
    }
}

#[test]
fn layer_norm_mod_matches_reference_at_awkward_row_counts() {
    let gpu = test_gpu();
    for (i, &rows) in [1usize, 3, 17, 65, 257].iter().enumerate() {
        for cols in [16, 64, 300] {
            check(&gpu, &single_setup(rows, cols), 10 + i as u64, 0.0, 1.0, true);
        }
    }
    check(&gpu, &single_setup(3, 3072), 20, 0.0, 1.0, true);
}

#[test]
fn plain_layer_norm_is_stable_for_large_offset_activations() {
    let gpu = test_gpu();
    // Qwen-Image residuals reach ~1e7: a mean far from zero must not destroy the variance (two-pass stats).
    check(&gpu, &single_setup(17, 3072), 30, 3e4, 1e3, false);
    check(&gpu, &joint_setup(2, 3, 17, 17, 64), 31, 0.0, 1.0, false);
}

#[test]
fn layer_norm_mod_cpu_backward_matches_finite_differences() {
    let s = joint_setup(2, 3, 5, 3, 16);
    let mut rng = Rng::new(40);
    let x = f64s(&normal(&mut rng, s.rows * s.cols, 1.0));
    let modv = f64s(&normal(&mut rng, s.mod_len, 0.5));
    let dy = f64s(&normal(&mut rng, s.rows * s.cols, 1.0));
    let mut dmod = vec![0.0; s.mod_len];
    let dx = cpu::backward(&x, s.cols, Some(&modv), &s.groups, 1e-6, &dy, Some(&mut dmod));
    let loss_x = |xp: &[f64]| dot(&cpu::forward(xp, s.cols, Some(&modv), &s.groups, 1e-6).0, &dy);
    let loss_m = |mp: &[f64]| dot(&cpu::forward(&x, s.cols, Some(mp), &s.groups, 1e-6).0, &dy);
    let ex = fd_check("dx", &x, &dx, 60, &mut rng, loss_x);
    let em = fd_check("dmod", &modv, &dmod, 60, &mut rng, loss_m);
    eprintln!("finite differences: dx worst rel {ex:.1e}, dmod worst rel {em:.1e}");
}

#[test]
#[ignore = "throughput figure, not a check: cargo test --test layer_norm_mod -- --ignored --nocapture"]
fn layer_norm_mod_throughput_at_dit_width() {
    let gpu = test_gpu();
    let s = single_setup(1024, 3072);
    let mut rng = Rng::new(50);
    let x = up(&gpu, &normal(&mut rng, s.rows * s.cols, 1.0), &[s.rows, s.cols]);
    let m = up(&gpu, &normal(&mut rng, s.mod_len, 0.5), &[s.mod_len]);
    let (y, mean, rstd) = (poisoned(&gpu, &[s.rows, s.cols]), poisoned(&gpu, &[s.rows]), poisoned(&gpu, &[s.rows]));
    let a =
        layer_norm_mod::Args { x: &x, modv: Some(&m), groups: &s.groups, eps: EPS, y: &y, mean: &mean, rstd: &rstd };
    let b = gpu.bind(&layer_norm_mod::launch_forward(&gpu, &a).unwrap()).unwrap();
    gpu.submit(&[&b]).unwrap();
    gpu.sync().unwrap();
    let best = best_ns(&gpu, &b);
    // baseline on the same machine and load: the template's element-wise add over the same size
    let add = crate::kernels::elementwise::launch_forward(&gpu, crate::kernels::elementwise::Op::Add, &x, Some(&x), &y)
        .unwrap();
    let add_ns = best_ns(&gpu, &gpu.bind(&add).unwrap());
    eprintln!("elementwise add baseline: {:.2} ms", add_ns / 1e6);
    // roofline: one read of x + one write of y (the other two reads of x hit cache on real GPUs)
    let bytes = 2.0 * (s.rows * s.cols * 4) as f64;
    eprintln!(
        "layer_norm_mod {}x{} on {}: {:.2} ms, {:.2} GB/s (read x + write y)",
        s.rows,
        s.cols,
        gpu.info().name,
        best / 1e6,
        bytes / best
    );
}

fn best_ns(gpu: &Gpu, b: &crate::gpu::Bound) -> f64 {
    let ns = gpu.submit_timed(&[b, b, b]).unwrap().expect("timestamp queries");
    ns.iter().cloned().fold(f64::INFINITY, f64::min)
}
