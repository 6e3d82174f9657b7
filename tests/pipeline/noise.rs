//! `wgdit::pipeline::noise` against `torch.randn(..., generator=torch.Generator("cpu").manual_seed(s))`.

use crate::common::{assert_bits, f32s, f64s, max_ulps};
use wgdit::pipeline::noise::{randn, randn_scalar};

const SEEDS: [u64; 3] = [0, 42, (1 << 32) + 5];
const LENGTHS: [usize; 5] = [1, 15, 16, 17, 1000];
/// `prepare_latents` shape for a 1024x1024 Qwen-Image: [B, 1, C, 2*(H/16), 2*(W/16)].
const LATENT_SHAPE: [usize; 5] = [1, 1, 16, 128, 128];
const KEEP: usize = 2048;

fn check_latent(got: &[f32], prefix: &str) {
    assert_eq!(got.len(), LATENT_SHAPE.iter().product::<usize>());
    assert_bits(&got[..KEEP], &f32s(&format!("{prefix}/latent_head")), &format!("{prefix} head"));
    assert_bits(&got[got.len() - KEEP..], &f32s(&format!("{prefix}/latent_tail")), &format!("{prefix} tail"));
    // The middle is checked through float64 sums of all 262144 values. numpy sums pairwise and this
    // sums in order: that alone moves the sum of squares by ~2.5e-8 (measured), while one value off by
    // one ulp moves it by ~1e-7 or more for |x| ≥ 0.5. Hence the absolute tolerance below.
    const SUM_TOLERANCE: f64 = 8e-8;
    let want = f64s(&format!("{prefix}/latent_sums"));
    let sum: f64 = got.iter().map(|&v| v as f64).sum();
    let sumsq: f64 = got.iter().map(|&v| (v as f64) * (v as f64)).sum();
    assert!((sum - want[0]).abs() <= SUM_TOLERANCE, "{prefix}: sum {sum} vs {}", want[0]);
    assert!((sumsq - want[1]).abs() <= SUM_TOLERANCE, "{prefix}: sum of squares {sumsq} vs {}", want[1]);
}

#[test]
fn randn_matches_torch_bit_for_bit_at_every_length_and_seed() {
    for seed in SEEDS {
        for n in LENGTHS {
            let want = f32s(&format!("noise/seed{seed}/n{n}"));
            assert_bits(&randn(seed, &[n]), &want, &format!("randn seed {seed} n {n}"));
        }
    }
}

#[test]
fn randn_matches_torch_on_the_1024_square_qwen_latent() {
    for seed in SEEDS {
        check_latent(&randn(seed, &LATENT_SHAPE), &format!("noise/seed{seed}"));
    }
}

#[test]
fn randn_of_a_small_2d_shape_uses_the_per_element_path() {
    assert_bits(&randn(7, &[3, 5]), &f32s("noise/seed7/shape3x5"), "randn seed 7 shape [3, 5]");
}

#[test]
fn randn_uses_only_the_low_32_bits_of_the_seed() {
    assert_eq!(randn(5, &[40]), randn((1 << 32) + 5, &[40]));
}

#[test]
fn randn_of_an_empty_shape_is_empty() {
    assert!(randn(0, &[0, 16]).is_empty());
}

#[test]
fn randn_scalar_matches_torch_portable_kernel() {
    for seed in [0u64, 42] {
        for n in [16, 17, 1000] {
            let want = f32s(&format!("noise_scalar/seed{seed}/n{n}"));
            assert_bits(&randn_scalar(seed, &[n]), &want, &format!("randn_scalar seed {seed} n {n}"));
        }
    }
    check_latent(&randn_scalar(0, &LATENT_SHAPE), "noise_scalar/seed0");
}

#[test]
fn simd_and_portable_torch_kernels_differ_only_by_rounding() {
    // Measured, not a tolerance of this crate: how far torch's two CPU kernels are from each other.
    let a = randn(0, &[100_000]);
    let b = randn_scalar(0, &[100_000]);
    let close = a.iter().zip(&b).filter(|(x, y)| (**x - **y).abs() <= 1e-5 * (1.0 + x.abs())).count();
    assert_eq!(close, a.len(), "the two kernels should agree to ~1e-5");
    assert!(max_ulps(&a, &b) > 0, "the kernels are expected to differ somewhere");
}
