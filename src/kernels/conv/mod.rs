//! 2-D convolution as an implicit GEMM (`shaders/conv/conv2d.wgsl`): the VAE's causal 3-D convs
//! reduced to one frame (spec vae-and-text-encoder.md §1.4: `conv2d(x, W[:, :, 2], b, padding=1)`),
//! its stride-2 downsample (diffusers `ZeroPad2d((0, 1, 0, 1))` + `Conv2d(stride=2)`), nearest ×2
//! upsample + conv (the upsampling folded into the gather), 1×1 convs, and — as a 1×1 conv over an
//! S×1 image with an f32 activation as W — the mid-block attention's `Q·Kᵀ` and `P·V`.
//!
//! Layout: x pixels-major `[pixels, ci]` f32; W `[co, kh, kw, ci]` (f32, f16 or bf16, decoded in
//! WGSL through `common/decode`); y `[pixels, co]` f32, or transposed `[co, ldt]`. The A tile is
//! gathered from x per K step, so no im2col buffer exists. With [`PreNorm`] the gathered value is
//! the VAE's channel RMS norm of x (then SiLU), `x / denom · sqrt(ci) · gamma`, from per-pixel
//! denominators (`kernels::norm::channel_norm_denom`): the normalised tensor is never stored.

use crate::gpu::{Gpu, Launch};
use crate::layout::Conv2dShape;
use crate::shaders::CONV2D;
use crate::tensor::{DType, Tensor};
use crate::Result;

/// Output tile of one `conv2d` workgroup (8×8 invocations, 4×4 outputs each).
pub const TILE: usize = 32;
/// Output tile of one `conv2d_tiled` workgroup (16×16 invocations, 4×4 outputs each).
pub const TILE_WG: usize = 64;

pub use crate::kernels::gemm::{Residual, Variant};

pub use crate::layout::ConvOut;

/// The channel RMS norm (+ SiLU) applied to x while gathering.
#[derive(Clone, Copy, Debug)]
pub struct PreNorm<'a> {
    /// `[pixels]` f32: `max(‖x[pix, :]‖, 1e-12)`, same pixel indexing as x.
    pub denom: &'a Tensor,
    /// `[ci]` f32.
    pub gamma: &'a Tensor,
    pub silu: bool,
}

/// One convolution dispatch.
#[derive(Clone, Copy, Debug)]
pub struct Args<'a> {
    pub shape: Conv2dShape,
    /// Pixels-major input; the image starts at pixel `x_pix0`.
    pub x: &'a Tensor,
    pub x_pix0: usize,
    /// `[co, kh, kw, ci]` at element `w_offset`.
    pub weight: &'a Tensor,
    pub w_offset: usize,
    pub bias: Option<&'a Tensor>,
    /// Added in the epilogue: another tensor of y's layout, or y itself (`InPlace`: y += conv).
    pub residual: Residual<'a>,
    pub pre: Option<PreNorm<'a>>,
    /// Scale of the accumulated sum (before the bias).
    pub alpha: f32,
    pub y: &'a Tensor,
    pub y_layout: ConvOut,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub in_h: u32,
    pub in_w: u32,
    pub ci: u32,
    pub n: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride: u32,
    pub pad_top: u32,
    pub pad_left: u32,
    pub up: u32,
    pub x_pix0: u32,
    pub y_row0: u32,
    pub ldt: u32,
    pub w_off: u32,
    pub alpha: f32,
    pub norm_scale: f32,
    pub _pad: [u32; 2],
}
crate::assert_params!(Params);

fn u32_of(v: usize, what: &str) -> u32 {
    u32::try_from(v).unwrap_or_else(|_| panic!("conv2d: {what} = {v} exceeds u32"))
}

fn check(a: &Args) {
    let s = &a.shape;
    assert!(s.kh >= 1 && s.kw >= 1 && s.stride >= 1 && s.ci >= 1 && s.co >= 1, "conv2d: empty shape {s:?}");
    let up = 1 + s.upsample as usize;
    assert!(s.in_h * up + s.pad[0] + s.pad[1] >= s.kh && s.in_w * up + s.pad[2] + s.pad[3] >= s.kw, "conv2d: {s:?}");
    assert!(a.x.dtype == DType::F32 && a.y.dtype == DType::F32, "conv2d: x and y must be f32");
    assert!((a.x_pix0 + s.in_pixels()) * s.ci <= a.x.numel(), "conv2d: x too small for {s:?} at pixel {}", a.x_pix0);
    assert!(a.w_offset + s.co * s.k() <= a.weight.numel(), "conv2d: weight too small for {s:?}");
    let m = s.out_pixels();
    let y_end = match a.y_layout {
        ConvOut::Rows { row0 } => (row0 + m) * s.co,
        ConvOut::Transposed { row0, ld } => {
            assert!(row0 + m <= ld, "conv2d: transposed rows exceed ld");
            s.co * ld
        }
    };
    assert!(y_end <= a.y.numel(), "conv2d: y too small for {s:?} ({:?})", a.y_layout);
    if let Some(b) = a.bias {
        assert!(b.dtype == DType::F32 && b.numel() >= s.co, "conv2d: bias must be f32 [co]");
    }
    if let Residual::From(r) = a.residual {
        assert!(r.numel() == a.y.numel() && !r.buffer.same(&a.y.buffer), "conv2d: residual must match y, elsewhere");
    }
    if let Some(n) = a.pre {
        assert!(n.denom.numel() >= a.x_pix0 + s.in_pixels(), "conv2d: prenorm denominators too few");
        assert!(n.gamma.numel() == s.ci && n.gamma.dtype == DType::F32, "conv2d: prenorm gamma must be f32 [ci]");
    }
}

/// The workgroup grid: output channels in x, row tiles folded into y and z.
fn grid(cols: usize, rows: usize, tile: usize) -> [u32; 3] {
    let tiles = rows.div_ceil(tile).max(1) as u32;
    let gy = tiles.min(65535);
    [cols.div_ceil(tile).max(1) as u32, gy, tiles.div_ceil(gy)]
}

pub fn launch_forward(gpu: &Gpu, a: &Args) -> Result<Launch> {
    launch_variant(gpu, a, Variant::Auto)
}

/// [`launch_forward`] with an explicit choice of entry point.
pub fn launch_variant(gpu: &Gpu, a: &Args, variant: Variant) -> Result<Launch> {
    check(a);
    crate::kernels::require_float_weight("conv2d", a.weight.dtype)?;
    crate::kernels::check_index("conv2d", &[("x", a.x), ("weight", a.weight), ("y", a.y)])?;
    let s = &a.shape;
    let tiled = match variant {
        // conv2d has no tile program: the VAE's convolutions stay f32 in every kernel family.
        Variant::Auto | Variant::Tile(_) | Variant::TileWith(..) => !gpu.is_cpu(),
        Variant::Registers => false,
        Variant::Workgroup => true,
    };
    let (entry, tile) = if tiled { ("conv2d_tiled", TILE_WG) } else { ("conv2d", TILE) };
    let (y_row0, ldt, transpose) = match a.y_layout {
        ConvOut::Rows { row0 } => (row0, 0, false),
        ConvOut::Transposed { row0, ld } => (row0, ld, true),
    };
    let residual = match a.residual {
        Residual::None => 0.0,
        Residual::From(_) => 1.0,
        Residual::InPlace => 2.0,
    };
    assert!(!transpose || residual == 0.0, "conv2d: no residual with a transposed y");
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let kernel = gpu.kernel(
        &CONV2D,
        entry,
        &[
            ("DTYPE", a.weight.dtype.code()),
            ("HAS_BIAS", flag(a.bias.is_some())),
            ("RESIDUAL", residual),
            ("TRANSPOSE_Y", flag(transpose)),
            ("PRENORM", flag(a.pre.is_some())),
            ("SILU", flag(a.pre.is_some_and(|n| n.silu))),
        ],
    )?;
    let p = Params {
        in_h: u32_of(s.in_h, "in_h"),
        in_w: u32_of(s.in_w, "in_w"),
        ci: u32_of(s.ci, "ci"),
        n: u32_of(s.co, "co"),
        out_h: u32_of(s.out_h(), "out_h"),
        out_w: u32_of(s.out_w(), "out_w"),
        kh: u32_of(s.kh, "kh"),
        kw: u32_of(s.kw, "kw"),
        stride: u32_of(s.stride, "stride"),
        pad_top: u32_of(s.pad[0], "pad"),
        pad_left: u32_of(s.pad[2], "pad"),
        up: 1 + s.upsample as u32,
        x_pix0: u32_of(a.x_pix0, "x_pix0"),
        y_row0: u32_of(y_row0, "y_row0"),
        ldt: u32_of(ldt, "ldt"),
        w_off: u32_of(a.w_offset, "w_offset"),
        alpha: a.alpha,
        norm_scale: crate::kernels::norm::channel_norm_denom::scale(s.ci),
        _pad: [0; 2],
    };
    let or_x = |t: Option<&Tensor>| t.unwrap_or(a.x).buffer.clone();
    let res = match a.residual {
        Residual::From(r) => Some(r),
        _ => None,
    };
    Ok(Launch {
        kernel,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![
            a.x.buffer.clone(),
            a.weight.buffer.clone(),
            or_x(a.bias),
            or_x(res),
            a.y.buffer.clone(),
            or_x(a.pre.map(|n| n.denom)),
            or_x(a.pre.map(|n| n.gamma)),
        ],
        groups: grid(s.co, s.out_pixels(), tile),
    })
}

/// The f64 reference (inputs already rounded to their storage dtype).
pub mod cpu {
    use super::ConvOut;
    use crate::layout::Conv2dShape;

    /// The reference twin of [`super::Args`] (x starts at its image's first pixel, W at offset 0).
    #[derive(Clone, Copy, Debug)]
    pub struct Conv<'a> {
        pub shape: Conv2dShape,
        pub x: &'a [f64],
        pub weight: &'a [f64],
        pub bias: Option<&'a [f64]>,
        /// `Some(res)` for both `Residual::From(res)` and `InPlace` (pass y's old values).
        pub residual: Option<&'a [f64]>,
        /// (gamma [ci], silu): x is normalised per pixel (`channel_norm_denom::cpu::normalize`) first.
        pub pre: Option<(&'a [f64], bool)>,
        pub alpha: f64,
        pub y_layout: ConvOut,
    }

    /// Writes the convolution's outputs into `y` (other elements keep their values).
    pub fn conv2d(c: &Conv, y: &mut [f64]) {
        let s = &c.shape;
        let normed;
        let x = match c.pre {
            Some((gamma, silu)) => {
                normed =
                    crate::kernels::norm::channel_norm_denom::cpu::normalize(&c.x[..s.in_pixels() * s.ci], gamma, silu);
                &normed[..]
            }
            None => c.x,
        };
        let up = 1 + s.upsample as i64;
        let (uh, uw) = (s.in_h as i64 * up, s.in_w as i64 * up);
        for oy in 0..s.out_h() {
            for ox in 0..s.out_w() {
                let m = oy * s.out_w() + ox;
                for n in 0..s.co {
                    let mut acc = 0.0;
                    for ky in 0..s.kh {
                        for kx in 0..s.kw {
                            let uy = (oy * s.stride + ky) as i64 - s.pad[0] as i64;
                            let ux = (ox * s.stride + kx) as i64 - s.pad[2] as i64;
                            if uy < 0 || ux < 0 || uy >= uh || ux >= uw {
                                continue;
                            }
                            let pix = (uy / up) as usize * s.in_w + (ux / up) as usize;
                            let w = &c.weight[((n * s.kh + ky) * s.kw + kx) * s.ci..][..s.ci];
                            acc += w.iter().zip(&x[pix * s.ci..][..s.ci]).map(|(a, b)| a * b).sum::<f64>();
                        }
                    }
                    let mut v = c.alpha * acc + c.bias.map_or(0.0, |b| b[n]);
                    let yi = match c.y_layout {
                        ConvOut::Rows { row0 } => (row0 + m) * s.co + n,
                        ConvOut::Transposed { row0, ld } => n * ld + row0 + m,
                    };
                    if let Some(r) = c.residual {
                        v += r[yi];
                    }
                    y[yi] = v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
