//! Learning-rate schedules and the AdamW optimizer over many GPU parameter tensors.
//!
//! [`AdamW`] owns the m/v moments of each parameter and binds, once, the launches of one step:
//! the global squared gradient norm (`kernels::norm::sq_norm`, read back every step: a non-finite
//! gradient is never applied; clipping uses it too) and one `kernels::adamw` dispatch per parameter. Each step only rewrites the uniforms (lr, bias
//! corrections, gradient scale) with `Gpu::set_params`; bind groups are never rebuilt.

use crate::gpu::{Bound, Gpu};
use crate::kernels::adamw::{self, Hyper};
use crate::kernels::norm::sq_norm;
use crate::tensor::{DType, Tensor};
use crate::Result;
use std::sync::Arc;

/// The AdamW moments (m, v) of every parameter, in parameter order.
pub type Moments = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// How the learning rate moves over the optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// lr · min(1, step / warmup) (no warmup when `warmup` is 0).
    Constant { warmup: u32 },
    /// torch `ConstantLR(optimizer)` with its defaults, as DiffSynth's runner uses it (spec §7.1):
    /// lr/3 for the first 5 steps, then lr.
    DiffSynth,
}

impl LrSchedule {
    /// The lr of optimizer step `step` (1-based: the first update is step 1).
    pub fn lr(&self, base: f64, step: u64) -> f64 {
        assert!(step >= 1, "lr schedule: steps count from 1");
        match *self {
            LrSchedule::Constant { warmup } if (step as f64) < warmup as f64 => base * step as f64 / warmup as f64,
            LrSchedule::Constant { .. } => base,
            // torch: factor applies while last_epoch < total_iters (5); step k uses last_epoch k−1
            LrSchedule::DiffSynth if step <= 5 => base * (1.0 / 3.0),
            LrSchedule::DiffSynth => base,
        }
    }
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

struct Slot {
    param: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    bound: Bound,
}

/// AdamW over a list of f32 (param, grad) tensors; moments live on the GPU.
pub struct AdamW {
    gpu: Arc<Gpu>,
    opts: AdamWOptions,
    slots: Vec<Slot>,
    /// The launches of the global squared gradient norm, into `sq`.
    norm: Vec<Bound>,
    sq: Tensor,
}

impl AdamW {
    /// Allocates zero moments and binds the step's dispatches. Tensors are f32 and each grad has
    /// its param's size.
    pub fn new(gpu: &Arc<Gpu>, pairs: &[(Tensor, Tensor)], opts: AdamWOptions) -> Result<AdamW> {
        assert!(!pairs.is_empty(), "adamw: no parameters");
        let lens: Vec<usize> = pairs.iter().map(|(p, _)| p.numel()).collect();
        // The global squared norm is computed every step, clipping or not: the trainer reads it
        // back to stop at the first non-finite gradient before the update is applied.
        let partials = Tensor::zeros(gpu, &[sq_norm::partials(&lens)], DType::F32, "adamw.norm_partials")?;
        let sq = Tensor::zeros(gpu, &[1], DType::F32, "adamw.sq_norm")?;
        let grads: Vec<&Tensor> = pairs.iter().map(|(_, g)| g).collect();
        let launches = sq_norm::launch(gpu, &sq_norm::Args { tensors: &grads, partials: &partials, out: &sq })?;
        let norm = launches.iter().map(|l| gpu.bind(l)).collect::<Result<Vec<_>>>()?;
        let clip = (opts.max_norm > 0.0).then_some(&sq);
        let mut slots = Vec::with_capacity(pairs.len());
        for (param, grad) in pairs {
            assert_eq!(grad.numel(), param.numel(), "adamw: grad and param sizes differ");
            let m = Tensor::zeros(gpu, &param.shape, DType::F32, "adamw.m")?;
            let v = Tensor::zeros(gpu, &param.shape, DType::F32, "adamw.v")?;
            let p = adamw::params(param.numel(), &opts.hyper, 1, 1.0, opts.max_norm);
            let args = adamw::Args { params: p, grad, sq_norm: clip, param, m: &m, v: &v };
            let bound = gpu.bind(&adamw::launch(gpu, &args)?)?;
            slots.push(Slot { param: param.clone(), grad: grad.clone(), m, v, bound });
        }
        Ok(AdamW { gpu: gpu.clone(), opts, slots, norm, sq })
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
        for s in &self.slots {
            let p = adamw::params(s.param.numel(), &hyper, step, grad_scale, self.opts.max_norm);
            self.gpu.set_params(&s.bound, bytemuck::bytes_of(&p));
        }
        let list: Vec<&Bound> = self.slots.iter().map(|s| &s.bound).collect();
        self.gpu.submit(&list)?;
        Ok(Ok(sq))
    }

    /// Zeroes every gradient (queued before the next submission).
    pub fn zero_grads(&self) {
        let max = self.slots.iter().map(|s| s.grad.buffer.size()).max().unwrap_or(0);
        let zeros = vec![0u8; max as usize];
        for s in &self.slots {
            self.gpu.write(&s.grad.buffer, 0, &zeros[..s.grad.buffer.size() as usize]);
        }
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

    /// Number of dispatches one step submits.
    pub fn dispatches(&self) -> usize {
        // the norm (its own submission, read back), then one dispatch per parameter
        self.norm.len() + self.slots.len()
    }
}
