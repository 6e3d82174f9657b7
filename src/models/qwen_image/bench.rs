//! Dispatch accounting of the DiT graph (`wgdit bench dispatches`), computed from the graph
//! itself: no GPU and no weights are needed to count.

use crate::dtype::DType;
use crate::exec::memory;
use crate::models::qwen_image::dit::{build_forward, BuildOptions, ForwardShape, QkvMode};
use crate::models::qwen_image::{DitConfig, Modulation};
use std::collections::BTreeMap;

#[derive(Clone, Debug, serde::Serialize)]
pub struct DispatchSummary {
    pub mode: String,
    /// Dispatches of block 0 (every block but the last has the same graph).
    pub dispatches_per_block: usize,
    /// Dispatches of one whole forward (one denoising step without CFG).
    pub dispatches_per_step: usize,
    pub peak_activation_bytes: u64,
    pub naive_activation_bytes: u64,
    /// Block 0's dispatches by op category.
    pub by_op: BTreeMap<String, usize>,
    /// Dispatches outside the block stack, by op category.
    pub outside_blocks: BTreeMap<String, usize>,
    /// Mean wall time of one forward on the current adapter, when weights were given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_ms: Option<f64>,
}

/// The op categories every table shows, in order (zero when fused away).
pub const CATEGORIES: &[&str] = &["modulation", "norm", "qkv", "qkv_post", "attention", "out_proj", "ffn", "residual"];

pub fn summarize(
    cfg: &DitConfig,
    shape: &ForwardShape,
    mode: QkvMode,
    max_binding: u64,
    wdtype: &dyn Fn(&str) -> DType,
) -> DispatchSummary {
    summarize_with(cfg, shape, mode, Modulation::Inline, max_binding, wdtype)
}

/// [`summarize`] of the graph with its modulation inline or precomputed (an input).
pub fn summarize_with(
    cfg: &DitConfig,
    shape: &ForwardShape,
    mode: QkvMode,
    modulation: Modulation,
    max_binding: u64,
    wdtype: &dyn Fn(&str) -> DType,
) -> DispatchSummary {
    let opts = BuildOptions { train: None, lora: None, mode, max_binding, keep_block_outputs: false, modulation };
    summarize_graph(mode, &build_forward(cfg, shape, opts, wdtype))
}

/// Counts of one built forward graph.
pub fn summarize_graph(mode: QkvMode, f: &crate::models::qwen_image::dit::ForwardGraph) -> DispatchSummary {
    let m = memory::plan(&f.graph);
    let mut by_op: BTreeMap<String, usize> = CATEGORIES.iter().map(|c| (c.to_string(), 0)).collect();
    let mut outside = BTreeMap::new();
    for n in &f.graph.nodes {
        match n.label.layer {
            Some(0) => *by_op.entry(n.label.op.clone()).or_default() += n.op.dispatches(),
            None => *outside.entry(n.label.op.clone()).or_default() += n.op.dispatches(),
            _ => {}
        }
    }
    DispatchSummary {
        mode: mode.name().to_string(),
        dispatches_per_block: by_op.values().sum(),
        dispatches_per_step: f.graph.dispatch_count(),
        peak_activation_bytes: m.peak_activation_bytes,
        naive_activation_bytes: m.naive_activation_bytes,
        by_op,
        outside_blocks: outside,
        forward_ms: None,
    }
}

/// An image token grid for `tokens` tokens: the factor pair closest to square.
pub fn grid_for(tokens: usize) -> [usize; 3] {
    let mut h = (tokens as f64).sqrt() as usize;
    while h > 1 && tokens % h != 0 {
        h -= 1;
    }
    [1, h.max(1), tokens / h.max(1)]
}

/// A plain-text table with one column per mode.
pub fn table(rows: &[DispatchSummary]) -> String {
    let mut s = format!("{:<34}", "dispatches per block");
    for r in rows {
        s.push_str(&format!("{:>12}", r.mode));
    }
    s.push('\n');
    let line = |s: &mut String, name: &str, f: &dyn Fn(&DispatchSummary) -> String| {
        s.push_str(&format!("{name:<34}"));
        for r in rows {
            s.push_str(&format!("{:>12}", f(r)));
        }
        s.push('\n');
    };
    for c in CATEGORIES {
        line(&mut s, &format!("  {c}"), &|r| r.by_op.get(*c).copied().unwrap_or(0).to_string());
    }
    line(&mut s, "  total per block", &|r| r.dispatches_per_block.to_string());
    line(&mut s, "dispatches per forward step", &|r| r.dispatches_per_step.to_string());
    line(&mut s, "planned peak activations (MiB)", &|r| format!("{:.1}", r.peak_activation_bytes as f64 / 1048576.0));
    line(&mut s, "naive sum of activations (MiB)", &|r| format!("{:.1}", r.naive_activation_bytes as f64 / 1048576.0));
    if rows.iter().any(|r| r.forward_ms.is_some()) {
        line(&mut s, "wall time per forward (ms)", &|r| r.forward_ms.map_or("-".into(), |t| format!("{t:.2}")));
    }
    s
}

/// Sizes of a dispatch bench.
pub struct DispatchBench {
    pub tokens: usize,
    pub text_tokens: usize,
    pub runs: usize,
}

impl DispatchBench {
    /// Refuses sizes outside the forward's bounds (`--tokens`, `--text-tokens`).
    pub fn check(&self) -> crate::Result<()> {
        use super::dit::{MAX_IMAGE_TOKENS, MAX_TEXT_TOKENS};
        for (flag, v, max) in
            [("tokens", self.tokens, MAX_IMAGE_TOKENS), ("text-tokens", self.text_tokens, MAX_TEXT_TOKENS)]
        {
            if v == 0 || v > max {
                return Err(crate::Error::input(format!("--{flag} {v}: must be 1..={max}")));
            }
        }
        self.shape().check()
    }

    pub fn shape(&self) -> ForwardShape {
        ForwardShape { batch: 1, s_txt: self.text_tokens, img_shapes: vec![grid_for(self.tokens)], masked: false }
    }
}

/// wgdit caps one storage binding at 2 GiB − 1 on every backend (`gpu::MAX_BINDING`; wgpu does
/// so except on Metal), so that is what the fused mode packs modulation weights into on a real GPU.
pub const REAL_GPU_MAX_BINDING: u64 = crate::gpu::MAX_BINDING;

/// Counts a preset's graph per mode (bf16 weights, as released), with no weights and no GPU.
pub fn count_preset(cfg: &DitConfig, b: &DispatchBench, modes: &[QkvMode]) -> Vec<DispatchSummary> {
    modes.iter().map(|&m| summarize(cfg, &b.shape(), m, REAL_GPU_MAX_BINDING, &|_| DType::BF16)).collect()
}

/// Counts and times a real checkpoint per mode on `gpu`, all modes in one run.
pub fn measure_model(
    gpu: &std::sync::Arc<crate::gpu::Gpu>,
    model: &std::path::Path,
    config: Option<&std::path::Path>,
    b: &DispatchBench,
    modes: &[QkvMode],
) -> crate::Result<Vec<DispatchSummary>> {
    let shape = b.shape();
    let mut out = Vec::new();
    for &mode in modes {
        let (cfg, ckpt) = crate::models::qwen_image::open::open(model, config)?;
        let inputs = random_inputs(&cfg, &shape, 0);
        let mut dit = crate::models::qwen_image::runtime::Dit::new(gpu, cfg.clone(), Box::new(ckpt), mode)?;
        let ms = time_forward(gpu, &mut dit, &inputs, b.runs)?;
        let mut s = summarize_graph(mode, &dit.graph(&shape, false));
        s.forward_ms = Some(ms);
        out.push(s);
    }
    Ok(out)
}

/// Mean wall time (ms) of `runs` forwards after one warm-up, with a queue sync in the timed region.
pub fn time_forward(
    gpu: &crate::gpu::Gpu,
    dit: &mut crate::models::qwen_image::runtime::Dit,
    inputs: &crate::pipeline::inputs::ForwardInputs,
    runs: usize,
) -> crate::Result<f64> {
    let plan = dit.plan(&inputs.shape(), false)?;
    plan.write_inputs(inputs);
    plan.submit()?;
    gpu.sync()?;
    let t0 = std::time::Instant::now();
    for _ in 0..runs.max(1) {
        plan.submit()?;
        gpu.sync()?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3 / runs.max(1) as f64)
}

/// Seeded random inputs of a shape (latents and text ~ N(0, 1), σ = 0.5).
pub fn random_inputs(cfg: &DitConfig, shape: &ForwardShape, seed: u64) -> crate::pipeline::inputs::ForwardInputs {
    let mut rng = crate::rng::Rng::new(seed);
    let b = shape.batch;
    crate::pipeline::inputs::ForwardInputs {
        batch: b,
        hidden: rng.vec_normal(b * shape.s_img() * cfg.in_channels, 1.0),
        text: rng.vec_normal(b * shape.s_txt * cfg.joint_attention_dim, 1.0),
        s_txt: shape.s_txt,
        mask: shape.masked.then(|| vec![1.0; b * shape.s_txt]),
        timestep: vec![0.5; b],
        img_shapes: shape.img_shapes.clone(),
    }
}

/// Counts of one LoRA training step (forward + backward, batch 1) on a preset, without weights:
/// DiffSynth's targets at `rank`, with and without per-block checkpointing.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainSummary {
    pub mode: String,
    pub checkpointing: bool,
    pub dispatches_per_block: usize,
    pub dispatches_per_step: usize,
    pub peak_activation_bytes: u64,
    pub lora_parameters: usize,
}

/// DiffSynth's 12 LoRA targets of every block (its Qwen-Image training scripts).
pub fn diffsynth_modules(cfg: &DitConfig) -> Vec<String> {
    let suffixes = [
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.add_q_proj",
        "attn.add_k_proj",
        "attn.add_v_proj",
        "attn.to_out.0",
        "attn.to_add_out",
        "img_mlp.net.2",
        "img_mod.1",
        "txt_mlp.net.2",
        "txt_mod.1",
    ];
    (0..cfg.num_layers).flat_map(|i| suffixes.map(|s| format!("transformer_blocks.{i}.{s}"))).collect()
}

pub fn count_training(cfg: &DitConfig, b: &DispatchBench, modes: &[QkvMode], rank: usize) -> Vec<TrainSummary> {
    let modules = diffsynth_modules(cfg);
    let mut out = Vec::new();
    for &mode in modes {
        for checkpointing in [false, true] {
            let train = crate::nn::TrainLora { modules: modules.clone(), rank, scale: 1.0, checkpointing };
            let tg = crate::models::qwen_image::training::build_unloaded(
                cfg,
                &b.shape(),
                mode,
                &train,
                REAL_GPU_MAX_BINDING,
                &|_| DType::BF16,
            );
            let g = &tg.fg.graph;
            let per_block = g.nodes.iter().filter(|n| n.label.layer == Some(0)).map(|n| n.op.dispatches()).sum();
            let lora_parameters = tg
                .fg
                .trainable
                .iter()
                .map(|&(_, a, bm)| {
                    g.info(a).shape.iter().product::<usize>() + g.info(bm).shape.iter().product::<usize>()
                })
                .sum();
            out.push(TrainSummary {
                mode: mode.name().into(),
                checkpointing,
                dispatches_per_block: per_block,
                dispatches_per_step: g.dispatch_count(),
                peak_activation_bytes: memory::plan(g).peak_activation_bytes,
                lora_parameters,
            });
        }
    }
    out
}

/// One residency of the streaming bench ([`measure_streaming`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct StreamBenchRow {
    pub resident_blocks: usize,
    pub blocks: usize,
    /// Blocks assembled on a worker thread while the GPU computes (else in turn).
    pub worker: bool,
    /// Median wall time of one forward (submission to completion).
    pub forward_ms: f64,
    /// `forward_ms` over the all-resident forward's.
    pub ratio: f64,
    /// Per forward: bytes uploaded, host upload work (assembly + write), GPU time between
    /// segments (timestamps).
    pub uploaded_bytes: u64,
    pub upload_ms: f64,
    pub assembly_ms: f64,
    pub write_ms: f64,
    pub wait_assembly_ms: f64,
    pub gpu_gap_ms: Option<f64>,
    /// The host upload work hidden behind compute: polled (`StreamReport::hidden_fraction`) and
    /// from wall time, 1 − (forward_ms − resident forward_ms) / upload_ms in [0, 1] (the extra
    /// wall time includes the device-side copies, so both are lower bounds).
    pub hidden_polled: Option<f64>,
    pub hidden_wall: Option<f64>,
}

/// Times the forward of `shape` with blocks `0..k` resident for each `(k, worker)` of `cases`,
/// next to the all-resident forward: every plan is made first (`make` opens the model afresh for
/// each, the same weights), warmed up once, then `runs` rounds run one forward of each plan in
/// turn, so that a machine's drifting load hits every case alike; the median forward counts.
pub fn measure_streaming(
    make: &mut dyn FnMut() -> crate::Result<crate::models::qwen_image::runtime::Dit>,
    shape: &ForwardShape,
    cases: &[(usize, bool)],
    runs: usize,
) -> crate::Result<Vec<StreamBenchRow>> {
    let runs = runs.max(1);
    let mut plans = Vec::new();
    let all = make()?.cfg.num_layers;
    for &(k, worker) in std::iter::once(&(all, true)).chain(cases) {
        let mut dit = make()?;
        dit.set_resident_blocks(Some(k));
        dit.set_upload_worker(worker);
        let plan = dit.plan(shape, false)?;
        plan.write_inputs(&random_inputs(&dit.cfg, shape, 0));
        plan.submit()?;
        plan.image_rows(plan.graph.output)?; // waits
        let _ = plan.stream_report();
        plans.push((k.min(all), worker, dit, plan, Vec::with_capacity(runs)));
    }
    for _ in 0..runs {
        for (_, _, _, plan, times) in plans.iter_mut() {
            let t0 = std::time::Instant::now();
            plan.submit()?;
            plan.plan.read(plan.graph.timestep.unwrap_or(plan.graph.text))?; // waits for the GPU (a small input)
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut rows: Vec<StreamBenchRow> = Vec::new();
    for (k, worker, _, plan, mut times) in plans {
        times.sort_by(f64::total_cmp);
        let forward_ms = times[times.len() / 2];
        let r = plan.stream_report().unwrap_or_default();
        let per = |v: f64| v / runs as f64;
        let base = rows.first().map_or(forward_ms, |r| r.forward_ms);
        let upload_ms = per(r.upload_ms());
        rows.push(StreamBenchRow {
            resident_blocks: k,
            blocks: all,
            worker,
            forward_ms,
            ratio: forward_ms / base,
            uploaded_bytes: r.uploaded_bytes / runs as u64,
            upload_ms,
            assembly_ms: per(r.assembly_ms),
            write_ms: per(r.write_ms),
            wait_assembly_ms: per(r.wait_assembly_ms),
            gpu_gap_ms: r.gpu_gap_ms.map(per),
            hidden_polled: r.hidden_fraction(),
            hidden_wall: (upload_ms > 0.0).then(|| (1.0 - (forward_ms - base) / upload_ms).clamp(0.0, 1.0)),
        });
    }
    Ok(rows)
}

/// A plain-text table of [`measure_streaming`]'s rows.
pub fn stream_table(rows: &[StreamBenchRow]) -> String {
    let pct = |v: Option<f64>| v.map_or("-".into(), |h| format!("{:.0}%", h * 100.0));
    let mut s = format!(
        "{:>9} {:>7} {:>11} {:>7} {:>12} {:>10} {:>9} {:>8} {:>11} {:>9} {:>9} {:>9}\n",
        "resident",
        "worker",
        "ms/forward",
        "ratio",
        "uploaded MiB",
        "upload ms",
        "assembly",
        "write",
        "wait asm",
        "GPU gap",
        "hidden",
        "hidden wall"
    );
    for r in rows {
        s.push_str(&format!(
            "{:>9} {:>7} {:>11.2} {:>7.2} {:>12.2} {:>10.2} {:>9.2} {:>8.2} {:>11.2} {:>9} {:>9} {:>9}\n",
            format!("{}/{}", r.resident_blocks, r.blocks),
            if r.worker { "yes" } else { "no" },
            r.forward_ms,
            r.ratio,
            r.uploaded_bytes as f64 / 1048576.0,
            r.upload_ms,
            r.assembly_ms,
            r.write_ms,
            r.wait_assembly_ms,
            r.gpu_gap_ms.map_or("-".into(), |g| format!("{g:.2}")),
            pct(r.hidden_polled),
            pct(r.hidden_wall),
        ));
    }
    s
}

/// [`measure_streaming`] on a checkpoint (`wgdit bench dispatches --model M --vram-budget S`):
/// per mode, the all-resident forward and the residency `budget` picks, its blocks assembled on
/// the worker thread and in turn. `Err` when the budget fits nothing.
pub fn stream_model(
    gpu: &std::sync::Arc<crate::gpu::Gpu>,
    model: &std::path::Path,
    config: Option<&std::path::Path>,
    b: &DispatchBench,
    modes: &[QkvMode],
    budget: u64,
) -> crate::Result<Vec<(QkvMode, Vec<StreamBenchRow>)>> {
    let shape = b.shape();
    let mut out = Vec::new();
    for &mode in modes {
        let mut make = || {
            let (cfg, ckpt) = crate::models::qwen_image::open::open(model, config)?;
            crate::models::qwen_image::runtime::Dit::new(gpu, cfg, Box::new(ckpt), mode)
        };
        let mut dit = make()?;
        dit.set_vram_budget(Some(budget));
        let k = dit.plan(&shape, false)?.residency.map_or(dit.cfg.num_layers, |r| r.resident_blocks);
        drop(dit);
        out.push((mode, measure_streaming(&mut make, &shape, &[(k, true), (k, false)], b.runs)?));
    }
    Ok(out)
}
