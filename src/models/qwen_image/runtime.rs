//! Running the DiT: a loaded model ([`Dit`]) plans a graph per input shape ([`DitPlan`]) and
//! re-runs it with new inputs (latents, σ) without rebuilding pipelines or bind groups. Under a
//! VRAM budget the later transformer blocks stream through a ring of device buffers
//! ([`stream`](super::stream), docs/streaming.md); the plan runs the same kernels either way.

use crate::budget::human;
use crate::error::{Error, Result};
use crate::exec::{memory, Plan};
use crate::gpu::Gpu;
use crate::graph::TensorId;
use crate::models::qwen_image::dit::{build_forward, BuildOptions, ForwardGraph, ForwardShape, QkvMode};
use crate::models::qwen_image::load::{stored_dtype, validate, TensorSource, WeightCache};
use crate::models::qwen_image::lora::LoraSet;
use crate::models::qwen_image::modulation::Modulation;
use crate::models::qwen_image::precompute::ModulationStore;
use crate::models::qwen_image::residency::{plan_residency, residency, Residency};
use crate::models::qwen_image::rope;
use crate::models::qwen_image::stream::{
    BlockParams, Ring, SharedSource, SlotLayout, StreamInputs, StreamReport, Streamed,
};
use crate::models::qwen_image::DitConfig;
use crate::nn::TrainLora;
use crate::pipeline::inputs::ForwardInputs;
use crate::tensor::{DType, Tensor};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Where the automatic budget leaves room for the driver and fragmentation: 1/16 of the
/// adapter's reported memory, at most this.
const AUTO_MARGIN_MAX: u64 = 2 << 30;

pub struct Dit {
    pub(super) gpu: Arc<Gpu>,
    pub cfg: DitConfig,
    pub mode: QkvMode,
    pub(super) source: SharedSource,
    pub(super) cache: WeightCache,
    pub(super) lora: LoraSet,
    /// `None`: the adapter's device memory less a margin (or WGDIT_VRAM_BUDGET).
    budget: Option<u64>,
    /// Tests and benches: exactly this many blocks resident, whatever the budget.
    forced: Option<usize>,
    /// Assemble streamed blocks on a worker thread while the GPU computes (default on).
    upload_worker: bool,
    ring: Option<Arc<Ring>>,
    /// Whether [`prepare_timesteps`](Self::prepare_timesteps) precomputes the modulation.
    pub(super) modulation: Modulation,
    /// Precomputed modulation vectors: plans made while set read them instead of computing them.
    pub(super) premod: Option<Arc<ModulationStore>>,
}

impl Dit {
    /// Validates the source against the config; weights upload lazily with the first plan.
    pub fn new(gpu: &Arc<Gpu>, cfg: DitConfig, source: Box<dyn TensorSource>, mode: QkvMode) -> Result<Dit> {
        validate(&cfg, source.as_ref())?;
        Ok(Dit {
            gpu: gpu.clone(),
            cfg,
            mode,
            source: Arc::from(source),
            cache: WeightCache::default(),
            lora: LoraSet::default(),
            budget: None,
            forced: None,
            upload_worker: true,
            ring: None,
            modulation: Modulation::Inline,
            premod: None,
        })
    }

    /// Applies runtime LoRAs (replacing any set before) to the plans made from now on.
    pub fn set_loras(&mut self, lora: LoraSet) {
        self.lora = lora;
    }

    /// The runtime LoRAs the plans made from now on apply.
    pub fn loras(&self) -> &LoraSet {
        &self.lora
    }

    /// [`set_loras`](Self::set_loras), returning the ones set before (to put back after a run).
    pub fn replace_loras(&mut self, lora: LoraSet) -> LoraSet {
        std::mem::replace(&mut self.lora, lora)
    }

    /// The device memory the plans made from now on may use (`--vram-budget`): weights,
    /// activations and what wgdit already holds. `None`: the adapter's device memory less a
    /// margin, or WGDIT_VRAM_BUDGET; when neither is known every block stays resident.
    pub fn set_vram_budget(&mut self, budget: Option<u64>) {
        self.budget = budget;
    }

    /// Keeps exactly blocks `0..k` resident in the plans made from now on and streams the rest,
    /// whatever the budget (tests and benches compare residencies on one model); `None` goes
    /// back to the budget.
    pub fn set_resident_blocks(&mut self, k: Option<usize>) {
        self.forced = k;
    }

    /// Whether plans made from now on assemble streamed blocks on a worker thread while the GPU
    /// computes (on by default; benches compare with assembling in turn).
    pub fn set_upload_worker(&mut self, on: bool) {
        self.upload_worker = on;
    }

    /// The budget plans are decided against, and where it comes from.
    pub fn vram_budget(&self) -> Option<(u64, String)> {
        if let Some(b) = self.budget {
            return Some((b, "--vram-budget".into()));
        }
        let m = self.gpu.device_memory();
        let total = m.total?;
        if m.source == crate::budget::VRAM_ENV {
            return Some((total, m.source.into()));
        }
        let margin = (total / 16).min(AUTO_MARGIN_MAX);
        Some((total - margin, format!("{} less a {} margin", m.source, human(margin))))
    }

    /// The forward graph for `shape` (no GPU work).
    pub fn graph(&self, shape: &ForwardShape, keep_block_outputs: bool) -> ForwardGraph {
        let opts = BuildOptions {
            train: None,
            lora: (!self.lora.is_empty()).then_some(&self.lora),
            mode: self.mode,
            max_binding: self.gpu.limits().max_storage_binding,
            keep_block_outputs,
            modulation: if self.premod.is_some() { Modulation::Precompute } else { Modulation::Inline },
        };
        let src = self.source.as_ref();
        build_forward(&self.cfg, shape, opts, &|name| stored_dtype(src, name))
    }

    /// Plans (and binds) the forward for `shape`, uploading weights not yet on the GPU. With
    /// precomputed modulation the plan gets its own `[t_rows, cols]` modulation buffer, which
    /// [`DitPlan::write_step`] fills from the store for each step's timesteps.
    pub fn plan(&mut self, shape: &ForwardShape, keep_block_outputs: bool) -> Result<DitPlan> {
        shape.check()?;
        let graph = self.graph(shape, keep_block_outputs);
        let mut extra = HashMap::new();
        let premod = match (&self.premod, graph.modulation) {
            (Some(store), Some(m)) => {
                let t = Tensor::zeros(&self.gpu, graph.graph.shape(m), DType::F32, "modulation")?;
                extra.insert(m, t.clone());
                Some((store.clone(), t))
            }
            _ => None,
        };
        let mut plan = self.plan_graph(graph, extra)?;
        plan.premod = premod;
        Ok(plan)
    }

    /// The training graph for `shape` (forward without fused epilogues, trainable LoRAs on
    /// `train.modules`); the caller appends the backward (`graph::autodiff`).
    pub fn training_graph(&self, shape: &ForwardShape, train: &TrainLora) -> ForwardGraph {
        let opts = BuildOptions {
            train: Some(train),
            lora: None,
            mode: self.mode,
            max_binding: self.gpu.limits().max_storage_binding,
            keep_block_outputs: false,
            modulation: Modulation::Inline,
        };
        let src = self.source.as_ref();
        build_forward(&self.cfg, shape, opts, &|name| stored_dtype(src, name))
    }

    /// What the residency decision for `shape`'s forward is made from (no GPU work).
    pub fn stream_inputs(&self, shape: &ForwardShape) -> StreamInputs {
        let g = self.graph(shape, false);
        let bp = BlockParams::of(&g, self.cfg.num_layers);
        let layouts = self.layouts(&g, &bp);
        stream_inputs(&g, &bp, &layouts, &memory::plan(&g.graph))
    }

    fn layouts(&self, g: &ForwardGraph, bp: &BlockParams) -> Vec<SlotLayout> {
        // At least 256 (what most GPUs require), so that the layout, and the tests of it, are
        // those of a real GPU on lavapipe too; the padding is a few KiB per block.
        let align = (self.gpu.limits().storage_offset_alignment as u64).max(256);
        bp.per_block.iter().map(|ps| SlotLayout::new(g, ps, align)).collect()
    }

    /// Plans a graph built from this model: checkpoint params from the weight cache (or, for the
    /// blocks the budget streams, views into the ring), host params uploaded, and `extra` params
    /// (e.g. trainable LoRA tensors) bound as given.
    pub fn plan_graph(&mut self, graph: ForwardGraph, extra: HashMap<TensorId, Tensor>) -> Result<DitPlan> {
        let shape = graph.shape.clone();
        let n = self.cfg.num_layers;
        let bp = BlockParams::of(&graph, n);
        let layouts = self.layouts(&graph, &bp);
        let mem = memory::plan(&graph.graph);
        let inputs = stream_inputs(&graph, &bp, &layouts, &mem);
        let residency = self.decide(&inputs, &shape)?;
        let first = residency.as_ref().map_or(n, |r| r.resident_blocks);
        let streamed: HashSet<usize> = bp.per_block[first..].iter().flatten().copied().collect();
        for &k in &streamed {
            self.cache.evict(&graph.params[k].1);
        }
        let ring = match &residency {
            Some(r) if first < n => Some(self.ring_for(r)?),
            _ => None,
        };
        let resident: Vec<_> =
            graph.params.iter().enumerate().filter(|(k, _)| !streamed.contains(k)).map(|(_, p)| p.clone()).collect();
        let mut params = self.cache.bind(&self.gpu, self.source.as_ref(), &resident, &graph.graph)?;
        for (t, data) in &graph.host_params {
            let info = graph.graph.info(*t);
            params.insert(*t, Tensor::from_f32(&self.gpu, data, &info.shape, DType::F32, &info.name)?);
        }
        params.extend(extra);
        let stream = match (ring, &residency) {
            (Some(ring), Some(r)) => {
                let src = self.source.clone();
                Some(Streamed::bind(&graph, &bp, r.clone(), layouts, ring, src, &mut params)?)
            }
            _ => None,
        };
        let plan = Plan::with_memory(&self.gpu, &graph.graph, &params, mem)?;
        let (cfg, gpu, worker) = (self.cfg.clone(), self.gpu.clone(), self.upload_worker);
        Ok(DitPlan { plan, graph, shape, cfg, gpu, residency, stream, worker, premod: None })
    }

    /// The residency within the budget (`None`: no budget known, all resident).
    fn decide(&self, inputs: &StreamInputs, shape: &ForwardShape) -> Result<Option<Residency>> {
        let (blocks, other, act) = (&inputs.block_bytes, inputs.other_bytes, inputs.activation_peak);
        if let Some(k) = self.forced {
            return Ok(Some(residency(blocks, other, act, k.min(blocks.len()))));
        }
        let Some((budget, source)) = self.vram_budget() else { return Ok(None) };
        // This model's weights are decided again; everything else wgdit holds stays.
        let others = self.gpu.held_bytes().saturating_sub(self.weight_bytes());
        let avail = budget.saturating_sub(others);
        plan_residency(blocks, other, act, avail).map(Some).map_err(|min| {
            let r = residency(blocks, other, act, 0);
            let fused = if self.mode == QkvMode::Fused && self.premod.is_none() {
                ", --modulation precompute or --qkv merged/standard (fused mode with inline modulation keeps every block's modulation weights resident, in chunks stacking several blocks)"
            } else {
                ""
            };
            Error::OverBudget(format!(
                "the DiT forward for {} text + {} image tokens × batch {} needs at least {} of device memory even with every transformer block streamed ({} of weights that stay resident, {} ring slots of {}, {} of activations), but the budget is {} ({source}){}; use a smaller picture, batch or prompt, quantized or bf16 weights{fused}, or a larger --vram-budget",
                shape.s_txt,
                shape.s_img(),
                shape.batch,
                human(min + others),
                human(other),
                r.ring_slots,
                human(r.slot_bytes),
                human(act),
                human(budget),
                if others > 0 { format!(", of which wgdit already holds {}", human(others)) } else { String::new() },
            ))
        })
    }

    /// The ring for a residency: the current one when its slots match, else a new one.
    fn ring_for(&mut self, r: &Residency) -> Result<Arc<Ring>> {
        if let Some(ring) = self.ring.as_ref().filter(|g| g.slots() == r.ring_slots && g.slot_bytes == r.slot_bytes) {
            return Ok(ring.clone());
        }
        self.ring = None;
        let what = format!("the weight-streaming ring ({} slots of {})", r.ring_slots, human(r.slot_bytes));
        self.gpu.check_device_fits(r.ring_slots as u64 * r.slot_bytes, &what, "give a larger --vram-budget")?;
        let ring = Arc::new(Ring::new(&self.gpu, r.ring_slots, r.slot_bytes)?);
        self.ring = Some(ring.clone());
        Ok(ring)
    }

    /// Bytes of weights on the GPU: uploaded (resident) params and the streaming ring.
    pub fn weight_bytes(&self) -> u64 {
        self.cache.bytes() + self.ring.as_ref().map_or(0, |r| r.bytes())
    }
}

/// Block bytes (as laid out in a slot), other params (resident whatever the budget: checkpoint
/// params of no single block and host-made LoRA factors) and the memory plan's buffers.
fn stream_inputs(g: &ForwardGraph, bp: &BlockParams, layouts: &[SlotLayout], mem: &memory::MemoryPlan) -> StreamInputs {
    let round4 = |b: u64| b.max(4).div_ceil(4) * 4;
    let other_params: u64 = g
        .params
        .iter()
        .filter(|(t, _)| !bp.block_of.contains_key(t))
        .map(|(t, _)| round4(g.graph.info(*t).bytes()))
        .sum();
    let host: u64 = g.host_params.iter().map(|(t, _)| round4(g.graph.info(*t).bytes())).sum();
    StreamInputs {
        block_bytes: layouts.iter().map(|l| l.bytes).collect(),
        other_bytes: other_params + host,
        activation_peak: mem.slot_bytes.iter().sum(),
    }
}

pub struct DitPlan {
    /// The bound plan. Run it through [`DitPlan::submit`], [`run`](DitPlan::run) or
    /// [`run_nodes`](DitPlan::run_nodes): a streamed plan's blocks are uploaded there.
    pub plan: Plan,
    pub graph: ForwardGraph,
    pub shape: ForwardShape,
    cfg: DitConfig,
    gpu: Arc<Gpu>,
    /// The residency decided for this plan (`None`: no budget known, every block resident).
    pub residency: Option<Residency>,
    stream: Option<Streamed>,
    worker: bool,
    /// Precomputed modulation: the store and this plan's modulation input.
    premod: Option<(Arc<ModulationStore>, Tensor)>,
}

impl DitPlan {
    /// Writes the inputs (and the RoPE table of their image shapes) into the plan's buffers.
    pub fn write_inputs(&self, inputs: &ForwardInputs) {
        assert_eq!(inputs.shape(), self.shape, "inputs do not match the planned shape");
        let g = &self.graph;
        self.write_step(&inputs.hidden, &inputs.timestep);
        self.plan.write_input(g.text, &inputs.text);
        if let (Some(m), Some(v)) = (g.mask, &inputs.mask) {
            self.plan.write_input(m, v);
        }
        let shapes: Vec<(usize, usize, usize)> = inputs.img_shapes.iter().map(|s| (s[0], s[1], s[2])).collect();
        self.plan.write_input(g.rope, &rope::table(&self.cfg.axes_dims_rope, &shapes, inputs.s_txt));
    }

    /// Rewrites only what changes between denoising steps: `hidden` [B·S_img, in_channels] (the
    /// image rows) and the per-sample timesteps. Text, mask and the RoPE table keep what
    /// [`write_inputs`](Self::write_inputs) wrote.
    pub fn write_step(&self, hidden: &[f32], timestep: &[f32]) {
        let (g, b) = (&self.graph, self.shape.batch);
        assert_eq!(timestep.len(), b, "one timestep per sample");
        // hidden_states go to the image rows of the joint layout; the text rows stay zero.
        let mut h = vec![0.0; b * self.shape.s_txt * self.cfg.in_channels];
        h.extend_from_slice(hidden);
        self.plan.write_input(g.hidden, &h);
        let mut t = timestep.to_vec();
        if self.cfg.zero_cond_t {
            // Edit-2511: temb rows [σ_b..., 0...]; reference tokens read the t = 0 rows.
            t.extend(std::iter::repeat_n(0.0, b));
        }
        match (&self.premod, g.timestep) {
            (Some((store, m)), _) => store.write_rows(m, &t),
            (None, Some(ts)) => self.plan.write_input(ts, &t),
            (None, None) => unreachable!("a graph without a timestep input reads precomputed modulation"),
        }
    }

    /// Bytes of the modulation vectors this plan reads from outside (its input rows; the store
    /// they are copied from is [`ModulationStore::bytes`]), 0 when computed inline.
    pub fn modulation_input_bytes(&self) -> u64 {
        self.premod.as_ref().map_or(0, |(_, t)| t.bytes())
    }

    /// Runs the plan on the inputs already written; the model output's image rows.
    pub fn run(&self) -> Result<Vec<f32>> {
        self.submit()?;
        self.image_rows(self.graph.output)
    }

    /// Submits every node, without reading anything back. A streamed plan uploads its blocks on
    /// the way and returns when the GPU has finished (its report reads the segments' timestamps).
    pub fn submit(&self) -> Result<()> {
        match &self.stream {
            None => self.plan.run(),
            Some(s) => s.run(&self.gpu, &self.plan, 0..self.plan.nodes(), self.worker),
        }
    }

    /// Submits graph nodes `nodes` (a training graph's forward, then its backward), uploading
    /// the streamed blocks they read (a streamed plan returns when the GPU has finished).
    pub fn run_nodes(&self, nodes: std::ops::Range<usize>) -> Result<()> {
        match &self.stream {
            None => self.plan.run_nodes(nodes),
            Some(s) => s.run(&self.gpu, &self.plan, nodes, self.worker),
        }
    }

    /// Whether some blocks stream.
    pub fn is_streamed(&self) -> bool {
        self.stream.is_some()
    }

    /// What streaming did since the last call (resets the counts): `None` when no budget was
    /// known (every block resident, nothing decided).
    pub fn stream_report(&self) -> Option<StreamReport> {
        match (&self.stream, &self.residency) {
            (Some(s), _) => Some(s.take_report()),
            (None, Some(r)) => Some(StreamReport {
                resident_blocks: r.resident_blocks,
                blocks: r.resident_blocks,
                planned_peak_bytes: r.peak_bytes,
                ..Default::default()
            }),
            (None, None) => None,
        }
    }

    /// One forward run node by node, returning for every node its label, op name and the
    /// largest |value| it wrote (NaN when it wrote a non-finite value): the activation ranges a
    /// reduced-precision path must hold (docs/kernels.md "Precision"). A diagnostic: one
    /// submission and read-back per node.
    pub fn output_ranges(&self, inputs: &ForwardInputs) -> Result<Vec<(crate::graph::Label, &'static str, f32)>> {
        self.write_inputs(inputs);
        let mut out = Vec::with_capacity(self.graph.graph.nodes.len());
        for (i, node) in self.graph.graph.nodes.iter().enumerate() {
            self.run_nodes(i..i + 1)?;
            let (mut max, mut finite) = (0f32, true);
            for t in node.op.outputs() {
                for v in self.plan.read(t)? {
                    finite &= v.is_finite();
                    max = max.max(v.abs());
                }
            }
            out.push((node.label.clone(), node.op.name(), if finite { max } else { f32::NAN }));
        }
        Ok(out)
    }

    /// One forward: the model output [B, S_img, patch²·out_channels] (all image tokens).
    pub fn forward(&self, inputs: &ForwardInputs) -> Result<Vec<f32>> {
        self.write_inputs(inputs);
        self.run()
    }

    /// The image rows (B·S_txt ..) of a joint-layout tensor.
    pub fn image_rows(&self, t: crate::graph::TensorId) -> Result<Vec<f32>> {
        let all = self.plan.read(t)?;
        let cols = all.len() / (self.shape.batch * (self.shape.s_txt + self.shape.s_img()));
        Ok(all[self.shape.batch * self.shape.s_txt * cols..].to_vec())
    }

    /// The text rows (.. B·S_txt) of a joint-layout tensor.
    pub fn text_rows(&self, t: crate::graph::TensorId) -> Result<Vec<f32>> {
        let all = self.plan.read(t)?;
        let cols = all.len() / (self.shape.batch * (self.shape.s_txt + self.shape.s_img()));
        Ok(all[..self.shape.batch * self.shape.s_txt * cols].to_vec())
    }
}
