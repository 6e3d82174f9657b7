//! The Qwen2-VL image processor (transformers `image_processing_qwen2_vl.py`, the Pillow backend;
//! spec vae-and-text-encoder.md §2.5): `smart_resize` to multiples of patch·merge within the pixel
//! bounds, Pillow BICUBIC resize in 8 bits, rescale (1/255, in f64 then f32) and normalise (f32),
//! the frame repeated `temporal_patch_size` times, and the patches flattened merge-group major:
//! row `((bh·(gw/m) + bw)·m + mh)·m + mw`, columns `[c][t][y][x]` — `pixel_values` [gh·gw, C·T·P·P]
//! with `image_grid_thw` = [1, gh, gw].

use crate::error::{Error, Result};
use crate::image::resize::{resize, Filter};
use ::image::RgbImage;
use serde_json::Value;

/// `processor/preprocessor_config.json` (or `processor_config.json`'s image-processor part).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProcessorConfig {
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub patch_size: usize,
    pub merge_size: usize,
    pub temporal_patch_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f64,
}

impl Default for ProcessorConfig {
    /// Qwen2.5-VL-7B-Instruct's values.
    fn default() -> ProcessorConfig {
        ProcessorConfig {
            min_pixels: 3136,
            max_pixels: 12_845_056,
            patch_size: 14,
            merge_size: 2,
            temporal_patch_size: 2,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            rescale_factor: 1.0 / 255.0,
        }
    }
}

impl ProcessorConfig {
    /// Parses the config; absent keys keep Qwen2.5-VL's values. Newer transformers write the
    /// pixel bounds as `size: {shortest_edge, longest_edge}`; a `processor_config.json` nests the
    /// image processor's keys under `image_processor`.
    pub fn from_json_str(text: &str) -> Result<ProcessorConfig> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::input(format!("not JSON: {e}")))?;
        let v = v.get("image_processor").filter(|i| i.is_object()).unwrap_or(&v);
        if !v.is_object() {
            return Err(Error::input("the processor config is not a JSON object"));
        }
        let d = ProcessorConfig::default();
        let size = v.get("size");
        let int = |k: &str, alt: Option<&Value>, def: u64, max: u64| -> Result<u64> {
            let x = v.get(k).or(alt).filter(|x| !x.is_null());
            let n = match x {
                None => def,
                Some(x) => {
                    x.as_u64().ok_or_else(|| Error::input(format!("processor key `{k}` is {x}, not a whole number")))?
                }
            };
            if n == 0 || n > max {
                return Err(Error::input(format!("processor key `{k}` is {n}; wgdit supports 1..={max}")));
            }
            Ok(n)
        };
        let min_pixels = int("min_pixels", size.and_then(|s| s.get("shortest_edge")), d.min_pixels, 1 << 32)?;
        let max_pixels = int("max_pixels", size.and_then(|s| s.get("longest_edge")), d.max_pixels, 1 << 32)?;
        if min_pixels > max_pixels {
            return Err(Error::input(format!("min_pixels {min_pixels} is above max_pixels {max_pixels}")));
        }
        let triple = |k: &str, def: [f32; 3]| -> Result<[f32; 3]> {
            let Some(x) = v.get(k) else { return Ok(def) };
            let a: Vec<f64> = x.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
            if a.len() != 3 || a.iter().any(|f| !f.is_finite()) {
                return Err(Error::input(format!("processor key `{k}` is {x}; expected three finite numbers")));
            }
            Ok([a[0] as f32, a[1] as f32, a[2] as f32])
        };
        let std = triple("image_std", d.image_std)?;
        if std.iter().any(|&s| s <= 0.0) {
            return Err(Error::input(format!("image_std {std:?} must be positive")));
        }
        let rescale = v.get("rescale_factor").and_then(Value::as_f64).unwrap_or(d.rescale_factor);
        if !(rescale.is_finite() && rescale > 0.0) {
            return Err(Error::input(format!("rescale_factor {rescale} must be a finite number > 0")));
        }
        Ok(ProcessorConfig {
            min_pixels,
            max_pixels,
            patch_size: int("patch_size", None, 14, 64)? as usize,
            merge_size: int("merge_size", None, 2, 8)? as usize,
            temporal_patch_size: int("temporal_patch_size", None, 2, 8)? as usize,
            image_mean: triple("image_mean", d.image_mean)?,
            image_std: std,
            rescale_factor: rescale,
        })
    }

    /// Pixels per side unit of the resized image (patch · merge).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// `smart_resize(height, width)`: the resized (height, width), multiples of `factor()`.
    pub fn smart_resize(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let f = self.factor() as f64;
        let (h, w) = (height as f64, width as f64);
        if height == 0 || width == 0 || h.max(w) / h.min(w) > 200.0 {
            return Err(Error::input(format!(
                "an image of {width}×{height}: the vision encoder takes images with an aspect ratio of at most 200"
            )));
        }
        // Python's round() rounds half to even (spec PART 4 §9).
        let mut hb = (h / f).round_ties_even() * f;
        let mut wb = (w / f).round_ties_even() * f;
        if hb * wb > self.max_pixels as f64 {
            let beta = (h * w / self.max_pixels as f64).sqrt();
            hb = f.max((h / beta / f).floor() * f);
            wb = f.max((w / beta / f).floor() * f);
        } else if hb * wb < self.min_pixels as f64 {
            let beta = (self.min_pixels as f64 / (h * w)).sqrt();
            hb = (h * beta / f).ceil() * f;
            wb = (w * beta / f).ceil() * f;
        }
        Ok((hb as usize, wb as usize))
    }
}

/// One image's vision input.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionInput {
    /// [gh·gw, C·T·P·P] in merge-group order.
    pub pixel_values: Vec<f32>,
    /// `image_grid_thw` = [1, gh, gw] (patches).
    pub grid: [usize; 3],
}

impl VisionInput {
    /// Tokens the image becomes after the patch merger (`gh·gw / merge²`).
    pub fn tokens(&self, merge: usize) -> usize {
        self.grid[1] * self.grid[2] / (merge * merge)
    }
}

/// The processor's `pixel_values` and grid of one RGB image.
pub fn preprocess(img: &RgbImage, cfg: &ProcessorConfig) -> Result<VisionInput> {
    let (h, w) = cfg.smart_resize(img.height() as usize, img.width() as usize)?;
    let resized = resize(img, w as u32, h as u32, Filter::Bicubic)?;
    let (p, m, t) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let (gh, gw) = (h / p, w / p);
    // rescale: u8 · factor in f64, cast to f32; normalize: (x − mean) / std in f32.
    let norm = |c: usize, u: u8| ((u as f64 * cfg.rescale_factor) as f32 - cfg.image_mean[c]) / cfg.image_std[c];
    let raw = resized.as_raw();
    let cols = 3 * t * p * p;
    let mut out = vec![0.0f32; gh * gw * cols];
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for mh in 0..m {
                for mw in 0..m {
                    let row = ((bh * (gw / m) + bw) * m + mh) * m + mw;
                    let (py, px) = ((bh * m + mh) * p, (bw * m + mw) * p);
                    let dst = &mut out[row * cols..(row + 1) * cols];
                    for c in 0..3 {
                        for tt in 0..t {
                            for y in 0..p {
                                for x in 0..p {
                                    let src = ((py + y) * w + px + x) * 3 + c;
                                    dst[((c * t + tt) * p + y) * p + x] = norm(c, raw[src]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(VisionInput { pixel_values: out, grid: [1, gh, gw] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_follows_the_spec_table() {
        let c = ProcessorConfig::default();
        // spec §2.4: (W×H) → smart_resize (W×H)
        for ((w, h), want) in [((1024, 1024), (1036, 1036)), ((1376, 768), (1372, 756)), ((384, 384), (392, 392))] {
            let (rh, rw) = c.smart_resize(h, w).unwrap();
            assert_eq!((rw, rh), want, "{w}x{h}");
        }
        for ((w, h), want) in [((512, 288), (504, 280)), ((896, 1184), (896, 1176)), ((320, 448), (308, 448))] {
            let (rh, rw) = c.smart_resize(h, w).unwrap();
            assert_eq!((rw, rh), want, "{w}x{h}");
        }
        // below min_pixels: scaled up; tiny and extreme ratios
        assert_eq!(c.smart_resize(40, 40).unwrap(), (56, 56));
        assert!(c.smart_resize(1, 300).unwrap_err().to_string().contains("aspect ratio"));
    }

    /// A case tensor's raw bytes and shape.
    fn raw(case: &str, name: &str) -> (Vec<u8>, Vec<usize>) {
        let dir = crate::testing::unpacked_fixture("text/cases").unwrap();
        let bytes = std::fs::read(dir.join(format!("{case}.safetensors"))).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{case} {name}: {e}"));
        (t.data().to_vec(), t.shape().to_vec())
    }

    #[test]
    fn pixel_values_and_grids_equal_the_transformers_processor() {
        let cfg = ProcessorConfig::from_json_str(include_str!(
            "../../../tests/fixtures/text/processor/preprocessor_config.json"
        ))
        .unwrap();
        for (case, images) in [("edit", 1), ("edit_plus", 2)] {
            let (want_px, px_shape) = raw(case, "pixel_values");
            let want_px: Vec<f32> = bytemuck::pod_collect_to_vec(&want_px);
            let (grid, _) = raw(case, "image_grid_thw");
            let grid: Vec<i64> = bytemuck::pod_collect_to_vec(&grid);
            let mut got = Vec::new();
            for i in 0..images {
                let (u8s, shape) = raw(case, &format!("image{i}.u8"));
                let img = RgbImage::from_raw(shape[1] as u32, shape[0] as u32, u8s).unwrap();
                let v = preprocess(&img, &cfg).unwrap();
                assert_eq!(v.grid.map(|g| g as i64), grid[3 * i..3 * i + 3], "{case} image {i}: grid");
                got.extend(v.pixel_values);
            }
            assert_eq!(got.len(), px_shape.iter().product::<usize>(), "{case}: pixel_values size");
            let s = crate::testing::stats(&got, &want_px);
            assert!(s.max_abs <= 1e-6, "{case}: pixel_values max_abs {:.2e}", s.max_abs);
        }
    }

    #[test]
    fn bad_processor_configs_are_named_errors() {
        for (json, needle) in [
            ("[]", "not a JSON object"),
            (r#"{"min_pixels": 10, "max_pixels": 5}"#, "above max_pixels"),
            (r#"{"patch_size": 0}"#, "patch_size"),
            (r#"{"image_std": [1, 0, 1]}"#, "must be positive"),
            (r#"{"image_mean": [1, 2]}"#, "three finite numbers"),
        ] {
            let e = ProcessorConfig::from_json_str(json).unwrap_err().to_string();
            assert!(e.contains(needle), "`{needle}` not in: {e}");
        }
        let c = ProcessorConfig::from_json_str(r#"{"size": {"shortest_edge": 100, "longest_edge": 1000}}"#).unwrap();
        assert_eq!((c.min_pixels, c.max_pixels), (100, 1000));
    }
}
