//! The checks of a training run (docs/training.md, "Resume, run folders and failures"): flag
//! ranges, outputs against inputs, a resume against its checkpoint, and finite results.

use super::checkpoint::TrainState;
use super::lora::{LoraConfig, LoraParams};
use super::run::TrainOptions;
use crate::error::{Error, Result};

/// Range checks of the hyper-parameters (NaN and Inf are refused everywhere).
pub(super) fn check_options(o: &TrainOptions) -> Result<()> {
    let bad = |flag: &str, v: String, rule: &str| Err(Error::input(format!("--{flag} {v}: must be {rule}")));
    let finite = |v: f64| v.is_finite();
    if !(finite(o.lr) && o.lr > 0.0) {
        return bad("lr", o.lr.to_string(), "a finite number > 0");
    }
    if !(finite(o.weight_decay) && o.weight_decay >= 0.0) {
        return bad("weight-decay", o.weight_decay.to_string(), "a finite number ≥ 0");
    }
    if !(o.max_grad_norm.is_finite() && o.max_grad_norm >= 0.0) {
        return bad("max-grad-norm", o.max_grad_norm.to_string(), "a finite number ≥ 0 (0: no clipping)");
    }
    for (flag, v) in [("adam-beta1", o.adam_beta1), ("adam-beta2", o.adam_beta2)] {
        if !(finite(v) && (0.0..1.0).contains(&v)) {
            return bad(flag, v.to_string(), "in [0, 1)");
        }
    }
    // eps > 0 also keeps the packs' zero padding inert (0/(0 + eps) = 0).
    if !(finite(o.adam_eps) && o.adam_eps > 0.0) {
        return bad("adam-eps", o.adam_eps.to_string(), "a finite number > 0");
    }
    if let (Some(_), Some(r)) = (&o.init_lora, &o.resume) {
        return Err(Error::input(format!(
            "--init-lora starts a new run, --resume {} continues the checkpoint's LoRA: pass one of them",
            r.display()
        )));
    }
    if let Some((p, s)) = o.preset_loras.iter().find(|p| !p.1.is_finite()) {
        return bad("preset-lora", format!("{}:{s}", p.display()), "FILE or FILE:SCALE with a finite SCALE");
    }
    match o.schedule() {
        None => {
            let names = super::optim::LR_SCHEDULES.join(", ");
            return bad("lr-schedule", o.lr_schedule.clone(), &format!("one of {names}"));
        }
        Some(super::optim::LrSchedule::DiffSynth) if o.warmup > 0 => {
            return bad("warmup", o.warmup.to_string(), "0 with --lr-schedule diffsynth (its own lr/3 start)");
        }
        _ => {}
    }
    if !(finite(o.alpha) && o.alpha > 0.0) {
        return bad("alpha", o.alpha.to_string(), "a finite number > 0");
    }
    for (flag, v) in [
        ("steps", o.steps),
        ("rank", o.rank as u64),
        ("batch-size", o.batch_size as u64),
        ("grad-accum", o.grad_accum as u64),
    ] {
        if v == 0 {
            return bad(flag, "0".into(), "at least 1");
        }
    }
    Ok(())
}

/// Refuses outputs that would replace an input, before anything is read.
pub(super) fn check_train_paths(o: &TrainOptions) -> Result<()> {
    let mut inputs: Vec<&std::path::Path> = vec![&o.model, &o.data];
    inputs.extend(o.config.as_deref());
    inputs.extend(o.transformer.as_deref());
    inputs.extend(o.resume.as_deref());
    inputs.extend(o.init_lora.as_deref());
    inputs.extend(o.preset_loras.iter().map(|p| p.0.as_path()));
    let (lora, loss) = (o.output.join("lora.safetensors"), o.output.join("loss.csv"));
    let plot = o.output.join(super::plot::PLOT_FILE);
    crate::outputs::check_outputs(&inputs, &[&o.output, &lora, &loss, &plot])
}

/// Resume keys that are the LoRA's shape: never overridable.
const LORA_SHAPE_KEYS: [&str; 3] = ["rank", "alpha", "targets"];

/// Keys added after checkpoints were first written, with the value older runs used implicitly:
/// a checkpoint without them resumes as it ran.
const LEGACY_DEFAULTS: [(&str, f64); 3] = [("adam_beta1", 0.9), ("adam_beta2", 0.999), ("adam_eps", 1e-8)];

/// The keys a resume compares: the recorded hyper-parameters and the LoRA config.
fn with_lora(hyper: &serde_json::Value, l: &LoraConfig) -> serde_json::Value {
    let mut m = hyper.as_object().cloned().unwrap_or_default();
    for (k, v) in LEGACY_DEFAULTS {
        m.entry(k).or_insert(v.into());
    }
    m.entry("lr_schedule").or_insert("constant".into());
    m.insert("rank".into(), l.rank.into());
    m.insert("alpha".into(), l.alpha.into());
    m.insert("targets".into(), l.targets.join(",").into());
    serde_json::Value::Object(m)
}

/// A resume must run with the checkpoint's hyper-parameters and LoRA config, except the keys of
/// `--resume-override`; the error lists every difference as (key, saved, given).
pub(super) fn check_resume(
    o: &TrainOptions,
    dir: &std::path::Path,
    state: &TrainState,
    conf: &LoraConfig,
    hyper: &serde_json::Value,
) -> Result<()> {
    let (saved, given) = (with_lora(&state.hyper, &state.lora), with_lora(hyper, conf));
    let diffs = super::checkpoint::hyper_diff(&saved, &given);
    if let Some(k) =
        o.resume_override.iter().find(|k| given.get(k.as_str()).is_none() && saved.get(k.as_str()).is_none())
    {
        return Err(Error::input(format!("--resume-override {k}: not a hyper-parameter key (keys: {})", keys(&given))));
    }
    if let Some(k) = o.resume_override.iter().find(|k| LORA_SHAPE_KEYS.contains(&k.as_str())) {
        return Err(Error::input(format!(
            "--resume-override {k}: rank, alpha and targets are the shape of the checkpoint's LoRA and cannot change on resume"
        )));
    }
    let refused: Vec<String> = diffs
        .iter()
        .filter(|(k, _, _)| !o.resume_override.contains(k))
        .map(|(k, saved, given)| format!("{k}: saved {saved}, given {given}"))
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> =
        diffs.iter().map(|d| d.0.as_str()).filter(|k| !o.resume_override.iter().any(|o| o == k)).collect();
    let hint = if names.iter().any(|k| LORA_SHAPE_KEYS.contains(k)) {
        "rank, alpha and targets are the shape of the checkpoint's LoRA: pass its values".to_string()
    } else {
        format!("pass the saved values, or --resume-override {} to change them on purpose", names.join(","))
    };
    Err(Error::input(format!(
        "--resume {}: the command line differs from the checkpoint's hyper-parameters:\n  {}\n{hint}",
        dir.display(),
        refused.join("\n  ")
    )))
}

fn keys(v: &serde_json::Value) -> String {
    v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>().join(", ")).unwrap_or_default()
}

/// The message of a resume with nothing left to do.
pub fn nothing_left(dir: &std::path::Path, saved: u64, steps: u64) -> String {
    format!(
        "nothing left to do: {} is at step {saved} and --steps is {steps}; no file was written (raise --steps to train further)",
        dir.display()
    )
}

/// Where a stopped run can continue from.
pub(super) fn last_good(out: &std::path::Path) -> String {
    match super::checkpoint::latest(out) {
        Some(c) => format!("the last good checkpoint is {} (continue with --resume)", c.display()),
        None => "no checkpoint was saved (use --save-every to keep some)".into(),
    }
}

/// Refuses a trained LoRA with NaN/Inf values (unless `--allow-nonfinite`).
pub(super) fn check_lora_finite(lora: &LoraParams, o: &TrainOptions) -> Result<()> {
    if o.allow_nonfinite {
        return Ok(());
    }
    for (name, shape, data) in lora.tensors() {
        let hint = format!(
            " (a non-finite gradient; lower --lr or set --max-grad-norm); nothing was written (--allow-nonfinite writes it anyway), {}",
            last_good(&o.output)
        );
        crate::outputs::check_finite(&format!("the trained LoRA tensor {name}"), data, &shape, &hint)?;
    }
    Ok(())
}

/// The hyper-parameters a run records in `state.json` and a resume compares.
pub(super) fn hyper_json(o: &TrainOptions) -> serde_json::Value {
    let mut h = serde_json::json!({
        "lr": o.lr, "weight_decay": o.weight_decay, "warmup": o.warmup, "batch_size": o.batch_size,
        "grad_accum": o.grad_accum, "seed": o.seed, "qkv": o.qkv.name(), "checkpointing": o.checkpointing,
        "sampling": format!("{:?}", o.sampling), "max_grad_norm": o.max_grad_norm,
        "lr_schedule": o.lr_schedule, "adam_beta1": o.adam_beta1, "adam_beta2": o.adam_beta2, "adam_eps": o.adam_eps,
    });
    // A decaying schedule depends on the run's length: a resume with another --steps changes it.
    if matches!(o.schedule(), Some(super::optim::LrSchedule::Linear { .. } | super::optim::LrSchedule::Cosine { .. })) {
        h["lr_decay_steps"] = o.steps.into();
    }
    // The base the LoRA trains on; recorded only when there is one (older checkpoints have none).
    if !o.preset_loras.is_empty() {
        let files: Vec<String> = o.preset_loras.iter().map(|(p, s)| format!("{}:{s}", p.display())).collect();
        h["preset_loras"] = files.into();
    }
    h
}
