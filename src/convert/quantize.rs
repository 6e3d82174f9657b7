//! `wgdit quantize`: a safetensors checkpoint → a GGUF file as ComfyUI-GGUF loads it (city96's
//! `tools/convert.py` + `lcpp.patch`), or → a ComfyUI fp8 safetensors file (optionally "scaled").
//!
//! Tensor by tensor from the memory map (pages released after each): decode to f32, quantize
//! with [`DType::encode`] on `--threads` threads (chunks of whole blocks, which quantize
//! independently), dequantize the same bytes to measure the error, write. One tensor is in memory
//! at a time. The type of each tensor is [`planned_dtype`]; docs/quantize.md has the rules and the
//! metadata written.

use super::checkpoint::progress_bar;
use crate::dtype::DType;
use crate::models::qwen_image::names::{self, Layout};
use crate::weights::checkpoint::{is_fp8_scale_tensor, looks_like_lora, Checkpoint, Entry};
use crate::weights::gguf::Value;
use crate::weights::gguf_write::{GgufTensor, GgufWriter};
use crate::weights::writer::{write_safetensors, OutTensor, Piece, Source, TempOutput};
use crate::{Error, Result};
use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Instant;

mod report;
use report::Stats;
pub use report::{QuantizeReport, TypeRow};

/// Tensors with at most this many elements stay F32 (city96 `QUANTIZATION_THRESHOLD`).
pub const SMALL_TENSOR: usize = 1024;
/// Name prefixes kept in F32: the patch embedding and the final projection (lcpp.patch keeps
/// Flux's `img_in.` and `final_layer.linear.`; Qwen-Image's final layer is `proj_out`).
pub const F32_PREFIXES: [&str; 2] = ["img_in.", "proj_out."];
/// Name prefixes kept in (at least) F16 when quantizing: text input, timestep embedding and the
/// final modulation (lcpp.patch's `txt_in.`, `time_in.`, `final_layer.`).
pub const F16_PREFIXES: [&str; 3] = ["txt_in.", "time_text_embed.", "norm_out."];
/// What the "scaled fp8" scale maps the largest magnitude to: the largest finite E4M3 value.
const E4M3_MAX: f32 = 448.0;
/// The largest finite E5M2 value.
const E5M2_MAX: f32 = 57344.0;
/// Values per quantization chunk: whole blocks of every format (2^18 = 1024 · 256).
const CHUNK: usize = 1 << 18;

/// `--keep PATTERN[=TYPE]`: tensors whose name contains `pattern` get `dtype` (default f16).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepRule {
    pub pattern: String,
    pub dtype: DType,
}

impl KeepRule {
    pub fn parse(s: &str) -> Result<KeepRule> {
        let (pattern, ty) = match s.rsplit_once('=') {
            Some((p, t)) => (p, Some(t)),
            None => (s, None),
        };
        if pattern.is_empty() {
            return Err(Error::input(format!("--keep {s}: the pattern is empty (use --keep PATTERN[=TYPE])")));
        }
        let dtype = match ty {
            None => DType::F16,
            Some(t) => DType::from_name(t)
                .ok_or_else(|| Error::input(format!("--keep {s}: unknown type {t} (use one of {})", TYPES_HELP)))?,
        };
        Ok(KeepRule { pattern: pattern.to_string(), dtype })
    }
}

const TYPES_HELP: &str = "q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, f16, bf16, f32 for .gguf; \
                          f8_e4m3, f8_e5m2 for .safetensors";

/// The type a tensor is written as: [`wanted_dtype`], unless that is a block format whose blocks
/// do not tile the tensor's rows (innermost dimension), then F16 (lcpp.patch's fallback).
pub fn planned_dtype(name: &str, shape: &[usize], target: DType, keep: &[KeepRule]) -> DType {
    let d = wanted_dtype(name, shape, target, keep);
    if rows_fit(shape, d) {
        d
    } else {
        DType::F16
    }
}

/// The type the rules ask for, before the block-size fallback: a `--keep` rule (the first that
/// matches); else F32 for 1-D and small tensors and for [`F32_PREFIXES`]; else, when quantizing
/// (a block or fp8 target), F16 for [`F16_PREFIXES`]; else the target.
pub fn wanted_dtype(name: &str, shape: &[usize], target: DType, keep: &[KeepRule]) -> DType {
    if let Some(k) = keep.iter().find(|k| name.contains(&k.pattern)) {
        return k.dtype;
    }
    let numel: usize = shape.iter().product();
    if shape.len() <= 1 || numel <= SMALL_TENSOR || F32_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return DType::F32;
    }
    // For a float target (f32, f16, bf16) "keep in F16" would lose precision, not keep it.
    let quantizing = target.is_blocked() || matches!(target, DType::F8E4M3 | DType::F8E5M2);
    if quantizing && F16_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return DType::F16;
    }
    target
}

/// Whether `d`'s blocks tile the rows (innermost dimension) of `shape`.
fn rows_fit(shape: &[usize], d: DType) -> bool {
    shape.last().copied().unwrap_or(1) % d.block_elems() == 0
}

/// llama.cpp's `LlamaFileType` of a target (gguf-py `constants.py`); the k-quants use their `_M`
/// ids, as city96's Q*_K_M files do.
pub fn file_type(target: DType) -> Option<u32> {
    use DType::*;
    Some(match target {
        F32 => 0,
        F16 => 1,
        Q4_0 => 2,
        Q4_1 => 3,
        Q8_0 => 7,
        Q5_0 => 8,
        Q5_1 => 9,
        Q2K => 10,
        Q3K => 12,
        Q4K => 15,
        Q5K => 17,
        Q6K => 18,
        BF16 => 32,
        _ => return None,
    })
}

/// The output kind, from the output's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutKind {
    Gguf,
    Fp8,
}

/// Everything `wgdit quantize` takes.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub target: DType,
    pub keep: Vec<KeepRule>,
    /// ComfyUI "scaled fp8": per-tensor `scale_weight` (fp8 targets only).
    pub scaled: bool,
    pub threads: usize,
    pub progress: bool,
}

/// One tensor of the plan.
struct Planned<'a> {
    entry: &'a Entry,
    src: DType,
    /// The `scale_weight` its stored values are multiplied by (a scaled-fp8 input), else 1.
    src_scale: f32,
    out: DType,
    shape: Vec<usize>,
}

impl Planned<'_> {
    /// Whether the stored bytes can be written as they are.
    fn copies(&self) -> bool {
        self.out == self.src && self.src_scale == 1.0
    }
    /// The tensor's values in f32 (scale applied).
    fn values(&self, ck: &Checkpoint) -> Result<Vec<f32>> {
        let mut x = ck.view_entry(self.entry)?.to_f32();
        if self.src_scale != 1.0 {
            x.iter_mut().for_each(|v| *v *= self.src_scale);
        }
        Ok(x)
    }
}

/// Runs `wgdit quantize`.
pub fn quantize(opts: &QuantizeOptions) -> Result<QuantizeReport> {
    let kind = check_options(opts)?;
    let ck = Checkpoint::open(&opts.input)?;
    if looks_like_lora(ck.entries.iter().map(|e| e.key.as_str())) {
        return Err(Error::file(
            &ck.path,
            "this is a LoRA file; quantize takes a base checkpoint (a safetensors file or a diffusers model folder)",
        ));
    }
    let mut report = QuantizeReport { output: opts.output.clone(), ..QuantizeReport::default() };
    let plan = plan(&ck, opts, &mut report)?;
    report.input_bytes = plan.iter().map(|p| ck.info(p.entry).end as u64 - ck.info(p.entry).begin as u64).sum();
    let start = Instant::now();
    ck.files.iter().for_each(|f| f.advise_sequential());
    report.output_bytes = match kind {
        OutKind::Gguf => write_gguf(&ck, &plan, opts, &mut report)?,
        OutKind::Fp8 => write_fp8(&ck, &plan, opts, &mut report)?,
    };
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Refuses a bad `--type`/`--keep`/`--scaled` for the output's kind, and an output that is the input.
fn check_options(opts: &QuantizeOptions) -> Result<OutKind> {
    if !opts.input.exists() {
        return Err(Error::input(format!("input {} does not exist", opts.input.display())));
    }
    crate::outputs::check_outputs(&[&opts.input], &[&opts.output])?;
    let ext = opts.output.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    let kind = match ext.as_deref() {
        Some("gguf") => OutKind::Gguf,
        Some("safetensors") => OutKind::Fp8,
        _ => {
            return Err(Error::input(format!(
                "output {}: name it .gguf (GGML types) or .safetensors (fp8)",
                opts.output.display()
            )))
        }
    };
    let fits = |d: DType| match kind {
        OutKind::Gguf => d.ggml_type().is_some(),
        OutKind::Fp8 => matches!(d, DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::F8E5M2),
    };
    let target_ok = match kind {
        OutKind::Gguf => file_type(opts.target).is_some(),
        OutKind::Fp8 => matches!(opts.target, DType::F8E4M3 | DType::F8E5M2),
    };
    if !target_ok {
        return Err(Error::input(format!(
            "--type {} cannot be written to {} (use {TYPES_HELP}; `wgdit convert --dtype` writes f16/bf16/f32 safetensors)",
            opts.target.name(),
            opts.output.display()
        )));
    }
    if let Some(k) = opts.keep.iter().find(|k| !fits(k.dtype)) {
        return Err(Error::input(format!(
            "--keep {}={}: that type cannot be written to {}",
            k.pattern,
            k.dtype.name(),
            opts.output.display()
        )));
    }
    if opts.scaled && kind != OutKind::Fp8 {
        return Err(Error::input("--scaled is for fp8 safetensors outputs (--type f8_e4m3|f8_e5m2)"));
    }
    if opts.threads == 0 {
        return Err(Error::input("--threads 0: must be at least 1"));
    }
    Ok(kind)
}

/// Parses `--type` (the names of [`DType::name`]).
pub fn parse_target(s: &str) -> Result<DType> {
    DType::from_name(s)
        .filter(|d| file_type(*d).is_some() || matches!(d, DType::F8E4M3 | DType::F8E5M2))
        .ok_or_else(|| Error::input(format!("--type {s}: unknown type (use {TYPES_HELP})")))
}

/// Every model tensor with its type; tensors outside the model's key prefix are dropped (as
/// city96's convert.py does), with a note. The scales of a scaled-fp8 input are applied to their
/// weights, not written.
fn plan<'a>(ck: &'a Checkpoint, opts: &QuantizeOptions, report: &mut QuantizeReport) -> Result<Vec<Planned<'a>>> {
    let scales = ck.entries.iter().filter(|e| !e.foreign && is_fp8_scale_tensor(&e.name)).count();
    if scales > 0 {
        report.notes.push(format!("a scaled-fp8 input: its {scales} scale tensor(s) are applied to their weights"));
    }
    let model: Vec<&Entry> = ck.entries.iter().filter(|e| !e.foreign && !is_fp8_scale_tensor(&e.name)).collect();
    if !model.iter().any(|e| names::is_dit_tensor(&e.name)) {
        let eg: Vec<&str> = ck.entries.iter().take(3).map(|e| e.key.as_str()).collect();
        return Err(Error::file(
            &ck.path,
            format!(
                "no Qwen-Image DiT tensor among its {} tensor(s) (e.g. {}): quantize takes a DiT checkpoint",
                ck.entries.len(),
                eg.join(", ")
            ),
        ));
    }
    report.input_kind =
        format!("checkpoint ({} file(s), key prefix {:?}, {} tensors)", ck.files.len(), ck.prefix, model.len());
    let dropped = ck.entries.len() - model.len() - scales;
    if dropped > 0 {
        report.notes.push(format!("{dropped} tensor(s) outside the {:?} prefix were left out", ck.prefix));
    }
    if names::checkpoint_layout(ck)? == Layout::Merged {
        report.notes.push(
            "the input has merged q/k/v (attn.to_qkv); ComfyUI-GGUF expects to_q/to_k/to_v: `wgdit convert --to standard` first"
                .into(),
        );
    }
    let mut out = Vec::with_capacity(model.len());
    for e in model {
        let v = ck.view_entry(e)?;
        let wanted = wanted_dtype(&e.name, v.shape, opts.target, &opts.keep);
        let d = planned_dtype(&e.name, v.shape, opts.target, &opts.keep);
        if d != wanted {
            report.warnings.push(format!(
                "{} {:?}: rows of {} elements are not whole {} blocks of {}; written as {}",
                e.name,
                v.shape,
                v.shape.last().copied().unwrap_or(1),
                wanted.name(),
                wanted.block_elems(),
                d.name()
            ));
        }
        let src_scale = ck.fp8_scale(&e.name).transpose()?.unwrap_or(1.0);
        out.push(Planned { entry: e, src: v.dtype, src_scale, out: d, shape: v.shape.to_vec() });
    }
    Ok(out)
}

/// city96's metadata: architecture, quantization version 2 (`GGML_QUANT_VERSION`), file type.
fn gguf_metadata(target: DType) -> Vec<(String, Value)> {
    vec![
        ("general.architecture".into(), Value::String("qwen_image".into())),
        ("general.quantization_version".into(), Value::U32(2)),
        ("general.file_type".into(), Value::U32(file_type(target).expect("cannot fail: checked by check_options"))),
    ]
}

fn write_gguf(ck: &Checkpoint, plan: &[Planned], opts: &QuantizeOptions, report: &mut QuantizeReport) -> Result<u64> {
    let infos: Vec<GgufTensor> =
        plan.iter().map(|p| GgufTensor { name: p.entry.name.clone(), dtype: p.out, shape: p.shape.clone() }).collect();
    let mut w = GgufWriter::create(&opts.output, &gguf_metadata(opts.target), infos)?;
    let pb = progress_bar(opts.progress, report.input_bytes);
    for p in plan {
        let v = ck.view_entry(p.entry)?;
        let (bytes, stats) = if p.copies() {
            (Cow::Borrowed(v.bytes), None)
        } else {
            let (b, s) = encode(p.out, &p.values(ck)?, 1.0, opts.threads);
            (Cow::Owned(b), Some(s))
        };
        w.write_tensor(&bytes)?;
        report.add(p.out, bytes.len() as u64, stats);
        ck.files[p.entry.file].release(ck.info(p.entry));
        pb.inc(v.bytes.len() as u64);
    }
    pb.finish_and_clear();
    w.finish()
}

/// A ComfyUI fp8 safetensors file through the streaming safetensors writer. With `--scaled`,
/// each fp8 `<module>.weight` holds `w / scale` with `scale = amax / max(fp8)` in
/// `<module>.scale_weight` (F32, shape `[]`, as ComfyUI's scaled-fp8 Linear declares it), and
/// a `scaled_fp8` tensor of the fp8 dtype and shape `[0]` marks the file (ComfyUI's
/// `model_detection` takes the fp8 format from its dtype).
fn write_fp8(ck: &Checkpoint, plan: &[Planned], opts: &QuantizeOptions, report: &mut QuantizeReport) -> Result<u64> {
    let mut tensors = Vec::with_capacity(plan.len() + 1);
    let pb = progress_bar(opts.progress, report.input_bytes);
    for p in plan {
        let info = ck.info(p.entry);
        let pieces = vec![Piece::whole(&ck.files[p.entry.file], info)];
        let fp8 = matches!(p.out, DType::F8E4M3 | DType::F8E5M2);
        let module = p.entry.name.strip_suffix(".weight").filter(|_| fp8 && opts.scaled);
        let mut scale = None;
        let mut stats = None;
        if !p.copies() {
            // The error pass (and the amax of a scaled tensor): one tensor in memory, then released.
            let x = p.values(ck)?;
            let s = module.map(|_| fp8_scale(&x, p.out));
            stats = Some(encode(p.out, &x, s.unwrap_or(1.0), opts.threads).1);
            scale = s;
            ck.files[p.entry.file].release(info);
        }
        report.add(p.out, p.out.bytes(p.shape.iter().product()) as u64, stats);
        // The writer divides the stored values by this: the output's scale over the input's.
        let divide = scale.unwrap_or(1.0) / p.src_scale;
        let source = if divide == 1.0 {
            Source::Mapped { dtype: p.src, pieces }
        } else {
            Source::Scaled { dtype: p.src, pieces, scale: divide }
        };
        tensors.push(OutTensor { name: p.entry.name.clone(), dtype: p.out, shape: p.shape.clone(), source });
        if let (Some(m), Some(s)) = (module, scale) {
            let t = scalar(format!("{m}.scale_weight"), DType::F32, vec![s]);
            report.add(DType::F32, 4, None);
            tensors.push(t);
        }
        pb.inc((info.end - info.begin) as u64);
    }
    if opts.scaled {
        let scales = tensors.iter().filter(|t| t.name.ends_with(".scale_weight")).count();
        report.notes.push(format!(
            "scaled fp8: {scales} `.scale_weight` F32 scalars (counted under f32) and the `scaled_fp8` marker"
        ));
        tensors.push(OutTensor {
            name: "scaled_fp8".into(),
            dtype: opts.target,
            shape: vec![0],
            source: Source::Host(Cow::Owned(Vec::new())),
        });
    }
    let metadata = if ck.files.iter().any(|f| f.gguf.is_some()) { Default::default() } else { ck.metadata.clone() };
    let tmp = TempOutput::new(&opts.output, false)?;
    let total: u64 = tensors.iter().map(|t| t.nbytes()).sum();
    let wpb = progress_bar(opts.progress, total);
    pb.finish_and_clear();
    let n = write_safetensors(&tmp.tmp, &tensors, &metadata, &wpb)?;
    wpb.finish_and_clear();
    tmp.commit()?;
    Ok(n)
}

fn scalar(name: String, dtype: DType, v: Vec<f32>) -> OutTensor<'static> {
    OutTensor { name, dtype, shape: vec![], source: Source::Host(Cow::Owned(v)) }
}

/// `amax / max(fp8)`, so that the largest magnitude lands on the largest finite fp8 value (1 for
/// an all-zero tensor).
fn fp8_scale(x: &[f32], d: DType) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max = if d == DType::F8E5M2 { E5M2_MAX } else { E4M3_MAX };
    if amax > 0.0 && amax.is_finite() {
        amax / max
    } else {
        1.0
    }
}

/// Encodes `x / scale` as `d` on `threads` threads, in chunks of [`CHUNK`] values (whole blocks:
/// blocks quantize independently, so the bytes equal one `d.encode`); each chunk is decoded again
/// to sum the squared error of `decode · scale` against `x`. Chunks are below the dtype module's
/// own threading threshold (2^20 values), so `threads` is what runs.
fn encode(d: DType, x: &[f32], scale: f32, threads: usize) -> (Vec<u8>, Stats) {
    let one = |c: &[f32]| {
        let scaled: Cow<[f32]> =
            if scale == 1.0 { Cow::Borrowed(c) } else { Cow::Owned(c.iter().map(|v| v / scale).collect()) };
        let b = d.encode(&scaled);
        let mut s = Stats::default();
        for (q, v) in d.decode(&b).iter().zip(c) {
            let e = (*q * scale) as f64 - *v as f64;
            s.err2 += e * e;
            s.ref2 += (*v as f64) * (*v as f64);
        }
        (b, s)
    };
    let chunks: Vec<&[f32]> = x.chunks(CHUNK).collect();
    let threads = threads.min(chunks.len()).max(1);
    let mut parts: Vec<(usize, Vec<u8>, Stats)> = if threads == 1 {
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (b, s) = one(c);
                (i, b, s)
            })
            .collect()
    } else {
        std::thread::scope(|sc| {
            let (one, chunks) = (&one, &chunks);
            // Worker w takes chunks w, w + threads, …: equal chunks, so equal shares.
            let workers: Vec<_> = (0..threads)
                .map(|w| {
                    sc.spawn(move || {
                        (w..chunks.len())
                            .step_by(threads)
                            .map(|i| {
                                let (b, s) = one(chunks[i]);
                                (i, b, s)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers.into_iter().flat_map(|h| h.join().expect("quantize: an encoding thread panicked")).collect()
        })
    };
    parts.sort_by_key(|p| p.0);
    let mut bytes = Vec::with_capacity(d.bytes(x.len()));
    let mut stats = Stats::default();
    for (_, b, s) in parts {
        bytes.extend_from_slice(&b);
        stats.err2 += s.err2;
        stats.ref2 += s.ref2;
    }
    (bytes, stats)
}

/// `--threads` by default: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_keep_small_embedding_and_final_tensors_precise_and_fall_back_on_odd_rows() {
        let t = DType::Q4K;
        assert_eq!(planned_dtype("transformer_blocks.0.attn.to_q.weight", &[3072, 3072], t, &[]), DType::Q4K);
        assert_eq!(planned_dtype("transformer_blocks.0.attn.to_q.bias", &[3072], t, &[]), DType::F32);
        assert_eq!(planned_dtype("transformer_blocks.0.attn.norm_q.weight", &[128], t, &[]), DType::F32);
        assert_eq!(planned_dtype("small.weight", &[32, 32], t, &[]), DType::F32);
        assert_eq!(planned_dtype("img_in.weight", &[3072, 64], t, &[]), DType::F32);
        assert_eq!(planned_dtype("proj_out.weight", &[64, 3072], t, &[]), DType::F32);
        assert_eq!(planned_dtype("txt_in.weight", &[3072, 3584], t, &[]), DType::F16);
        assert_eq!(
            planned_dtype("time_text_embed.timestep_embedder.linear_1.weight", &[3072, 256], t, &[]),
            DType::F16
        );
        assert_eq!(planned_dtype("norm_out.linear.weight", &[6144, 3072], t, &[]), DType::F16);
        // 3584 = 14 · 256 fits; 100 fits neither 256 nor 32
        assert_eq!(planned_dtype("transformer_blocks.0.x.weight", &[64, 3584], t, &[]), DType::Q4K);
        assert_eq!(planned_dtype("transformer_blocks.0.x.weight", &[64, 100], t, &[]), DType::F16);
        assert_eq!(planned_dtype("transformer_blocks.0.x.weight", &[64, 96], DType::Q8_0, &[]), DType::Q8_0);
        assert_eq!(planned_dtype("transformer_blocks.0.x.weight", &[64, 96], t, &[]), DType::F16);
        // float targets: no F16 demotion
        assert_eq!(planned_dtype("txt_in.weight", &[3072, 3584], DType::BF16, &[]), DType::BF16);
        assert_eq!(planned_dtype("txt_in.weight", &[3072, 3584], DType::F32, &[]), DType::F32);
        assert_eq!(planned_dtype("txt_in.weight", &[3072, 3584], DType::F8E4M3, &[]), DType::F16);
    }

    #[test]
    fn keep_rules_override_the_defaults_in_order_and_still_fall_back() {
        let keep = [KeepRule::parse("to_v=q6_k").unwrap(), KeepRule::parse("attn").unwrap()];
        assert_eq!(keep[1], KeepRule { pattern: "attn".into(), dtype: DType::F16 });
        let t = DType::Q4K;
        assert_eq!(planned_dtype("transformer_blocks.0.attn.to_v.weight", &[256, 256], t, &keep), DType::Q6K);
        assert_eq!(planned_dtype("transformer_blocks.0.attn.to_q.weight", &[256, 256], t, &keep), DType::F16);
        assert_eq!(planned_dtype("transformer_blocks.0.attn.to_v.bias", &[256], t, &keep), DType::Q6K);
        assert_eq!(planned_dtype("transformer_blocks.0.attn.to_v.weight", &[256, 100], t, &keep), DType::F16);
        assert!(KeepRule::parse("=q4_k").is_err());
        assert!(KeepRule::parse("x=q9").unwrap_err().to_string().contains("unknown type q9"));
    }

    #[test]
    fn file_types_are_llama_cpp_ids() {
        let ids: Vec<_> = [DType::F32, DType::F16, DType::Q8_0, DType::Q4K, DType::Q6K, DType::BF16]
            .iter()
            .map(|d| file_type(*d).unwrap())
            .collect();
        assert_eq!(ids, [0, 1, 7, 15, 18, 32]);
        assert!(parse_target("q4_k").is_ok() && parse_target("F8_E4M3").is_ok());
        assert!(parse_target("f8_e4m3_scaled").is_err() && parse_target("q4").is_err());
    }

    #[test]
    fn threaded_encoding_gives_the_bytes_of_one_encode() {
        let x: Vec<f32> = (0..3 * CHUNK + 256).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect();
        for d in [DType::F16, DType::BF16, DType::Q8_0, DType::Q4_1, DType::F8E4M3] {
            let (b, s) = encode(d, &x, 1.0, 4);
            assert_eq!(b, d.encode(&x), "{}", d.name());
            assert!(s.err2 > 0.0 && s.ref2 > 0.0);
        }
    }
}
