//! Training checkpoints and the loss log.
//!
//! `<out>/checkpoint-<step>/` holds
//! - `lora.safetensors`: the LoRA in diffusers/PEFT format, f32 (the master weights, exact);
//! - `optimizer.safetensors`: AdamW moments `<path>.lora_A.m` / `.v` (f32) per LoRA tensor;
//! - `state.json`: `{"version", "step", "rng", "data": {"epoch", "position"}, "lora": {rank,
//!   alpha, targets}, "hyper": {...}}` (the run's hyper-parameters as given).
//!
//! The folder is written under a temporary name and renamed into place, so a crash never leaves
//! a partial `checkpoint-<step>`. `loss.csv` gets one flushed row per step; on resume it is cut
//! back to the resumed step.

use super::data::BatcherState;
use super::lora::{LoraConfig, LoraParams};
use super::optim::Moments;
use crate::dtype::DType;
use crate::models::qwen_image::lora::read_lora;
use crate::models::qwen_image::DitConfig;
use crate::rng::Rng;
use crate::weights::lora::LoraFormat;
use crate::weights::safetensors::SafeFile;
use crate::weights::writer::{write_safetensors, OutTensor, Source, TempOutput};
use crate::{Error, Result};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
pub const LORA_FILE: &str = "lora.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const VERSION: u32 = 1;

/// Everything besides tensors that a resumed run needs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    pub version: u32,
    /// Optimizer steps completed.
    pub step: u64,
    pub rng: Rng,
    pub data: BatcherState,
    pub lora: LoraConfig,
    /// The run's hyper-parameters (lr, schedule, batch size, seed, ...) as the trainer records them.
    pub hyper: serde_json::Value,
}

/// A checkpoint in memory: the LoRA and the AdamW moments, in [`LoraParams::tensors`] order.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub state: TrainState,
    pub lora: LoraParams,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

/// `<out>/checkpoint-<step>`.
pub fn checkpoint_dir(out: &Path, step: u64) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

/// The checkpoint folder with the highest step in `out`, if any.
pub fn latest(out: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(out).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse::<u64>().ok()?;
            e.path().join(STATE_FILE).is_file().then(|| (step, e.path()))
        })
        .max_by_key(|(s, _)| *s)
        .map(|(_, p)| p)
}

impl TrainState {
    /// Reads `<dir>/state.json` alone (the step and hyper-parameters of a checkpoint).
    pub fn read(dir: &Path) -> Result<TrainState> {
        if !dir.is_dir() {
            return Err(Error::input(format!("checkpoint {} is not a folder", dir.display())));
        }
        let sp = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
        TrainState::from_json_str(&sp, &text)
    }
}

impl Checkpoint {
    /// Writes `<out>/checkpoint-<step>` atomically (an older folder of the same step is replaced).
    pub fn save(&self, out: &Path) -> Result<PathBuf> {
        let dest = checkpoint_dir(out, self.state.step);
        let n = self.lora.tensors().len();
        assert!(self.m.len() == n && self.v.len() == n, "checkpoint: one m and one v per LoRA tensor");
        let tmp = TempOutput::new(&dest, true)?;
        self.lora.save(&tmp.tmp.join(LORA_FILE), LoraFormat::Diffusers, DType::F32)?;
        write_safetensors(
            &tmp.tmp.join(OPTIMIZER_FILE),
            &self.moment_tensors(),
            &BTreeMap::new(),
            &indicatif::ProgressBar::hidden(),
        )?;
        let json = serde_json::to_string_pretty(&self.state).expect("cannot fail: plain data");
        let state = tmp.tmp.join(STATE_FILE);
        std::fs::write(&state, json).map_err(|e| Error::io(&state, e))?;
        sync_dir(&tmp.tmp);
        // rename cannot replace a non-empty folder: move the old one aside first
        let old = dest.with_file_name(format!("checkpoint-{}.old-{}", self.state.step, std::process::id()));
        if dest.exists() {
            std::fs::rename(&dest, &old).map_err(|e| Error::io(&dest, e))?;
        }
        tmp.commit()?;
        if old.exists() {
            let _ = std::fs::remove_dir_all(&old);
        }
        sync_dir(out);
        Ok(dest)
    }

    fn moment_tensors(&self) -> Vec<OutTensor<'_>> {
        let mut out = Vec::new();
        for (i, (name, shape, _)) in self.lora.tensors().into_iter().enumerate() {
            for (kind, data) in [("m", &self.m[i]), ("v", &self.v[i])] {
                assert_eq!(data.len(), shape.iter().product::<usize>(), "checkpoint: moment {kind} of {name}");
                out.push(OutTensor {
                    name: format!("{name}.{kind}"),
                    dtype: DType::F32,
                    shape: shape.clone(),
                    source: Source::Host(Cow::Borrowed(data)),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Reads and validates a checkpoint folder against the model config.
    pub fn load(dir: &Path, cfg: &DitConfig) -> Result<Checkpoint> {
        let state = TrainState::read(dir)?;
        let lp = dir.join(LORA_FILE);
        let lora = read_lora(&lp)?;
        let lora = LoraParams::from_lora(cfg, &state.lora, &lora).map_err(|e| Error::file(&lp, e.to_string()))?;
        let (m, v) = read_moments(&dir.join(OPTIMIZER_FILE), &lora)?;
        Ok(Checkpoint { state, lora, m, v })
    }
}

impl TrainState {
    /// Parses `state.json` (`path` names it in messages) and checks its version.
    pub fn from_json_str(path: &Path, text: &str) -> Result<TrainState> {
        let state: TrainState =
            serde_json::from_str(text).map_err(|e| Error::file(path, format!("not a wgdit training state: {e}")))?;
        if state.version != VERSION {
            return Err(Error::file(path, format!("state version {} (this wgdit reads {VERSION})", state.version)));
        }
        Ok(state)
    }
}

/// Moments of every LoRA tensor, with their shapes checked.
fn read_moments(path: &Path, lora: &LoraParams) -> Result<Moments> {
    read_moments_file(&SafeFile::open(path)?, lora)
}

/// [`read_moments`] of a file already opened (or held in memory).
pub(crate) fn read_moments_file(f: &SafeFile, lora: &LoraParams) -> Result<Moments> {
    let path = f.path.as_path();
    let (mut m, mut v) = (Vec::new(), Vec::new());
    for (name, shape, _) in lora.tensors() {
        for (kind, out) in [("m", &mut m), ("v", &mut v)] {
            let key = format!("{name}.{kind}");
            let t = f.tensors.iter().find(|t| t.name == key).ok_or_else(|| {
                Error::file(path, format!("moment {key} missing (the optimizer state does not match the LoRA)"))
            })?;
            if t.shape != shape || t.dtype != "F32" {
                return Err(Error::file(
                    path,
                    format!("moment {key} is {} {:?}; expected F32 {shape:?}", t.dtype, t.shape),
                ));
            }
            out.push(f.view(t)?.to_f32());
        }
    }
    if f.tensors.len() != 2 * lora.tensors().len() {
        return Err(Error::file(
            path,
            format!("{} moments for {} LoRA tensors", f.tensors.len(), lora.tensors().len()),
        ));
    }
    Ok((m, v))
}

/// Best-effort fsync of a folder so a rename survives a power cut.
fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Hyper-parameter keys whose values differ between a checkpoint and the current run (for a
/// resume to refuse, or warn, by the caller's policy); keys only in one side count too.
pub fn hyper_differences(saved: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    hyper_diff(saved, now).into_iter().map(|(k, a, b)| format!("{k}: {a} → {b}")).collect()
}

/// The differing keys as (key, saved, given), in key order.
pub fn hyper_diff(saved: &serde_json::Value, now: &serde_json::Value) -> Vec<(String, String, String)> {
    let empty = serde_json::Map::new();
    let a = saved.as_object().unwrap_or(&empty);
    let b = now.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).map(|k| (k.clone(), show(a.get(k)), show(b.get(k)))).collect()
}

fn show(v: Option<&serde_json::Value>) -> String {
    v.map_or("(absent)".into(), |v| v.to_string())
}

/// One row of `loss.csv`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossRow {
    pub step: u64,
    pub loss: f64,
    pub sigma: f32,
    pub lr: f64,
    pub step_ms: f64,
}

/// `loss.csv`: header `step,loss,sigma,lr,step_ms`, one row per step, flushed as written.
#[derive(Debug)]
pub struct LossLog {
    path: PathBuf,
    file: std::fs::File,
    /// (step, loss) of every row, those kept on resume first (what `loss.svg` plots).
    points: Vec<(u64, f64)>,
}

/// The rows of a log kept on resume and their (step, loss) points.
pub type KeptRows = (Vec<String>, Vec<(u64, f64)>);

pub const LOSS_HEADER: &str = "step,loss,sigma,lr,step_ms";

impl LossLog {
    /// A new log (an existing file is replaced).
    pub fn create(path: &Path) -> Result<LossLog> {
        LossLog::rewrite(path, &[])
    }

    /// Continues a log after step `step`: rows of later steps (written after that checkpoint)
    /// are dropped; a missing file starts a new log.
    pub fn resume(path: &Path, step: u64) -> Result<LossLog> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let (keep, points) = LossLog::kept_rows(path, &text, step)?;
        let mut log = LossLog::rewrite(path, &keep)?;
        log.points = points;
        Ok(log)
    }

    /// The rows of a log's `text` up to `step` and their (step, loss): the rows of later steps
    /// (written after the checkpoint, possibly cut short by a crash) are dropped unread; a kept
    /// row without a step or a finite loss is an error naming its line.
    pub fn kept_rows(path: &Path, text: &str, step: u64) -> Result<KeptRows> {
        let (mut keep, mut points) = (Vec::new(), Vec::new());
        for (i, line) in text.lines().enumerate().skip(1) {
            let mut cols = line.split(',');
            let s: u64 = cols.next().unwrap_or("").trim().parse().map_err(|_| {
                Error::file(path, format!("line {}: `{line}` does not start with a step number", i + 1))
            })?;
            if s > step {
                continue; // written after the checkpoint (possibly cut short by a crash): dropped
            }
            let loss: f64 =
                cols.next().unwrap_or("").trim().parse().ok().filter(|l: &f64| l.is_finite()).ok_or_else(|| {
                    Error::file(path, format!("line {}: `{line}` has no finite loss in its second column", i + 1))
                })?;
            keep.push(line.to_string());
            points.push((s, loss));
        }
        Ok((keep, points))
    }

    /// (step, loss) of every row of the log, in order.
    pub fn points(&self) -> &[(u64, f64)] {
        &self.points
    }

    /// Writes header + rows to a temporary file, renames it over `path`, opens it for appending.
    fn rewrite(path: &Path, rows: &[String]) -> Result<LossLog> {
        let tmp = TempOutput::new(path, false)?;
        let mut text = String::from(LOSS_HEADER);
        text.push('\n');
        for r in rows {
            text.push_str(r);
            text.push('\n');
        }
        std::fs::write(&tmp.tmp, text).map_err(|e| Error::io(&tmp.tmp, e))?;
        tmp.commit()?;
        let file = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(LossLog { path: path.to_path_buf(), file, points: Vec::new() })
    }

    /// Appends a row and flushes it to the OS.
    pub fn append(&mut self, r: &LossRow) -> Result<()> {
        let line = format!("{},{:.8e},{:.6},{:.6e},{:.1}\n", r.step, r.loss, r.sigma, r.lr, r.step_ms);
        self.file.write_all(line.as_bytes()).map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))?;
        self.points.push((r.step, r.loss));
        Ok(())
    }
}
