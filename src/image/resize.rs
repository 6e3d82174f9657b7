//! `PIL.Image.resize((w, h), Image.LANCZOS | Image.BICUBIC | Image.BILINEAR)` for 8-bit RGB, bit for
//! bit (Pillow 13.0.0, `src/libImaging/Resample.c`). diffusers' `VaeImageProcessor.resize` calls
//! LANCZOS (`resample="lanczos"`, `reducing_gap=None`, full-image box) for the Edit pipelines' VAE
//! and VL-encoder images; the Qwen2-VL image processor (Pillow backend) resizes with BICUBIC;
//! DiffSynth-Studio's training crop (`torchvision...resize(PIL image, BILINEAR)`) with BILINEAR.
//!
//! Pillow resamples separably: one pass per axis that changes, each with its own coefficient table.
//! - `precompute_coeffs` (f64): `scale = in/out`, `filterscale = max(scale, 1)`,
//!   `support = filter_support·filterscale` (Lanczos 3, bicubic 2, bilinear 1); output pixel `i`
//!   has centre `(i + 0.5)·scale`, taps from
//!   `trunc(centre − support + 0.5)` (≥ 0) to `trunc(centre + support + 0.5)` (≤ in), weights
//!   `filter((j − centre + 0.5)·(1/filterscale))` normalised by their sum.
//! - 8-bit path: weights become fixed point with 22 fractional bits (`PRECISION_BITS = 32 − 8 − 2`),
//!   rounded half away from zero; each output is `clip8((1 << 21) + Σ pixel·weight)` with
//!   `clip8(v) = clamp(v >> 22, 0, 255)`, so the intermediate image between the passes is u8.
//! - Pass order (Pillow 13 `ImagingResampleInner`): vertical first iff the height shrinks by more
//!   than twice as many pixels as the width (`in_h − out_h > 0 && in_h − out_h > 2·(in_w − out_w)`),
//!   otherwise horizontal first. Earlier Pillow versions always ran horizontal first; the order
//!   changes the u8 rounding of the intermediate image, hence the output.
//! - Same size in and out: a plain copy (`Image.resize` returns `self.copy()`).

use ::image::RgbImage;

use crate::image::pixels::check_dimensions;
use crate::Result;

/// `PRECISION_BITS` of Pillow's 8-bit resampler.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Pillow's resampling filters (`Image.Resampling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `LANCZOS`: `sinc(x)·sinc(x/3)`, support 3.
    Lanczos,
    /// `BICUBIC`: Keys' cubic with a = −0.5, support 2.
    Bicubic,
    /// `BILINEAR`: the triangle `1 − |x|`, support 1.
    Bilinear,
}

impl Filter {
    /// Support radius (in output pixels when upscaling).
    fn support(self) -> f64 {
        match self {
            Filter::Lanczos => 3.0,
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
        }
    }
    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Lanczos => lanczos(x),
            Filter::Bicubic => bicubic(x),
            Filter::Bilinear => bilinear(x),
        }
    }
}

/// Pillow LANCZOS resize of an RGB image to `width`×`height`. Errors if either target side is 0 or
/// the target exceeds [`crate::image::pixels::MAX_SIDE`] / [`crate::image::pixels::MAX_PIXELS`].
pub fn resize_lanczos(src: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    resize(src, width, height, Filter::Lanczos)
}

/// Pillow resize of an RGB image with `filter` (see [`resize_lanczos`]).
pub fn resize(src: &RgbImage, width: u32, height: u32, filter: Filter) -> Result<RgbImage> {
    check_dimensions(width, height, "resize target")?;
    check_dimensions(src.width(), src.height(), "resize source")?;
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if (in_w, in_h) == (out_w, out_h) {
        return Ok(src.clone());
    }
    let dy = in_h as i64 - out_h as i64;
    let dx = in_w as i64 - out_w as i64;
    let vertical_first = dy > 0 && dy > dx * 2;
    let mut img = Plane { width: in_w, height: in_h, data: src.as_raw().clone() };
    if vertical_first {
        img = resample_vertical(&img, &Coeffs::new(in_h, out_h, filter), 0..in_h);
        if out_w != in_w {
            img = resample_horizontal(&img, &Coeffs::new(in_w, out_w, filter));
        }
    } else {
        let vert = Coeffs::new(in_h, out_h, filter);
        if out_w != in_w {
            // Only the source rows the vertical pass reads get a horizontal pass (Pillow's ybox).
            let rows = if out_h != in_h { vert.rows_used() } else { 0..in_h };
            let window = Plane {
                width: in_w,
                height: rows.len(),
                data: img.data[rows.start * in_w * 3..rows.end * in_w * 3].to_vec(),
            };
            let shifted = vert.shifted(rows.start);
            img = resample_horizontal(&window, &Coeffs::new(in_w, out_w, filter));
            if out_h != in_h {
                img = resample_vertical(&img, &shifted, 0..img.height);
            }
        } else {
            img = resample_vertical(&img, &vert, 0..in_h);
        }
    }
    // cannot fail: the plane holds exactly out_w·out_h·3 bytes
    Ok(RgbImage::from_raw(width, height, img.data).expect("resize: output buffer size"))
}

/// An interleaved RGB u8 image (row-major, 3 bytes per pixel).
struct Plane {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

/// One axis' taps: output `i` reads inputs `start[i] .. start[i] + weights[i].len()`.
struct Coeffs {
    start: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

/// Pillow's `lanczos_filter`: `sinc(x)·sinc(x/3)` on [−3, 3), 0 elsewhere.
fn lanczos(x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            return 1.0;
        }
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Pillow's `bicubic_filter` (a = −0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `bilinear_filter`.
fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

impl Coeffs {
    /// `precompute_coeffs` + `normalize_coeffs_8bpc` for the full-image box `(0, in_size)`.
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
        // `(double)(in1 - in0) / outSize`, the box edges being f32.
        let scale = (in_size as f32 - 0.0f32) as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let inv_filterscale = 1.0 / filterscale;
        let mut start = Vec::with_capacity(out_size);
        let mut weights = Vec::with_capacity(out_size);
        for i in 0..out_size {
            let center = 0.0 + (i as f64 + 0.5) * scale;
            // C `(int)` truncates toward zero; negatives are clamped to 0 right after.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let taps: Vec<f64> =
                (xmin..xmax.max(xmin)).map(|j| filter.weight((j as f64 - center + 0.5) * inv_filterscale)).collect();
            let mut sum = 0.0;
            for &w in &taps {
                sum += w;
            }
            let fixed = taps.iter().map(|&w| if sum != 0.0 { w / sum } else { w }).map(to_fixed).collect();
            start.push(xmin);
            weights.push(fixed);
        }
        Coeffs { start, weights }
    }

    /// Source rows read by any output row (`bounds[0] .. bounds[last] + count[last]`).
    fn rows_used(&self) -> std::ops::Range<usize> {
        let first = self.start[0];
        let last = self.start.len() - 1;
        first..self.start[last] + self.weights[last].len()
    }

    /// The same taps with every start moved `offset` rows up (the vertical bounds shift).
    fn shifted(&self, offset: usize) -> Coeffs {
        Coeffs { start: self.start.iter().map(|&s| s - offset).collect(), weights: self.weights.clone() }
    }
}

/// `(int)(±0.5 + w · 2^22)`: round half away from zero via truncation.
fn to_fixed(w: f64) -> i32 {
    let scaled = w * (1u32 << PRECISION_BITS) as f64;
    if w < 0.0 {
        (-0.5 + scaled) as i32
    } else {
        (0.5 + scaled) as i32
    }
}

/// `clip8`: drop the fraction bits (arithmetic shift) and clamp to a byte.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Start value of every accumulator: one half in fixed point, so that `>> 22` rounds.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// `_ImagingResampleHorizontal_8bpc`, 3 bands.
fn resample_horizontal(src: &Plane, c: &Coeffs) -> Plane {
    let out_w = c.start.len();
    let mut data = vec![0u8; out_w * src.height * 3];
    for y in 0..src.height {
        let row = &src.data[y * src.width * 3..(y + 1) * src.width * 3];
        let out = &mut data[y * out_w * 3..(y + 1) * out_w * 3];
        for (x, px) in out.chunks_exact_mut(3).enumerate() {
            let mut acc = [HALF; 3];
            for (t, &k) in c.weights[x].iter().enumerate() {
                let p = &row[(c.start[x] + t) * 3..(c.start[x] + t) * 3 + 3];
                for b in 0..3 {
                    acc[b] = acc[b].wrapping_add((p[b] as i32).wrapping_mul(k));
                }
            }
            for b in 0..3 {
                px[b] = clip8(acc[b]);
            }
        }
    }
    Plane { width: out_w, height: src.height, data }
}

/// `_ImagingResampleVertical_8bpc`, 3 bands; `rows` are the source rows the taps index from 0.
fn resample_vertical(src: &Plane, c: &Coeffs, rows: std::ops::Range<usize>) -> Plane {
    let out_h = c.start.len();
    let stride = src.width * 3;
    let base = &src.data[rows.start * stride..rows.end * stride];
    let mut data = vec![0u8; src.width * out_h * 3];
    for y in 0..out_h {
        let out = &mut data[y * stride..(y + 1) * stride];
        for (i, v) in out.iter_mut().enumerate() {
            let mut acc = HALF;
            for (t, &k) in c.weights[y].iter().enumerate() {
                acc = acc.wrapping_add((base[(c.start[y] + t) * stride + i] as i32).wrapping_mul(k));
            }
            *v = clip8(acc);
        }
    }
    Plane { width: src.width, height: out_h, data }
}
