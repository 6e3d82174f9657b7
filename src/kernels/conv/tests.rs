//! conv2d vs the f64 CPU reference at awkward shapes (1, 3, 17 channels, odd images), both entry
//! points, f32/f16/bf16 weights, stride 2 with diffusers' (0, 1, 0, 1) padding, nearest ×2 upsampling,
//! 1×1 matmuls with an input pixel offset, residuals (from a tensor and in place), the channel RMS norm
//! (+ SiLU) applied while gathering, and the transposed output. Outputs are poisoned with NaN first;
//! the whole y buffer is compared (the elements a case does not write stay NaN).

use super::{cpu, launch_variant, Args, ConvOut, PreNorm, Residual, Variant};
use crate::kernels::norm::channel_norm_denom;
use crate::kernels::test_util::*;
use crate::layout::Conv2dShape;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::testing::{assert_close, test_gpu, Tol};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Res {
    None,
    From,
    InPlace,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    shape: Conv2dShape,
    dtype: DType,
    bias: bool,
    residual: Res,
    /// The channel norm in the gather, with SiLU or not.
    pre: Option<bool>,
    alpha: f32,
    x_pix0: usize,
    y_layout: ConvOut,
}

impl Case {
    fn new(shape: Conv2dShape) -> Case {
        Case {
            shape,
            dtype: DType::F32,
            bias: true,
            residual: Res::None,
            pre: None,
            alpha: 1.0,
            x_pix0: 0,
            y_layout: ConvOut::Rows { row0: 0 },
        }
    }
    fn y_len(&self) -> usize {
        let (m, co) = (self.shape.out_pixels(), self.shape.co);
        match self.y_layout {
            ConvOut::Rows { row0 } => (row0 + m) * co,
            ConvOut::Transposed { ld, .. } => co * ld,
        }
    }
}

fn run(gpu: &crate::gpu::Gpu, c: &Case, variant: Variant, seed: u64) {
    let s = c.shape;
    let mut rng = Rng::new(seed);
    let x = normal(&mut rng, (c.x_pix0 + s.in_pixels()) * s.ci, 1.0);
    let w = c.dtype.round(&normal(&mut rng, s.co * s.k(), 1.0 / (s.k() as f32).sqrt()));
    let b = normal(&mut rng, s.co, 0.1);
    let r = normal(&mut rng, c.y_len(), 1.0);
    let (tx, tb, tr) = (up(gpu, &x, &[x.len()]), up(gpu, &b, &[s.co]), up(gpu, &r, &[r.len()]));
    let g = rng.vec_uniform(s.ci, 0.5, 1.5);
    let tw = Tensor::from_f32(gpu, &w, &[w.len()], c.dtype, "weight").unwrap();
    // In place: y starts as the residual (rows a case does not write keep it).
    let y = if c.residual == Res::InPlace { up(gpu, &r, &[r.len()]) } else { poisoned(gpu, &[c.y_len()]) };
    let (tg, denom) = (up(gpu, &g, &[s.ci]), poisoned(gpu, &[x.len() / s.ci]));
    let mut launches = Vec::new();
    if c.pre.is_some() {
        launches.push(channel_norm_denom::launch_forward(gpu, &tx, s.ci, &denom).unwrap());
    }
    let residual = match c.residual {
        Res::None => Residual::None,
        Res::From => Residual::From(&tr),
        Res::InPlace => Residual::InPlace,
    };
    let a = Args {
        shape: s,
        x: &tx,
        x_pix0: c.x_pix0,
        weight: &tw,
        w_offset: 0,
        bias: c.bias.then_some(&tb),
        residual,
        pre: c.pre.map(|silu| PreNorm { denom: &denom, gamma: &tg, silu }),
        alpha: c.alpha,
        y: &y,
        y_layout: c.y_layout,
    };
    launches.push(launch_variant(gpu, &a, variant).unwrap());
    gpu.run(&launches).unwrap();
    let (x64, w64, b64, r64, g64) = (f64s(&x), f64s(&w), f64s(&b), f64s(&r), f64s(&g));
    let mut want = if c.residual == Res::InPlace { r64.clone() } else { vec![f64::NAN; c.y_len()] };
    let rc = cpu::Conv {
        shape: s,
        x: &x64[c.x_pix0 * s.ci..],
        weight: &w64,
        bias: c.bias.then_some(&b64[..]),
        residual: (c.residual != Res::None).then_some(&r64[..]),
        pre: c.pre.map(|silu| (&g64[..], silu)),
        alpha: c.alpha as f64,
        y_layout: c.y_layout,
    };
    cpu::conv2d(&rc, &mut want);
    let got = y.to_f32(gpu).unwrap();
    // Unwritten elements must still be NaN; compare the written ones.
    let written: Vec<usize> = (0..want.len()).filter(|&i| !want[i].is_nan()).collect();
    for i in 0..want.len() {
        assert_eq!(want[i].is_nan(), got[i].is_nan(), "{c:?} {variant:?}: element {i} written wrongly");
    }
    let g: Vec<f32> = written.iter().map(|&i| got[i]).collect();
    let wv: Vec<f32> = written.iter().map(|&i| want[i] as f32).collect();
    assert!(!g.is_empty(), "{c:?}: nothing written");
    assert_close(&format!("conv2d {c:?} {variant:?}"), &g, &wv, Tol::f32_dot(s.k()));
}

fn run_both(c: &Case, seed: u64) {
    let gpu = test_gpu();
    for v in [Variant::Registers, Variant::Workgroup] {
        run(&gpu, c, v, seed);
    }
}

#[test]
fn conv2d_3x3_same_padding_matches_reference_at_awkward_shapes() {
    for (i, &(h, w, ci, co)) in
        [(5, 7, 3, 4), (3, 17, 17, 17), (1, 1, 1, 1), (9, 4, 4, 65), (17, 3, 8, 3)].iter().enumerate()
    {
        run_both(&Case::new(Conv2dShape::same(h, w, ci, co, 3)), i as u64);
    }
}

#[test]
fn conv2d_stride_2_with_right_bottom_padding_matches_reference() {
    // diffusers' downsample: ZeroPad2d((0, 1, 0, 1)) then a 3×3 conv with stride 2 (28 → 14 → 7, odd 7 → 3).
    for (i, &(h, w, c)) in [(7, 5, 3), (8, 11, 4), (28, 44, 4), (2, 3, 17)].iter().enumerate() {
        let shape = Conv2dShape { stride: 2, pad: [0, 1, 0, 1], ..Conv2dShape::same(h, w, c, c, 3) };
        run_both(&Case::new(shape), 10 + i as u64);
    }
}

#[test]
fn conv2d_folds_nearest_upsampling_into_the_gather() {
    for (i, &(h, w, ci, co)) in [(3, 5, 5, 3), (1, 1, 4, 2), (4, 7, 8, 4)].iter().enumerate() {
        let shape = Conv2dShape { upsample: true, ..Conv2dShape::same(h, w, ci, co, 3) };
        run_both(&Case::new(shape), 20 + i as u64);
    }
}

#[test]
fn conv2d_decodes_half_weights() {
    for (i, dtype) in [DType::F16, DType::BF16].into_iter().enumerate() {
        // odd ci·9: the last packed word is half used.
        run_both(&Case { dtype, ..Case::new(Conv2dShape::same(5, 6, 3, 5, 3)) }, 30 + i as u64);
        run_both(&Case { dtype, residual: Res::From, ..Case::new(Conv2dShape::matmul(17, 7, 3)) }, 32 + i as u64);
    }
}

#[test]
fn conv2d_1x1_is_a_matmul_with_pixel_offsets_residual_and_transposed_output() {
    let mm = Conv2dShape::matmul(65, 8, 24);
    run_both(&Case { residual: Res::From, ..Case::new(mm) }, 40);
    run_both(&Case { residual: Res::InPlace, ..Case::new(mm) }, 43);
    // Scores chunk: rows 5..22 of Q (x_pix0), written at rows 3.. of a taller y, scaled, no bias.
    let chunk = Conv2dShape::matmul(17, 8, 13);
    run_both(
        &Case { bias: false, alpha: 0.35, x_pix0: 5, y_layout: ConvOut::Rows { row0: 3 }, ..Case::new(chunk) },
        41,
    );
    // Vᵀ: y [co, ld] with rows 2..2+17 of each channel written.
    run_both(&Case { y_layout: ConvOut::Transposed { row0: 2, ld: 21 }, ..Case::new(chunk) }, 42);
}

#[test]
fn conv2d_applies_the_channel_norm_and_silu_while_gathering() {
    // resnet conv1/conv2 (norm + SiLU), the attention's q/k/v (norm only, with a pixel offset), norm_out + conv_out,
    // and conv2's in-place residual; zero padding stays zero after the norm.
    for (i, &(h, w, ci, co)) in [(5, 7, 3, 4), (3, 17, 17, 17), (1, 1, 1, 1), (4, 4, 64, 3)].iter().enumerate() {
        let shape = Conv2dShape::same(h, w, ci, co, 3);
        run_both(&Case { pre: Some(true), ..Case::new(shape) }, 60 + i as u64);
        let square = Conv2dShape::same(h, w, ci, ci, 3);
        run_both(&Case { pre: Some(true), residual: Res::InPlace, ..Case::new(square) }, 70 + i as u64);
    }
    run_both(&Case { pre: Some(false), x_pix0: 3, ..Case::new(Conv2dShape::matmul(17, 8, 8)) }, 80);
    let up = Conv2dShape { upsample: true, ..Conv2dShape::same(3, 5, 5, 3, 3) };
    run_both(&Case { pre: Some(true), ..Case::new(up) }, 81);
}

#[test]
fn conv2d_refuses_quantized_and_fp8_weights_with_an_error_naming_the_dtype() {
    let gpu = test_gpu();
    let s = Conv2dShape::matmul(4, 32, 2);
    let x = up(&gpu, &[1.0; 128], &[4, 32]);
    let y = poisoned(&gpu, &[4, 2]);
    for dt in [DType::Q4K, DType::F8E5M2Scaled] {
        let numel = (2 * 32usize).next_multiple_of(dt.block_elems());
        let w = Tensor::from_bytes(&gpu, &vec![0; dt.bytes(numel)], &[numel], dt, "w").unwrap();
        let a = Args {
            shape: s,
            x: &x,
            x_pix0: 0,
            weight: &w,
            w_offset: 0,
            bias: None,
            residual: Residual::None,
            pre: None,
            alpha: 1.0,
            y: &y,
            y_layout: ConvOut::Rows { row0: 0 },
        };
        let e = launch_variant(&gpu, &a, Variant::Registers).unwrap_err().to_string();
        assert!(e.contains("conv2d") && e.contains(dt.name()), "{e}");
    }
}
