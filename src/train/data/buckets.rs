//! Training sizes of `wgdit cache`: aspect-ratio buckets at a target area, each picture resized and
//! centre-cropped to its bucket as DiffSynth-Studio crops its training pictures.
//!
//! **Buckets** ([`default_set`]): kohya sd-scripts' rule (`library/model_util.py`,
//! `make_bucket_resolutions`) with the step `s = 4·m`, m = `2·vae_scale` (the 2×2 latent packing;
//! 16 for Qwen-Image's VAE, so s = 64 as in sd-scripts): the square `q = ⌊√area / s⌋·s`, and for
//! every width w = lo, lo + s, …, hi (lo = q/2 and hi = 2q, rounded down to s; ratios up to 4:1)
//! the height `⌊(area // w) / s⌋·s` when it lies in [lo, hi], with its transpose. At 1024² that is
//! 512×2048 … 1024×1024 … 2048×512. An explicit list (`--buckets 1024x1024,1344x768`) replaces
//! them; `--buckets dynamic` is DiffSynth's own rule instead ([`dynamic_size`]): every picture at
//! its own size, shrunk to at most `max_pixels` and floored to m.
//!
//! **Assignment** ([`nearest`]): the bucket whose aspect ratio is nearest the picture's, measured
//! as |ln(w/h) − ln(bw/bh)| so that a picture and its transpose land in transposed buckets; a tie
//! goes to the first bucket of the sorted set.
//!
//! **Crop** ([`crop_and_resize`]): DiffSynth-Studio `diffsynth/core/data/operators.py`,
//! `ImageCropAndResize.crop_and_resize`: `scale = max(tw/w, th/h)`, torchvision
//! `resize(image, (round(h·scale), round(w·scale)), BILINEAR)` (on a PIL image: Pillow's BILINEAR
//! `Image.resize`; Python's `round` is half-to-even), then torchvision `center_crop`, whose corner
//! is `int(round((H − th) / 2))`, `int(round((W − tw) / 2))`.

use crate::image::resize::{resize, Filter};
use crate::pipeline::dims::Size;
use crate::{Error, Result};
use ::image::RgbImage;

/// How the target size of each picture is chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Buckets {
    /// The nearest of these sizes by aspect ratio (sorted by ratio, then area).
    Set(Vec<Size>),
    /// DiffSynth's dynamic resolution at most `max_pixels`.
    Dynamic { max_pixels: u64 },
}

impl Buckets {
    /// The training size of a `w × h` picture, or why it is too small to train on.
    pub fn target(&self, w: u32, h: u32, multiple: u32) -> std::result::Result<Size, String> {
        match self {
            Buckets::Set(set) => {
                let min = set.iter().map(|s| s.width.min(s.height)).min().unwrap_or(0);
                if w.min(h) < min {
                    return Err(format!("tiny image: {w}x{h} is smaller than the smallest bucket side {min}"));
                }
                Ok(nearest(set, w, h))
            }
            Buckets::Dynamic { max_pixels } => {
                let s = dynamic_size(w, h, *max_pixels, multiple);
                if s.width == 0 || s.height == 0 {
                    return Err(format!(
                        "tiny image: {w}x{h} gives {}x{} at multiples of {multiple}",
                        s.width, s.height
                    ));
                }
                Ok(s)
            }
        }
    }
}

/// The default bucket set at `area` pixels for sizes in multiples of `multiple` (module doc).
pub fn default_set(area: u64, multiple: u32) -> Vec<Size> {
    let s = 4 * multiple as u64;
    let floor = |v: u64| v / s * s;
    let q = floor((area as f64).sqrt() as u64).max(s);
    let (lo, hi) = (floor(q / 2).max(s), floor(2 * q));
    let mut set = vec![Size::new(q as u32, q as u32)];
    let mut w = lo;
    while w <= hi {
        let h = floor(area / w);
        if (lo..=hi).contains(&h) {
            set.push(Size::new(w as u32, h as u32));
            set.push(Size::new(h as u32, w as u32));
        }
        w += s;
    }
    sorted(set)
}

/// Sorted by aspect ratio, then area; duplicates removed.
fn sorted(mut set: Vec<Size>) -> Vec<Size> {
    let key = |s: &Size| (s.width as u64 * 1_000_000 / s.height as u64, s.width as u64 * s.height as u64);
    set.sort_by_key(key);
    set.dedup();
    set
}

/// `--buckets`: `dynamic`, or `WxH,WxH,…` with every side a positive multiple of `multiple`.
pub fn parse(spec: &str, multiple: u32, area: u64) -> Result<Buckets> {
    if spec.trim().eq_ignore_ascii_case("dynamic") {
        return Ok(Buckets::Dynamic { max_pixels: area });
    }
    let mut set = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || Error::input(format!("--buckets: `{item}` is not WIDTHxHEIGHT (e.g. 1024x1024)"));
        let (w, h) = item.split_once(['x', 'X']).ok_or_else(bad)?;
        let (w, h): (u32, u32) = (w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?);
        if w == 0 || h == 0 || w % multiple != 0 || h % multiple != 0 {
            return Err(Error::input(format!(
                "--buckets: {w}x{h}: sides must be positive multiples of {multiple} (2 × the VAE's spatial factor)"
            )));
        }
        set.push(Size::new(w, h));
    }
    if set.is_empty() {
        return Err(Error::input("--buckets is empty: give WIDTHxHEIGHT[,WIDTHxHEIGHT…] or `dynamic`"));
    }
    Ok(Buckets::Set(sorted(set)))
}

/// The bucket of `set` nearest a `w × h` picture's aspect ratio (module doc). `set` is not empty.
pub fn nearest(set: &[Size], w: u32, h: u32) -> Size {
    let ratio = (w as f64 / h as f64).ln();
    let dist = |s: &Size| ((s.width as f64 / s.height as f64).ln() - ratio).abs();
    let mut best = set[0];
    for s in &set[1..] {
        if dist(s) < dist(&best) {
            best = *s;
        }
    }
    best
}

/// DiffSynth's `ImageCropAndResize.get_height_width` without a fixed size: when `w·h > max_pixels`,
/// `scale = (w·h / max_pixels) ** 0.5` and the sides become `int(side / scale)`; then each is
/// floored to a multiple of `multiple`. (`powf`, not `sqrt`: CPython's `**` calls libm's pow.)
pub fn dynamic_size(w: u32, h: u32, max_pixels: u64, multiple: u32) -> Size {
    let (mut w, mut h) = (w, h);
    if w as u64 * h as u64 > max_pixels {
        let scale = (w as f64 * h as f64 / max_pixels as f64).powf(0.5);
        (h, w) = ((h as f64 / scale) as u32, (w as f64 / scale) as u32);
    }
    Size::new(w / multiple * multiple, h / multiple * multiple)
}

/// Where DiffSynth's crop takes a `target` out of a `w × h` picture: the resized size, then the
/// crop's left and top corner in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    pub resized: Size,
    pub left: u32,
    pub top: u32,
}

/// The [`Crop`] of `crop_and_resize` (module doc).
pub fn crop_plan(w: u32, h: u32, target: Size) -> Crop {
    let scale = (target.width as f64 / w as f64).max(target.height as f64 / h as f64);
    // `scale` makes one side exactly the target's up to rounding; never below it.
    let rw = ((w as f64 * scale).round_ties_even() as u32).max(target.width);
    let rh = ((h as f64 * scale).round_ties_even() as u32).max(target.height);
    let corner = |big: u32, small: u32| ((big - small) as f64 / 2.0).round_ties_even() as u32;
    Crop { resized: Size::new(rw, rh), left: corner(rw, target.width), top: corner(rh, target.height) }
}

/// DiffSynth's `crop_and_resize(image, target.height, target.width)` on 8-bit RGB.
pub fn crop_and_resize(img: &RgbImage, target: Size) -> Result<RgbImage> {
    let c = crop_plan(img.width(), img.height(), target);
    let resized = resize(img, c.resized.width, c.resized.height, Filter::Bilinear)?;
    Ok(::image::imageops::crop_imm(&resized, c.left, c.top, target.width, target.height).to_image())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_set_at_1024_squared_is_kohyas_with_64_pixel_steps() {
        let set = default_set(1024 * 1024, 16);
        assert_eq!(set.first(), Some(&Size::new(512, 2048)));
        assert_eq!(set.last(), Some(&Size::new(2048, 512)));
        assert!(set.contains(&Size::new(1024, 1024)));
        // w = 1088: 1048576 // 1088 = 963, floored to 64: 960
        assert!(set.contains(&Size::new(1088, 960)) && set.contains(&Size::new(960, 1088)));
        assert!(set.iter().all(|s| s.width % 64 == 0 && s.height % 64 == 0));
        assert!(set.iter().all(|s| (s.width as u64 * s.height as u64) <= 1024 * 1024));
        // transposes: the set is symmetric
        assert!(set.iter().all(|s| set.contains(&Size::new(s.height, s.width))));
    }

    #[test]
    fn dynamic_sizes_follow_diffsynths_get_height_width() {
        // 1920×1080 at 1024²: scale = (2073600/1048576)^0.5 = 1.40625 → 1365.33, 768 → 1365, 768 → 1360, 768
        assert_eq!(dynamic_size(1920, 1080, 1024 * 1024, 16), Size::new(1360, 768));
        // small pictures keep their size, floored to 16
        assert_eq!(dynamic_size(500, 333, 1024 * 1024, 16), Size::new(496, 320));
    }

    #[test]
    fn explicit_buckets_must_be_multiples_of_the_packing() {
        assert_eq!(
            parse("1024x1024, 1344X768", 16, 0).unwrap(),
            Buckets::Set(vec![Size::new(1024, 1024), Size::new(1344, 768)])
        );
        assert!(parse("1000x1000", 16, 0).unwrap_err().to_string().contains("multiples of 16"));
        assert!(parse("big", 16, 0).is_err() && parse(" , ", 16, 0).is_err());
        assert_eq!(parse("dynamic", 16, 7).unwrap(), Buckets::Dynamic { max_pixels: 7 });
    }
}
