//! Running the DiT: a loaded model ([`Dit`]) plans a graph per input shape ([`DitPlan`]) and
//! re-runs it with new inputs (latents, σ) without rebuilding pipelines or bind groups.

use crate::error::Result;
use crate::exec::Plan;
use crate::gpu::Gpu;
use crate::graph::TensorId;
use crate::models::qwen_image::dit::{build_forward, BuildOptions, ForwardGraph, ForwardShape, QkvMode};
use crate::models::qwen_image::load::{stored_dtype, validate, TensorSource, WeightCache};
use crate::models::qwen_image::lora::LoraSet;
use crate::models::qwen_image::modulation::Modulation;
use crate::models::qwen_image::precompute::ModulationStore;
use crate::models::qwen_image::rope;
use crate::models::qwen_image::DitConfig;
use crate::nn::TrainLora;
use crate::pipeline::inputs::ForwardInputs;
use crate::tensor::{DType, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

pub struct Dit {
    pub(super) gpu: Arc<Gpu>,
    pub cfg: DitConfig,
    pub mode: QkvMode,
    pub(super) source: Box<dyn TensorSource>,
    pub(super) cache: WeightCache,
    pub(super) lora: LoraSet,
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
            source,
            cache: WeightCache::default(),
            lora: LoraSet::default(),
            modulation: Modulation::Inline,
            premod: None,
        })
    }

    /// Applies runtime LoRAs (replacing any set before) to the plans made from now on.
    pub fn set_loras(&mut self, lora: LoraSet) {
        self.lora = lora;
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

    /// Plans a graph built from this model: checkpoint params from the weight cache, host params
    /// uploaded, and `extra` params (e.g. trainable LoRA tensors) bound as given.
    pub fn plan_graph(&mut self, graph: ForwardGraph, extra: HashMap<TensorId, Tensor>) -> Result<DitPlan> {
        let shape = graph.shape.clone();
        let mut params = self.cache.bind(&self.gpu, self.source.as_ref(), &graph.params, &graph.graph)?;
        for (t, data) in &graph.host_params {
            let info = graph.graph.info(*t);
            params.insert(*t, Tensor::from_f32(&self.gpu, data, &info.shape, DType::F32, &info.name)?);
        }
        params.extend(extra);
        let plan = Plan::new(&self.gpu, &graph.graph, &params)?;
        Ok(DitPlan { plan, graph, shape, cfg: self.cfg.clone(), premod: None })
    }

    /// Bytes of weights uploaded so far.
    pub fn weight_bytes(&self) -> u64 {
        self.cache.bytes()
    }
}

pub struct DitPlan {
    pub plan: Plan,
    pub graph: ForwardGraph,
    pub shape: ForwardShape,
    cfg: DitConfig,
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
        self.plan.run()?;
        self.image_rows(self.graph.output)
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
