//! Training timesteps of DiffSynth-Studio for Qwen-Image (spec qwen-image-dit.md §7.1):
//! `FlowMatchScheduler("Qwen-Image").set_timesteps(1000, training=True)` with mu = 0.8 fixed,
//! the exponential time shift and the 0.02 terminal stretch (§6.2 with N = 1000), the bf16
//! timestep and its snap back onto the table (`FlowMatchSFTLoss` → `add_noise`), and the
//! Gaussian loss weight (`set_training_weight`).
//!
//! Every table entry is computed in f32 operation for operation as torch does it, so the table,
//! the snap and the weights agree with DiffSynth's own (diffsynth 2.1.12, `diffusion/flow_match.py`;
//! fixture `tests/fixtures/train/schedule.safetensors` from `tools/gen_schedule_fixture.py`).

use crate::dtype::DType;
use crate::rng::Rng;

/// `num_train_timesteps` and the table length of a training schedule.
pub const TRAIN_STEPS: usize = 1000;
/// DiffSynth's fixed training mu for the "Qwen-Image" template (no dynamic shift in training).
pub const TRAIN_MU: f64 = 0.8;
/// The last sigma of the schedule (`shift_terminal`).
pub const SHIFT_TERMINAL: f32 = 0.02;

/// How a training step draws its noise level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// DiffSynth: i ~ UniformInt[0, 1000), bf16 timestep, snapped sigma, Gaussian weight.
    DiffSynth,
    /// sigma ~ U(0, 1], timestep = 1000·sigma, weight 1.
    Uniform,
}

/// One drawn noise level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    /// The table index drawn (before the snap); `None` for uniform sampling.
    pub drawn: Option<usize>,
    /// The model's timestep input in [0, 1000] (DiffSynth: the bf16-rounded table value); the
    /// transformer divides it by 1000.
    pub timestep: f32,
    /// x_t = (1 − σ)·x0 + σ·noise.
    pub sigma: f32,
    /// Loss weight w(σ).
    pub weight: f32,
}

/// The training table: timesteps = 1000·σ, σ and the loss weights, [1000] each.
#[derive(Clone, Debug)]
pub struct TrainSchedule {
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
    pub weights: Vec<f32>,
}

impl TrainSchedule {
    /// `FlowMatchScheduler("Qwen-Image").set_timesteps(1000, training=True)`.
    pub fn qwen_image() -> TrainSchedule {
        let sigmas = qwen_image_sigmas(TRAIN_STEPS, TRAIN_MU, SHIFT_TERMINAL);
        let timesteps: Vec<f32> = sigmas.iter().map(|s| s * TRAIN_STEPS as f32).collect();
        let weights = training_weights(&sigmas);
        TrainSchedule { timesteps, sigmas, weights }
    }

    /// The index of the table timestep nearest to `t` (the first one on a tie, as `torch.argmin`).
    /// The difference is taken in f32, as torch promotes the bf16 `t` against the f32 table.
    pub fn snap(&self, t: f32) -> usize {
        let mut best = (f32::INFINITY, 0);
        for (i, &ts) in self.timesteps.iter().enumerate() {
            let d = (ts - t).abs();
            if d < best.0 {
                best = (d, i);
            }
        }
        best.1
    }

    /// Draws a noise level. DiffSynth: `t = timesteps[i].to(bf16)` and both σ and the weight are
    /// looked up at `argmin |timesteps − t|`, which can be a neighbour of i.
    pub fn sample(&self, rng: &mut Rng, sampling: Sampling) -> Draw {
        match sampling {
            Sampling::DiffSynth => {
                let i = rng.below(self.timesteps.len() as u64) as usize;
                let t = DType::BF16.round(&[self.timesteps[i]])[0];
                let j = self.snap(t);
                Draw { drawn: Some(i), timestep: t, sigma: self.sigmas[j], weight: self.weights[j] }
            }
            Sampling::Uniform => {
                // uniform() is in [0, 1), so 1 − u is in (0, 1]
                let sigma = (1.0 - rng.uniform()) as f32;
                Draw { drawn: None, timestep: sigma * TRAIN_STEPS as f32, sigma, weight: 1.0 }
            }
        }
    }
}

/// `torch.linspace(start, end, steps)` in f32: one rounding of `start + step·i` (the first half)
/// or `end − step·(steps − 1 − i)` (the second half), bit-identical to torch's CPU kernel.
pub fn torch_linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - 1 - i) as f32, end) })
        .collect()
}

/// DiffSynth `set_timesteps_qwen_image(n, exponential_shift_mu=mu)` sigmas, in f32:
/// σ0 = linspace(1, 0, n + 1)[:-1]; s = e^mu / (e^mu + (1/σ0 − 1)); stretch so s[-1] = terminal.
pub fn qwen_image_sigmas(n: usize, mu: f64, terminal: f32) -> Vec<f32> {
    let mut s = torch_linspace(1.0, 0.0, n + 1);
    s.pop();
    let e = mu.exp() as f32;
    for x in s.iter_mut() {
        // torch evaluates `scalar / tensor` as `tensor.reciprocal() * scalar` (Tensor.__rdiv__)
        *x = (1.0 / (e + (1.0 / *x - 1.0))) * e;
    }
    let last = 1.0 - s[n - 1];
    let scale = last / (1.0 - terminal);
    s.iter().map(|x| 1.0 - (1.0 - x) / scale).collect()
}

/// `set_training_weight` for a 1000-entry table: x = 1000·σ, y = exp(−2·((x − 500)/1000)²),
/// w = (y − min y)·1000 / Σ(y − min y), so the weights average 1 over the table.
pub fn training_weights(sigmas: &[f32]) -> Vec<f32> {
    assert_eq!(sigmas.len(), TRAIN_STEPS, "training weights are defined for the 1000-step table");
    let y: Vec<f32> = sigmas
        .iter()
        .map(|s| {
            let x = s * 1000.0;
            let u = (x - 500.0) / 1000.0;
            (-2.0 * (u * u)).exp()
        })
        .collect();
    let min = y.iter().copied().fold(f32::INFINITY, f32::min);
    let shifted: Vec<f32> = y.iter().map(|v| v - min).collect();
    // torch sums in f32 in its own order; f64 then rounded is within an ulp of it
    let sum = shifted.iter().map(|&v| v as f64).sum::<f64>() as f32;
    let k = 1000.0 / sum;
    shifted.iter().map(|v| v * k).collect()
}

/// `add_noise` and `training_target` of DiffSynth's scheduler on host data:
/// x_t = (1 − σ)·x0 + σ·noise (target latents only; references stay clean) and v = noise − x0.
pub fn noisy_and_target(x0: &[f32], noise: &[f32], sigma: f32) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x0.len(), noise.len(), "add_noise: x0 and noise differ in size");
    let xt = x0.iter().zip(noise).map(|(x, n)| (1.0 - sigma) * x + sigma * n).collect();
    let v = x0.iter().zip(noise).map(|(x, n)| n - x).collect();
    (xt, v)
}
