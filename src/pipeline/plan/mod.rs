//! `wgdit plan`: the device memory a `generate` run (and, with `--train-rank`, a LoRA training
//! step) needs, planned without weights or a GPU, and how the DiT's weights would have to be held
//! to fit a budget. The arithmetic is in docs/plan.md:
//!
//! - weights: every DiT tensor's device bytes (2-D weights in their dtype, 1-D widened to f32),
//!   from a checkpoint's own tensors (`--model`) or from the dtypes a file quantized to `--weights`
//!   would hold ([`planned_dtype`]);
//! - phases, each with the VAE's f32 weights resident (the VAE is opened before the DiT): the text
//!   encoder (streamed per layer) and vision tower, the reference encodes, the modulation
//!   precompute, the denoising loop (resident DiT weights + both CFG plans' planned activations +
//!   the modulation vectors), the decode (the DiT is dropped before it);
//! - the loop's residency from `models::qwen_image::residency` (blocks 0..k resident, the rest
//!   streamed through a 2-slot ring), for both modulation strategies.

use crate::convert::quantize::KeepRule;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::models::qwen_image::bench::{summarize_with, REAL_GPU_MAX_BINDING};
use crate::models::qwen_image::dit::ForwardShape;
use crate::models::qwen_image::modulation::{
    device_bytes, is_modulation_tensor, plan_precompute, ModLayout, PIECE_BYTES,
};
use crate::models::qwen_image::residency::{plan_residency, residency, Residency};
use crate::models::qwen_image::{DitConfig, Modulation, QkvMode};
use crate::models::qwen_image_vae::{planned_memory, Pass, VaeConfig};
use crate::pipeline::dims::{self, Size, SizeRules};
use crate::pipeline::folder::PipelineClass;
use std::collections::BTreeMap;
use std::path::PathBuf;

mod quant;
mod report;

pub use quant::{planned_dtype, weight_types, weights_type};

/// Where the DiT's tensors come from.
#[derive(Clone, Debug)]
pub enum PlanModel {
    /// A built-in config with every tensor in the dtype a file quantized to `weights` (with
    /// `wgdit quantize`'s `--keep` rules) holds.
    Preset { name: String, dit: DitConfig, class: PipelineClass, weights: DType, keep: Vec<KeepRule> },
    /// A checkpoint (file or diffusers folder, `config` as `forward`) or a pipeline folder.
    Model { path: PathBuf, config: Option<PathBuf> },
}

/// What `wgdit plan` plans.
#[derive(Clone, Debug)]
pub struct PlanRequest {
    pub model: PlanModel,
    pub width: u32,
    pub height: u32,
    /// Reference images (Edit pipelines; each of the output size), 0: the class's default.
    pub images: usize,
    pub text_tokens: usize,
    pub steps: usize,
    pub cfg: bool,
    pub mode: QkvMode,
    /// Device bytes available (`--vram-budget`, `WGDIT_VRAM_BUDGET`); `None`: nothing checked.
    pub budget: Option<u64>,
    pub train_rank: Option<usize>,
}

/// Device bytes of the DiT weights of one dtype.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct DtypeBytes {
    pub tensors: usize,
    pub bytes: u64,
}

/// One phase of a run and the device bytes it needs.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PhasePeak {
    pub phase: String,
    pub peak_bytes: u64,
}

/// One way to hold the DiT weights through the loop.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Strategy {
    pub modulation: Modulation,
    pub resident_blocks: usize,
    pub ring_slots: usize,
    pub slot_bytes: u64,
    /// DiT weight bytes on the GPU during the loop (the ring included).
    pub resident_bytes: u64,
    /// Weights uploaded per denoising step (every pass uploads the streamed blocks).
    pub streamed_bytes_per_step: u64,
    /// The loop's device bytes and the largest over every phase.
    pub loop_bytes: u64,
    pub peak_bytes: u64,
}

/// LoRA training memory (`--train-rank`): one batch-1 step at the plan's size with per-block
/// checkpointing, every DiT weight resident (training computes its modulation inline).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TrainPlan {
    pub rank: usize,
    pub lora_parameters: usize,
    /// LoRA params, gradients and AdamW m and v, f32.
    pub lora_state_bytes: u64,
    pub activation_bytes: u64,
    pub weight_bytes: u64,
    /// The peak with every block resident, or with the blocks past the budget streamed (as
    /// `train --vram-budget` does: twice per step, forward and backward).
    pub peak_bytes: u64,
    pub fits: bool,
    /// Blocks kept on the GPU (all when no budget is given or everything fits).
    pub resident_blocks: usize,
    pub blocks: usize,
    /// Weight bytes uploaded per optimizer step (batch 1) for the streamed blocks.
    pub streamed_bytes_per_step: u64,
}

/// The plan. `fits`, `peak_bytes`, `weight_bytes`, `resident_bytes` and
/// `streamed_bytes_per_step` are a contract of `wgdit plan --json` (tests outside read them).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RunPlan {
    /// Whether the chosen strategy fits the budget (true when no budget is given).
    pub fits: bool,
    /// Device bytes of the chosen strategy's largest phase.
    pub peak_bytes: u64,
    /// Device bytes of every DiT weight.
    pub weight_bytes: u64,
    /// DiT weight bytes on the GPU during the loop (chosen strategy).
    pub resident_bytes: u64,
    pub streamed_bytes_per_step: u64,
    pub budget_bytes: Option<u64>,
    /// The least device memory any strategy needs (precompute or inline, all blocks streamed).
    pub minimum_bytes: u64,
    pub model: String,
    pub pipeline: String,
    /// `--weights` of a preset, or `file`.
    pub weights: String,
    pub width: u32,
    pub height: u32,
    pub references: Vec<[u32; 2]>,
    pub steps: usize,
    pub cfg: bool,
    pub mode: String,
    pub image_tokens: usize,
    pub text_tokens: usize,
    pub modulation: Modulation,
    pub resident_blocks: usize,
    pub blocks: usize,
    /// Bytes of the checkpoint's tensors as stored (1-D tensors in their file dtype).
    pub file_weight_bytes: u64,
    /// Device bytes of the DiT weights by dtype.
    pub by_dtype: BTreeMap<String, DtypeBytes>,
    /// Of `weight_bytes`: the modulation and time-embedding weights (released by precompute),
    /// the largest block (without its modulation) and the rest (embeddings, projections).
    pub modulation_weight_bytes: u64,
    pub block_bytes: u64,
    pub other_weight_bytes: u64,
    /// Planned activations of the loop (both CFG plans) and the precomputed vectors kept.
    pub activation_bytes: u64,
    pub modulation_vector_bytes: u64,
    pub vae_weight_bytes: u64,
    /// The phases of the chosen strategy.
    pub phases: Vec<PhasePeak>,
    /// Precompute and inline, with every block resident and with every block streamed.
    pub strategies: Vec<Strategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainPlan>,
}

/// The DiT's tensors: (name, shape, dtype as stored).
struct Weights {
    name: String,
    cfg: DitConfig,
    class: PipelineClass,
    vae: VaeConfig,
    /// (name, shape, dtype on the GPU, bytes in the file).
    tensors: Vec<(String, Vec<usize>, DType, u64)>,
    /// Whether the text encoder and vision tower phases are planned (presets: the real ones).
    text_encoder: bool,
    label: String,
}

fn load_weights(m: &PlanModel, images: usize) -> Result<Weights> {
    match m {
        PlanModel::Preset { name, dit, class, weights, keep } => {
            let tensors = crate::models::qwen_image::names::expected_tensors(dit)
                .into_iter()
                .map(|(n, s)| {
                    let d = planned_dtype(&n, &s, *weights, keep);
                    let file = d.bytes(s.iter().product()) as u64;
                    (n, s, d, file)
                })
                .collect();
            Ok(Weights {
                name: name.clone(),
                cfg: dit.clone(),
                class: *class,
                vae: VaeConfig::qwen_image(),
                tensors,
                text_encoder: true,
                label: weights.name().into(),
            })
        }
        PlanModel::Model { path, config } => {
            use crate::models::qwen_image::load::{validate, TensorSource};
            let folder =
                path.join("model_index.json").is_file().then(|| crate::pipeline::folder::PipelineFolder::open(path));
            let (transformer, class, vae) = match folder.transpose()? {
                Some(f) => (f.transformer.clone(), f.class, VaeConfig::from_file(&f.vae.join("config.json"))?),
                None => {
                    let class = if images > 0 { PipelineClass::EditPlus } else { PipelineClass::TextToImage };
                    (path.clone(), class, VaeConfig::qwen_image())
                }
            };
            let (cfg, ckpt) = crate::models::qwen_image::open::open(&transformer, config.as_deref())?;
            validate(&cfg, &ckpt)?;
            let mut tensors = Vec::new();
            for n in ckpt.names() {
                let (d, s) = ckpt.meta(&n).expect("cannot fail: a listed tensor");
                // As stored: raw fp8 bytes (its scale is a separate scalar), GGUF blocks.
                let file = ckpt.view(&n)?.bytes.len() as u64;
                tensors.push((n, s, d, file));
            }
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(Weights {
                name: path.display().to_string(),
                cfg,
                class,
                vae,
                tensors,
                text_encoder: false,
                label: "file".into(),
            })
        }
    }
}

/// Per block: device bytes of its weights other than its modulation.
fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("transformer_blocks.")?.split('.').next()?.parse().ok()
}

/// The sizes of the run: output, references (VAE) and vision-tower pictures.
fn run_sizes(class: PipelineClass, rules: &SizeRules, r: &PlanRequest) -> Result<(Size, Vec<Size>, Vec<Size>)> {
    let want = Size::new(r.width, r.height);
    let (w, h) = (Some(r.width), Some(r.height));
    Ok(match (class, r.images) {
        (PipelineClass::TextToImage, 0) => (dims::t2i_size(rules, w, h)?, vec![], vec![]),
        (PipelineClass::TextToImage, n) => {
            return Err(Error::input(format!(
                "--images {n}: this is a text-to-image model; plan an Edit preset (qwen-image-edit-2509, -2511) for references"
            )))
        }
        (PipelineClass::Edit, n) if n <= 1 => {
            let s = dims::edit_sizes(rules, want, w, h)?;
            (s.output, vec![s.reference], vec![s.reference])
        }
        (PipelineClass::Edit, n) => {
            return Err(Error::input(format!(
                "--images {n}: Qwen-Image-Edit takes one reference; Edit-2509/2511 (Edit-Plus) take several"
            )))
        }
        (PipelineClass::EditPlus, n) => {
            let s = dims::edit_plus_sizes(rules, &vec![want; n.max(1)], w, h)?;
            (s.output, s.vae, s.condition)
        }
    })
}

/// Everything planned once; strategies are evaluated over it.
struct Parts {
    blocks: Vec<u64>,
    other: u64,
    modulation: u64,
    vae_weights: u64,
    passes: u64,
    /// Loop activations + vectors by modulation: (inline, precompute).
    loop_extra: [u64; 2],
    /// Phases other than the loop by modulation (precompute adds its own phase).
    fixed: [Vec<PhasePeak>; 2],
}

impl Parts {
    fn index(m: Modulation) -> usize {
        usize::from(m == Modulation::Precompute)
    }
    fn other_for(&self, m: Modulation) -> u64 {
        // Inline modulation runs before the block stack: its weights stay resident.
        self.other + if m == Modulation::Inline { self.modulation } else { 0 }
    }
    fn strategy(&self, m: Modulation, r: Residency) -> Strategy {
        let vae_and_loop = r.peak_bytes;
        let fixed = self.fixed[Self::index(m)].iter().map(|p| p.peak_bytes).max().unwrap_or(0);
        Strategy {
            modulation: m,
            resident_blocks: r.resident_blocks,
            ring_slots: r.ring_slots,
            slot_bytes: r.slot_bytes,
            resident_bytes: r.resident_bytes,
            streamed_bytes_per_step: self.passes * r.streamed_bytes_per_forward,
            loop_bytes: vae_and_loop,
            peak_bytes: vae_and_loop.max(fixed),
        }
    }
    fn with_blocks(&self, m: Modulation, resident: usize) -> Strategy {
        self.strategy(m, residency(&self.blocks, self.other_for(m), self.loop_extra[Self::index(m)], resident))
    }
    /// The strategy of `m` keeping the most blocks resident within `budget`, if any fits.
    fn within(&self, m: Modulation, budget: u64) -> Option<Strategy> {
        let r = plan_residency(&self.blocks, self.other_for(m), self.loop_extra[Self::index(m)], budget).ok()?;
        Some(self.strategy(m, r)).filter(|s| s.peak_bytes <= budget)
    }
}

/// Plans the run (no GPU, no weights for presets).
pub fn plan(r: &PlanRequest) -> Result<RunPlan> {
    let w = load_weights(&r.model, r.images)?;
    let cfg = &w.cfg;
    let f = w.vae.spatial_factor() as u32;
    let rules = SizeRules::for_vae(f);
    let (out, refs, vision) = run_sizes(w.class, &rules, r)?;
    if r.text_tokens == 0 || r.steps == 0 {
        return Err(Error::input("--text-tokens and --steps must be at least 1"));
    }
    let grid = |s: &Size| [1, (s.height / f / 2) as usize, (s.width / f / 2) as usize];
    let mut img_shapes = vec![grid(&out)];
    img_shapes.extend(refs.iter().map(grid));
    let shape = ForwardShape { batch: 1, s_txt: r.text_tokens, img_shapes, masked: true };
    shape.check()?;
    let dtype_of: BTreeMap<&str, DType> = w.tensors.iter().map(|(n, _, d, _)| (n.as_str(), *d)).collect();
    // Standard names resolve in merged checkpoints through the stored q/k/v dtype.
    let wdtype = |n: &str| lookup_dtype(&dtype_of, n);

    // Weights.
    let mut by_dtype: BTreeMap<String, DtypeBytes> = BTreeMap::new();
    let mut blocks = vec![0u64; cfg.num_layers];
    let (mut total, mut file, mut modulation, mut other) = (0, 0, 0, 0);
    for (n, s, d, stored) in &w.tensors {
        let dev = device_bytes(s, *d);
        let dt = if s.len() == 2 { *d } else { DType::F32 };
        let e = by_dtype.entry(dt.name().to_string()).or_default();
        (e.tensors, e.bytes) = (e.tensors + 1, e.bytes + dev);
        total += dev;
        file += stored;
        match (is_modulation_tensor(n), block_of(n)) {
            (true, _) => modulation += dev,
            (false, Some(i)) if i < blocks.len() => blocks[i] += dev,
            _ => other += dev,
        }
    }
    let vae_weights: u64 = crate::models::qwen_image_vae::names::expected_tensors(&w.vae)
        .iter()
        .map(|(_, s)| 4 * s.iter().product::<usize>() as u64)
        .sum();
    let passes = if r.cfg { 2 } else { 1 };

    // Phases around the loop (the VAE's weights are resident in every one after the text).
    let scores = 256 << 20;
    let mut before = Vec::new();
    if w.text_encoder {
        before.push(text_phase(w.class, r.text_tokens, &vision)?);
    }
    for s in &refs {
        let m = planned_memory(&w.vae, Pass::Encode, s.height as usize, s.width as usize, scores);
        before.push(PhasePeak {
            phase: format!("VAE encode {}x{}", s.width, s.height),
            peak_bytes: vae_weights + m.peak_bytes,
        });
    }
    let (lh, lw) = ((out.height / f) as usize, (out.width / f) as usize);
    let dec = planned_memory(&w.vae, Pass::Decode { clamp: true }, lh, lw, scores);
    let decode = PhasePeak {
        phase: format!("VAE decode {}x{}", out.width, out.height),
        peak_bytes: vae_weights + dec.peak_bytes,
    };

    // The loop, both ways.
    let act = |m: Modulation| {
        passes * summarize_with(cfg, &shape, r.mode, m, REAL_GPU_MAX_BINDING, &wdtype).peak_activation_bytes
    };
    let rows = r.steps + usize::from(cfg.zero_cond_t);
    let pre = plan_precompute(cfg, r.mode, REAL_GPU_MAX_BINDING, PIECE_BYTES, rows, &wdtype);
    let t_rows = 1 + usize::from(cfg.zero_cond_t);
    let vectors = pre.store_bytes + passes * ModLayout::new(cfg, REAL_GPU_MAX_BINDING, &wdtype).row_bytes(t_rows);
    let (act_inline, act_pre) = (act(Modulation::Inline), act(Modulation::Precompute));
    let mut fixed_pre = before.clone();
    fixed_pre.push(PhasePeak {
        phase: format!("modulation precompute, {rows} t"),
        peak_bytes: vae_weights + pre.peak_bytes(),
    });
    fixed_pre.push(decode.clone());
    let mut fixed_inline = before;
    fixed_inline.push(decode);
    let parts = Parts {
        blocks: blocks.clone(),
        other,
        modulation,
        vae_weights,
        passes,
        loop_extra: [vae_weights + act_inline, vae_weights + act_pre + vectors],
        fixed: [fixed_inline, fixed_pre],
    };

    // Strategies.
    let both = [Modulation::Precompute, Modulation::Inline];
    let n = cfg.num_layers;
    let strategies: Vec<Strategy> =
        both.iter().flat_map(|&m| [parts.with_blocks(m, n), parts.with_blocks(m, 0)]).collect();
    let minimum = strategies.iter().min_by_key(|s| s.peak_bytes).expect("cannot fail: four strategies").clone();
    let (chosen, fits) = match r.budget {
        None => (parts.with_blocks(Modulation::Precompute, n), true),
        Some(b) => {
            let fitting = both.iter().filter_map(|&m| parts.within(m, b));
            // The most blocks resident; precompute first on a tie (less to hold, nothing lost).
            match fitting.reduce(|a, c| if c.resident_blocks > a.resident_blocks { c } else { a }) {
                Some(s) => (s, true),
                None => (minimum.clone(), false),
            }
        }
    };
    let mut phases = parts.fixed[Parts::index(chosen.modulation)].clone();
    let loop_phase = PhasePeak {
        phase: format!("denoising, {} pass{} per step", passes, if passes > 1 { "es" } else { "" }),
        peak_bytes: chosen.loop_bytes,
    };
    let at = phases.iter().position(|p| p.phase.starts_with("VAE decode")).unwrap_or(phases.len());
    phases.insert(at, loop_phase);
    // Training computes the modulation inline: each block streams with its modulation weights.
    let per_block_mod = modulation / n.max(1) as u64;
    let train_blocks: Vec<u64> = blocks.iter().map(|b| b + per_block_mod).collect();
    let train_other = total - train_blocks.iter().sum::<u64>();
    let train = r
        .train_rank
        .map(|rank| train_plan(cfg, &shape, r.mode, rank, (&train_blocks, train_other), r.budget, &wdtype))
        .transpose()?;
    let pre_chosen = chosen.modulation == Modulation::Precompute;
    Ok(RunPlan {
        fits,
        peak_bytes: chosen.peak_bytes,
        weight_bytes: total,
        resident_bytes: chosen.resident_bytes,
        streamed_bytes_per_step: chosen.streamed_bytes_per_step,
        budget_bytes: r.budget,
        minimum_bytes: minimum.peak_bytes,
        model: w.name.clone(),
        pipeline: w.class.class_name().into(),
        weights: w.label.clone(),
        width: out.width,
        height: out.height,
        references: refs.iter().map(|s| [s.width, s.height]).collect(),
        steps: r.steps,
        cfg: r.cfg,
        mode: r.mode.name().into(),
        image_tokens: shape.s_img(),
        text_tokens: r.text_tokens,
        modulation: chosen.modulation,
        resident_blocks: chosen.resident_blocks,
        blocks: n,
        file_weight_bytes: file,
        by_dtype,
        modulation_weight_bytes: modulation,
        block_bytes: blocks.iter().copied().max().unwrap_or(0),
        other_weight_bytes: other,
        activation_bytes: if pre_chosen { act_pre } else { act_inline },
        modulation_vector_bytes: if pre_chosen { vectors } else { 0 },
        vae_weight_bytes: parts.vae_weights,
        phases,
        strategies,
        train,
    })
}

/// The stored dtype of a standard-named tensor among `dtypes` (a merged checkpoint's q/k/v live
/// in `to_qkv` / `add_qkv_proj`); F32 when absent.
fn lookup_dtype(dtypes: &BTreeMap<&str, DType>, name: &str) -> DType {
    if let Some(d) = dtypes.get(name) {
        return *d;
    }
    crate::models::qwen_image::names::merged_home(name)
        .and_then(|(m, _)| dtypes.get(m.as_str()).copied())
        .unwrap_or(DType::F32)
}

/// The prompt phase of a preset: the vision tower on each condition picture (Edit pipelines,
/// weights resident) and the Qwen2.5-VL text encoder streamed layer by layer (prompt and
/// negative), counted as if alive together.
fn text_phase(class: PipelineClass, text_tokens: usize, vision: &[Size]) -> Result<PhasePeak> {
    use crate::pipeline::bench::{text_encoder_plan, vision_plan};
    let te = crate::models::qwen2_5_vl::EncoderConfig::qwen2_5_vl_7b();
    let (mut vision_peak, mut image_tokens) = (0, 0);
    for v in vision {
        let (p, tokens) = vision_plan(&te, v)?;
        vision_peak = vision_peak.max(p.planned_peak_bytes);
        image_tokens += tokens;
    }
    let vision_weights: u64 = if vision.is_empty() {
        0
    } else {
        let t = crate::models::qwen2_5_vl::vision::vision_tensors(&te.vision);
        t.iter().map(|(_, s)| 2 * s.iter().product::<usize>() as u64).sum()
    };
    let tokens = text_tokens + crate::pipeline::prompt::template_of(class).drop() + image_tokens + 7 * vision.len();
    let (p, _, layer) = text_encoder_plan(&te, tokens);
    let what = if vision.is_empty() {
        "text encoder (streamed)".to_string()
    } else {
        format!("vision tower ({} pictures) + text encoder (streamed)", vision.len())
    };
    Ok(PhasePeak { phase: what, peak_bytes: vision_weights + vision_peak + layer + p.planned_peak_bytes })
}

/// A LoRA training step: DiffSynth's targets at `rank`, per-block checkpointing, batch 1.
fn train_plan(
    cfg: &DitConfig,
    shape: &ForwardShape,
    mode: QkvMode,
    rank: usize,
    (block_bytes, other_bytes): (&[u64], u64),
    budget: Option<u64>,
    wdtype: &dyn Fn(&str) -> DType,
) -> Result<TrainPlan> {
    let weight_bytes = other_bytes + block_bytes.iter().sum::<u64>();
    if rank == 0 {
        return Err(Error::input("--train-rank 0: a LoRA has rank 1 or more"));
    }
    let modules = crate::models::qwen_image::bench::diffsynth_modules(cfg);
    let train = crate::nn::TrainLora { modules, rank, scale: 1.0, checkpointing: true };
    let tg =
        crate::models::qwen_image::training::build_unloaded(cfg, shape, mode, &train, REAL_GPU_MAX_BINDING, wdtype);
    let g = &tg.fg.graph;
    let lora_parameters: usize = tg
        .fg
        .trainable
        .iter()
        .map(|&(_, a, b)| g.info(a).shape.iter().product::<usize>() + g.info(b).shape.iter().product::<usize>())
        .sum();
    let activation_bytes = crate::exec::memory::plan(g).peak_activation_bytes;
    let lora_state_bytes = 4 * 4 * lora_parameters as u64;
    let fixed = activation_bytes + lora_state_bytes;
    let n = block_bytes.len();
    let all = crate::models::qwen_image::residency::residency(block_bytes, other_bytes, fixed, n);
    let (r, fits) = match budget {
        None => (all, true),
        Some(b) => match crate::models::qwen_image::residency::plan_residency(block_bytes, other_bytes, fixed, b) {
            Ok(r) => (r, true),
            Err(_) => (all, false),
        },
    };
    Ok(TrainPlan {
        rank,
        lora_parameters,
        lora_state_bytes,
        activation_bytes,
        weight_bytes,
        peak_bytes: r.peak_bytes,
        fits,
        resident_blocks: r.resident_blocks,
        blocks: n,
        streamed_bytes_per_step: 2 * r.streamed_bytes_per_forward,
    })
}
