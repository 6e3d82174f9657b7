//! Helpers shared by the norms-family tests (layer_norm_mod, rms_norm, reduce_rows, ...).
#![allow(dead_code)]

use crate::gpu::Gpu;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

/// Uploads f32 data.
pub fn up(gpu: &Gpu, v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_f32(gpu, v, shape, DType::F32, "input").expect("upload")
}

/// An f32 output poisoned with NaN, so the comparison also proves every element was written.
pub fn poisoned(gpu: &Gpu, shape: &[usize]) -> Tensor {
    let t = Tensor::zeros(gpu, shape, DType::F32, "output").expect("alloc");
    gpu.poison(&t.buffer);
    t
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Central finite differences of `loss` at `x` along `probes` random coordinates, compared with
/// `grad` (the analytic gradient of the CPU reference). Everything in f64; returns the worst
/// relative error (against max(|fd|, 1)·1e0 scale).
pub fn fd_check(
    name: &str,
    x: &[f64],
    grad: &[f64],
    probes: usize,
    rng: &mut Rng,
    loss: impl Fn(&[f64]) -> f64,
) -> f64 {
    let mut worst = 0f64;
    let mut xp = x.to_vec();
    for _ in 0..probes {
        let i = rng.below(x.len() as u64) as usize;
        let h = 1e-5 * x[i].abs().max(1.0);
        xp[i] = x[i] + h;
        let lp = loss(&xp);
        xp[i] = x[i] - h;
        let lm = loss(&xp);
        xp[i] = x[i];
        let fd = (lp - lm) / (2.0 * h);
        let err = (fd - grad[i]).abs() / fd.abs().max(grad[i].abs()).max(1e-3);
        assert!(err < 1e-5, "{name}: d/dx[{i}] finite difference {fd} vs analytic {}", grad[i]);
        worst = worst.max(err);
    }
    worst
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn normal(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    rng.vec_normal(n, std)
}
