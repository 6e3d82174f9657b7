//! `wgdit forward`: read an inputs file, run the DiT, write `output` atomically.

use crate::dtype::DType;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::models::qwen_image::lora::LoraSet;
use crate::models::qwen_image::open::open;
use crate::models::qwen_image::runtime::Dit;
use crate::models::qwen_image::{Modulation, QkvMode};
use crate::outputs::{check_finite, check_outputs, NONFINITE_OUTPUT_HINT};
use crate::pipeline::inputs::ForwardInputs;
use crate::weights::writer::{write_safetensors, OutTensor, Source, TempOutput};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct ForwardTask {
    pub model: PathBuf,
    pub config: Option<PathBuf>,
    pub inputs: PathBuf,
    pub output: PathBuf,
    pub mode: QkvMode,
    /// `Inline` (the default of `wgdit forward`) or `Precompute` (the inputs' timesteps first).
    pub modulation: Modulation,
    /// Runtime LoRAs: (file, strength).
    pub loras: Vec<(PathBuf, f32)>,
    /// Write an output with NaN/Inf values instead of refusing it.
    pub allow_nonfinite: bool,
    /// Device memory the DiT may plan within (`--vram-budget`; `None`: the adapter's).
    pub vram_budget: Option<u64>,
}

/// What a forward did, for the CLI to print.
pub struct ForwardReport {
    pub output_shape: [usize; 3],
    pub dispatches: usize,
    pub plan_ms: f64,
    pub run_ms: f64,
    pub weight_bytes: u64,
    pub peak_activation_bytes: u64,
    /// Weight streaming: the residency and what the forward uploaded (`None`: no budget known).
    pub stream: Option<crate::models::qwen_image::stream::StreamReport>,
}

pub fn run_forward(gpu: &Arc<Gpu>, t: &ForwardTask) -> Result<ForwardReport> {
    let mut inputs: Vec<&Path> = vec![&t.model, &t.inputs];
    inputs.extend(t.config.as_deref());
    inputs.extend(t.loras.iter().map(|(p, _)| p.as_path()));
    check_outputs(&inputs, &[&t.output])?;
    let (cfg, ckpt) = open(&t.model, t.config.as_deref())?;
    let inputs = ForwardInputs::from_file(&t.inputs, &cfg)?;
    let out_features = cfg.out_features();
    let t0 = std::time::Instant::now();
    let loras = LoraSet::load(&t.loras, &cfg)?;
    let mut dit = Dit::new(gpu, cfg, Box::new(ckpt), t.mode)?;
    dit.set_loras(loras);
    dit.set_vram_budget(t.vram_budget);
    dit.set_modulation(t.modulation);
    dit.prepare_timesteps(&inputs.timestep)?;
    let plan = dit.plan(&inputs.shape(), false)?;
    gpu.sync()?;
    let t1 = std::time::Instant::now();
    let out = plan.forward(&inputs)?;
    let t2 = std::time::Instant::now();
    let shape = [inputs.batch, inputs.shape().s_img(), out_features];
    if !t.allow_nonfinite {
        check_finite("output", &out, &shape, NONFINITE_OUTPUT_HINT)?;
    }
    write_output(&t.output, &out, &shape, t.mode)?;
    Ok(ForwardReport {
        output_shape: shape,
        dispatches: plan.plan.report().total,
        plan_ms: (t1 - t0).as_secs_f64() * 1e3,
        run_ms: (t2 - t1).as_secs_f64() * 1e3,
        weight_bytes: dit.weight_bytes(),
        peak_activation_bytes: plan.plan.memory.peak_activation_bytes,
        stream: plan.stream_report(),
    })
}

/// Writes `output` [B, S_img, C] f32 to a temporary file, then renames it into place.
fn write_output(path: &std::path::Path, out: &[f32], shape: &[usize; 3], mode: QkvMode) -> Result<()> {
    let tmp = TempOutput::new(path, false)?;
    let tensor = OutTensor {
        name: "output".into(),
        dtype: DType::F32,
        shape: shape.to_vec(),
        source: Source::Host(Cow::Borrowed(out)),
    };
    let meta = BTreeMap::from([
        ("producer".to_string(), "wgdit forward".to_string()),
        ("qkv".to_string(), mode.name().to_string()),
    ]);
    write_safetensors(&tmp.tmp, &[tensor], &meta, &indicatif::ProgressBar::hidden())?;
    tmp.commit()
}
