//! `wgdit train`: the LoRA fine-tuning loop (DiffSynth-Studio's recipe, spec §7.1).
//!
//! Per optimizer step, for each of `grad_accum` micro-batches: draw σ per sample (DiffSynth's
//! shifted table and Gaussian weight, or uniform), noise ~ N(0, I),
//! x_t = (1 − σ)·x0 + σ·noise, target = noise − x0; run the training graph's forward, compute the
//! weighted MSE on the target tokens and its gradient on the host, run the backward (LoRA
//! gradients accumulate on the GPU). Then one AdamW step with grad scale 1/grad_accum, and the
//! gradients are zeroed. One plan per batch shape, all sharing the LoRA and gradient buffers.

use super::checkpoint::{checkpoint_dir, Checkpoint, LossLog, LossRow, TrainState};
pub use super::checks::nothing_left;
use super::checks::{check_lora_finite, check_options, check_resume, check_train_paths, hyper_json, last_good};
use super::data::{Batcher, Collated, Dataset, ShapeKey};
use super::lora::{parse_targets, select, LoraConfig, LoraParams};
use super::optim::{AdamW, AdamWOptions, LrSchedule};
use super::preset::open_base;
use super::schedule::{noisy_and_target, Sampling, TrainSchedule};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::adamw::Hyper;
use crate::models::qwen_image::dit::QkvMode;
use crate::models::qwen_image::runtime::{Dit, DitPlan};
use crate::models::qwen_image::training;
use crate::nn::TrainLora;
use crate::outputs::RunLock;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::weights::lora::LoraFormat;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything `wgdit train` takes.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub model: PathBuf,
    pub config: Option<PathBuf>,
    /// `--transformer`: the frozen base from another file than the pipeline folder's
    /// `transformer/` (a GGUF quantization, an fp8 or bf16 safetensors file, a diffusers folder),
    /// as `generate --transformer`; `--model` then is the pipeline folder (its VAE and text
    /// encoder draw the samples). Its config: `--config`, else the one beside it, else the
    /// folder's `transformer/config.json`.
    pub transformer: Option<PathBuf>,
    pub data: PathBuf,
    pub output: PathBuf,
    pub steps: u64,
    pub rank: usize,
    pub alpha: f64,
    pub lr: f64,
    pub targets: String,
    pub qkv: QkvMode,
    pub seed: u64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub save_every: u64,
    pub resume: Option<PathBuf>,
    pub checkpointing: bool,
    pub sampling: Sampling,
    pub weight_decay: f64,
    pub warmup: u32,
    /// `--lr-schedule`: constant, linear, cosine or diffsynth ([`LrSchedule::from_name`]).
    pub lr_schedule: String,
    /// AdamW's β1, β2 and ε (torch's defaults 0.9, 0.999, 1e-8, as DiffSynth).
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Clip the global gradient norm (0: off, DiffSynth's default).
    pub max_grad_norm: f32,
    pub format: LoraFormat,
    pub progress: bool,
    /// `--init-lora`: start from this LoRA file (any format) instead of PEFT's init; its rank
    /// must be `rank` (its alpha may differ: B is rescaled so ΔW stays the file's).
    pub init_lora: Option<PathBuf>,
    /// `--preset-lora FILE[:SCALE]`: LoRAs folded into the frozen base before training
    /// (`train::preset`); [`eval_loss`] folds them too.
    pub preset_loras: Vec<(PathBuf, f32)>,
    /// Hyper-parameter keys a resume may change on purpose (`--resume-override`).
    pub resume_override: Vec<String>,
    /// Write a LoRA (or checkpoint) with NaN/Inf values instead of refusing it.
    pub allow_nonfinite: bool,
    /// Device memory the frozen DiT may plan within (`--vram-budget`; `None`: the adapter's):
    /// blocks past the budget stream, twice per step (forward and backward).
    pub vram_budget: Option<u64>,
    /// `--sample-every` and the other `--sample-*` flags (`train::samples`; `None`: no samples).
    pub samples: Option<super::samples::SampleOptions>,
}

impl TrainOptions {
    /// DiffSynth-Studio's defaults (rank 32, alpha = rank, lr 1e-4 constant, weight decay 0.01,
    /// torch AdamW's betas and eps, its 12 targets per block, its timestep sampling), fused mode,
    /// checkpointing on, PEFT export.
    pub fn new(model: PathBuf, data: PathBuf, output: PathBuf, steps: u64) -> TrainOptions {
        TrainOptions {
            model,
            config: None,
            transformer: None,
            data,
            output,
            steps,
            rank: 32,
            alpha: 32.0,
            lr: 1e-4,
            targets: super::lora::DIFFSYNTH_TARGETS.to_string(),
            qkv: QkvMode::Fused,
            seed: 0,
            batch_size: 1,
            grad_accum: 1,
            save_every: 0,
            resume: None,
            checkpointing: true,
            sampling: Sampling::DiffSynth,
            weight_decay: 0.01,
            warmup: 0,
            lr_schedule: "constant".into(),
            adam_beta1: Hyper::default().beta1,
            adam_beta2: Hyper::default().beta2,
            adam_eps: Hyper::default().eps,
            max_grad_norm: 0.0,
            format: LoraFormat::Diffusers,
            progress: false,
            init_lora: None,
            preset_loras: Vec::new(),
            resume_override: Vec::new(),
            allow_nonfinite: false,
            vram_budget: None,
            samples: None,
        }
    }

    /// The lr schedule of the run (`None`: an unknown `lr_schedule` name).
    pub fn schedule(&self) -> Option<LrSchedule> {
        LrSchedule::from_name(&self.lr_schedule, self.warmup, self.steps)
    }

    /// AdamW's hyper-parameters (the lr is the base; each step takes the schedule's).
    pub fn hyper(&self) -> Hyper {
        let (beta1, beta2, eps) = (self.adam_beta1, self.adam_beta2, self.adam_eps);
        Hyper { lr: self.lr, beta1, beta2, eps, weight_decay: self.weight_decay }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub losses: Vec<f64>,
    pub mean_step_ms: f64,
    pub dispatches_per_step: usize,
    pub peak_activation_bytes: u64,
    pub lora_file: PathBuf,
    /// `Some(step)`: the resumed checkpoint was already at `step` ≥ `--steps`; nothing was run or written.
    pub up_to_date: Option<u64>,
    /// Weight streaming of each batch shape's plan over the run (empty: no budget known).
    pub stream: Vec<crate::models::qwen_image::stream::StreamReport>,
}

/// One shape's training plan and its graph handles.
struct ShapePlan {
    plan: DitPlan,
    d_output: crate::graph::TensorId,
    forward_nodes: usize,
}

/// The DiT with the trainable LoRA buffers, and one training plan per batch shape sharing them.
struct LoraModel {
    gpu: Arc<Gpu>,
    dit: Dit,
    train: TrainLora,
    /// module → (A, B) and (dA, dB), in `lora.params` order.
    params: Vec<(String, [Tensor; 2], [Tensor; 2])>,
    plans: HashMap<ShapeKey, ShapePlan>,
    out_features: usize,
}

impl LoraModel {
    fn plan(&mut self, key: &ShapeKey, c: &Collated) -> Result<&ShapePlan> {
        if !self.plans.contains_key(key) {
            let inputs = c.forward_inputs(&c.x0, &vec![0.0; c.batch]);
            inputs.shape().check()?;
            let tg = training::build(&self.dit, &inputs.shape(), &self.train);
            let mut extra = HashMap::new();
            let by_module: HashMap<&str, (crate::graph::TensorId, crate::graph::TensorId)> =
                tg.fg.trainable.iter().map(|(m, a, b)| (m.as_str(), (*a, *b))).collect();
            let grads: HashMap<&str, (crate::graph::TensorId, crate::graph::TensorId)> =
                tg.grads.iter().map(|(m, a, b)| (m.as_str(), (*a, *b))).collect();
            for (m, [a, b], [da, db]) in &self.params {
                // A module the graph does not use (the last block's text FFN) keeps its values.
                if let (Some(&(ta, tb)), Some(&(tda, tdb))) = (by_module.get(m.as_str()), grads.get(m.as_str())) {
                    extra.extend([(ta, a.clone()), (tb, b.clone()), (tda, da.clone()), (tdb, db.clone())]);
                }
            }
            let (d_output, forward_nodes) = (tg.d_output, tg.forward_nodes);
            let plan = self.dit.plan_graph(tg.fg, extra)?;
            self.plans.insert(key.clone(), ShapePlan { plan, d_output, forward_nodes });
        }
        Ok(&self.plans[key])
    }

    /// Forward, host loss, backward for one micro-batch; returns (loss, mean σ).
    fn micro_batch(
        &mut self,
        key: &ShapeKey,
        c: &Collated,
        sched: &TrainSchedule,
        rng: &mut Rng,
        sampling: Sampling,
    ) -> Result<(f64, f32)> {
        let k = c.x0.len() / (c.batch * c.s_target);
        let per = c.s_target * k;
        let (mut x_t, mut target) = (Vec::with_capacity(c.x0.len()), Vec::with_capacity(c.x0.len()));
        let (mut timesteps, mut weights, mut sigmas) = (Vec::new(), Vec::new(), Vec::new());
        for b in 0..c.batch {
            let draw = sched.sample(rng, sampling);
            let noise = rng.vec_normal(per, 1.0);
            let (xt, tg) = noisy_and_target(&c.x0[b * per..(b + 1) * per], &noise, draw.sigma);
            x_t.extend(xt);
            target.extend(tg);
            // The transformer takes t/1000 (σ-like, in [0, 1]).
            timesteps.push(draw.timestep / 1000.0);
            weights.push(draw.weight as f64);
            sigmas.push(draw.sigma);
        }
        let inputs = c.forward_inputs(&x_t, &timesteps);
        let out_features = self.out_features;
        let sp = self.plan(key, c)?;
        sp.plan.write_inputs(&inputs);
        sp.plan.run_nodes(0..sp.forward_nodes)?;
        let pred = sp.plan.image_rows(sp.plan.graph.output)?;
        // loss = mean_b w_b · mean((pred − target)²) over the target tokens; d/dpred on the host.
        let s_img = inputs.shape().s_img();
        let mut d_out = vec![0f32; c.batch * c.s_txt * out_features];
        d_out.resize(d_out.len() + c.batch * s_img * out_features, 0.0);
        let base = c.batch * c.s_txt * out_features;
        let mut loss = 0f64;
        for b in 0..c.batch {
            let (mut sq, n) = (0f64, per as f64);
            for i in 0..per {
                let diff = pred[b * s_img * out_features + i] as f64 - target[b * per + i] as f64;
                sq += diff * diff;
                d_out[base + b * s_img * out_features + i] = (2.0 * weights[b] * diff / n / c.batch as f64) as f32;
            }
            loss += weights[b] * sq / n / c.batch as f64;
        }
        sp.plan.plan.write_input(sp.d_output, &d_out);
        sp.plan.run_nodes(sp.forward_nodes..sp.plan.plan.nodes())?;
        Ok((loss, sigmas.iter().sum::<f32>() / sigmas.len() as f32))
    }
}

/// One optimizer step's figures.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: u64,
    pub loss: f64,
    /// Mean σ of the step's samples.
    pub sigma: f32,
    pub lr: f64,
    pub ms: f64,
}

/// A training run, step by step: [`Trainer::new`] opens the model, the dataset and (when
/// resuming) the checkpoint; [`Trainer::step`] runs one optimizer step (its micro-batches, AdamW,
/// the loss log, a checkpoint when due); [`Trainer::finish`] writes the LoRA file.
pub struct Trainer {
    o: TrainOptions,
    model: LoraModel,
    dataset: Dataset,
    batcher: Batcher,
    lora: LoraParams,
    state: TrainState,
    adamw: AdamW,
    log: LossLog,
    sched: TrainSchedule,
    lr_sched: LrSchedule,
    losses: Vec<f64>,
    total_ms: f64,
    /// The `--sample-every` prompts' embeddings, once encoded.
    sample_prompts: super::samples::EncodedPrompts,
    /// The output folder's lock, released on drop.
    _lock: RunLock,
}

impl Trainer {
    pub fn new(gpu: &Arc<Gpu>, o: &TrainOptions) -> Result<Trainer> {
        check_options(o)?;
        check_train_paths(o)?;
        if let Some(s) = &o.samples {
            super::samples::check(&o.model, s)?;
        }
        let (cfg, base) = open_train_base(o)?;
        let dataset = Dataset::open(&o.data, &cfg)?;
        if dataset.is_empty() {
            return Err(Error::input(format!("dataset {} has no samples", o.data.display())));
        }
        let conf = LoraConfig { rank: o.rank, alpha: o.alpha, targets: parse_targets(&o.targets) };
        let modules = select(&cfg, &conf.targets)?;
        let merged = modules.iter().any(|m| m.path.ends_with("to_qkv") || m.path.ends_with("add_qkv_proj"));
        if merged && o.qkv == QkvMode::Standard {
            return Err(Error::input(
                "a LoRA on the merged to_qkv/add_qkv_proj needs the merged projection: use --qkv merged or fused (or target to_q,to_k,to_v)",
            ));
        }
        let hyper = hyper_json(o);
        let (lora, state, resumed) = match &o.resume {
            Some(dir) => {
                let c = Checkpoint::load(dir, &cfg)?;
                check_resume(o, dir, &c.state, &conf, &hyper)?;
                if c.state.step >= o.steps {
                    return Err(Error::input(nothing_left(dir, c.state.step, o.steps)));
                }
                (c.lora.clone(), c.state.clone(), Some(c))
            }
            None => {
                let mut rng = Rng::new(o.seed);
                // PEFT's init is drawn even under --init-lora: the data order and the noise of a
                // seed are the same either way.
                let mut lora = LoraParams::init(&cfg, &conf, &mut rng)?;
                if let Some(path) = &o.init_lora {
                    let file = crate::models::qwen_image::lora::read_lora(path)?;
                    lora =
                        LoraParams::from_init_lora(&cfg, &conf, &file).map_err(|e| Error::file(path, e.to_string()))?;
                }
                let data = Default::default();
                (lora, TrainState { version: 1, step: 0, rng, data, lora: conf.clone(), hyper: hyper.clone() }, None)
            }
        };
        let opts = AdamWOptions { hyper: o.hyper(), max_norm: o.max_grad_norm };
        // Parameters, gradients and moments packed: one AdamW dispatch and one clear per step.
        let adamw = AdamW::packed(gpu, &lora.tensors(), opts)?;
        let pairs = adamw.pairs();
        let mut params = Vec::new();
        for (p, ab) in lora.params.iter().zip(pairs.chunks(2)) {
            params.push((
                p.module.path.clone(),
                [ab[0].0.clone(), ab[1].0.clone()],
                [ab[0].1.clone(), ab[1].1.clone()],
            ));
        }
        if let Some(c) = &resumed {
            adamw.set_moments(&c.m, &c.v);
        }
        let train = TrainLora {
            modules: lora.params.iter().map(|p| p.module.path.clone()).collect(),
            rank: o.rank,
            scale: lora.config.scale() as f32,
            checkpointing: o.checkpointing,
        };
        let mut dit = Dit::new(gpu, cfg.clone(), base, o.qkv)?;
        dit.set_vram_budget(o.vram_budget);
        let model =
            LoraModel { gpu: gpu.clone(), dit, train, params, plans: HashMap::new(), out_features: cfg.out_features() };
        let mut batcher = Batcher::new(&dataset, o.batch_size, o.seed);
        batcher.resume(state.data)?;
        std::fs::create_dir_all(&o.output).map_err(|e| Error::io(&o.output, e))?;
        let lock = RunLock::acquire(&o.output)?;
        let loss_path = o.output.join("loss.csv");
        let log =
            if resumed.is_some() { LossLog::resume(&loss_path, state.step)? } else { LossLog::create(&loss_path)? };
        let mut o = o.clone();
        if let Some(s) = &mut o.samples {
            // Edit samples see their references as `wgdit cache` prepared the training pairs.
            if let Some((ra, ca)) = crate::train::data::cache_areas(&o.data)? {
                s.ref_area = s.ref_area.or(Some(ra));
                s.condition_area = s.condition_area.or(Some(ca));
            }
        }
        let lr_sched = o.schedule().expect("cannot fail: check_options checked the name");
        let mut t = Trainer {
            o,
            model,
            dataset,
            batcher,
            lora,
            state,
            adamw,
            log,
            sched: TrainSchedule::qwen_image(),
            lr_sched,
            losses: Vec::new(),
            total_ms: 0.0,
            sample_prompts: Default::default(),
            _lock: lock,
        };
        if t.state.step == 0 {
            t.sample_if_due()?;
        }
        Ok(t)
    }

    /// Draws the `--sample-every` pictures of the current step when one is due.
    fn sample_if_due(&mut self) -> Result<()> {
        let Some(s) = self.o.samples.as_ref().filter(|s| s.due(self.state.step, self.o.steps)) else {
            return Ok(());
        };
        download_lora(&self.model, &mut self.lora)?;
        let o = &self.o;
        let run = super::samples::SampleRun {
            model: &o.model,
            output: &o.output,
            step: self.state.step,
            vram_budget: o.vram_budget,
        };
        super::samples::draw(&self.model.gpu, s, &self.lora, &run, &mut self.model.dit, &mut self.sample_prompts)
            .map(|_| ())
    }

    /// The optimizer (its dispatch count: `AdamW::dispatches`).
    pub fn optimizer(&self) -> &AdamW {
        &self.adamw
    }

    /// Optimizer steps done so far (a resumed run starts at its checkpoint's step).
    pub fn steps_done(&self) -> u64 {
        self.state.step
    }

    /// Whether the run has reached `--steps`.
    pub fn done(&self) -> bool {
        self.state.step >= self.o.steps
    }

    /// One optimizer step: `grad_accum` micro-batches, AdamW, gradients zeroed, the loss row
    /// appended and a checkpoint saved when `save_every` divides the step.
    pub fn step(&mut self) -> Result<StepReport> {
        let o = &self.o;
        let t0 = std::time::Instant::now();
        let accum = o.grad_accum;
        let (mut loss, mut sigma) = (0.0, 0.0);
        for _ in 0..accum {
            let batch = self.batcher.next().ok_or_else(|| Error::input("dataset yielded no batch"))?;
            let c = self.dataset.collate(&batch.samples)?;
            let key = c.key(self.dataset.samples[batch.samples[0]].bucket());
            let (l, s) = self.model.micro_batch(&key, &c, &self.sched, &mut self.state.rng, o.sampling)?;
            loss += l / accum as f64;
            sigma += s / accum as f32;
        }
        if !loss.is_finite() {
            return Err(Error::input(format!(
                "training stopped at step {}: the loss is {loss} (non-finite; check the data for NaN/Inf and lower --lr). Nothing of this step was applied or written; {}",
                self.state.step + 1,
                last_good(&o.output)
            )));
        }
        let lr = self.lr_sched.lr(o.lr, self.state.step + 1);
        if let Err(sq) = self.adamw.step(self.state.step as u32 + 1, lr, 1.0 / accum as f32)? {
            return Err(Error::input(format!(
                "training stopped at step {}: the loss is finite ({loss}) but the gradient is not (squared norm {sq}: NaN/Inf in a gradient, or a norm beyond f32); lower --lr or set --max-grad-norm. Nothing of this step was applied or written; {}",
                self.state.step + 1,
                last_good(&o.output)
            )));
        }
        self.state.step += 1;
        let step = self.state.step;
        self.adamw.zero_grads();
        self.model.gpu.sync()?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        self.total_ms += ms;
        self.state.data = self.batcher.state();
        self.log.append(&LossRow { step, loss, sigma, lr, step_ms: ms })?;
        self.losses.push(loss);
        if o.save_every > 0 && step % o.save_every == 0 {
            save_checkpoint(&self.model, &self.adamw, &mut self.lora, &self.state, o)?;
            self.write_plot()?;
        }
        self.sample_if_due()?;
        Ok(StepReport { step, loss, sigma, lr, ms })
    }

    /// Rewrites `<output>/loss.svg` from every row of `loss.csv`.
    fn write_plot(&self) -> Result<()> {
        super::plot::write_loss_svg(
            &self.o.output.join(super::plot::PLOT_FILE),
            self.log.points(),
            &super::plot::title(&self.o),
        )
    }

    /// Downloads the trained LoRA and writes `lora.safetensors` in the chosen format.
    pub fn finish(mut self) -> Result<TrainReport> {
        download_lora(&self.model, &mut self.lora)?;
        check_lora_finite(&self.lora, &self.o)?;
        let lora_file = self.o.output.join("lora.safetensors");
        self.lora.save(&lora_file, self.o.format, DType::F32)?;
        self.write_plot()?;
        let (dispatches, peak) = self
            .model
            .plans
            .values()
            .next()
            .map_or((0, 0), |p| (p.plan.plan.report().total, p.plan.plan.memory.peak_activation_bytes));
        Ok(TrainReport {
            mean_step_ms: self.total_ms / self.losses.len().max(1) as f64,
            losses: self.losses,
            dispatches_per_step: dispatches * self.o.grad_accum,
            peak_activation_bytes: peak,
            lora_file,
            up_to_date: None,
            stream: self.model.plans.values().filter_map(|p| p.plan.stream_report()).collect(),
        })
    }
}

/// Runs a training job to completion, with a progress bar when `o.progress`.
pub fn train(gpu: &Arc<Gpu>, o: &TrainOptions) -> Result<TrainReport> {
    if let Some(dir) = &o.resume {
        // Nothing left to do is said before anything is opened or written.
        check_options(o)?;
        let state = TrainState::read(dir)?;
        let conf = LoraConfig { rank: o.rank, alpha: o.alpha, targets: parse_targets(&o.targets) };
        check_resume(o, dir, &state, &conf, &hyper_json(o))?;
        if state.step >= o.steps {
            let (losses, lora_file) = (Vec::new(), o.output.join("lora.safetensors"));
            let r = TrainReport {
                losses,
                mean_step_ms: 0.0,
                dispatches_per_step: 0,
                peak_activation_bytes: 0,
                lora_file,
                up_to_date: Some(state.step),
                stream: Vec::new(),
            };
            return Ok(r);
        }
    }
    let mut t = Trainer::new(gpu, o)?;
    let bar = progress_bar(o.progress, o.steps, t.steps_done());
    while !t.done() {
        let s = t.step()?;
        bar.set_message(format!("loss {:.4}  {:.0} ms/step  {:.2} it/s", s.loss, s.ms, 1e3 / s.ms));
        bar.inc(1);
    }
    bar.finish();
    t.finish()
}

fn download_lora(tr: &LoraModel, lora: &mut LoraParams) -> Result<()> {
    let tensors: Vec<Tensor> = tr.params.iter().flat_map(|(_, p, _)| p.clone()).collect();
    lora.download(&tr.gpu, &tensors)
}

fn save_checkpoint(
    tr: &LoraModel,
    adamw: &AdamW,
    lora: &mut LoraParams,
    state: &TrainState,
    o: &TrainOptions,
) -> Result<()> {
    let out = &o.output;
    if let Some(r) = &o.resume {
        // Only a renamed checkpoint folder could be saved over: saves are at steps above the resumed one.
        crate::outputs::check_outputs(&[r], &[&checkpoint_dir(out, state.step)])?;
    }
    download_lora(tr, lora)?;
    check_lora_finite(lora, o)?;
    let (m, v) = adamw.moments()?;
    let c = Checkpoint { state: state.clone(), lora: lora.clone(), m, v };
    let dir = c.save(out)?;
    debug_assert_eq!(dir, checkpoint_dir(out, state.step));
    Ok(())
}

fn progress_bar(show: bool, steps: u64, done: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_position(done);
    let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// The frozen base of a run: `--model` (its `transformer/` for a pipeline folder) or, with
/// `--transformer`, that file with the config `TrainOptions::transformer` names; the
/// `--preset-lora`s folded in.
fn open_train_base(
    o: &TrainOptions,
) -> Result<(crate::models::qwen_image::DitConfig, Box<dyn crate::models::qwen_image::load::TensorSource>)> {
    let Some(file) = &o.transformer else { return open_base(&o.model, o.config.as_deref(), &o.preset_loras) };
    let folder = crate::models::qwen_image::open::transformer_of(&o.model).ok_or_else(|| {
        Error::file(
            &o.model,
            "--transformer replaces a pipeline folder's transformer/: pass the diffusers pipeline folder as --model \
             (or the transformer file itself as --model, without --transformer)",
        )
    })?;
    let config = match &o.config {
        Some(c) => c.clone(),
        None => crate::models::qwen_image::open::config_path(file, None).unwrap_or_else(|_| folder.join("config.json")),
    };
    open_base(file, Some(&config), &o.preset_loras)
}

/// The flow-matching loss of a model (its `--preset-lora`s folded in; optionally with a LoRA file
/// applied at strength 1) over
/// every sample of a dataset at fixed noise levels `sigmas`, with noise drawn from `seed`: the
/// same draws for every call, so two calls compare models, not samples.
pub fn eval_loss(
    gpu: &Arc<Gpu>,
    o: &TrainOptions,
    lora: Option<&std::path::Path>,
    sigmas: &[f32],
    seed: u64,
) -> Result<f64> {
    let (cfg, base) = open_train_base(o)?;
    let dataset = Dataset::open(&o.data, &cfg)?;
    let mut dit = Dit::new(gpu, cfg.clone(), base, o.qkv)?;
    dit.set_vram_budget(o.vram_budget);
    if let Some(path) = lora {
        dit.set_loras(crate::models::qwen_image::lora::LoraSet::load(&[(path.to_path_buf(), 1.0)], &cfg)?);
    }
    let mut rng = Rng::new(seed);
    let (mut total, mut count) = (0f64, 0usize);
    for i in 0..dataset.len() {
        let c = dataset.collate(&[i])?;
        let per = c.x0.len();
        let plan = dit.plan(&c.forward_inputs(&c.x0, &[0.0]).shape(), false)?;
        for &sigma in sigmas {
            let noise = rng.vec_normal(per, 1.0);
            let (x_t, target) = noisy_and_target(&c.x0, &noise, sigma);
            let pred = plan.forward(&c.forward_inputs(&x_t, &[sigma]))?;
            let sq: f64 = (0..per).map(|j| (pred[j] as f64 - target[j] as f64).powi(2)).sum();
            total += sq / per as f64;
            count += 1;
        }
    }
    Ok(total / count as f64)
}
