//! Learning-rate schedules and the AdamW optimizer over many GPU parameter tensors.
//!
//! [`AdamW`] owns the m/v moments of each parameter and binds, once, the launches of one step:
//! the global squared gradient norm (`kernels::norm::sq_norm`, read back every step: a non-finite
//! gradient is never applied; clipping uses it too) and the `kernels::adamw` dispatches. The
//! trainer uses [`AdamW::packed`]: all parameters, gradients and moments live in four buffers
//! (per storage binding's worth), so a step is one norm partial, the finish and one AdamW
//! dispatch, and zeroing the gradients is one GPU clear. Each step only rewrites the uniforms
//! (lr, bias corrections, gradient scale) with `Gpu::set_params`; bind groups are never rebuilt.

use crate::gpu::{Bound, Gpu};
use crate::kernels::adamw::{self, Hyper};
use crate::kernels::norm::sq_norm;
use crate::tensor::{DType, Tensor};
use crate::Result;
use std::sync::Arc;

/// The AdamW moments (m, v) of every parameter, in parameter order.
pub type Moments = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// How the learning rate moves over the optimizer steps (`--lr-schedule`, docs/training.md).
///
/// With step s (1-based), warmup W and the run's last step T: s < W gives lr·s/W for every
/// schedule but [`LrSchedule::DiffSynth`]; from s = W on, progress p = (s − W)/(T − W) (1 when
/// T ≤ W, at most 1) and constant lr, linear lr·(1 − p), cosine lr·½(1 + cos πp): both decays
/// start at lr at step W and reach 0 at step T.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// lr · min(1, step / warmup) (no warmup when `warmup` is 0).
    Constant { warmup: u32 },
    /// The warmup, then a straight line from lr at step `warmup` to 0 at step `steps`.
    Linear { warmup: u32, steps: u64 },
    /// The warmup, then the half-cosine from lr at step `warmup` to 0 at step `steps`.
    Cosine { warmup: u32, steps: u64 },
    /// torch `ConstantLR(optimizer)` with its defaults, as DiffSynth's runner uses it (spec §7.1):
    /// lr/3 for the first 5 steps, then lr.
    DiffSynth,
}

/// The names `--lr-schedule` takes, in [`LrSchedule::from_name`] order.
pub const LR_SCHEDULES: [&str; 4] = ["constant", "linear", "cosine", "diffsynth"];

impl LrSchedule {
    /// The schedule called `name` ([`LR_SCHEDULES`]) with `warmup` steps over a run of `steps`.
    pub fn from_name(name: &str, warmup: u32, steps: u64) -> Option<LrSchedule> {
        match name {
            "constant" => Some(LrSchedule::Constant { warmup }),
            "linear" => Some(LrSchedule::Linear { warmup, steps }),
            "cosine" => Some(LrSchedule::Cosine { warmup, steps }),
            "diffsynth" => Some(LrSchedule::DiffSynth),
            _ => None,
        }
    }

    /// The `--lr-schedule` name.
    pub fn name(&self) -> &'static str {
        match self {
            LrSchedule::Constant { .. } => "constant",
            LrSchedule::Linear { .. } => "linear",
            LrSchedule::Cosine { .. } => "cosine",
            LrSchedule::DiffSynth => "diffsynth",
        }
    }

    /// The lr of optimizer step `step` (1-based: the first update is step 1).
    pub fn lr(&self, base: f64, step: u64) -> f64 {
        assert!(step >= 1, "lr schedule: steps count from 1");
        let s = step as f64;
        match *self {
            // torch: factor applies while last_epoch < total_iters (5); step k uses last_epoch k−1
            LrSchedule::DiffSynth if step <= 5 => base * (1.0 / 3.0),
            LrSchedule::DiffSynth => base,
            LrSchedule::Constant { warmup } | LrSchedule::Linear { warmup, .. } | LrSchedule::Cosine { warmup, .. }
                if s < warmup as f64 =>
            {
                base * s / warmup as f64
            }
            LrSchedule::Constant { .. } => base,
            LrSchedule::Linear { warmup, steps } => base * (1.0 - progress(step, warmup, steps)),
            LrSchedule::Cosine { warmup, steps } => {
                base * 0.5 * (1.0 + (std::f64::consts::PI * progress(step, warmup, steps)).cos())
            }
        }
    }
}

/// p = (s − W)/(T − W) in [0, 1] for s ≥ W (1 when T ≤ W: the run ends within its warmup).
fn progress(step: u64, warmup: u32, steps: u64) -> f64 {
    let (s, w, t) = (step as f64, warmup as f64, steps as f64);
    if t <= w {
        return 1.0;
    }
    ((s - w) / (t - w)).clamp(0.0, 1.0)
}

/// Options fixed for the life of an [`AdamW`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWOptions {
    /// betas, eps, weight decay (its lr is ignored: [`AdamW::step`] takes the lr of each step).
    pub hyper: Hyper,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    pub max_norm: f32,
}

impl Default for AdamWOptions {
    fn default() -> Self {
        AdamWOptions { hyper: Hyper::default(), max_norm: 0.0 }
    }
}

/// One parameter tensor and its gradient and moments (whole buffers, or views of a pack).
struct Slot {
    param: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
}

/// What one AdamW dispatch updates: a pack of several tensors laid out alike in four buffers
/// (param, grad, m, v), or one tensor of [`AdamW::new`].
struct Group {
    param: Tensor,
    grad: Tensor,
    /// Holds its m and v buffers too.
    bound: Bound,
}

/// Where each tensor of a pack starts: a multiple of sq_norm's partial (4096 elements = 16 KiB,
/// a multiple of every storage offset alignment). Each partial of the norm then covers elements
/// of one tensor plus zeros, exactly the partials of the tensor alone: the packed norm equals
/// the per-tensor one bit for bit. The zero padding is inert in AdamW (g = p = m = v = 0 stay 0).
const PACK_ALIGN: usize = sq_norm::PER_GROUP;

/// AdamW over a list of f32 (param, grad) tensors; moments live on the GPU.
pub struct AdamW {
    gpu: Arc<Gpu>,
    opts: AdamWOptions,
    slots: Vec<Slot>,
    groups: Vec<Group>,
    /// The launches of the global squared gradient norm, into `sq`.
    norm: Vec<Bound>,
    sq: Tensor,
}

impl AdamW {
    /// Allocates zero moments and binds one dispatch per tensor. Tensors are f32 and each grad
    /// has its param's size. [`AdamW::packed`] allocates the tensors itself and runs one.
    pub fn new(gpu: &Arc<Gpu>, pairs: &[(Tensor, Tensor)], opts: AdamWOptions) -> Result<AdamW> {
        assert!(!pairs.is_empty(), "adamw: no parameters");
        let mut slots = Vec::with_capacity(pairs.len());
        for (param, grad) in pairs {
            assert_eq!(grad.numel(), param.numel(), "adamw: grad and param sizes differ");
            let m = Tensor::zeros(gpu, &param.shape, DType::F32, "adamw.m")?;
            let v = Tensor::zeros(gpu, &param.shape, DType::F32, "adamw.v")?;
            slots.push(Slot { param: param.clone(), grad: grad.clone(), m, v });
        }
        let groups = slots.iter().map(|s| (s.param.clone(), s.grad.clone(), s.m.clone(), s.v.clone())).collect();
        AdamW::bind(gpu, slots, groups, opts)
    }

    /// Allocates every parameter (initialised from `init`: name, shape, values), its gradient
    /// (zero) and moments packed into few buffers (each within one storage binding), and binds
    /// one AdamW dispatch and one norm partial per pack: a step is 3 dispatches for any number of
    /// tensors while they fit one binding, and `zero_grads` one clear per pack. The tensors are
    /// views ([`AdamW::pairs`]); updates equal [`AdamW::new`]'s bit for bit.
    pub fn packed(gpu: &Arc<Gpu>, init: &[(String, Vec<usize>, &[f32])], opts: AdamWOptions) -> Result<AdamW> {
        assert!(!init.is_empty(), "adamw: no parameters");
        let align = gpu.limits().storage_offset_alignment as usize;
        assert!(4 * PACK_ALIGN % align.max(4) == 0, "adamw: storage offset alignment {align}");
        let cap = ((gpu.limits().max_storage_binding / 4) as usize).min(crate::kernels::MAX_INDEX_ELEMS);
        let cap = cap / PACK_ALIGN * PACK_ALIGN;
        // (first tensor, end element) of each pack; each tensor's element offset in its pack
        let (mut packs, mut offsets, mut len) = (vec![0usize], Vec::with_capacity(init.len()), 0usize);
        for (i, (_, shape, _)) in init.iter().enumerate() {
            let n = shape.iter().product::<usize>().div_ceil(PACK_ALIGN) * PACK_ALIGN;
            if len > 0 && len + n > cap {
                packs.push(i);
                len = 0;
            }
            offsets.push(len);
            len += n;
        }
        packs.push(init.len());
        let (mut slots, mut groups) = (Vec::with_capacity(init.len()), Vec::with_capacity(packs.len() - 1));
        for w in packs.windows(2) {
            let (first, last) = (w[0], w[1] - 1);
            let numel = |i: usize| init[i].1.iter().product::<usize>();
            let elems = offsets[last] + numel(last);
            let buf = |label: &str| Tensor::zeros(gpu, &[elems], DType::F32, label);
            let pack = (buf("adamw.params")?, buf("adamw.grads")?, buf("adamw.m")?, buf("adamw.v")?);
            for i in first..=last {
                let (name, shape, data) = &init[i];
                assert_eq!(data.len(), numel(i), "adamw: {name}: {} values for shape {shape:?}", data.len());
                let view = |t: &Tensor| Tensor {
                    buffer: t.buffer.view(4 * offsets[i] as u64, 4 * numel(i) as u64),
                    shape: shape.clone(),
                    dtype: DType::F32,
                };
                let slot = Slot { param: view(&pack.0), grad: view(&pack.1), m: view(&pack.2), v: view(&pack.3) };
                gpu.write(&slot.param.buffer, 0, bytemuck::cast_slice(data));
                slots.push(slot);
            }
            groups.push(pack);
        }
        AdamW::bind(gpu, slots, groups, opts)
    }

    /// Binds the norm over every group's grad and one AdamW dispatch per group.
    fn bind(
        gpu: &Arc<Gpu>,
        slots: Vec<Slot>,
        groups: Vec<(Tensor, Tensor, Tensor, Tensor)>,
        opts: AdamWOptions,
    ) -> Result<AdamW> {
        let lens: Vec<usize> = groups.iter().map(|g| g.1.numel()).collect();
        // The global squared norm is computed every step, clipping or not: the trainer reads it
        // back to stop at the first non-finite gradient before the update is applied.
        let partials = Tensor::zeros(gpu, &[sq_norm::partials(&lens)], DType::F32, "adamw.norm_partials")?;
        let sq = Tensor::zeros(gpu, &[1], DType::F32, "adamw.sq_norm")?;
        let grads: Vec<&Tensor> = groups.iter().map(|g| &g.1).collect();
        let launches = sq_norm::launch(gpu, &sq_norm::Args { tensors: &grads, partials: &partials, out: &sq })?;
        let norm = launches.iter().map(|l| gpu.bind(l)).collect::<Result<Vec<_>>>()?;
        let clip = (opts.max_norm > 0.0).then_some(&sq);
        let mut bound = Vec::with_capacity(groups.len());
        for (param, grad, m, v) in groups {
            let p = adamw::params(param.numel(), &opts.hyper, 1, 1.0, opts.max_norm);
            let args = adamw::Args { params: p, grad: &grad, sq_norm: clip, param: &param, m: &m, v: &v };
            let b = gpu.bind(&adamw::launch(gpu, &args)?)?;
            bound.push(Group { param, grad, bound: b });
        }
        Ok(AdamW { gpu: gpu.clone(), opts, slots, groups: bound, norm, sq })
    }

    /// The (param, grad) tensors, in order: those given to [`AdamW::new`], or the views of
    /// [`AdamW::packed`] (bind them in the graph; their values live in the packs).
    pub fn pairs(&self) -> Vec<(Tensor, Tensor)> {
        self.slots.iter().map(|s| (s.param.clone(), s.grad.clone())).collect()
    }

    /// One update, unless the gradients are not finite: computes the global squared norm of the
    /// summed (unscaled) gradients on the GPU and reads it back (waits); a NaN/Inf norm applies
    /// nothing and is returned as `Err(norm)`, else the update is queued (not waited for) and
    /// `Ok(norm)` returned. `step` is 1-based, `lr` this step's rate, `grad_scale` multiplies the
    /// summed gradients first (1/accumulation steps to average micro-batches).
    pub fn step(&self, step: u32, lr: f64, grad_scale: f32) -> Result<std::result::Result<f32, f32>> {
        let norm: Vec<&Bound> = self.norm.iter().collect();
        self.gpu.submit(&norm)?;
        let sq = self.sq.to_f32(&self.gpu)?[0];
        if !sq.is_finite() {
            return Ok(Err(sq));
        }
        let hyper = Hyper { lr, ..self.opts.hyper };
        for g in &self.groups {
            let p = adamw::params(g.param.numel(), &hyper, step, grad_scale, self.opts.max_norm);
            self.gpu.set_params(&g.bound, bytemuck::bytes_of(&p));
        }
        let list: Vec<&Bound> = self.groups.iter().map(|g| &g.bound).collect();
        self.gpu.submit(&list)?;
        Ok(Ok(sq))
    }

    /// Zeroes every gradient on the GPU (one clear per pack, one submission; ordered after the
    /// work submitted before it).
    pub fn zero_grads(&self) {
        let grads: Vec<&crate::gpu::Buffer> = self.groups.iter().map(|g| &g.grad.buffer).collect();
        self.gpu.clear_all(&grads);
    }

    /// The moments (m, v) of every parameter, in order (waits for the GPU).
    pub fn moments(&self) -> Result<Moments> {
        let m = self.slots.iter().map(|s| s.m.to_f32(&self.gpu)).collect::<Result<_>>()?;
        let v = self.slots.iter().map(|s| s.v.to_f32(&self.gpu)).collect::<Result<_>>()?;
        Ok((m, v))
    }

    /// Restores moments saved by [`AdamW::moments`] (a resumed run).
    pub fn set_moments(&self, m: &[Vec<f32>], v: &[Vec<f32>]) {
        assert!(m.len() == self.slots.len() && v.len() == self.slots.len(), "adamw: one m and v per parameter");
        for (s, (m, v)) in self.slots.iter().zip(m.iter().zip(v)) {
            assert!(m.len() == s.param.numel() && v.len() == s.param.numel(), "adamw: moment size");
            self.gpu.write(&s.m.buffer, 0, bytemuck::cast_slice(m));
            self.gpu.write(&s.v.buffer, 0, bytemuck::cast_slice(v));
        }
    }

    /// Number of parameter tensors.
    pub fn tensors(&self) -> usize {
        self.slots.len()
    }

    /// Number of dispatches one step submits.
    pub fn dispatches(&self) -> usize {
        // the norm (its own submission, read back: a partial per group and the finish), then
        // one dispatch per group (per pack of `packed`, per tensor of `new`)
        self.norm.len() + self.groups.len()
    }
}
