//! LoRA files: standard ↔ merged q/k/v, exact in ΔW = (alpha / r) · B · A.
//!
//! Merge: LoRAs on q, k, v (ranks r_q, r_k, r_v) become one LoRA on the merged module of rank
//! R = r_q + r_k + r_v with A = [A_q; A_k; A_v] and B = blockdiag(B_q, B_k, B_v), because
//! [W_q; W_k; W_v] + [ΔW_q; ΔW_k; ΔW_v] = W_qkv + B·A. With one shared scale s the merged alpha is
//! s·R and no value changes; different scales are folded into the B blocks (B_k·s_k/s_q, ...),
//! exact up to one f32 rounding (exact when the ratios are powers of two).
//! Split: a LoRA on the merged module becomes three LoRAs sharing A with B split by rows, also
//! exact. When the file records the part ranks of our own merge (`wgdit_qkv_ranks`) and B is block
//! diagonal in them, the parts get back their own rows of A and columns of B, so merge → split
//! restores the original bit for bit.

use super::{Action, ConvertOptions, DtypeChoice, Report, Target};
use crate::dtype::DType;
use crate::models::qwen_image::lora::read_lora;
use crate::models::qwen_image::names::{self, QkvGroup};
use crate::weights::lora::{write_lora, HostTensor, Lora, LoraFormat, LoraModule};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::time::Instant;

/// Converts a LoRA file (or, with `dry_run`, only reports what it would do).
pub fn convert_lora(opts: &ConvertOptions) -> Result<Report> {
    if opts.shard_size.is_some() {
        return Err(Error::input("--shard-size applies to base checkpoints; LoRA files are written as one file"));
    }
    let start = Instant::now();
    let lora = read_lora(&opts.input)?;
    let (out, actions, notes) = match opts.to {
        Target::Merged => merge_lora(&lora)?,
        Target::Standard => split_lora(&lora)?,
    };
    let format = opts.format.map_or(LoraFormat::Diffusers, |f| f.lora());
    let dtype = match opts.dtype {
        DtypeChoice::Keep => None,
        DtypeChoice::To(d) => Some(d),
    };
    let mut report = Report {
        input_kind: format!("LoRA ({}, {} modules)", lora.format.name(), lora.modules.len()),
        actions,
        notes,
        dry_run: opts.dry_run,
        output: opts.output.clone(),
        ..Report::default()
    };
    if opts.dry_run {
        report.bytes_written = out
            .modules
            .values()
            .map(|m| dtype.unwrap_or(m.a.dtype).bytes(m.a.data.len() + m.b.data.len()) as u64)
            .sum();
        return Ok(report);
    }
    report.bytes_written = write_lora(&opts.output, &out, format, dtype)?;
    report.files = vec![opts.output.clone()];
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

type Converted = (Lora, Vec<Action>, Vec<String>);

/// Groups the q/k/v LoRAs of each block and fuses them; copies the rest.
pub fn merge_lora(lora: &Lora) -> Result<Converted> {
    let mut groups: BTreeMap<String, (QkvGroup, usize, [Option<&LoraModule>; 3])> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut actions = Vec::new();
    let mut notes = Vec::new();
    for (p, m) in &lora.modules {
        match names::qkv_role(p) {
            Some((block, g, Some(i))) => {
                let key = format!("transformer_blocks.{block}.{}", g.merged);
                groups.entry(key).or_insert((g, block, [None; 3])).2[i] = Some(m);
            }
            _ => {
                out.insert(p.clone(), m.clone());
                actions.push(Action::Copy { from: p.clone(), to: p.clone() });
            }
        }
    }
    let mut qkv_ranks = lora.qkv_ranks.clone();
    for (merged, (g, block, parts)) in groups {
        let paths = g.parts.map(|p| format!("transformer_blocks.{block}.{p}"));
        let parts: Vec<&LoraModule> = parts.iter().zip(&paths).map(|(m, p)| {
            m.ok_or_else(|| Error::input(format!(
                "LoRA module {p} is missing while {} has one: merging needs LoRAs on all of {} (convert a LoRA without it with --to standard)",
                paths.iter().zip(parts).find(|(_, m)| m.is_some()).map_or("", |(p, _)| p.as_str()), paths.join(", ")
            )))
        }).collect::<Result<_>>()?;
        let (m, note) = fuse(&merged, [parts[0], parts[1], parts[2]])?;
        notes.extend(note);
        if out.insert(merged.clone(), m).is_some() {
            return Err(Error::input(format!("the LoRA already has a module {merged} next to its q/k/v parts")));
        }
        qkv_ranks.insert(merged.clone(), [parts[0].rank(), parts[1].rank(), parts[2].rank()]);
        actions.push(Action::Merge { from: paths, to: merged });
    }
    Ok((
        Lora { modules: out, format: lora.format, extra_metadata: lora.extra_metadata.clone(), qkv_ranks },
        actions,
        notes,
    ))
}

/// One dtype for a concatenation: the common one, else f32.
fn common(ds: [DType; 3]) -> DType {
    if ds.iter().all(|d| *d == ds[0]) {
        ds[0]
    } else {
        DType::F32
    }
}

fn fuse(merged: &str, p: [&LoraModule; 3]) -> Result<(LoraModule, Option<String>)> {
    let (din, dout) = (p[0].in_features(), p[0].out_features());
    if let Some(bad) = p.iter().find(|m| m.in_features() != din || m.out_features() != dout) {
        return Err(Error::input(format!(
            "cannot merge into {merged}: parts map {din} -> {dout} and {} -> {} (shapes must agree)",
            bad.in_features(),
            bad.out_features()
        )));
    }
    let ranks = p.map(|m| m.rank());
    let big_r: usize = ranks.iter().sum();
    let scales = p.map(|m| m.scale());
    let same_scale = scales.iter().all(|s| *s == scales[0]);
    let alpha = if !same_scale {
        scales[0] * big_r as f64
    } else if ranks.iter().all(|r| *r == ranks[0]) {
        p[0].alpha * 3.0 // exact: 3α / 3r == α / r
    } else {
        scales[0] * big_r as f64
    };
    let a: Vec<f32> = p.iter().flat_map(|m| m.a.data.iter().copied()).collect();
    let mut b = vec![0f32; 3 * dout * big_r];
    let mut b_dtype = common(p.map(|m| m.b.dtype));
    let mut note = None;
    let mut col = 0;
    for (i, m) in p.iter().enumerate() {
        let ratio = scales[i] / scales[0];
        if ratio.log2().fract() != 0.0 {
            b_dtype = DType::F32;
        }
        for row in 0..dout {
            for k in 0..ranks[i] {
                b[(i * dout + row) * big_r + col + k] = (m.b.data[row * ranks[i] + k] as f64 * ratio) as f32;
            }
        }
        col += ranks[i];
    }
    if !same_scale {
        note = Some(format!(
            "{merged}: q/k/v scales {scales:?} differ; folded into B relative to q ({} B)",
            b_dtype.name()
        ));
    }
    let a = HostTensor { data: a, shape: vec![big_r, din], dtype: common(p.map(|m| m.a.dtype)) };
    let b = HostTensor { data: b, shape: vec![3 * dout, big_r], dtype: b_dtype };
    Ok((LoraModule { a, b, alpha }, note))
}

/// Splits every merged-module LoRA into its q, k, v parts; copies the rest.
pub fn split_lora(lora: &Lora) -> Result<Converted> {
    let mut out = BTreeMap::new();
    let mut actions = Vec::new();
    let mut qkv_ranks = lora.qkv_ranks.clone();
    for (p, m) in &lora.modules {
        let Some((block, g, None)) = names::qkv_role(p) else {
            insert(&mut out, p.clone(), m.clone())?;
            actions.push(Action::Copy { from: p.clone(), to: p.clone() });
            continue;
        };
        if m.out_features() % 3 != 0 {
            return Err(Error::input(format!(
                "cannot split the LoRA on {p}: B has {} rows, not divisible by 3",
                m.out_features()
            )));
        }
        let ranks = qkv_ranks.remove(p).filter(|r| is_block_diagonal(m, r));
        let paths = g.parts.map(|q| format!("transformer_blocks.{block}.{q}"));
        for (i, part) in paths.iter().enumerate() {
            insert(&mut out, part.clone(), split_part(m, i, ranks.as_ref()))?;
        }
        actions.push(Action::Split { from: p.clone(), to: paths });
    }
    Ok((
        Lora { modules: out, format: lora.format, extra_metadata: lora.extra_metadata.clone(), qkv_ranks },
        actions,
        Vec::new(),
    ))
}

fn insert(out: &mut BTreeMap<String, LoraModule>, p: String, m: LoraModule) -> Result<()> {
    match out.insert(p.clone(), m) {
        Some(_) => {
            Err(Error::input(format!("the LoRA has a module {p} both directly and inside its merged q/k/v module")))
        }
        None => Ok(()),
    }
}

/// Whether B [3D, R] is zero outside the diagonal blocks given by the part ranks.
fn is_block_diagonal(m: &LoraModule, ranks: &[usize; 3]) -> bool {
    let big_r = m.rank();
    if ranks.iter().sum::<usize>() != big_r {
        return false;
    }
    let d = m.out_features() / 3;
    let mut col0 = 0;
    for (i, r) in ranks.iter().enumerate() {
        for row in i * d..(i + 1) * d {
            let line = &m.b.data[row * big_r..(row + 1) * big_r];
            if line[..col0].iter().chain(&line[col0 + r..]).any(|x| *x != 0.0) {
                return false;
            }
        }
        col0 += r;
    }
    true
}

/// Part i of a merged LoRA: its rows of B, with either all of A (shared) or, for a recorded block
/// diagonal B, its own rows of A and columns of B (alpha scaled to keep alpha / r).
fn split_part(m: &LoraModule, i: usize, ranks: Option<&[usize; 3]>) -> LoraModule {
    let (big_r, din) = (m.rank(), m.in_features());
    let d = m.out_features() / 3;
    let (c0, r) = match ranks {
        Some(rs) => (rs[..i].iter().sum::<usize>(), rs[i]),
        None => (0, big_r),
    };
    let a = m.a.data[c0 * din..(c0 + r) * din].to_vec();
    let mut b = Vec::with_capacity(d * r);
    for row in i * d..(i + 1) * d {
        b.extend_from_slice(&m.b.data[row * big_r + c0..row * big_r + c0 + r]);
    }
    // alpha·r/R keeps the scale: exact for the 3α of an equal-rank merge (3α·r / 3r = α).
    let alpha = if r == big_r { m.alpha } else { m.alpha * r as f64 / big_r as f64 };
    LoraModule {
        a: HostTensor { data: a, shape: vec![r, din], dtype: m.a.dtype },
        b: HostTensor { data: b, shape: vec![d, r], dtype: m.b.dtype },
        alpha,
    }
}
