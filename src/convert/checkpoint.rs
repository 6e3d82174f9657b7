//! Base checkpoints: plan (merge / split / copy per tensor), shard, then stream into the output.
//!
//! Merging q, k, v stacks their rows, `torch.cat([q, k, v], dim=0)`: for row-major tensors that is
//! the concatenation of their bytes, so the merged tensor is written straight from the three
//! mapped ranges. Splitting writes three contiguous row ranges. Nothing is materialised.

use super::{Action, ConvertOptions, Format, Report, Target};
use crate::models::qwen_image::names::{self, checkpoint_layout, Layout, QkvGroup};
use crate::weights::checkpoint::{Checkpoint, Entry, COMFY_PREFIX, INDEX_NAME, SINGLE_NAME};
use crate::weights::writer::{header_bytes, write_safetensors, OutTensor, Piece, Source, TempOutput};
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Shard size for folder outputs without `--shard-size` (the official release uses ~5 GB shards).
pub const DEFAULT_SHARD: u64 = 5_000_000_000;

/// Converts a base checkpoint (or, with `dry_run`, only reports what it would do).
pub fn convert_checkpoint(ck: &Checkpoint, opts: &ConvertOptions) -> Result<Report> {
    if !ck.entries.iter().any(|e| !e.foreign && names::is_dit_tensor(&e.name)) {
        let eg: Vec<&str> = ck.entries.iter().take(3).map(|e| e.key.as_str()).collect();
        return Err(Error::file(
            &ck.path,
            format!(
                "no Qwen-Image DiT tensor among its {} tensor(s) (e.g. {}): convert takes a DiT checkpoint (file or diffusers folder) or a LoRA file",
                ck.entries.len(),
                eg.join(", ")
            ),
        ));
    }
    let layout = checkpoint_layout(ck)?;
    let prefix = output_prefix(ck, opts.format)?;
    let (tensors, actions) = plan(ck, opts, &prefix)?;
    let folder = ck.is_folder || opts.shard_size.is_some();
    let shards = if folder {
        split_shards(&tensors, opts.shard_size.unwrap_or(DEFAULT_SHARD))
    } else {
        std::iter::once(0..tensors.len()).collect()
    };
    let mut report = Report {
        input_kind: format!("checkpoint ({layout:?} layout, {} file(s), key prefix {:?})", ck.files.len(), ck.prefix),
        actions,
        dry_run: opts.dry_run,
        output: opts.output.clone(),
        ..Report::default()
    };
    if layout == target_layout(opts.to) {
        report.notes.push(format!("the input is already in the {:?} layout: tensors are copied", layout));
    }
    if layout == Layout::Neither {
        report.notes.push("no q/k/v projections found: tensors are copied".into());
    }
    if opts.dry_run {
        report.bytes_written =
            shards.iter().map(|r| header_bytes(&tensors[r.clone()], &ck.metadata).len() as u64).sum::<u64>()
                + tensors.iter().map(|t| t.nbytes()).sum::<u64>();
        return Ok(report);
    }
    let start = Instant::now();
    ck.files.iter().for_each(|f| f.advise_sequential());
    let pb = progress_bar(opts.progress, tensors.iter().map(|t| t.nbytes()).sum());
    let (files, bytes) = if folder {
        write_folder(ck, &opts.output, &tensors, &shards, &pb)?
    } else {
        write_file(ck, &opts.output, &tensors, &pb)?
    };
    pb.finish_and_clear();
    report.files = files;
    report.bytes_written = bytes;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn target_layout(t: Target) -> Layout {
    match t {
        Target::Merged => Layout::Merged,
        Target::Standard => Layout::Standard,
    }
}

fn output_prefix(ck: &Checkpoint, format: Option<Format>) -> Result<String> {
    Ok(match format {
        None => ck.prefix.clone(),
        Some(Format::Diffusers | Format::DiffSynth) => String::new(),
        Some(Format::ComfyUI) if ck.prefix.is_empty() => COMFY_PREFIX.to_string(),
        Some(Format::ComfyUI) => ck.prefix.clone(),
        Some(Format::Kohya) => {
            return Err(Error::input(
                "--format kohya is a LoRA format; a base checkpoint can be diffusers, comfyui or diffsynth",
            ))
        }
    })
}

/// One output tensor (and its action) per input tensor, or per q/k/v group.
fn plan<'a>(ck: &'a Checkpoint, opts: &ConvertOptions, prefix: &str) -> Result<(Vec<OutTensor<'a>>, Vec<Action>)> {
    let mut out = Vec::new();
    let mut actions = Vec::new();
    for e in &ck.entries {
        let role = (!e.foreign)
            .then(|| e.name.rsplit_once('.'))
            .flatten()
            .and_then(|(m, s)| names::qkv_role(m).map(|r| (r, s)));
        match (opts.to, role) {
            (Target::Merged, Some(((block, g, Some(0)), suffix))) => {
                let (t, a) = merge(ck, opts, prefix, block, g, suffix)?;
                out.push(t);
                actions.push(a);
            }
            (Target::Merged, Some(((block, g, Some(_)), suffix))) => {
                // Written together with its q; a k or v without a q is an error.
                let q = part_name(block, g.parts[0], suffix);
                ck.get(&q).ok_or_else(|| {
                    Error::file(&ck.path, format!("tensor {} has no partner {q}: cannot merge", e.name))
                })?;
            }
            (Target::Standard, Some(((block, g, None), suffix))) => {
                let (ts, a) = split(ck, opts, prefix, e, block, g, suffix)?;
                out.extend(ts);
                actions.push(a);
            }
            _ => {
                let (t, a) = copy(ck, opts, prefix, e)?;
                out.push(t);
                actions.push(a);
            }
        }
    }
    if let Some(t) = out.iter().find(|t| crate::weights::safetensors::dtype_str(t.dtype).is_none()) {
        return Err(Error::file(
            &ck.path,
            format!(
                "tensor {} is {}, a block format safetensors cannot hold: pass --dtype bf16 (or f16, f32) to \
                 dequantize, or use `wgdit quantize` to write GGUF",
                t.name,
                t.dtype.name()
            ),
        ));
    }
    let mut seen = HashSet::new();
    if let Some(dup) = out.iter().find(|t| !seen.insert(t.name.as_str())) {
        return Err(Error::file(
            &ck.path,
            format!("two output tensors would be named {} (does the input hold both layouts?)", dup.name),
        ));
    }
    Ok((out, actions))
}

fn part_name(block: usize, module: &str, suffix: &str) -> String {
    format!("transformer_blocks.{block}.{module}.{suffix}")
}

fn out_name(prefix: &str, e: &Entry, name: &str) -> String {
    if e.foreign {
        e.key.clone()
    } else {
        format!("{prefix}{name}")
    }
}

fn copy<'a>(ck: &'a Checkpoint, opts: &ConvertOptions, prefix: &str, e: &'a Entry) -> Result<(OutTensor<'a>, Action)> {
    let v = ck.view_entry(e)?;
    let name = out_name(prefix, e, &e.name);
    let info = ck.info(e);
    let t = OutTensor {
        name: name.clone(),
        dtype: opts.dtype.apply(v.dtype),
        shape: info.shape.clone(),
        source: Source::Mapped { dtype: v.dtype, pieces: vec![Piece::whole(&ck.files[e.file], info)] },
    };
    Ok((t, Action::Copy { from: e.key.clone(), to: name }))
}

/// `to_q`, `to_k`, `to_v` (weight [D, in] or bias [D]) → `to_qkv` [3D, in] / [3D].
fn merge<'a>(
    ck: &'a Checkpoint,
    opts: &ConvertOptions,
    prefix: &str,
    block: usize,
    g: QkvGroup,
    suffix: &str,
) -> Result<(OutTensor<'a>, Action)> {
    let names: [String; 3] = g.parts.map(|p| part_name(block, p, suffix));
    let mut entries = Vec::with_capacity(3);
    for n in &names {
        let e = ck
            .get(n)
            .ok_or_else(|| Error::file(&ck.path, format!("tensor {} has no partner {n}: cannot merge", names[0])))?;
        entries.push(e);
    }
    let views = entries.iter().map(|e| ck.view_entry(e)).collect::<Result<Vec<_>>>()?;
    for v in &views[1..] {
        if v.dtype != views[0].dtype || v.shape != views[0].shape {
            return Err(Error::file(
                &ck.path,
                format!(
                    "cannot merge {} ({:?} {}) with {} ({:?} {}): shapes and dtypes must agree",
                    views[0].name,
                    views[0].shape,
                    views[0].dtype.name(),
                    v.name,
                    v.shape,
                    v.dtype.name()
                ),
            ));
        }
    }
    let mut shape = views[0].shape.to_vec();
    shape[0] *= 3;
    let merged = part_name(block, g.merged, suffix);
    let t = OutTensor {
        name: format!("{prefix}{merged}"),
        dtype: opts.dtype.apply(views[0].dtype),
        shape,
        source: Source::Mapped {
            dtype: views[0].dtype,
            pieces: entries.iter().map(|e| Piece::whole(&ck.files[e.file], ck.info(e))).collect(),
        },
    };
    let from =
        entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>().try_into().expect("cannot fail: three entries");
    let to = t.name.clone();
    Ok((t, Action::Merge { from, to }))
}

/// `to_qkv` [3D, ...] → three row ranges `to_q`, `to_k`, `to_v` [D, ...].
fn split<'a>(
    ck: &'a Checkpoint,
    opts: &ConvertOptions,
    prefix: &str,
    e: &'a Entry,
    block: usize,
    g: QkvGroup,
    suffix: &str,
) -> Result<(Vec<OutTensor<'a>>, Action)> {
    let v = ck.view_entry(e)?;
    if v.shape.is_empty() || v.shape[0] % 3 != 0 {
        return Err(Error::file(
            &ck.path,
            format!("cannot split {}: shape {:?} has no leading dimension divisible by 3", e.name, v.shape),
        ));
    }
    let mut shape = v.shape.to_vec();
    shape[0] /= 3;
    let part_bytes = v.bytes.len() / 3;
    let info = ck.info(e);
    let mut out = Vec::with_capacity(3);
    for (i, p) in g.parts.iter().enumerate() {
        let piece = Piece { file: &ck.files[e.file], info, begin: i * part_bytes, end: (i + 1) * part_bytes };
        out.push(OutTensor {
            name: format!("{prefix}{}", part_name(block, p, suffix)),
            dtype: opts.dtype.apply(v.dtype),
            shape: shape.clone(),
            source: Source::Mapped { dtype: v.dtype, pieces: vec![piece] },
        });
    }
    let to = [0, 1, 2].map(|i| out[i].name.clone());
    Ok((out, Action::Split { from: e.key.clone(), to }))
}

/// Greedy sharding in write order, as huggingface_hub's `split_torch_state_dict_into_shards`:
/// a new shard starts when the next tensor would overflow the current one.
fn split_shards(tensors: &[OutTensor], max: u64) -> Vec<Range<usize>> {
    let mut shards = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, t) in tensors.iter().enumerate() {
        if i > start && size + t.nbytes() > max {
            shards.push(start..i);
            (start, size) = (i, 0);
        }
        size += t.nbytes();
    }
    shards.push(start..tensors.len());
    shards
}

pub(crate) fn progress_bar(show: bool, total: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .expect("cannot fail: fixed template");
    pb.set_style(style);
    pb
}

fn write_file(ck: &Checkpoint, dest: &Path, tensors: &[OutTensor], pb: &ProgressBar) -> Result<(Vec<PathBuf>, u64)> {
    let tmp = TempOutput::new(dest, false)?;
    let n = write_safetensors(&tmp.tmp, tensors, &ck.metadata, pb)?;
    tmp.commit()?;
    Ok((vec![dest.to_path_buf()], n))
}

/// A diffusers folder: one file, or shards named `diffusion_pytorch_model-0000i-of-0000n` with an
/// index (`metadata.total_size` = tensor bytes, `weight_map`), plus the input's config.json.
fn write_folder(
    ck: &Checkpoint,
    dest: &Path,
    tensors: &[OutTensor],
    shards: &[Range<usize>],
    pb: &ProgressBar,
) -> Result<(Vec<PathBuf>, u64)> {
    let tmp = TempOutput::new(dest, true)?;
    let n = shards.len();
    let mut bytes = 0;
    let mut weight_map = BTreeMap::new();
    let mut files = Vec::new();
    for (i, r) in shards.iter().enumerate() {
        let name = if n == 1 {
            SINGLE_NAME.to_string()
        } else {
            format!("diffusion_pytorch_model-{:05}-of-{n:05}.safetensors", i + 1)
        };
        bytes += write_safetensors(&tmp.tmp.join(&name), &tensors[r.clone()], &ck.metadata, pb)?;
        for t in &tensors[r.clone()] {
            weight_map.insert(t.name.clone(), name.clone());
        }
        files.push(dest.join(name));
    }
    if n > 1 {
        let total: u64 = tensors.iter().map(|t| t.nbytes()).sum();
        let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let text = serde_json::to_string_pretty(&index).expect("cannot fail: plain JSON") + "\n";
        let p = tmp.tmp.join(INDEX_NAME);
        std::fs::write(&p, &text).map_err(|e| Error::io(&p, e))?;
        bytes += text.len() as u64;
    }
    if let Some(cfg) = &ck.config {
        let p = tmp.tmp.join("config.json");
        bytes += std::fs::copy(cfg, &p).map_err(|e| Error::io(&p, e))?;
    }
    tmp.commit()?;
    Ok((files, bytes))
}
