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
        let template = template_of(folder.class);
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
                "{}: encoding a prompt with its images needs the Qwen2.5-VL vision tower, which wgdit does not run yet; pass --prompt-embeds (made by diffusers' encode_prompt) for the Edit pipelines",
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
pub fn encode_to_file(
    gpu: &Arc<Gpu>,
    model: &Path,
    prompt: &str,
    residency: Option<Residency>,
    output: &Path,
) -> Result<EncodeReport> {
    crate::outputs::check_outputs(&[model], &[output])?;
    let t0 = std::time::Instant::now();
    let folder = PipelineFolder::open(model)?;
    let mut enc = PromptEncoder::open(gpu, &folder, residency)?;
    let encoder_tokens = enc.token_ids(prompt)?.len();
    let p = enc.encode(prompt, DEFAULT_MAX_SEQUENCE_LENGTH)?;
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
