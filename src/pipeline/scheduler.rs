//! `FlowMatchEulerDiscreteScheduler` (diffusers 0.42.1,
//! `schedulers/scheduling_flow_match_euler_discrete.py`) as the Qwen-Image pipelines drive it
//! (`pipelines/qwenimage/pipeline_qwenimage*.py`): sigmas `np.linspace(1, 1/N, N)`, `mu` from the
//! target token count (`calculate_shift`), `set_timesteps(sigmas=…, mu=…)`, then one Euler `step()` per
//! timestep with `set_begin_index(0)`.
//!
//! Rounding follows the reference exactly. `set_timesteps` casts the float64 sigmas to float32
//! *before* shifting, so the time shift and the terminal stretch run in numpy float32, where every
//! Python float operand (`exp(mu)`, `shift`, `1 − shift_terminal`) is first rounded to f32 (NEP 50
//! "weak" scalars). `timesteps = sigmas·1000` is a torch float32 product; the DiT gets `timestep / 1000`
//! (f32). `step()` computes `dt = σ[i+1] − σ[i]` and `sample + dt·model_output` in f32.

use std::path::Path;

use crate::{Error, Result};

/// The pipeline's default step count (`num_inference_steps = 50`).
pub const DEFAULT_NUM_INFERENCE_STEPS: usize = 50;

/// How the resolution-dependent shift bends the sigmas (`time_shift_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeShift {
    /// `e^μ / (e^μ + (1/σ − 1))`
    Exponential,
    /// `μ / (μ + (1/σ − 1))`
    Linear,
}

/// `scheduler/scheduler_config.json`. Unknown keys (`_class_name`, `_diffusers_version`, …) are
/// ignored; missing keys take diffusers' constructor defaults; settings this crate does not
/// implement are refused by [`SchedulerConfig::validate`].
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: u32,
    /// Static shift, used only when `use_dynamic_shifting` is false.
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub base_shift: f64,
    pub max_shift: f64,
    pub base_image_seq_len: u64,
    pub max_image_seq_len: u64,
    /// Stretch so that the last sigma equals this; `None` or 0 disables it (Python truthiness).
    pub shift_terminal: Option<f64>,
    pub time_shift_type: TimeShift,
    /// Unsupported (Mochi only).
    pub invert_sigmas: bool,
    /// Unsupported.
    pub use_karras_sigmas: bool,
    /// Unsupported.
    pub use_exponential_sigmas: bool,
    /// Unsupported.
    pub use_beta_sigmas: bool,
    /// Unsupported (it would need the scheduler's own noise).
    pub stochastic_sampling: bool,
}

impl Default for SchedulerConfig {
    /// diffusers' `FlowMatchEulerDiscreteScheduler.__init__` defaults (not Qwen-Image's values).
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            shift_terminal: None,
            time_shift_type: TimeShift::Exponential,
            invert_sigmas: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            stochastic_sampling: false,
        }
    }
}

impl SchedulerConfig {
    /// The `scheduler_config.json` shipped with Qwen/Qwen-Image (and the Edit repositories).
    pub fn qwen_image() -> Self {
        SchedulerConfig {
            use_dynamic_shifting: true,
            base_shift: 0.5,
            max_shift: 0.9,
            base_image_seq_len: 256,
            max_image_seq_len: 8192,
            shift_terminal: Some(0.02),
            ..SchedulerConfig::default()
        }
    }

    /// Reads and validates a `scheduler_config.json` (at most 1 MiB).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::pipeline::folder::read_bounded(path, 1 << 20)?;
        SchedulerConfig::from_json_str(&text).map_err(|e| Error::file(path, e.to_string()))
    }

    /// Parses and validates the text of a `scheduler_config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::input(format!("not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(Error::input("a scheduler config must be a JSON object"));
        }
        let config = <SchedulerConfig as serde::Deserialize>::deserialize(value)
            .map_err(|e| Error::input(format!("not a valid scheduler config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses the settings whose code paths this crate does not implement, naming the key.
    pub fn validate(&self) -> Result<()> {
        let unsupported = [
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("invert_sigmas", self.invert_sigmas),
            ("stochastic_sampling", self.stochastic_sampling),
        ];
        if let Some((key, _)) = unsupported.iter().find(|(_, on)| *on) {
            return Err(Error::input(format!(
                "scheduler config: `{key}: true` is not supported (the Qwen-Image pipelines use false)"
            )));
        }
        if self.num_train_timesteps == 0 {
            return Err(Error::input("scheduler config: `num_train_timesteps` must be positive"));
        }
        if self.base_image_seq_len == self.max_image_seq_len {
            return Err(Error::input(
                "scheduler config: `base_image_seq_len` equals `max_image_seq_len` (calculate_shift divides by their difference)",
            ));
        }
        Ok(())
    }

    /// The pipelines' `mu = calculate_shift(image_seq_len, base/max seq len, base/max shift)` with
    /// this config's values, `image_seq_len` being the number of packed *target* tokens
    /// ((H/16)·(W/16); reference images of the Edit pipelines do not count). f64, as Python.
    pub fn mu(&self, image_seq_len: usize) -> f64 {
        calculate_shift(image_seq_len, self.base_image_seq_len, self.max_image_seq_len, self.base_shift, self.max_shift)
    }
}

/// diffusers `calculate_shift`: the line through (base_seq_len, base_shift) and (max_seq_len, max_shift)
/// evaluated at `image_seq_len`, computed in f64 in the same order as the Python.
pub fn calculate_shift(
    image_seq_len: usize,
    base_seq_len: u64,
    max_seq_len: u64,
    base_shift: f64,
    max_shift: f64,
) -> f64 {
    let m = (max_shift - base_shift) / (max_seq_len as f64 - base_seq_len as f64);
    let b = base_shift - m * base_seq_len as f64;
    image_seq_len as f64 * m + b
}

/// The pipelines' default sigmas `np.linspace(1.0, 1/N, N)` in float64, element for element as
/// numpy computes them (`i·step + start`, last element set to `stop`).
pub fn pipeline_sigmas(num_inference_steps: usize) -> Vec<f64> {
    let n = num_inference_steps;
    let (start, stop) = (1.0f64, 1.0 / n as f64);
    if n <= 1 {
        return vec![start; n];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// A sigma schedule after `set_timesteps`: `sigmas` has one more entry than `timesteps` (the trailing 0).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// `scheduler.sigmas`: N shifted sigmas then 0.
    pub sigmas: Vec<f32>,
    /// `scheduler.timesteps`: `sigmas[..N]·num_train_timesteps` in f32.
    pub timesteps: Vec<f32>,
}

impl Schedule {
    /// The schedule a Qwen-Image pipeline builds for `num_inference_steps` steps and
    /// `image_seq_len` packed target tokens: [`pipeline_sigmas`] and `mu = config.mu(image_seq_len)`.
    pub fn for_pipeline(config: &SchedulerConfig, num_inference_steps: usize, image_seq_len: usize) -> Result<Self> {
        if num_inference_steps == 0 {
            return Err(Error::input("num_inference_steps must be at least 1"));
        }
        Schedule::from_sigmas(config, &pipeline_sigmas(num_inference_steps), Some(config.mu(image_seq_len)))
    }

    /// `set_timesteps(sigmas=sigmas, mu=mu)`: custom sigmas (the pipelines' `sigmas=` argument).
    /// `mu` is required when `use_dynamic_shifting` is on and ignored otherwise.
    pub fn from_sigmas(config: &SchedulerConfig, sigmas: &[f64], mu: Option<f64>) -> Result<Self> {
        config.validate()?;
        if sigmas.is_empty() {
            return Err(Error::input("custom sigmas: the list is empty"));
        }
        // `np.array(sigmas).astype(np.float32)`
        let s: Vec<f32> = sigmas.iter().map(|&x| x as f32).collect();
        let s = if config.use_dynamic_shifting {
            let mu = mu.ok_or_else(|| Error::input("`mu` must be given when `use_dynamic_shifting` is true"))?;
            time_shift(config.time_shift_type, mu, &s)
        } else {
            static_shift(config.shift, &s)
        };
        let mut s = match config.shift_terminal {
            Some(t) if t != 0.0 => stretch_to_terminal(t, &s),
            _ => s,
        };
        if s.iter().any(|x| x.is_nan()) {
            return Err(Error::input(
                "the sigma schedule contains NaN: with `shift_terminal` set the last sigma must not be 1.0 \
                 (as with num_inference_steps = 1), since the terminal stretch then divides 0 by 0 (diffusers returns NaN)",
            ));
        }
        let scale = config.num_train_timesteps as f32;
        let timesteps = s.iter().map(|&x| x * scale).collect();
        s.push(0.0);
        Ok(Schedule { sigmas: s, timesteps })
    }

    /// Number of denoising steps N.
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    /// Always false: a schedule has at least one step.
    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// The DiT's timestep input at step `i`: `timestep / 1000` in f32 (the pipelines divide by the
    /// literal 1000, whatever `num_train_timesteps` is). A float32 pipeline passes exactly this; a bf16
    /// one rounds `timesteps[i]` to bf16 first and divides in bf16.
    pub fn dit_timestep(&self, i: usize) -> f32 {
        self.timesteps[i] / 1000.0
    }

    /// Euler step `i` in place: `sample += (σ[i+1] − σ[i])·model_output`, f32 as diffusers
    /// (`dt` is rounded first, then the product, then the sum). Panics if `i ≥ len()` or the
    /// slices differ in length (caller contract).
    pub fn step(&self, i: usize, model_output: &[f32], sample: &mut [f32]) {
        assert!(i < self.len(), "Schedule::step: step {i} out of range for {} steps", self.len());
        assert_eq!(model_output.len(), sample.len(), "Schedule::step: model_output and sample lengths differ");
        let dt = self.sigmas[i + 1] - self.sigmas[i];
        for (x, &v) in sample.iter_mut().zip(model_output) {
            *x += dt * v;
        }
    }
}

/// `time_shift(mu, 1.0, sigmas)` on a float32 array: `exp(mu)` (or `mu`) is rounded to f32 and every
/// op rounds to f32; `(1/t − 1) ** 1.0` is the identity.
fn time_shift(kind: TimeShift, mu: f64, t: &[f32]) -> Vec<f32> {
    let a = match kind {
        TimeShift::Exponential => mu.exp() as f32,
        TimeShift::Linear => mu as f32,
    };
    t.iter().map(|&t| a / (a + (1.0 / t - 1.0))).collect()
}

/// `shift * sigmas / (1 + (shift - 1) * sigmas)` on a float32 array; `shift − 1` is a Python float op.
fn static_shift(shift: f64, t: &[f32]) -> Vec<f32> {
    let (s, s1) = (shift as f32, (shift - 1.0) as f32);
    t.iter().map(|&t| s * t / (1.0 + s1 * t)).collect()
}

/// `stretch_shift_to_terminal`: `1 − (1 − t) / ((1 − t[-1]) / (1 − shift_terminal))` in f32.
fn stretch_to_terminal(shift_terminal: f64, t: &[f32]) -> Vec<f32> {
    let one_minus: Vec<f32> = t.iter().map(|&t| 1.0 - t).collect();
    let last = *one_minus.last().expect("cannot fail: sigmas checked non-empty");
    let scale = last / (1.0 - shift_terminal) as f32;
    one_minus.iter().map(|&z| 1.0 - z / scale).collect()
}
