//! `wgdit convert`: exact standard ↔ merged q/k/v conversion of base checkpoints and LoRA files.
//!
//! - Base checkpoints ([`checkpoint`]) stream tensor by tensor from the memory map into the output:
//!   `attn.to_{q,k,v}` → `attn.to_qkv` and `attn.add_{q,k,v}_proj` → `attn.add_qkv_proj` (rows
//!   stacked q, k, v, as `torch.cat(dim=0)`), or the inverse split; everything else is copied bit
//!   for bit unless `--dtype` asks for a conversion (round to nearest even).
//! - LoRA files ([`lora`]) are read into the canonical form of [`crate::weights::lora`], merged or
//!   split exactly, and written in the chosen format.
//!
//! - `wgdit quantize` ([`quantize`]) writes GGUF files (GGML block formats) and ComfyUI fp8
//!   safetensors files from a checkpoint, tensor by tensor (docs/quantize.md).
//!
//! Outputs are written to `<output>.tmp-<pid>` and renamed; the input is never overwritten.

pub mod checkpoint;
pub mod lora;
pub mod quantize;

use crate::dtype::DType;
use crate::weights::checkpoint::looks_like_lora;
use crate::weights::{Checkpoint, LoraFormat, SafeFile};
use crate::{Error, Result};
use std::fmt;
use std::path::{Path, PathBuf};

/// Which q/k/v layout to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Merged,
    Standard,
}

/// What to do with tensor dtypes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtypeChoice {
    Keep,
    To(DType),
}

impl DtypeChoice {
    pub fn apply(self, d: DType) -> DType {
        match self {
            DtypeChoice::Keep => d,
            DtypeChoice::To(t) => t,
        }
    }
}

/// Parses "5GB", "500MB", "2GiB", "123" (bytes). GB = 10^9 and GiB = 2^30, as huggingface_hub.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1048576.0,
        "GIB" => 1073741824.0,
        _ => return Err(Error::input(format!("--shard-size {s}: unknown unit (use B, KB, MB, GB, KiB, MiB or GiB)"))),
    };
    let n: f64 = num.parse().map_err(|_| Error::input(format!("--shard-size {s}: not a size")))?;
    let bytes = (n * mult) as u64;
    if bytes == 0 {
        return Err(Error::input(format!("--shard-size {s}: must be positive")));
    }
    Ok(bytes)
}

/// Output key format. For base checkpoints diffusers and diffsynth use bare diffusers names and
/// comfyui the `diffusion_model.` prefix; kohya exists only for LoRAs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Diffusers,
    ComfyUI,
    DiffSynth,
    Kohya,
}

impl Format {
    pub fn lora(self) -> LoraFormat {
        match self {
            Format::Diffusers => LoraFormat::Diffusers,
            Format::ComfyUI => LoraFormat::ComfyUI,
            Format::DiffSynth => LoraFormat::DiffSynth,
            Format::Kohya => LoraFormat::Kohya,
        }
    }
}

/// Everything `wgdit convert` takes.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub to: Target,
    /// `None`: LoRAs are written as diffusers/PEFT, base checkpoints keep their key prefix.
    pub format: Option<Format>,
    pub dtype: DtypeChoice,
    pub shard_size: Option<u64>,
    pub dry_run: bool,
    /// Draw a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

/// One planned operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Merge { from: [String; 3], to: String },
    Split { from: String, to: [String; 3] },
    Copy { from: String, to: String },
}

/// What a conversion did (or, for a dry run, would do).
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// "checkpoint (standard, 2 files)" or "LoRA (kohya/musubi)".
    pub input_kind: String,
    pub actions: Vec<Action>,
    pub notes: Vec<String>,
    pub dry_run: bool,
    /// The output path (file or folder) and the weight files written into it.
    pub output: PathBuf,
    pub files: Vec<PathBuf>,
    pub bytes_written: u64,
    pub seconds: f64,
}

impl Report {
    pub fn count(&self) -> (usize, usize, usize) {
        let m = self.actions.iter().filter(|a| matches!(a, Action::Merge { .. })).count();
        let s = self.actions.iter().filter(|a| matches!(a, Action::Split { .. })).count();
        (m, s, self.actions.len() - m - s)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "input: {}", self.input_kind)?;
        if self.dry_run {
            for a in &self.actions {
                match a {
                    Action::Merge { from, to } => {
                        writeln!(f, "merge  {} + {} + {} -> {to}", from[0], from[1], from[2])?
                    }
                    Action::Split { from, to } => writeln!(f, "split  {from} -> {} + {} + {}", to[0], to[1], to[2])?,
                    Action::Copy { from, to } if from == to => writeln!(f, "copy   {from}")?,
                    Action::Copy { from, to } => writeln!(f, "copy   {from} -> {to}")?,
                }
            }
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        let (m, s, c) = self.count();
        let verb = if self.dry_run { "would write" } else { "wrote" };
        write!(f, "{m} merged, {s} split, {c} copied; {verb} {:.1} MB", self.bytes_written as f64 / 1e6)?;
        if !self.dry_run {
            let rate = self.bytes_written as f64 / 1e6 / self.seconds.max(1e-9);
            write!(f, " to {} in {:.2} s ({rate:.0} MB/s)", self.output.display(), self.seconds)?;
        }
        Ok(())
    }
}

/// Runs a conversion: detects a LoRA file or a base checkpoint and dispatches.
pub fn convert(opts: &ConvertOptions) -> Result<Report> {
    check_paths(&opts.input, &opts.output)?;
    if opts.input.is_file() {
        let f = SafeFile::open(&opts.input)?;
        if looks_like_lora(f.tensors.iter().map(|t| t.name.as_str())) {
            drop(f);
            return lora::convert_lora(opts);
        }
    }
    let ck = Checkpoint::open(&opts.input)?;
    checkpoint::convert_checkpoint(&ck, opts)
}

/// Refuses an output that is the input (or one of its files, or the same file through another
/// path), and an existing non-empty output folder.
fn check_paths(input: &Path, output: &Path) -> Result<()> {
    if !input.exists() {
        return Err(Error::input(format!("input {} does not exist", input.display())));
    }
    crate::outputs::check_outputs(&[input], &[output])?;
    if output.is_dir() && std::fs::read_dir(output).map_err(|e| Error::io(output, e))?.next().is_some() {
        return Err(Error::input(format!(
            "output folder {} exists and is not empty; remove it or choose another output",
            output.display()
        )));
    }
    Ok(())
}
