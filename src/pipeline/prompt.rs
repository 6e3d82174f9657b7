//! Prompt text → the embeddings the transformer takes, as the pipelines' `encode_prompt` makes
//! them (diffusers 0.42; spec vae-and-text-encoder.md §2.1-2.3): the template filled, tokenized
//! (T2I truncates at `1024 + 34` tokens), the text encoder's `hidden_states[-1]`, the template's
//! first `drop` tokens cut, then (T2I only) `max_sequence_length`. One prompt per call; every
//! token is valid, so the mask is all ones (diffusers returns `None` for it).
//!
//! `wgdit encode-prompt` writes the result as `prompt_embeds` [1, S, D] f32 and
//! `prompt_embeds_mask` [1, S] i64, the file `--prompt-embeds` reads.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::models::qwen2_5_vl::runtime::{Residency, TextEncoder};
use crate::pipeline::embeds::PromptEmbeds;
use crate::pipeline::folder::{PipelineClass, PipelineFolder};
use crate::text::templates::{DEFAULT_MAX_SEQUENCE_LENGTH, TOKENIZER_MAX_LENGTH};
use crate::text::{Qwen2Tokenizer, Template};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The tokenizer and text encoder of a pipeline folder.
pub struct PromptEncoder {
    pub class: PipelineClass,
    pub template: Template,
    pub tokenizer: Qwen2Tokenizer,
    pub encoder: TextEncoder,
}

/// The template of a pipeline class.
pub fn template_of(class: PipelineClass) -> Template {
    match class {
        PipelineClass::TextToImage => Template::TextToImage,
        PipelineClass::Edit => Template::Edit,
        PipelineClass::EditPlus => Template::EditPlus,
    }
}

impl PromptEncoder {
    /// Opens the folder's `text_encoder/` and its tokenizer (`tokenizer/`, or `processor/` for
    /// the Edit pipelines).
    pub fn open(gpu: &Arc<Gpu>, folder: &PipelineFolder, residency: Option<Residency>) -> Result<PromptEncoder> {
        PromptEncoder::open_with(gpu, folder, residency, None)
    }

    /// [`PromptEncoder::open`] with the text encoder taken from `text_encoder` instead of the
    /// folder's `text_encoder/`: a folder, or a single safetensors file (ComfyUI's
    /// `text_encoders/qwen_2.5_vl_7b.safetensors` holds the original key layout) with its
    /// config.json beside it, else Qwen2.5-VL-7B's.
    pub fn open_with(
        gpu: &Arc<Gpu>,
        folder: &PipelineFolder,
        residency: Option<Residency>,
        text_encoder: Option<&Path>,
    ) -> Result<PromptEncoder> {
        let template = template_of(folder.class);
        if let Some(te) = text_encoder {
            let tdir = crate::text::tokenizer_dir(&folder.root, Some(template))?;
            let tokenizer = Qwen2Tokenizer::from_folder(&tdir)?;
            let encoder = TextEncoder::open(gpu, te, residency)?;
            return Ok(PromptEncoder { class: folder.class, template, tokenizer, encoder });
        }
        let te = folder.text_encoder.as_ref().ok_or_else(|| {
            Error::file(
                &folder.root,
                "no text_encoder/ in this pipeline folder: give --prompt-embeds instead of --prompt (wgdit encode-prompt makes them with a folder that has one)",
            )
        })?;
        let tdir = crate::text::tokenizer_dir(&folder.root, Some(template))?;
        let tokenizer = Qwen2Tokenizer::from_folder(&tdir)?;
        let encoder = TextEncoder::open(gpu, te, residency)?;
        Ok(PromptEncoder { class: folder.class, template, tokenizer, encoder })
    }

    /// The token ids the encoder sees for `prompt` (T2I: truncated at 1024 + 34).
    pub fn token_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(&self.template.fill(prompt, 0))?;
        if self.template == Template::TextToImage {
            ids.truncate(TOKENIZER_MAX_LENGTH + self.template.drop());
        }
        Ok(ids)
    }

    /// `encode_prompt(prompt, max_sequence_length)` of a text-only pipeline.
    pub fn encode(&mut self, prompt: &str, max_sequence_length: usize) -> Result<PromptEmbeds> {
        if self.class != PipelineClass::TextToImage {
            return Err(Error::input(format!(
                "{}: the Edit pipelines encode the prompt with its pictures (encode_with_images)",
                self.class.class_name()
            )));
        }
        if max_sequence_length == 0 || max_sequence_length > TOKENIZER_MAX_LENGTH {
            return Err(Error::input(format!(
                "max_sequence_length {max_sequence_length}: must be 1..={TOKENIZER_MAX_LENGTH} (the pipelines refuse more)"
            )));
        }
        let ids = self.token_ids(prompt)?;
        let drop = self.template.drop();
        let d = self.encoder.config.text.hidden_size;
        let hidden = self.encoder.encode(&ids)?;
        crate::outputs::check_finite("the text encoder's hidden states", &hidden, &[ids.len(), d], "")?;
        let tokens = (ids.len() - drop).min(max_sequence_length);
        let embeds = hidden[drop * d..(drop + tokens) * d].to_vec();
        Ok(PromptEmbeds { embeds, tokens, dim: d, mask: None })
    }
}

/// The Edit pipelines' vision input: the pictures as the processor gets them (already resized to
/// their vision size) → the tower's features and grids, computed once for the prompt and the
/// negative prompt (true CFG encodes the negative with the same images).
pub struct ImageFeatures {
    pub features: Vec<f32>,
    pub grids: Vec<[usize; 3]>,
    /// Image tokens per picture.
    pub tokens: Vec<usize>,
}

impl PromptEncoder {
    /// Runs the image processor and the vision tower on `images` (PIL images as `__call__` hands
    /// them to the processor: Edit's reference, Edit-Plus's condition images).
    pub fn image_features(&mut self, processor: &Path, images: &[::image::RgbImage]) -> Result<ImageFeatures> {
        use crate::models::qwen2_5_vl::processor::{preprocess, ProcessorConfig};
        let cfg_path = ["preprocessor_config.json", "processor_config.json"]
            .iter()
            .map(|f| processor.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::file(processor, "no preprocessor_config.json or processor_config.json"))?;
        let text = crate::pipeline::folder::read_bounded(&cfg_path, 1 << 20)?;
        let cfg = ProcessorConfig::from_json_str(&text).map_err(|e| Error::file(&cfg_path, e.to_string()))?;
        let inputs = images.iter().map(|i| preprocess(i, &cfg)).collect::<Result<Vec<_>>>()?;
        let features = self.encoder.vision(&inputs)?;
        let merge = cfg.merge_size;
        Ok(ImageFeatures {
            features,
            grids: inputs.iter().map(|i| i.grid).collect(),
            tokens: inputs.iter().map(|i| i.tokens(merge)).collect(),
        })
    }

    /// `encode_prompt(prompt, image)` of the Edit pipelines: the template with one vision block per
    /// picture (Edit: one), each `<|image_pad|>` expanded to the picture's tokens, the features
    /// spliced in, 3-D M-RoPE, the 64-token drop; no `max_sequence_length` (the Edit pipelines
    /// ignore it).
    pub fn encode_with_images(&mut self, prompt: &str, img: &ImageFeatures) -> Result<PromptEmbeds> {
        let n = img.tokens.len();
        if self.template == Template::Edit && n != 1 {
            return Err(Error::input(format!("QwenImageEditPipeline encodes one image with the prompt, not {n}")));
        }
        let pad = self.encoder.config.tokens.image;
        let raw = self.tokenizer.encode(&self.template.fill(prompt, n))?;
        let mut ids = Vec::with_capacity(raw.len() + img.tokens.iter().sum::<usize>());
        let mut picture = img.tokens.iter();
        for t in raw {
            if t == pad {
                let k = picture.next().ok_or_else(|| {
                    Error::input("the prompt holds an <|image_pad|> of its own: more image blocks than pictures")
                })?;
                ids.extend(std::iter::repeat_n(pad, *k));
            } else {
                ids.push(t);
            }
        }
        let (drop, d) = (self.template.drop(), self.encoder.config.text.hidden_size);
        let hidden = self.encoder.encode_with_images(&ids, &img.features, &img.grids)?;
        crate::outputs::check_finite("the text encoder's hidden states", &hidden, &[ids.len(), d], "")?;
        let tokens = ids.len() - drop;
        Ok(PromptEmbeds { embeds: hidden[drop * d..].to_vec(), tokens, dim: d, mask: None })
    }
}

/// The pictures the Edit pipelines' processor gets: Edit's first image LANCZOS-resized to
/// `calculate_dimensions(ref_area)`, Edit-Plus's every image to `calculate_dimensions(condition_area)`.
pub fn vision_images(
    class: PipelineClass,
    images: &[::image::RgbImage],
    ref_area: u64,
    condition_area: u64,
) -> Result<Vec<::image::RgbImage>> {
    use crate::pipeline::dims::calculate_dimensions;
    let area = match class {
        PipelineClass::TextToImage => return Ok(Vec::new()),
        PipelineClass::Edit => ref_area,
        PipelineClass::EditPlus => condition_area,
    };
    let take = if class == PipelineClass::Edit { 1 } else { images.len() };
    images
        .iter()
        .take(take)
        .map(|img| {
            let (w, h) = calculate_dimensions(area, img.width() as f64 / img.height().max(1) as f64);
            if w == 0 || h == 0 {
                return Err(Error::input(format!(
                    "a {}x{} picture gives a vision input of {w}x{h}: the aspect ratio is too extreme",
                    img.width(),
                    img.height()
                )));
            }
            crate::image::resize::resize_lanczos(img, w, h)
        })
        .collect()
}

/// What `wgdit encode-prompt` did.
#[derive(Debug, serde::Serialize)]
pub struct EncodeReport {
    pub output: PathBuf,
    pub class: &'static str,
    /// Tokens the encoder ran on (template included).
    pub encoder_tokens: usize,
    /// Tokens kept for the transformer.
    pub tokens: usize,
    pub dim: usize,
    pub residency: Residency,
    pub seconds: f64,
}

/// `wgdit encode-prompt`: encodes `prompt` with the folder's text encoder and writes the file.
pub struct EncodeRequest<'a> {
    pub model: &'a Path,
    pub prompt: &'a str,
    pub images: &'a [PathBuf],
    pub ref_area: u64,
    pub condition_area: u64,
    pub residency: Option<Residency>,
    /// A text encoder other than the folder's (folder or single file).
    pub text_encoder: Option<&'a Path>,
    pub output: &'a Path,
}

pub fn encode_to_file(gpu: &Arc<Gpu>, r: &EncodeRequest) -> Result<EncodeReport> {
    let (model, prompt, output) = (r.model, r.prompt, r.output);
    let mut inputs: Vec<&Path> = vec![model];
    inputs.extend(r.images.iter().map(PathBuf::as_path));
    inputs.extend(r.text_encoder);
    crate::outputs::check_outputs(&inputs, &[output])?;
    let t0 = std::time::Instant::now();
    let folder = PipelineFolder::open(model)?;
    let mut enc = PromptEncoder::open_with(gpu, &folder, r.residency, r.text_encoder)?;
    let (p, encoder_tokens) = if folder.class == PipelineClass::TextToImage {
        if !r.images.is_empty() {
            return Err(Error::input("QwenImagePipeline takes no --image (text to image)"));
        }
        let n = enc.token_ids(prompt)?.len();
        (enc.encode(prompt, DEFAULT_MAX_SEQUENCE_LENGTH)?, n)
    } else {
        if r.images.is_empty() {
            return Err(Error::input(format!(
                "{} encodes the prompt with its pictures: give --image",
                folder.class.class_name()
            )));
        }
        let originals = r.images.iter().map(|p| crate::image::pixels::load_rgb(p)).collect::<Result<Vec<_>>>()?;
        let vl = vision_images(folder.class, &originals, r.ref_area, r.condition_area)?;
        let processor = folder.processor.clone().ok_or_else(|| Error::file(&folder.root, "no processor/ folder"))?;
        let img = enc.image_features(&processor, &vl)?;
        let p = enc.encode_with_images(prompt, &img)?;
        let n = p.tokens + enc.template.drop();
        (p, n)
    };
    write_embeds(output, &p)?;
    Ok(EncodeReport {
        output: output.to_path_buf(),
        class: folder.class.class_name(),
        encoder_tokens,
        tokens: p.tokens,
        dim: p.dim,
        residency: enc.encoder.residency,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// `prompt_embeds` [1, S, D] f32 and `prompt_embeds_mask` [1, S] i64, written atomically.
pub fn write_embeds(path: &Path, p: &PromptEmbeds) -> Result<()> {
    use safetensors::tensor::TensorView;
    let mask: Vec<u8> =
        (0..p.tokens).flat_map(|i| (p.mask.as_ref().map_or(1, |m| (m[i] != 0.0) as i64)).to_le_bytes()).collect();
    let embeds: &[u8] = bytemuck::cast_slice(&p.embeds);
    let views = vec![
        ("prompt_embeds", TensorView::new(safetensors::Dtype::F32, vec![1, p.tokens, p.dim], embeds)),
        ("prompt_embeds_mask", TensorView::new(safetensors::Dtype::I64, vec![1, p.tokens], &mask)),
    ];
    let views: Vec<(&str, TensorView)> = views
        .into_iter()
        .map(|(n, v)| v.map(|v| (n, v)).map_err(|e| Error::input(format!("{n}: {e}"))))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::input(format!("writing embeddings: {e}")))?;
    let out = crate::weights::writer::TempOutput::new(path, false)?;
    std::fs::write(&out.tmp, bytes).map_err(|e| Error::io(&out.tmp, e))?;
    out.commit()
}
