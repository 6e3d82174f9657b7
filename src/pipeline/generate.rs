//! `wgdit generate`: a pipeline folder and prompt embeddings (and, for the Edit pipelines,
//! reference images) in, a picture out, as diffusers' `QwenImagePipeline`,
//! `QwenImageEditPipeline` and `QwenImageEditPlusPipeline` compute it (float32):
//!
//! 1. sizes (`dims`): T2I from `--width/--height` (default 128·vae_scale), Edit from the
//!    references; everything snaps to multiples of 2·vae_scale;
//! 2. references (Edit): each image LANCZOS-resized from the original to its VAE size, encoded,
//!    normalised `(z − mean)/std`, packed, appended after the target tokens;
//! 3. noise: `torch.randn([1, 1, C, h, w])` of `--seed` (or `--noise`), packed;
//! 4. the denoising loop (`sample`): schedule with `mu` from the target tokens, true CFG;
//! 5. unpack, `z / (1/std) + mean`, VAE decode, `(x/2 + 0.5).clamp(0, 1)`.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::image::{pixels, resize};
use crate::models::qwen_image::latents::{pack, unpack};
use crate::models::qwen_image::open::open;
use crate::models::qwen_image::runtime::Dit;
use crate::models::qwen_image::{DitConfig, Modulation, QkvMode};
use crate::models::qwen_image_vae::config::{denormalize_latents, normalize_latents};
use crate::models::qwen_image_vae::runtime::{Pass, Tiling, Vae};
use crate::models::qwen_image_vae::tiling::TileSpec;
use crate::outputs::{check_finite, check_outputs, NONFINITE_OUTPUT_HINT};
use crate::pipeline::dims::{self, Size, SizeRules};
use crate::pipeline::embeds::PromptEmbeds;
use crate::pipeline::folder::{PipelineClass, PipelineFolder};
use crate::pipeline::noise::randn;
use crate::pipeline::sample::{sample, Reference, Sampling, StepInfo};
use crate::pipeline::scheduler::{Schedule, SchedulerConfig};
use crate::weights::checkpoint::Checkpoint;
use crate::weights::writer::write_f32_tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// QwenImagePipeline's `max_sequence_length` default: T2I keeps at most this many prompt tokens.
pub const MAX_SEQUENCE_LENGTH: usize = 512;
/// diffusers' `default_sample_size`: the T2I default side is this many latents × vae_scale.
pub const DEFAULT_SAMPLE_SIZE: u32 = 128;

/// A prompt: text (needs the text encoder) or precomputed embeddings.
#[derive(Clone, Debug)]
pub enum Prompt {
    Text(String),
    Embeds(PathBuf),
    /// Embeddings in memory (the trainer's samples encode each prompt once: [`encode_prompts`]),
    /// with the text they encode (for the picture's metadata).
    Encoded {
        text: String,
        embeds: PromptEmbeds,
    },
}

/// Where the initial noise comes from.
#[derive(Clone, Debug)]
pub enum Noise {
    /// `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`.
    Seed(u64),
    /// A `noise` [1, 1, C, h, w] f32 tensor in a safetensors file.
    File(PathBuf),
}

/// The output file's kind, from its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    Png,
    Jpeg,
    Webp,
    Safetensors,
}

impl OutputKind {
    pub fn of(path: &Path) -> Result<OutputKind> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("png") => Ok(OutputKind::Png),
            Some("jpg" | "jpeg") => Ok(OutputKind::Jpeg),
            Some("webp") => Ok(OutputKind::Webp),
            Some("safetensors") => Ok(OutputKind::Safetensors),
            _ => Err(Error::input(format!(
                "--output {}: use a .png, .jpg, .webp or .safetensors file name",
                path.display()
            ))),
        }
    }
}

/// Everything `wgdit generate` takes.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub model: PathBuf,
    pub prompt: Prompt,
    pub negative: Option<Prompt>,
    pub images: Vec<PathBuf>,
    pub output: PathBuf,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub steps: usize,
    /// Custom sigmas (instead of `linspace(1, 1/N, N)`).
    pub sigmas: Option<Vec<f64>>,
    pub true_cfg: f32,
    pub noise: Noise,
    pub loras: Vec<(PathBuf, f32)>,
    pub qkv: QkvMode,
    /// The modulation vectors: precomputed for the whole schedule (weights released before
    /// the loop) or computed in every forward.
    pub modulation: Modulation,
    pub ref_area: u64,
    pub condition_area: u64,
    pub vae_tiling: VaeTiling,
    /// diffusers' `enable_tiling` tile parameters (used when tiling).
    pub vae_tile: TileSpec,
    /// `auto` tiles when the untiled decode plan's peak exceeds this many bytes (or one
    /// activation exceeds a storage binding).
    pub vae_budget: u64,
    pub save_latents: Option<PathBuf>,
    /// Write outputs with NaN/Inf values instead of refusing them.
    pub allow_nonfinite: bool,
    /// Text encoder weights resident or streamed per layer (`None`: chosen from device memory).
    pub text_residency: Option<crate::models::qwen2_5_vl::runtime::Residency>,
    /// A text encoder other than the folder's `text_encoder/` (a folder or one safetensors file).
    pub text_encoder: Option<PathBuf>,
    /// A transformer other than the folder's `transformer/`: a GGUF file (city96 / QuantStack
    /// quantizations), an fp8 or bf16 safetensors file, or a diffusers folder. Its config is the
    /// one beside it, else the folder's `transformer/config.json`.
    pub transformer: Option<PathBuf>,
    /// Device memory the DiT (and `auto` text-encoder residency) may plan within
    /// (`--vram-budget`; `None`: the adapter's).
    pub vram_budget: Option<u64>,
}

/// `--vae-tiling`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VaeTiling {
    Auto,
    On,
    Off,
}

impl GenerateOptions {
    /// diffusers' defaults: 50 steps, true_cfg 4.0, seed 0, areas 1024² (references) and 384²
    /// (vision images), tiling when needed, fused QKV; precomputed modulation.
    pub fn new(model: PathBuf, prompt: Prompt, output: PathBuf) -> GenerateOptions {
        GenerateOptions {
            model,
            prompt,
            negative: None,
            images: Vec::new(),
            output,
            width: None,
            height: None,
            steps: crate::pipeline::scheduler::DEFAULT_NUM_INFERENCE_STEPS,
            sigmas: None,
            true_cfg: 4.0,
            noise: Noise::Seed(0),
            loras: Vec::new(),
            qkv: QkvMode::Fused,
            modulation: Modulation::Precompute,
            ref_area: 1024 * 1024,
            condition_area: 384 * 384,
            vae_tiling: VaeTiling::Auto,
            vae_tile: TileSpec::default(),
            vae_budget: 8 << 30,
            save_latents: None,
            allow_nonfinite: false,
            text_residency: None,
            text_encoder: None,
            transformer: None,
            vram_budget: None,
        }
    }
}

/// What a run did, for the summary line.
#[derive(Clone, Debug)]
pub struct GenerateReport {
    pub output: PathBuf,
    pub class: PipelineClass,
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    pub cfg: bool,
    pub step_ms: Vec<f64>,
    pub dispatches_per_step: usize,
    /// Planned activation bytes of the DiT plans (both CFG passes).
    pub dit_peak_bytes: u64,
    /// Planned bytes of the VAE decode (or of its largest tile).
    pub vae_decode_peak_bytes: u64,
    pub vae_encode_ms: f64,
    pub vae_decode_ms: f64,
    /// Tokenizing and running the text encoder (0 when embeddings were given).
    pub text_encode_ms: f64,
    /// Decode tiles (0: untiled).
    pub vae_tiles: usize,
    /// Reference images encoded (Edit pipelines).
    pub references: usize,
    /// Dispatches and planned peak of the reference encodes (all of them).
    pub vae_encode_dispatches: usize,
    pub vae_encode_peak_bytes: u64,
    /// Dispatches of the decode (over every tile when tiled).
    pub vae_decode_dispatches: usize,
    pub vae_weight_bytes: u64,
    pub weight_bytes: u64,
    /// Weight streaming of each DiT plan (the prompt's, then the negative's) over the run.
    pub stream: Vec<crate::models::qwen_image::stream::StreamReport>,
    /// The modulation precompute (None: inline) and the bytes of its vectors on the GPU.
    pub precompute: Option<crate::models::qwen_image::precompute::PrecomputeReport>,
    pub modulation_bytes: u64,
}

/// Refuses outputs that would replace an input (or each other), before anything is read.
fn check_generate_paths(o: &GenerateOptions) -> Result<()> {
    let mut inputs: Vec<&Path> = vec![&o.model];
    for p in [Some(&o.prompt), o.negative.as_ref()].into_iter().flatten() {
        if let Prompt::Embeds(f) = p {
            inputs.push(f);
        }
    }
    if let Noise::File(f) = &o.noise {
        inputs.push(f);
    }
    inputs.extend(o.images.iter().map(PathBuf::as_path));
    inputs.extend(o.loras.iter().map(|(p, _)| p.as_path()));
    inputs.extend(o.text_encoder.as_deref());
    inputs.extend(o.transformer.as_deref());
    let mut outputs: Vec<&Path> = vec![&o.output];
    if let Some(l) = &o.save_latents {
        if l == &o.output {
            return Err(Error::input(format!("--save-latents and --output are both {}", l.display())));
        }
        outputs.push(l);
    }
    check_outputs(&inputs, &outputs)
}

/// The pipeline's transformer: the folder's, or `--transformer` with the config beside it or,
/// failing that, the folder's (a downloaded GGUF file has none of its own).
fn open_transformer(folder: &PipelineFolder, file: Option<&Path>) -> Result<(DitConfig, Checkpoint)> {
    let Some(file) = file else { return open(&folder.transformer, None) };
    let own = crate::models::qwen_image::open::config_path(file, None).ok();
    open(file, Some(&own.unwrap_or_else(|| folder.transformer.join("config.json"))))
}

/// Runs the pipeline; `on_step` sees every denoising step (the CLI's progress bar).
pub fn generate(gpu: &Arc<Gpu>, o: &GenerateOptions, on_step: &mut dyn FnMut(&StepInfo<'_>)) -> Result<GenerateReport> {
    generate_with(gpu, o, None, on_step)
}

/// [`generate`], with the denoising loop on a DiT the caller holds (`lent`: the trainer's, so a
/// sample during training needs no second copy of the weights) instead of one opened from the
/// folder. The lent DiT keeps its own weights, budget, modulation and runtime LoRAs; `o.loras`
/// are added to those for the run, and its own set is back on return. `o.transformer`, `o.qkv`,
/// `o.vram_budget` and `o.modulation` are the lent DiT's business.
pub fn generate_with(
    gpu: &Arc<Gpu>,
    o: &GenerateOptions,
    lent: Option<&mut Dit>,
    on_step: &mut dyn FnMut(&StepInfo<'_>),
) -> Result<GenerateReport> {
    let kind = OutputKind::of(&o.output)?;
    check_generate_paths(o)?;
    let folder = PipelineFolder::open(&o.model)?;
    check_arguments(&folder, o)?;
    // Weights upload with the first plan, so the text encoder below still runs before the DiT
    // takes its memory.
    let mut opened: Option<Dit> = None;
    let dit: &mut Dit = match lent {
        Some(d) => d,
        None => {
            let (c, k) = open_transformer(&folder, o.transformer.as_deref())?;
            let d = opened.insert(Dit::new(gpu, c, Box::new(k), o.qkv)?);
            d.set_vram_budget(o.vram_budget);
            d.set_modulation(o.modulation);
            d
        }
    };
    let dcfg = dit.cfg.clone();
    let sched_cfg = SchedulerConfig::from_file(&folder.scheduler_config)?;
    // The text encoder runs first and is dropped before the DiT and the VAE are loaded.
    let t_text = std::time::Instant::now();
    let (mut prompt, mut negative) = read_prompts(gpu, &folder, o, dcfg.joint_attention_dim)?;
    let text_encode_ms = t_text.elapsed().as_secs_f64() * 1e3;
    if folder.class == PipelineClass::TextToImage {
        prompt.truncate(MAX_SEQUENCE_LENGTH);
        if let Some(n) = &mut negative {
            n.truncate(MAX_SEQUENCE_LENGTH);
        }
    }
    let mut vae = Vae::open(gpu, &folder.vae)?;
    let vae_scale = vae.spatial_factor() as u32;
    let z_dim = vae.config.z_dim;
    let patch = dcfg.patch_size;
    if dcfg.in_channels != z_dim * patch * patch {
        return Err(Error::input(format!(
            "the transformer takes {} channels but the VAE's z_dim {z_dim} packs to {}: mismatched components",
            dcfg.in_channels,
            z_dim * patch * patch
        )));
    }
    let rules = SizeRules {
        multiple: vae_scale * 2,
        t2i_default: DEFAULT_SAMPLE_SIZE * vae_scale,
        ref_area: o.ref_area,
        condition_area: o.condition_area,
    };

    // Sizes and references.
    let originals = o.images.iter().map(|p| pixels::load_rgb(p)).collect::<Result<Vec<_>>>()?;
    let sizes: Vec<Size> = originals.iter().map(|i| Size::new(i.width(), i.height())).collect();
    let (output, ref_sizes) = match folder.class {
        PipelineClass::TextToImage => (dims::t2i_size(&rules, o.width, o.height)?, vec![]),
        PipelineClass::Edit => {
            let s = dims::edit_sizes(&rules, sizes[0], o.width, o.height)?;
            (s.output, vec![s.reference])
        }
        PipelineClass::EditPlus => {
            let s = dims::edit_plus_sizes(&rules, &sizes, o.width, o.height)?;
            (s.output, s.vae)
        }
    };
    let t_enc = std::time::Instant::now();
    let mut references = Vec::new();
    // Edit v1 uses the first image only (as diffusers when given a list).
    for (img, size) in originals.iter().zip(&ref_sizes) {
        let resized = resize::resize_lanczos(img, size.width, size.height)?;
        let x = pixels::vae_input(&resized);
        let (h, w) = (size.height as usize, size.width as usize);
        let mut z = vae.encode(&x, h, w)?;
        normalize_latents(&vae.config, &mut z);
        let (lh, lw) = (h / vae_scale as usize, w / vae_scale as usize);
        references.push(Reference { tokens: pack(&z, [z_dim, lh, lw], patch), grid: [lh / patch, lw / patch] });
    }
    let vae_encode_ms = t_enc.elapsed().as_secs_f64() * 1e3;

    // Noise: [1, 1, C, h, w] (frame before channel), h = 2·(H // (2·vae_scale)).
    let lh = 2 * (output.height / (2 * vae_scale)) as usize;
    let lw = 2 * (output.width / (2 * vae_scale)) as usize;
    let noise = match &o.noise {
        Noise::Seed(s) => randn(*s, &[1, 1, z_dim, lh, lw]),
        Noise::File(p) => read_noise(p, [z_dim, lh, lw])?,
    };
    let grid = [lh / patch, lw / patch];
    let schedule = match &o.sigmas {
        None => Schedule::for_pipeline(&sched_cfg, o.steps, grid[0] * grid[1])?,
        Some(s) => Schedule::from_sigmas(&sched_cfg, s, Some(sched_cfg.mu(grid[0] * grid[1])))?,
    };

    // The loop.
    let loras = if o.loras.is_empty() { None } else { Some(dit.loras().clone().with_files(&o.loras, &dcfg)?) };
    let s = Sampling {
        prompt: &prompt,
        negative: negative.as_ref(),
        true_cfg: o.true_cfg,
        grid,
        references: &references,
        schedule: &schedule,
    };
    let x = pack(&noise, [z_dim, lh, lw], patch);
    let own = loras.map(|l| dit.replace_loras(l));
    let run = sample(dit, &s, x, on_step);
    if let Some(own) = own {
        dit.replace_loras(own);
    }
    let (latents, report) = run?;
    let weight_bytes = dit.weight_bytes();
    // An opened DiT's weights leave the GPU before the decode needs its memory.
    drop(opened);
    let mut z = unpack(&latents, [z_dim, lh, lw], patch);
    if !o.allow_nonfinite {
        check_finite("the final latents", &z, &[1, z_dim, 1, lh, lw], NONFINITE_OUTPUT_HINT)?;
    }
    if let Some(p) = &o.save_latents {
        write_f32_tensor(p, "latents", &z, &[1, z_dim, 1, lh, lw], &metadata(&folder, o, output, schedule.len()))?;
    }

    // Decode.
    denormalize_latents(&vae.config, &mut z);
    let tiling = match o.vae_tiling {
        VaeTiling::Off => Tiling::Off,
        VaeTiling::On => Tiling::On(o.vae_tile),
        VaeTiling::Auto => Tiling::Auto { spec: o.vae_tile, budget: o.vae_budget },
    };
    let t_dec = std::time::Instant::now();
    let (image, decoded) = vae.decode(&z, lh, lw, tiling)?;
    let vae_decode_ms = t_dec.elapsed().as_secs_f64() * 1e3;
    let (ih, iw) = (lh * vae_scale as usize, lw * vae_scale as usize);
    if !o.allow_nonfinite {
        check_finite("the decoded image", &image, &[1, 3, ih, iw], NONFINITE_OUTPUT_HINT)?;
    }
    let meta = metadata(&folder, o, output, schedule.len());
    match kind {
        OutputKind::Safetensors => {
            write_f32_tensor(&o.output, "image", &pixels::vae_output_to_unit(&image), &[1, 3, ih, iw], &meta)?
        }
        _ => {
            let rgb = pixels::vae_output_to_rgb8(&image, iw as u32, ih as u32)?;
            let text: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            match kind {
                OutputKind::Png => pixels::write_png(&o.output, &rgb, &text)?,
                other => pixels::write_image(&o.output, &rgb, other == OutputKind::Jpeg)?,
            }
        }
    }
    let decode_mem = vae.planned_memory(Pass::Decode { clamp: true }, lh, lw);
    let enc: Vec<_> =
        ref_sizes.iter().map(|s| vae.planned_memory(Pass::Encode, s.height as usize, s.width as usize)).collect();
    Ok(GenerateReport {
        output: o.output.clone(),
        class: folder.class,
        width: iw as u32,
        height: ih as u32,
        steps: schedule.len(),
        cfg: s.cfg(),
        step_ms: report.step_ms,
        dispatches_per_step: report.dispatches_per_step,
        dit_peak_bytes: report.peak_activation_bytes,
        vae_decode_peak_bytes: decode_mem.peak_bytes,
        vae_encode_ms,
        vae_decode_ms,
        text_encode_ms,
        vae_tiles: decoded.tiles,
        references: references.len(),
        vae_encode_dispatches: enc.iter().map(|m| m.dispatches).sum(),
        vae_encode_peak_bytes: enc.iter().map(|m| m.peak_bytes).max().unwrap_or(0),
        vae_decode_dispatches: decoded.dispatches,
        vae_weight_bytes: vae.weight_bytes(),
        weight_bytes,
        stream: report.stream,
        precompute: report.precompute,
        modulation_bytes: report.modulation_bytes,
    })
}

/// The class of the folder decides what the arguments may be.
fn check_arguments(folder: &PipelineFolder, o: &GenerateOptions) -> Result<()> {
    let name = folder.class.class_name();
    match (folder.class, o.images.len()) {
        (PipelineClass::TextToImage, n) if n > 0 => Err(Error::input(format!(
            "{} is a {name} (text to image): it takes no --image; use an Edit pipeline folder to edit pictures",
            folder.root.display()
        ))),
        (PipelineClass::Edit | PipelineClass::EditPlus, 0) => {
            Err(Error::input(format!("{} is a {name}: it needs at least one --image to edit", folder.root.display())))
        }
        (PipelineClass::Edit, n) if n > 1 => Err(Error::input(format!(
            "{} is a {name} (Qwen-Image-Edit), which takes one --image; {n} were given (Edit-2509/2511 take several)",
            folder.root.display()
        ))),
        _ if o.steps == 0 && o.sigmas.is_none() => Err(Error::input("--steps must be at least 1")),
        _ if !o.true_cfg.is_finite() => Err(Error::input(format!("--true-cfg {} is not a finite number", o.true_cfg))),
        _ if o.sigmas.iter().flatten().any(|s| !s.is_finite()) => Err(Error::input(format!(
            "--sigmas {:?}: every sigma must be a finite number",
            o.sigmas.iter().flatten().collect::<Vec<_>>()
        ))),
        _ => Ok(()),
    }
}

/// The embeddings `generate` would compute for each of `texts` as its prompt, without running it:
/// the text encoder (and for Edit, the vision tower on `o.images`), opened once for all, as
/// `generate` runs them, checked against the transformer's `joint_attention_dim` (`dim`; the caller
/// holds the transformer).
pub fn encode_prompts(gpu: &Arc<Gpu>, o: &GenerateOptions, texts: &[String], dim: usize) -> Result<Vec<PromptEmbeds>> {
    let prompts: Vec<(Prompt, bool)> = texts.iter().map(|t| (Prompt::Text(t.clone()), false)).collect();
    read_prompt_list(gpu, &PipelineFolder::open(&o.model)?, o, dim, &prompts)
}

/// The prompt and negative prompt as embeddings: files read, text encoded with the folder's text
/// encoder (opened once for both, and released on return).
fn read_prompts(
    gpu: &Arc<Gpu>,
    folder: &PipelineFolder,
    o: &GenerateOptions,
    dim: usize,
) -> Result<(PromptEmbeds, Option<PromptEmbeds>)> {
    let mut list = vec![(o.prompt.clone(), false)];
    list.extend(o.negative.clone().map(|n| (n, true)));
    let mut e = read_prompt_list(gpu, folder, o, dim, &list)?.into_iter();
    let prompt = e.next().expect("cannot fail: one per prompt");
    Ok((prompt, e.next()))
}

/// Each (prompt, is-negative) as embeddings, the text encoder (and the vision features of
/// `o.images`) opened once for all and released on return.
fn read_prompt_list(
    gpu: &Arc<Gpu>,
    folder: &PipelineFolder,
    o: &GenerateOptions,
    dim: usize,
    prompts: &[(Prompt, bool)],
) -> Result<Vec<PromptEmbeds>> {
    use crate::pipeline::prompt::PromptEncoder;
    let mut encoder: Option<PromptEncoder> = None;
    // The Edit pipelines' pictures through the vision tower, once for every prompt.
    let mut features: Option<crate::pipeline::prompt::ImageFeatures> = None;
    let mut read = |p: &Prompt, negative: bool| -> Result<PromptEmbeds> {
        let text = match p {
            Prompt::Embeds(path) => return PromptEmbeds::from_file(path, dim, negative),
            Prompt::Encoded { embeds, .. } if embeds.dim != dim => {
                return Err(Error::input(format!(
                    "the prompt embeddings are {} wide; the transformer's joint_attention_dim is {dim}",
                    embeds.dim
                )))
            }
            Prompt::Encoded { embeds, .. } => return Ok(embeds.clone()),
            Prompt::Text(t) => t,
        };
        if encoder.is_none() {
            let mut e = PromptEncoder::open_with(gpu, folder, o.text_residency, o.text_encoder.as_deref())?;
            if let (None, Some(budget)) = (o.text_residency, o.vram_budget) {
                // `auto` under --vram-budget: the encoder's own rule (resident when its layers take at
                // most half of the memory left) against the budget instead of the adapter's memory.
                let left = budget.saturating_sub(gpu.held_bytes());
                e.encoder.residency = if e.encoder.layer_weight_bytes() > left / 2 {
                    crate::models::qwen2_5_vl::runtime::Residency::Streamed
                } else {
                    crate::models::qwen2_5_vl::runtime::Residency::Resident
                };
            }
            encoder = Some(e);
        }
        let enc = encoder.as_mut().expect("cannot fail: opened above");
        let e = if folder.class == PipelineClass::TextToImage {
            enc.encode(text, crate::text::templates::DEFAULT_MAX_SEQUENCE_LENGTH)?
        } else {
            if features.is_none() {
                let originals = o.images.iter().map(|p| pixels::load_rgb(p)).collect::<Result<Vec<_>>>()?;
                let vl =
                    crate::pipeline::prompt::vision_images(folder.class, &originals, o.ref_area, o.condition_area)?;
                let processor =
                    folder.processor.clone().ok_or_else(|| Error::file(&folder.root, "no processor/ folder"))?;
                features = Some(enc.image_features(&processor, &vl)?);
            }
            enc.encode_with_images(text, features.as_ref().expect("cannot fail: computed above"))?
        };
        if e.dim != dim {
            return Err(Error::input(format!(
                "the text encoder's hidden size {} differs from the transformer's joint_attention_dim {dim}: mismatched components",
                e.dim
            )));
        }
        Ok(e)
    };
    prompts.iter().map(|(p, negative)| read(p, *negative)).collect()
}

/// `noise` [1, 1, C, h, w] f32 of a safetensors file.
fn read_noise(path: &Path, chw: [usize; 3]) -> Result<Vec<f32>> {
    // The f32 tensor plus a generous header: anything larger is not this noise.
    let max = 4 * chw.iter().product::<usize>() as u64 + (1 << 20);
    let bytes = crate::pipeline::folder::read_bounded_bytes(path, max)?;
    noise_from_bytes(&bytes, chw).map_err(|e| Error::file(path, e.to_string()))
}

/// The `noise` tensor of a safetensors file's bytes, checked against the output's latent shape
/// `[C, h, w]` (the fuzz entry point).
pub fn noise_from_bytes(bytes: &[u8], [c, h, w]: [usize; 3]) -> Result<Vec<f32>> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::input(format!("not a valid safetensors file: {e}")))?;
    let (shape, v) = crate::pipeline::inputs::floats(&st, "noise")?;
    if shape != [1, 1, c, h, w] {
        return Err(Error::input(format!(
            "noise is {shape:?}; this output size needs [1, 1, {c}, {h}, {w}] (batch, frame, channel, h, w)"
        )));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::input("noise holds NaN or infinite values"));
    }
    Ok(v)
}

/// The settings recorded in PNG text chunks and safetensors metadata.
fn metadata(folder: &PipelineFolder, o: &GenerateOptions, size: Size, steps: usize) -> BTreeMap<String, String> {
    let prompt = |p: &Prompt| match p {
        Prompt::Text(t) | Prompt::Encoded { text: t, .. } => t.clone(),
        Prompt::Embeds(f) => format!("embeds:{}", f.display()),
    };
    let mut m = BTreeMap::new();
    m.insert("Software".into(), format!("wgdit {}", env!("CARGO_PKG_VERSION")));
    m.insert("prompt".into(), prompt(&o.prompt));
    if let Some(n) = &o.negative {
        m.insert("negative_prompt".into(), prompt(n));
    }
    m.insert(
        "seed".into(),
        match &o.noise {
            Noise::Seed(s) => s.to_string(),
            Noise::File(f) => format!("noise:{}", f.display()),
        },
    );
    m.insert("steps".into(), steps.to_string());
    if let Some(s) = &o.sigmas {
        let list: Vec<String> = s.iter().map(f64::to_string).collect();
        m.insert("sigmas".into(), list.join(","));
    }
    m.insert("true_cfg_scale".into(), o.true_cfg.to_string());
    m.insert("size".into(), format!("{}x{}", size.width, size.height));
    m.insert("model".into(), folder.root.display().to_string());
    m.insert("pipeline".into(), folder.class.class_name().into());
    if !o.images.is_empty() {
        let list: Vec<String> = o.images.iter().map(|p| p.display().to_string()).collect();
        m.insert("images".into(), list.join(", "));
    }
    m
}
