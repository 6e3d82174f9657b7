//! rms_norm forward/backward vs the f64 CPU reference (outputs poisoned), weight in f32/f16/bf16,
//! and the CPU backward vs central finite differences of L = Σ y·dy.

use crate::kernels::norm::rms_norm::{self, cpu, BackwardArgs, EPS};
use crate::kernels::test_util::*;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::testing::{assert_close, test_gpu, Tol};

// y = x·rstd·w is O(|w|) with one f32 row reduction of `cols` squares (sqrt(cols)·eps relative).
const FWD: Tol = Tol { abs: 2e-5, rel: 2e-5, rel_l2: 2e-6 };
// dx: one row mean subtracted; dw sums up to 257 rows of dy·x·rstd (abs grows like sqrt(rows)).
const BWD: Tol = Tol { abs: 1e-4, rel: 5e-5, rel_l2: 5e-6 };

fn check(gpu: &crate::gpu::Gpu, rows: usize, cols: usize, wdt: DType, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = normal(&mut rng, rows * cols, 2.0);
    let w = wdt.round(&rng.vec_uniform(cols, 0.5, 1.5)); // what the GPU sees after encoding
    let dy = normal(&mut rng, rows * cols, 1.0);
    let dw0 = normal(&mut rng, cols, 1.0);
    let (tx, tdy) = (up(gpu, &x, &[rows, cols]), up(gpu, &dy, &[rows, cols]));
    let tw = Tensor::from_f32(gpu, &w, &[cols], wdt, "weight").unwrap();
    let (y, rstd, dx) = (poisoned(gpu, &[rows, cols]), poisoned(gpu, &[rows]), poisoned(gpu, &[rows, cols]));
    let (dw, scratch) = (up(gpu, &dw0, &[cols]), poisoned(gpu, &[rms_norm::scratch_elems(rows, cols)]));
    let mut launches =
        vec![rms_norm::launch_forward(gpu, &rms_norm::Args { x: &tx, weight: &tw, eps: EPS, y: &y, rstd: &rstd })
            .unwrap()];
    let b = BackwardArgs { x: &tx, weight: &tw, rstd: &rstd, dy: &tdy, dx: &dx, dw: Some((&dw, &scratch)) };
    launches.extend(rms_norm::launch_backward(gpu, &b).unwrap());
    gpu.run(&launches).unwrap();
    let (x64, w64) = (f64s(&x), f64s(&w));
    let (ry, rr) = cpu::forward(&x64, &w64, EPS as f64);
    let mut rdw = f64s(&dw0);
    let rdx = cpu::backward(&x64, &w64, EPS as f64, &f64s(&dy), Some(&mut rdw));
    let name = format!("rows={rows} cols={cols} w={wdt:?}");
    let s = assert_close(&format!("y {name}"), &y.to_f32(gpu).unwrap(), &f32s(&ry), FWD);
    assert_close(&format!("rstd {name}"), &rstd.to_f32(gpu).unwrap(), &f32s(&rr), FWD);
    let sd = assert_close(&format!("dx {name}"), &dx.to_f32(gpu).unwrap(), &f32s(&rdx), BWD);
    let sw = assert_close(&format!("dw {name}"), &dw.to_f32(gpu).unwrap(), &f32s(&rdw), BWD);
    eprintln!(
        "{name}: y {:.1e}/{:.1e} dx {:.1e}/{:.1e} dw {:.1e}/{:.1e} (max_abs/rel_l2)",
        s.max_abs, s.rel_l2, sd.max_abs, sd.rel_l2, sw.max_abs, sw.rel_l2
    );
}

#[test]
fn rms_norm_matches_reference_at_awkward_shapes() {
    let gpu = test_gpu();
    for (i, &rows) in [1usize, 3, 17, 65, 257].iter().enumerate() {
        for cols in [16, 64] {
            check(&gpu, rows, cols, DType::F32, i as u64);
        }
    }
    check(&gpu, 3, 3584, DType::F32, 9); // txt_norm width
}

#[test]
fn rms_norm_decodes_half_weights() {
    let gpu = test_gpu();
    check(&gpu, 17, 3584, DType::BF16, 11);
    check(&gpu, 5, 128, DType::F16, 12);
    check(&gpu, 3, 63, DType::BF16, 13); // odd cols: the last packed word is half used
}

#[test]
fn rms_norm_cpu_backward_matches_finite_differences() {
    let (rows, cols) = (5, 16);
    let mut rng = Rng::new(20);
    let x = f64s(&normal(&mut rng, rows * cols, 1.0));
    let w = f64s(&rng.vec_uniform(cols, 0.5, 1.5));
    let dy = f64s(&normal(&mut rng, rows * cols, 1.0));
    let mut dw = vec![0.0; cols];
    let dx = cpu::backward(&x, &w, 1e-6, &dy, Some(&mut dw));
    fd_check("dx", &x, &dx, 40, &mut rng, |xp| dot(&cpu::forward(xp, &w, 1e-6).0, &dy));
    fd_check("dw", &w, &dw, 16, &mut rng, |wp| dot(&cpu::forward(&x, wp, 1e-6).0, &dy));
}

#[test]
fn rms_norm_refuses_quantized_and_fp8_weights_with_an_error_naming_the_dtype() {
    let gpu = test_gpu();
    let x = up(&gpu, &[1.0; 64], &[2, 32]);
    let (y, rstd) = (poisoned(&gpu, &[2, 32]), poisoned(&gpu, &[2]));
    for dt in [DType::Q8_0, DType::F8E4M3] {
        let w = Tensor::from_bytes(&gpu, &vec![0; dt.bytes(32)], &[32], dt, "w").unwrap();
        let args = rms_norm::Args { x: &x, weight: &w, eps: EPS, y: &y, rstd: &rstd };
        let e = rms_norm::launch_forward(&gpu, &args).unwrap_err().to_string();
        assert!(e.contains("rms_norm") && e.contains(dt.name()), "{e}");
        let back = BackwardArgs { x: &x, weight: &w, rstd: &rstd, dy: &x, dx: &y, dw: None };
        let e = rms_norm::launch_backward(&gpu, &back).unwrap_err().to_string();
        assert!(e.contains("rms_norm_backward") && e.contains(dt.name()), "{e}");
    }
}
