//! Image sizes of the diffusers 0.42.1 Qwen-Image pipelines:
//!
//! | pipeline (class, file) | model | output size | reference image sizes |
//! |---|---|---|---|
//! | `QwenImagePipeline`, `pipeline_qwenimage.py` | Qwen-Image | [`t2i_size`] | none |
//! | `QwenImageEditPipeline`, `pipeline_qwenimage_edit.py` | Qwen-Image-Edit | [`edit_sizes`] | one size for the VAE and the VL encoder |
//! | `QwenImageEditPlusPipeline`, `pipeline_qwenimage_edit_plus.py` | Edit-2509, Edit-2511 | [`edit_plus_sizes`] | per image: VAE ≈1024², VL encoder ≈384² |
//!
//! All sizes are (width, height) in pixels. With the real VAE (factor 8, [`SizeRules::qwen_image`])
//! the latent grid is `2·(H/16) × 2·(W/16)` and the DiT sees `(H/16)·(W/16)` packed tokens
//! ([`packed_seq_len`]), so pixel sizes that are not multiples of 16 lose their remainder; every
//! 16 below is `2·vae_scale_factor` of the VAE at hand, and the 1024² reference area is
//! `--ref-area` (the 384² vision area `--condition-area`).

use crate::{Error, Result};

/// `vae_scale_factor` of the real Qwen-Image VAE (`2 ** len(temperal_downsample)`).
pub const VAE_SCALE_FACTOR: u32 = 8;
/// Target area of the Edit VAE/VL image and of the Edit-Plus VAE images (`VAE_IMAGE_SIZE`), and of
/// Edit-Plus's default output size (a literal there, not the reference area).
pub const VAE_IMAGE_AREA: u64 = 1024 * 1024;
/// Target area of the Edit-Plus VL-encoder images (`CONDITION_IMAGE_SIZE`).
pub const CONDITION_IMAGE_AREA: u64 = 384 * 384;

/// The numbers the size rules depend on: the VAE's spatial factor (from its config), and the
/// reference areas (`--ref-area`, `--condition-area`; diffusers' values by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeRules {
    /// Sizes snap to multiples of `vae_scale_factor · 2` (the 2×2 latent packing).
    pub multiple: u32,
    /// T2I default side: `default_sample_size (128) · vae_scale_factor`.
    pub t2i_default: u32,
    /// The VAE reference area (Edit: also the vision image and the default output size).
    pub ref_area: u64,
    /// The Edit-Plus vision-encoder image area.
    pub condition_area: u64,
}

impl SizeRules {
    /// diffusers' numbers for a VAE of spatial factor `vae_scale`.
    pub fn for_vae(vae_scale: u32) -> SizeRules {
        SizeRules {
            multiple: vae_scale * 2,
            t2i_default: 128 * vae_scale,
            ref_area: VAE_IMAGE_AREA,
            condition_area: CONDITION_IMAGE_AREA,
        }
    }

    /// The real Qwen-Image VAE (factor 8): 16-pixel multiples, 1024² T2I default.
    pub fn qwen_image() -> SizeRules {
        SizeRules::for_vae(VAE_SCALE_FACTOR)
    }
}

/// A pixel size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl Size {
    pub fn new(width: u32, height: u32) -> Size {
        Size { width, height }
    }
}

/// diffusers `calculate_dimensions(target_area, ratio)` (Edit and Edit-Plus files, same maths):
/// `w = √(area·ratio)`, `h = w / ratio`, each rounded to a multiple of 32 with Python's `round`
/// (ties to even). `ratio` is width / height. Returns (width, height); either may be 0 for
/// extreme ratios (Python returns 0 too) and is saturated at `u32::MAX` for absurd inputs.
pub fn calculate_dimensions(target_area: u64, ratio: f64) -> (u32, u32) {
    let width = (target_area as f64 * ratio).sqrt();
    let height = width / ratio;
    let snap = |v: f64| ((v / 32.0).round_ties_even() * 32.0) as u32;
    (snap(width), snap(height))
}

/// `ratio = image.size[0] / image.size[1]` as the pipelines compute it (Python true division).
fn aspect(image: Size) -> Result<f64> {
    if image.width == 0 || image.height == 0 {
        return Err(Error::input(format!("image of size {}x{} has no pixels", image.width, image.height)));
    }
    Ok(image.width as f64 / image.height as f64)
}

fn sized(target_area: u64, image: Size, what: &str) -> Result<Size> {
    let (width, height) = calculate_dimensions(target_area, aspect(image)?);
    if width == 0 || height == 0 {
        return Err(Error::input(format!(
            "a {}x{} input gives a {what} of {width}x{height}: the aspect ratio is too extreme",
            image.width, image.height
        )));
    }
    Ok(Size { width, height })
}

/// `width or default`, then `width // multiple * multiple` (Python `or` treats 0 like None).
fn snap_output(requested: Option<u32>, default: u32, multiple: u32) -> u32 {
    let v = requested.filter(|&v| v != 0).unwrap_or(default);
    v / multiple * multiple
}

fn non_empty(size: Size, multiple: u32) -> Result<Size> {
    if size.width == 0 || size.height == 0 {
        return Err(Error::input(format!(
            "output size {}x{} is empty: width and height must be at least {multiple}",
            size.width, size.height
        )));
    }
    Ok(size)
}

/// `QwenImagePipeline`: `height = height or 1024` (same for width); the pipeline only *warns* when
/// a side is not a multiple of 16, but `prepare_latents`/`_unpack_latents` use `2·(side // 16)`
/// latents, so the image it returns is `16·(side // 16)`: that is the size returned here.
pub fn t2i_size(rules: &SizeRules, width: Option<u32>, height: Option<u32>) -> Result<Size> {
    let m = rules.multiple;
    non_empty(
        Size { width: snap_output(width, rules.t2i_default, m), height: snap_output(height, rules.t2i_default, m) },
        m,
    )
}

/// Sizes chosen by `QwenImageEditPipeline` for one input image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EditSizes {
    /// The generated image (and the target latents).
    pub output: Size,
    /// The input is LANCZOS-resized once to this size; the same pixels go to the VAE and,
    /// as a PIL image, to the Qwen2.5-VL processor.
    pub reference: Size,
}

/// `QwenImageEditPipeline.__call__`: `calculate_dimensions(1024², W/H)` (1024² = `rules.ref_area`)
/// of the input (the first one if a list is passed) is the reference size; the output is `width or calc_w` (and height),
/// floored to a multiple of 16.
pub fn edit_sizes(rules: &SizeRules, image: Size, width: Option<u32>, height: Option<u32>) -> Result<EditSizes> {
    let m = rules.multiple;
    let reference = sized(rules.ref_area, image, "reference size")?;
    let output = non_empty(
        Size { width: snap_output(width, reference.width, m), height: snap_output(height, reference.height, m) },
        m,
    )?;
    Ok(EditSizes { output, reference })
}

/// Sizes chosen by `QwenImageEditPlusPipeline` for a list of input images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EditPlusSizes {
    /// The generated image: from the **last** input's aspect ratio at ≈1024², floored to 16.
    pub output: Size,
    /// Per input: VAE reference size (`calculate_dimensions(1024², ratio)`), resized from the original.
    pub vae: Vec<Size>,
    /// Per input: VL-encoder size (`calculate_dimensions(384², ratio)`), resized from the original.
    pub condition: Vec<Size>,
}

/// `QwenImageEditPlusPipeline.__call__` (Edit-2509 and Edit-2511); each image is sized
/// independently of the others.
pub fn edit_plus_sizes(
    rules: &SizeRules,
    images: &[Size],
    width: Option<u32>,
    height: Option<u32>,
) -> Result<EditPlusSizes> {
    let m = rules.multiple;
    let last = *images.last().ok_or_else(|| Error::input("the Edit-Plus pipeline needs at least one image"))?;
    // The default output area is the literal 1024·1024 in diffusers, not the reference area.
    let default = sized(VAE_IMAGE_AREA, last, "output size")?;
    let output = non_empty(
        Size { width: snap_output(width, default.width, m), height: snap_output(height, default.height, m) },
        m,
    )?;
    let mut vae = Vec::with_capacity(images.len());
    let mut condition = Vec::with_capacity(images.len());
    for &img in images {
        vae.push(sized(rules.ref_area, img, "VAE image size")?);
        condition.push(sized(rules.condition_area, img, "VL-encoder image size")?);
    }
    Ok(EditPlusSizes { output, vae, condition })
}

/// Packed DiT tokens of an image: `(H // 16)·(W // 16)`; for the output size this is the
/// `image_seq_len` that sets the scheduler's `mu`.
pub fn packed_seq_len(rules: &SizeRules, size: Size) -> usize {
    (size.height / rules.multiple) as usize * (size.width / rules.multiple) as usize
}
