//! `--sample-every K`: pictures made with the LoRA as it is at steps 0, K, 2K, … and the last
//! step, so a user sees it learn (docs/training.md, "Sample images").
//!
//! Each sample is one `pipeline::generate_with` run of the `--model` pipeline folder with a fixed
//! seed on the trainer's own DiT (its base, with the `--preset-lora`s folded in, so no second
//! copy of the weights) with the current LoRA at strength 1 as a runtime LoRA (built in memory
//! from the downloaded parameters), written (atomically, as every `generate` output) to
//! `<output>/samples/step-<step:06>-<i>.png`. The prompts
//! are encoded once, at the first sample (the text encoder is loaded then and dropped); the VAE
//! is opened for each sample and released on return. Samples leave the trainer's state alone
//! (the DiT gets its runtime LoRAs back), so they do not affect the training, and a resume may
//! change them freely.

use super::lora::LoraParams;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::models::qwen_image::lora::LoraSet;
use crate::models::qwen_image::runtime::Dit;
use crate::pipeline::embeds::PromptEmbeds;
use crate::pipeline::folder::PipelineFolder;
use crate::pipeline::generate::{encode_prompts, generate_with, GenerateOptions, Noise, Prompt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default denoising steps of a sample (fewer than `generate`'s 50: samples are previews).
pub const DEFAULT_SAMPLE_STEPS: usize = 20;
/// The folder under `--output` the samples go to.
pub const SAMPLES_DIR: &str = "samples";

/// `--sample-*`: what to draw and how often.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    /// Every this many optimizer steps (and at step 0 and the last step).
    pub every: u64,
    /// One picture per prompt.
    pub prompts: Vec<String>,
    /// Reference images of an Edit pipeline (as `generate --image`).
    pub images: Vec<PathBuf>,
    pub steps: usize,
    /// `--sample-size WxH` (`None`: the pipeline's default, or the references' for Edit).
    pub size: Option<(u32, u32)>,
    pub seed: u64,
    /// `--sample-ref-area` / `--sample-condition-area`: the Edit references' areas, as
    /// `generate --ref-area/--condition-area`. `None`: the areas `wgdit cache` recorded in
    /// `--data` (`cache_areas`; the samples then see their references as training did), else
    /// generate's defaults.
    pub ref_area: Option<u64>,
    pub condition_area: Option<u64>,
}

impl SampleOptions {
    /// Samples every `every` steps of `prompts`, with the defaults (20 steps, seed 0).
    pub fn new(every: u64, prompts: Vec<String>) -> SampleOptions {
        SampleOptions {
            every,
            prompts,
            images: Vec::new(),
            steps: DEFAULT_SAMPLE_STEPS,
            size: None,
            seed: 0,
            ref_area: None,
            condition_area: None,
        }
    }

    /// Whether a sample is due after `step` of a run of `total` steps.
    pub fn due(&self, step: u64, total: u64) -> bool {
        step == 0 || step == total || (self.every > 0 && step % self.every == 0)
    }
}

/// `<output>/samples/step-<step:06>-<i>.png`.
pub fn sample_path(output: &Path, step: u64, i: usize) -> PathBuf {
    output.join(SAMPLES_DIR).join(format!("step-{step:06}-{i}.png"))
}

/// Refuses sample settings that cannot work, before training starts: no prompt, K = 0, no
/// sample steps, or a `--model` that is not a pipeline folder with a text encoder and tokenizer.
pub fn check(model: &Path, s: &SampleOptions) -> Result<()> {
    if s.every == 0 {
        return Err(Error::input("--sample-every 0: must be at least 1 (leave it out for no samples)"));
    }
    if s.prompts.is_empty() {
        return Err(Error::input("--sample-every needs at least one --sample-prompt TEXT"));
    }
    if s.steps == 0 {
        return Err(Error::input("--sample-steps 0: must be at least 1"));
    }
    let hint = "--sample-every draws with the model's pipeline: pass the diffusers pipeline folder as --model";
    let folder = PipelineFolder::open(model).map_err(|e| Error::input(format!("{e}; {hint}")))?;
    let missing: Vec<&str> = [("text_encoder/", &folder.text_encoder), ("tokenizer/", &folder.tokenizer)]
        .into_iter()
        .filter(|(_, p)| p.is_none())
        .map(|(n, _)| n)
        .collect();
    if !missing.is_empty() {
        return Err(Error::input(format!(
            "--sample-every: the pipeline folder {} has no {} (needed to encode --sample-prompt)",
            model.display(),
            missing.join(" and ")
        )));
    }
    match (folder.class.is_edit(), s.images.is_empty()) {
        (true, true) => Err(Error::input(format!(
            "{} is a {}: --sample-every needs at least one --sample-image to edit",
            model.display(),
            folder.class.class_name()
        ))),
        (false, false) => {
            Err(Error::input(format!("{} is a text-to-image pipeline: it takes no --sample-image", model.display())))
        }
        _ => Ok(()),
    }
}

/// What one sample step draws with.
pub struct SampleRun<'a> {
    pub model: &'a Path,
    pub output: &'a Path,
    pub step: u64,
    /// The run's `--vram-budget`: the text encoder streams its layers when they do not fit in it
    /// beside the trainer's DiT (as in `generate`).
    pub vram_budget: Option<u64>,
}

/// The sample prompts' embeddings, encoded at the first sample and kept for the run (the text
/// encoder is loaded once, not at every sample).
#[derive(Default)]
pub struct EncodedPrompts(Option<Vec<PromptEmbeds>>);

/// Draws one picture per prompt with the trainer's DiT (`dit`, the base with any
/// `--preset-lora` folded in) and `lora` at strength 1 as its runtime LoRA, built in memory and
/// taken off again after; returns the pictures' paths.
pub fn draw(
    gpu: &Arc<Gpu>,
    s: &SampleOptions,
    lora: &LoraParams,
    r: &SampleRun<'_>,
    dit: &mut Dit,
    encoded: &mut EncodedPrompts,
) -> Result<Vec<PathBuf>> {
    let dir = r.output.join(SAMPLES_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let name = format!("the LoRA at step {}", r.step);
    let set = LoraSet::of(Path::new(&name), &lora.to_lora(DType::F32), 1.0, &dit.cfg)?;
    let own = dit.replace_loras(set);
    let written = draw_with(gpu, s, r, dit, encoded);
    dit.replace_loras(own);
    written
}

fn options(s: &SampleOptions, r: &SampleRun<'_>, i: usize, prompt: Prompt) -> GenerateOptions {
    let mut g = GenerateOptions::new(r.model.to_path_buf(), prompt, sample_path(r.output, r.step, i));
    g.images = s.images.clone();
    g.steps = s.steps;
    (g.width, g.height) = (s.size.map(|z| z.0), s.size.map(|z| z.1));
    g.noise = Noise::Seed(s.seed);
    g.vram_budget = r.vram_budget;
    g.ref_area = s.ref_area.unwrap_or(g.ref_area);
    g.condition_area = s.condition_area.unwrap_or(g.condition_area);
    g
}

fn draw_with(
    gpu: &Arc<Gpu>,
    s: &SampleOptions,
    r: &SampleRun<'_>,
    dit: &mut Dit,
    encoded: &mut EncodedPrompts,
) -> Result<Vec<PathBuf>> {
    let at = |i: usize, e: Error| Error::input(format!("sample {} at step {}: {e}", i, r.step));
    if encoded.0.is_none() {
        let g = options(s, r, 0, Prompt::Text(String::new()));
        let all = encode_prompts(gpu, &g, &s.prompts, dit.cfg.joint_attention_dim)
            .map_err(|e| Error::input(format!("the sample prompts: {e}")))?;
        encoded.0 = Some(all);
    }
    let embeds = encoded.0.as_ref().expect("cannot fail: encoded above");
    let mut written = Vec::new();
    for (i, (text, e)) in s.prompts.iter().zip(embeds).enumerate() {
        let g = options(s, r, i, Prompt::Encoded { text: text.clone(), embeds: e.clone() });
        generate_with(gpu, &g, Some(&mut *dit), &mut |_| {}).map_err(|e| at(i, e))?;
        written.push(g.output);
    }
    Ok(written)
}
