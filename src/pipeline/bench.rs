//! `wgdit bench generate`: what each phase of a picture costs. With a pipeline folder it runs the
//! pipeline (random prompt embeddings, a seed) and times every phase; with a preset it plans the
//! same graphs at full size without weights or a GPU: dispatches and planned peak memory per
//! phase (the DiT in bf16 as released, the VAE in f32 activations).

use crate::dtype::DType;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::models::qwen_image::bench::{summarize_with, REAL_GPU_MAX_BINDING};
use crate::models::qwen_image::dit::ForwardShape;
use crate::models::qwen_image::modulation::{plan_precompute, ModLayout, PIECE_BYTES};
use crate::models::qwen_image::{DitConfig, Modulation, QkvMode};
use crate::models::qwen_image_vae::{planned_memory, Pass, VaeConfig};
use crate::pipeline::dims::{self, Size, SizeRules};
use crate::pipeline::folder::PipelineClass;
use crate::pipeline::generate::{generate, GenerateOptions, Noise, Prompt};
use crate::rng::Rng;
use std::path::PathBuf;
use std::sync::Arc;

/// One phase of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Phase {
    pub phase: String,
    /// How many times it runs per picture.
    pub count: usize,
    pub dispatches: usize,
    pub planned_peak_bytes: u64,
    /// Measured wall time of one run (ms), when run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<f64>,
}

/// The phases of one picture, and the weights it needs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GenerateBench {
    pub pipeline: String,
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    pub cfg: bool,
    pub phases: Vec<Phase>,
    /// DiT weight bytes (bf16 for presets; as stored for a folder) and VAE weight bytes.
    pub dit_weight_bytes: u64,
    pub vae_weight_bytes: u64,
    /// Text encoder decoder-layer weights (bf16): all of them (resident) and one layer (streamed);
    /// the embedding table stays on the host. 0 when not planned.
    pub text_weight_bytes: u64,
    pub text_layer_bytes: u64,
    /// The vision tower's weights (bf16, always resident; Edit pipelines), 0 when not planned.
    pub vision_weight_bytes: u64,
    /// Weight streaming of each DiT plan over the run (run with a folder and a known budget).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stream: Vec<crate::models::qwen_image::stream::StreamReport>,
    /// Where the DiT's modulation vectors come from.
    pub modulation: Modulation,
    /// With precompute: the DiT weight bytes released before the loop (modulation and time
    /// embedding) and the bytes of the precomputed vectors kept through it; 0 otherwise.
    pub modulation_weight_bytes: u64,
    pub modulation_vector_bytes: u64,
}

impl GenerateBench {
    /// A plain-text table.
    pub fn table(&self) -> String {
        let mib = |b: u64| b as f64 / 1048576.0;
        let mut s = format!(
            "{} {}x{}, {} steps{}\n{:<30}{:>7}{:>12}{:>18}{:>12}\n",
            self.pipeline,
            self.width,
            self.height,
            self.steps,
            if self.cfg { ", true CFG" } else { "" },
            "phase",
            "runs",
            "dispatches",
            "planned peak MiB",
            "ms / run"
        );
        for p in &self.phases {
            let ms = p.ms.map_or("-".to_string(), |t| format!("{t:.1}"));
            s.push_str(&format!(
                "{:<30}{:>7}{:>12}{:>18.1}{:>12}\n",
                p.phase,
                p.count,
                p.dispatches,
                mib(p.planned_peak_bytes),
                ms
            ));
        }
        s.push_str(&format!(
            "weights: DiT {:.2} MiB, VAE {:.2} MiB",
            mib(self.dit_weight_bytes),
            mib(self.vae_weight_bytes)
        ));
        if self.text_weight_bytes > 0 {
            s.push_str(&format!(
                ", text encoder {:.2} MiB resident or {:.2} MiB streamed (one layer)",
                mib(self.text_weight_bytes),
                mib(self.text_layer_bytes)
            ));
        }
        if self.vision_weight_bytes > 0 {
            s.push_str(&format!(", vision tower {:.2} MiB", mib(self.vision_weight_bytes)));
        }
        s.push('\n');
        for r in self.stream.iter().filter(|r| r.resident_blocks < r.blocks) {
            s.push_str(&format!("{}\n", r.line()));
        }
        match self.modulation {
            Modulation::Precompute => s.push_str(&format!(
                "modulation: precomputed before the loop ({:.2} MiB of vectors kept; {:.2} MiB of DiT weights released before the blocks upload)\n",
                mib(self.modulation_vector_bytes),
                mib(self.modulation_weight_bytes)
            )),
            Modulation::Inline => s.push_str("modulation: inline (computed in every forward; its weights stay resident)\n"),
        }
        s
    }
}

/// The output size and the reference sizes a pipeline class uses for a `width × height` request
/// (Edit references: the same size as the output, as when editing a picture of that size).
fn sizes(class: PipelineClass, rules: &SizeRules, width: u32, height: u32) -> Result<(Size, Vec<Size>)> {
    let want = Size::new(width, height);
    Ok(match class {
        PipelineClass::TextToImage => (dims::t2i_size(rules, Some(width), Some(height))?, vec![]),
        PipelineClass::Edit => {
            let s = dims::edit_sizes(rules, want, Some(width), Some(height))?;
            (s.output, vec![s.reference])
        }
        PipelineClass::EditPlus => {
            let s = dims::edit_plus_sizes(rules, &[want], Some(width), Some(height))?;
            (s.output, s.vae)
        }
    })
}

/// Plans every phase of a `width × height` picture of `class` on the preset models, with no
/// weights and no GPU (DiT weights in bf16, `text_tokens` prompt tokens, CFG on, 50 steps).
#[allow(clippy::too_many_arguments)]
pub fn plan_preset(
    dit: &DitConfig,
    vae: &VaeConfig,
    class: PipelineClass,
    width: u32,
    height: u32,
    text_tokens: usize,
    mode: QkvMode,
    modulation: Modulation,
) -> Result<GenerateBench> {
    const STEPS: usize = 50;
    let f = vae.spatial_factor() as u32;
    let rules = SizeRules::for_vae(f);
    let (out, refs) = sizes(class, &rules, width, height)?;
    let scores = 256 << 20;
    let mut phases = Vec::new();
    let te = crate::models::qwen2_5_vl::EncoderConfig::qwen2_5_vl_7b();
    // The Edit pipelines' vision input: Edit's reference, Edit-Plus's condition picture (384²).
    let vision_sizes: Vec<Size> = match class {
        PipelineClass::TextToImage => vec![],
        PipelineClass::Edit => refs.clone(),
        PipelineClass::EditPlus => {
            let (w, h) = dims::calculate_dimensions(rules.condition_area, width as f64 / height.max(1) as f64);
            vec![Size::new(w, h)]
        }
    };
    let mut image_tokens = 0;
    for v in &vision_sizes {
        let (phase, tokens) = vision_plan(&te, v)?;
        image_tokens += tokens;
        phases.push(phase);
    }
    // Template + prompt + per picture its tokens and `Picture i: <|vision_start|> … <|vision_end|>`.
    let te_tokens =
        text_tokens + crate::pipeline::prompt::template_of(class).drop() + image_tokens + 7 * vision_sizes.len();
    let (te_phase, text_weight_bytes, text_layer_bytes) = text_encoder_plan(&te, te_tokens);
    phases.push(te_phase);
    for r in &refs {
        let m = planned_memory(vae, Pass::Encode, r.height as usize, r.width as usize, scores);
        phases.push(Phase {
            phase: format!("VAE encode {}x{}", r.width, r.height),
            count: 1,
            dispatches: m.dispatches,
            planned_peak_bytes: m.peak_bytes,
            ms: None,
        });
    }
    let grid = |s: &Size| [1, (s.height / f / 2) as usize, (s.width / f / 2) as usize];
    let mut img_shapes = vec![grid(&out)];
    img_shapes.extend(refs.iter().map(grid));
    let shape = ForwardShape { batch: 1, s_txt: text_tokens, img_shapes, masked: true };
    let bf16 = |_: &str| DType::BF16;
    let d = summarize_with(dit, &shape, mode, modulation, REAL_GPU_MAX_BINDING, &bf16);
    // The precompute: one row per step (+ the t = 0 row of zero_cond_t), once for both passes;
    // each pass then reads its own copy of the step's rows.
    let (mut modulation_weight_bytes, mut modulation_vector_bytes, mut step_inputs) = (0, 0, 0);
    if modulation == Modulation::Precompute {
        let rows = STEPS + usize::from(dit.zero_cond_t);
        let p = plan_precompute(dit, mode, REAL_GPU_MAX_BINDING, PIECE_BYTES, rows, &bf16);
        let t_rows = 1 + usize::from(dit.zero_cond_t);
        step_inputs = 2 * ModLayout::new(dit, REAL_GPU_MAX_BINDING, &bf16).row_bytes(t_rows);
        (modulation_weight_bytes, modulation_vector_bytes) = (p.released_bytes, p.store_bytes + step_inputs);
        phases.push(Phase {
            phase: format!("modulation precompute, {rows} t"),
            count: 1,
            dispatches: p.dispatches,
            planned_peak_bytes: p.store_bytes + p.activation_peak_bytes,
            ms: None,
        });
    }
    // True CFG: two planned passes per step (prompt and negative), both plans alive.
    phases.push(Phase {
        phase: format!("step: 2 DiT passes, {} tok", shape.s_img() + text_tokens),
        count: STEPS,
        dispatches: 2 * d.dispatches_per_step,
        planned_peak_bytes: 2 * d.peak_activation_bytes + step_inputs,
        ms: None,
    });
    let (lh, lw) = ((out.height / f) as usize, (out.width / f) as usize);
    let m = planned_memory(vae, Pass::Decode { clamp: true }, lh, lw, scores);
    phases.push(Phase {
        phase: format!("VAE decode {}x{}", out.width, out.height),
        count: 1,
        dispatches: m.dispatches,
        planned_peak_bytes: m.peak_bytes,
        ms: None,
    });
    let count = |t: Vec<(String, Vec<usize>)>| t.iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum::<u64>();
    Ok(GenerateBench {
        pipeline: class.class_name().into(),
        width: out.width,
        height: out.height,
        steps: STEPS,
        cfg: true,
        phases,
        dit_weight_bytes: 2 * count(crate::models::qwen_image::names::expected_tensors(dit)),
        vae_weight_bytes: 4 * count(crate::models::qwen_image_vae::names::expected_tensors(vae)),
        text_weight_bytes,
        text_layer_bytes,
        vision_weight_bytes: if vision_sizes.is_empty() {
            0
        } else {
            let t = crate::models::qwen2_5_vl::vision::vision_tensors(&te.vision);
            t.iter().map(|(_, s)| 2 * s.iter().product::<usize>() as u64).sum()
        },
        stream: Vec::new(),
        modulation,
        modulation_weight_bytes,
        modulation_vector_bytes,
    })
}

/// The vision tower's phase on one picture of `size` (after `smart_resize`), and its image tokens.
pub(crate) fn vision_plan(cfg: &crate::models::qwen2_5_vl::EncoderConfig, size: &Size) -> Result<(Phase, usize)> {
    use crate::models::qwen2_5_vl::{positions, processor::ProcessorConfig, vision};
    let p = ProcessorConfig::default();
    let (h, w) = p.smart_resize(size.height as usize, size.width as usize)?;
    let grid = [1, h / p.patch_size, w / p.patch_size];
    let v = &cfg.vision;
    let window = v.window_size / v.patch_size / v.spatial_merge_size;
    let (_, cu) = positions::window_index(&[grid], v.spatial_merge_size, window);
    let n = grid[1] * grid[2];
    let g = vision::build(v, n, cu.len() - 1, 1, &|_| DType::BF16);
    let mem = crate::exec::memory::plan(&g.graph);
    let phase = Phase {
        phase: format!("vision tower {w}x{h}, {n} patches"),
        count: 1,
        dispatches: g.graph.dispatch_count(),
        planned_peak_bytes: mem.peak_activation_bytes + 4 * (n * (v.hidden_size / v.num_heads)) as u64,
        ms: None,
    };
    Ok((phase, n / (v.spatial_merge_size * v.spatial_merge_size)))
}

/// The text encoder's phase at `tokens` encoder tokens (prompt and negative: 2 runs), with its
/// bf16 layer weights all resident and one layer (streamed).
pub(crate) fn text_encoder_plan(cfg: &crate::models::qwen2_5_vl::EncoderConfig, tokens: usize) -> (Phase, u64, u64) {
    use crate::models::qwen2_5_vl::{lm, names};
    let t = &cfg.text;
    let g = lm::build(t, tokens, 0..t.num_hidden_layers, true, &|_| DType::BF16);
    let mem = crate::exec::memory::plan(&g.graph);
    let bytes = |pred: &dyn Fn(&str) -> bool| -> u64 {
        names::text_tensors(cfg)
            .iter()
            .filter(|(n, _)| pred(n))
            .map(|(_, s)| 2 * s.iter().product::<usize>() as u64)
            .sum()
    };
    let all = bytes(&|n| n != "model.embed_tokens.weight");
    let one = bytes(&|n| n.starts_with("model.layers.0."));
    // x (the residual stream) and the RoPE table are bound from outside the plan.
    let io = 4 * (tokens * t.hidden_size + tokens * t.head_dim) as u64;
    let phase = Phase {
        phase: format!("text encoder, {tokens} tok"),
        count: 2,
        dispatches: g.graph.dispatch_count(),
        planned_peak_bytes: mem.peak_activation_bytes + io,
        ms: None,
    };
    (phase, all, one)
}

/// What `bench generate --model` runs.
pub struct BenchRun {
    pub model: PathBuf,
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    pub text_tokens: usize,
    /// Reference images (Edit pipelines); none: a synthetic picture of the output size.
    pub images: Vec<PathBuf>,
    pub mode: QkvMode,
    pub modulation: Modulation,
    /// `--ref-area` of the run.
    pub ref_area: u64,
    /// `--vram-budget` of the DiT (`None`: the adapter's memory).
    pub vram_budget: Option<u64>,
}

/// Runs the pipeline once with random prompt embeddings (prompt and a negative of the same
/// length, so CFG runs) and reports every phase's time, dispatches and planned peak.
pub fn run(gpu: &Arc<Gpu>, b: &BenchRun) -> Result<GenerateBench> {
    let folder = crate::pipeline::folder::PipelineFolder::open(&b.model)?;
    let (dcfg, _) = crate::models::qwen_image::open::open(&folder.transformer, None)?;
    let dir = std::env::temp_dir().join(format!("wgdit-bench-generate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
    let embeds = dir.join("embeds.safetensors");
    let mut rng = Rng::new(7);
    let e = rng.vec_normal(b.text_tokens * dcfg.joint_attention_dim, 1.0);
    let shape = [1, b.text_tokens, dcfg.joint_attention_dim];
    crate::weights::writer::write_f32_tensor(&embeds, "prompt_embeds", &e, &shape, &Default::default())?;
    let mut images = b.images.clone();
    if folder.class.is_edit() && images.is_empty() {
        let p = dir.join("reference.png");
        let img = ::image::RgbImage::from_fn(b.width, b.height, |x, y| {
            ::image::Rgb([(x * 255 / b.width.max(1)) as u8, (y * 255 / b.height.max(1)) as u8, 128])
        });
        crate::image::pixels::write_png(&p, &img, &[])?;
        images.push(p);
    }
    let out = dir.join("image.safetensors");
    let mut o = GenerateOptions::new(b.model.clone(), Prompt::Embeds(embeds.clone()), out);
    o.negative = Some(Prompt::Embeds(embeds));
    (o.width, o.height, o.steps, o.noise, o.images, o.qkv) =
        (Some(b.width), Some(b.height), b.steps, Noise::Seed(0), images, b.mode);
    (o.ref_area, o.vram_budget, o.modulation) = (b.ref_area, b.vram_budget, b.modulation);
    let r = generate(gpu, &o, &mut |_| {});
    let _ = std::fs::remove_dir_all(&dir);
    let r = r?;
    let mean = r.step_ms.iter().sum::<f64>() / r.step_ms.len().max(1) as f64;
    let mut phases = Vec::new();
    if r.references > 0 {
        phases.push(Phase {
            phase: "VAE encode".into(),
            count: r.references,
            dispatches: r.vae_encode_dispatches,
            planned_peak_bytes: r.vae_encode_peak_bytes,
            ms: Some(r.vae_encode_ms / r.references as f64),
        });
    }
    if let Some(p) = &r.precompute {
        phases.push(Phase {
            phase: format!("modulation precompute, {} t", p.rows),
            count: 1,
            dispatches: p.dispatches,
            planned_peak_bytes: p.store_bytes,
            ms: Some(p.ms),
        });
    }
    phases.push(Phase {
        phase: if r.cfg { "step: 2 DiT passes".into() } else { "step: 1 DiT pass".into() },
        count: r.steps,
        dispatches: r.dispatches_per_step,
        planned_peak_bytes: r.dit_peak_bytes,
        ms: Some(mean),
    });
    phases.push(Phase {
        phase: "VAE decode".into(),
        count: 1,
        dispatches: r.vae_decode_dispatches,
        planned_peak_bytes: r.vae_decode_peak_bytes,
        ms: Some(r.vae_decode_ms),
    });
    Ok(GenerateBench {
        pipeline: r.class.class_name().into(),
        width: r.width,
        height: r.height,
        steps: r.steps,
        cfg: r.cfg,
        phases,
        dit_weight_bytes: r.weight_bytes,
        vae_weight_bytes: r.vae_weight_bytes,
        // random embeddings: the text encoder does not run
        text_weight_bytes: 0,
        text_layer_bytes: 0,
        vision_weight_bytes: 0,
        stream: r.stream,
        modulation: b.modulation,
        modulation_weight_bytes: r.precompute.as_ref().map_or(0, |p| p.released_bytes),
        modulation_vector_bytes: r.modulation_bytes,
    })
}
