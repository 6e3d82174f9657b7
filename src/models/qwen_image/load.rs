//! From checkpoint tensors to the graph's params: validation of a whole checkpoint (every
//! missing, unexpected or mis-shaped tensor reported together), resolution of standard names in
//! merged checkpoints (and merged in standard: the graph always names standard tensors and
//! stacks them itself), and upload in the stored dtype (no host widening of weights).

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::TensorId;
use crate::models::qwen_image::names::{expected_tensors, merged_home};
use crate::models::qwen_image::DitConfig;
use crate::nn::ParamSource;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use std::borrow::Cow;
use std::collections::HashMap;

/// Stored tensors by canonical (standard or merged diffusers) name. Shared across threads: the
/// weight-streaming runtime assembles blocks on a worker thread (`stream.rs`).
pub trait TensorSource: Send + Sync {
    /// Every stored tensor name (canonical, prefixes stripped).
    fn names(&self) -> Vec<String>;
    /// Stored dtype and shape, or `None` when absent.
    fn meta(&self, name: &str) -> Option<(DType, Vec<usize>)>;
    /// The stored bytes (little-endian, in the stored dtype).
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>>;
    /// Where the tensors come from, for messages.
    fn describe(&self) -> String;
    /// The stored dtype name of a tensor that is present but in a dtype wgdit cannot read
    /// (`I8`, a GGUF `IQ4_XS`, ...), for messages; `None` otherwise.
    fn unsupported_dtype(&self, _name: &str) -> Option<String> {
        None
    }
}

/// Where a standard-named tensor lives in a source: itself, or a row block of a merged tensor.
fn locate(src: &dyn TensorSource, name: &str) -> Option<(String, Option<usize>)> {
    if src.meta(name).is_some() {
        return Some((name.to_string(), None));
    }
    let (merged, i) = merged_home(name)?;
    src.meta(&merged).map(|_| (merged, Some(i)))
}

/// The stored dtype of a standard-named tensor (resolving merged checkpoints).
pub fn stored_dtype(src: &dyn TensorSource, name: &str) -> DType {
    locate(src, name).and_then(|(n, _)| src.meta(&n)).map_or(DType::F32, |m| m.0)
}

/// The bytes of `parts` stacked in order, each in `dtype` (how a param is uploaded).
pub fn stacked_bytes(src: &dyn TensorSource, parts: &[String], dtype: DType) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for part in parts {
        bytes.extend(standard_bytes(src, part, dtype)?);
    }
    Ok(bytes)
}

/// [`stacked_bytes`] written into `dst` (a streamed block's slot image) without intermediate
/// copies when the stored dtype is `dtype`; returns the bytes written (`Err` past `dst`'s end).
pub fn stacked_into(src: &dyn TensorSource, parts: &[String], dtype: DType, dst: &mut [u8]) -> Result<usize> {
    let mut at = 0;
    for part in parts {
        at += with_standard_bytes(src, part, dtype, |b| {
            let end = at + b.len();
            if end > dst.len() {
                return Err(Error::input(format!("tensor {part} overruns its param ({end} > {} bytes)", dst.len())));
            }
            dst[at..end].copy_from_slice(b);
            Ok(b.len())
        })?;
    }
    Ok(at)
}

/// The bytes of a standard-named tensor in `dtype`.
fn standard_bytes(src: &dyn TensorSource, name: &str, dtype: DType) -> Result<Vec<u8>> {
    with_standard_bytes(src, name, dtype, |b| Ok(b.to_vec()))
}

/// Calls `f` with the bytes of a standard-named tensor in `dtype` (borrowed from the source when
/// stored in `dtype`).
fn with_standard_bytes<T>(
    src: &dyn TensorSource,
    name: &str,
    dtype: DType,
    f: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<T> {
    let (stored, block) =
        locate(src, name).ok_or_else(|| Error::input(format!("tensor {name} missing from {}", src.describe())))?;
    let (dt, shape) = src.meta(&stored).expect("cannot fail: located");
    let raw = src.bytes(&stored)?;
    let raw: &[u8] = match block {
        None => &raw,
        Some(i) => {
            let third = raw.len() / 3;
            debug_assert_eq!(shape[0] % 3, 0);
            &raw[i * third..(i + 1) * third]
        }
    };
    if dt == dtype {
        f(raw)
    } else {
        f(&dtype.encode(&dt.decode(raw)))
    }
}

/// Checks every tensor the config needs: present (directly or inside a merged tensor), with the
/// right shape, and nothing unexpected. All problems are reported in one error.
pub fn validate(cfg: &DitConfig, src: &dyn TensorSource) -> Result<()> {
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut used = std::collections::HashSet::new();
    for (name, shape) in expected_tensors(cfg) {
        let Some((stored, block)) = locate(src, &name) else {
            missing.push(name);
            continue;
        };
        let (dtype, got) = src.meta(&stored).expect("cannot fail: located");
        let want: Vec<usize> = match block {
            None => shape.clone(),
            Some(_) => std::iter::once(shape[0] * 3).chain(shape[1..].iter().copied()).collect(),
        };
        if got != want {
            misshaped.push(format!("{stored}: {got:?}, expected {want:?}"));
        } else if got.last().is_some_and(|k| k % dtype.block_elems() != 0) {
            // A row that is not whole blocks cannot be addressed by the GEMM's row offsets.
            misshaped.push(format!(
                "{stored}: rows of {} elements are not whole {}-element {} blocks",
                got[got.len() - 1],
                dtype.block_elems(),
                dtype.name()
            ));
        }
        used.insert(stored);
    }
    let mut unexpected: Vec<String> = src.names().into_iter().filter(|n| !used.contains(n)).collect();
    unexpected.sort();
    // A tensor present in an unreadable dtype is neither missing nor unexpected: say the dtype.
    let mut unsupported: Vec<(String, String)> = Vec::new();
    unexpected.retain(|n| match src.unsupported_dtype(n) {
        Some(d) => {
            unsupported.push((n.clone(), d));
            false
        }
        None => true,
    });
    missing.retain(|n| !unsupported.iter().any(|(u, _)| u == n || merged_home(n).is_some_and(|(m, _)| &m == u)));
    if missing.is_empty() && misshaped.is_empty() && unexpected.is_empty() && unsupported.is_empty() {
        return Ok(());
    }
    if let Some((name, dtype)) = unsupported.first() {
        let mut dtypes: Vec<&str> = unsupported.iter().map(|(_, d)| d.as_str()).collect();
        dtypes.sort_unstable();
        dtypes.dedup();
        return Err(Error::input(format!(
            "{}: {} tensor(s) are stored as {} (e.g. {name} is {dtype}), a dtype wgdit does not read (it reads \
             F32, F16, BF16, F8_E4M3, F8_E5M2 (scaled or not) and the GGUF types F32, F16, BF16, Q8_0, Q4_0, Q4_1, \
             Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K); use a release in one of those, or quantize the BF16 \
             release with `wgdit quantize --type q8_0` (or q4_k, …)",
            src.describe(),
            unsupported.len(),
            dtypes.join(", ")
        )));
    }
    let list = |v: &[String]| {
        let head: Vec<&str> = v.iter().take(12).map(String::as_str).collect();
        format!("{}{}", head.join(", "), if v.len() > 12 { format!(", … ({} in all)", v.len()) } else { String::new() })
    };
    let mut msg = format!(
        "{} does not match the model config ({} layers, hidden {}):",
        src.describe(),
        cfg.num_layers,
        cfg.hidden()
    );
    if !missing.is_empty() {
        msg += &format!("\n  missing: {}", list(&missing));
    }
    if !misshaped.is_empty() {
        msg += &format!("\n  wrong shape: {}", list(&misshaped));
    }
    if !unexpected.is_empty() {
        msg += &format!("\n  unexpected: {}", list(&unexpected));
    }
    msg += "\n  (is this a Qwen-Image transformer checkpoint, and does --config match it? A LoRA file goes to --lora.)";
    Err(Error::input(msg))
}

/// Uploaded params, keyed by how they were assembled, so that graphs for new shapes reuse them.
#[derive(Default)]
pub struct WeightCache {
    uploaded: HashMap<(Vec<String>, Option<DType>), Tensor>,
}

impl WeightCache {
    /// The GPU tensor of every param of a graph, uploading those not yet cached.
    pub fn bind(
        &mut self,
        gpu: &Gpu,
        src: &dyn TensorSource,
        params: &[(TensorId, ParamSource)],
        graph: &crate::graph::Graph,
    ) -> Result<HashMap<TensorId, Tensor>> {
        let missing = params.iter().filter(|(_, ps)| !self.uploaded.contains_key(&(ps.parts.clone(), ps.dtype)));
        let (count, need) = missing.fold((0, 0), |(n, b), (t, _)| (n + 1, b + graph.info(*t).bytes()));
        gpu.check_device_fits(
            need,
            &format!("the upload of {count} weight tensors of {}", src.describe()),
            "store the weights in bf16 if they are f32 (wgdit convert --dtype bf16), or use a GPU with more memory",
        )?;
        let mut out = HashMap::new();
        for (t, ps) in params {
            let key = (ps.parts.clone(), ps.dtype);
            if !self.uploaded.contains_key(&key) {
                let info = graph.info(*t);
                let bytes = stacked_bytes(src, &ps.parts, info.dtype)?;
                if bytes.len() as u64 != info.bytes() {
                    return Err(Error::input(format!(
                        "param {} has {} bytes, expected {}",
                        info.name,
                        bytes.len(),
                        info.bytes()
                    )));
                }
                if gpu.kernel_choice().precision == crate::gpu::Precision::Mixed && info.shape.len() == 2 {
                    check_f16_range(&info.name, info.dtype, &bytes)?;
                }
                let tensor = Tensor::from_bytes(gpu, &bytes, &info.shape, info.dtype, &info.name)
                    .map_err(|e| binding_advice(e, &ps.parts, info.dtype))?;
                self.uploaded.insert(key.clone(), tensor);
            }
            out.insert(*t, self.uploaded[&key].clone());
        }
        Ok(out)
    }

    /// Forgets the upload of a param (a block that now streams); plans that bound it keep it
    /// alive until they are dropped.
    pub fn evict(&mut self, ps: &ParamSource) {
        self.uploaded.remove(&(ps.parts.clone(), ps.dtype));
    }

    /// Bytes of weights on the GPU.
    pub fn bytes(&self) -> u64 {
        self.uploaded.values().map(Tensor::bytes).sum()
    }

    /// Drops the cached params whose parts all satisfy `pred` (their GPU memory is freed once no
    /// plan holds them); returns the bytes dropped.
    pub fn release(&mut self, pred: &dyn Fn(&str) -> bool) -> u64 {
        let mut bytes = 0;
        self.uploaded.retain(|(parts, _), t| {
            let drop = parts.iter().all(|p| pred(p));
            if drop {
                bytes += t.bytes();
            }
            !drop
        });
        bytes
    }
}

/// What to do about a weight above the binding limit. Stacked weights come from the modes:
/// `--qkv fused` stacks a block's txt_mod and img_mod (12·D rows: 216 MiB of bf16 on the real
/// model, above lavapipe's 128 MiB) and both streams' q/k/v, `merged` stacks q, k and v; `merged`
/// and `standard` keep each stream's modulation on its own, `standard` every tensor. Only f32
/// weights get narrower.
fn binding_advice(e: Error, parts: &[String], dtype: DType) -> Error {
    let Error::TooLarge(mut m) = e else { return e };
    if parts.len() > 1 {
        let mode = if parts.iter().any(|p| p.contains("_mod.")) {
            "--qkv merged (or standard) binds each stream's modulation on its own"
        } else {
            "--qkv standard binds every checkpoint tensor on its own"
        };
        m += &format!("; this weight stacks {} checkpoint tensors ({}, …): {mode}", parts.len(), parts[0]);
    }
    if dtype == DType::F32 {
        m += "; the weights are f32: converting them to bf16 halves every binding (wgdit convert --dtype bf16)";
    }
    Error::TooLarge(m)
}

/// `--precision mixed` rounds GEMM weights to f16 while staging them: a float weight beyond
/// f16's range (|w| ≥ 65520 rounds to infinity) is refused with advice, never silently turned
/// into infinities. bf16 overflows f16 exactly when its exponent is 2^16 or more (the largest bf16
/// below that is 65280); block formats decode to scale·q, which this check does not reach.
pub fn check_f16_range(name: &str, dtype: DType, bytes: &[u8]) -> Result<()> {
    let worst = match dtype {
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .filter(|b| (b >> 7) & 0xff >= 143)
            .map(|b| f32::from_bits((b as u32) << 16).abs())
            .fold(None, |m: Option<f32>, v| Some(m.map_or(v, |m| m.max(v)))),
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).abs())
            .filter(|v| v.is_nan() || *v >= 65520.0)
            .fold(None, |m: Option<f32>, v| Some(m.map_or(v, |m| m.max(v)))),
        _ => None,
    };
    match worst {
        None => Ok(()),
        Some(v) => Err(Error::input(format!(
            "{name}: weights reach |w| = {v:e}, beyond f16's range (65504), which --precision mixed rounds them to; \
             run with --precision f32 (or --kernels portable)"
        ))),
    }
}

/// A model with random weights (every tensor of the config, seeded): the built-in default of the
/// quickstart and the benches, where real multi-GB checkpoints are not at hand.
pub struct RandomWeights {
    tensors: HashMap<String, (Vec<usize>, Vec<u8>)>,
    dtype: DType,
}

impl RandomWeights {
    /// Weights ~ U(−1/√fan_in, 1/√fan_in) like torch's Linear init, norm weights ~ 1 ± 0.1.
    pub fn new(cfg: &DitConfig, dtype: DType, seed: u64) -> RandomWeights {
        let mut rng = Rng::new(seed);
        let tensors = expected_tensors(cfg)
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let v = if name.contains("norm") && shape.len() == 1 {
                    rng.vec_uniform(n, 0.9, 1.1)
                } else {
                    let fan_in = if shape.len() == 2 { shape[1] } else { cfg.hidden() };
                    let a = 1.0 / (fan_in as f32).sqrt();
                    rng.vec_uniform(n, -a, a)
                };
                let dt = if shape.len() == 2 { dtype } else { DType::F32 };
                (name, (shape, dt.encode(&v)))
            })
            .collect();
        RandomWeights { tensors, dtype }
    }
}

impl TensorSource for RandomWeights {
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn meta(&self, name: &str) -> Option<(DType, Vec<usize>)> {
        self.tensors.get(name).map(|(s, _)| (if s.len() == 2 { self.dtype } else { DType::F32 }, s.clone()))
    }
    fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        self.tensors
            .get(name)
            .map(|(_, b)| Cow::Borrowed(b.as_slice()))
            .ok_or_else(|| Error::input(format!("tensor {name} missing from random weights")))
    }
    fn describe(&self) -> String {
        "built-in random weights".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_beyond_f16_range_are_refused_for_mixed_precision_with_advice() {
        let ok = DType::BF16.encode(&[65280.0, -1.0, 1e-30]);
        assert!(check_f16_range("w", DType::BF16, &ok).is_ok());
        let bad = DType::BF16.encode(&[0.5, -70000.0, 2.0]);
        let e = check_f16_range("blocks.0.ff.weight", DType::BF16, &bad).unwrap_err().to_string();
        assert!(e.contains("blocks.0.ff.weight") && e.contains("--precision f32"), "{e}");
        assert!(check_f16_range("w", DType::F32, &DType::F32.encode(&[65519.0])).is_ok());
        assert!(check_f16_range("w", DType::F32, &DType::F32.encode(&[65520.0])).is_err());
        assert!(check_f16_range("w", DType::F32, &DType::F32.encode(&[f32::NAN])).is_err());
        assert!(check_f16_range("w", DType::F16, &DType::F16.encode(&[65504.0])).is_ok());
    }

    #[test]
    fn binding_advice_suggests_standard_mode_for_stacked_weights_and_bf16_only_for_f32() {
        let e = || Error::TooLarge("w binds at most 1 byte".into());
        let parts = vec!["a.to_q.weight".to_string(), "a.to_k.weight".into(), "a.to_v.weight".into()];
        let m = binding_advice(e(), &parts, DType::BF16).to_string();
        assert!(m.contains("--qkv standard") && !m.contains("bf16"), "{m}");
        let mods = vec!["b.0.txt_mod.1.weight".to_string(), "b.0.img_mod.1.weight".into()];
        let m = binding_advice(e(), &mods, DType::BF16).to_string();
        assert!(m.contains("--qkv merged") && !m.contains("bf16"), "{m}");
        let m = binding_advice(e(), &parts[..1], DType::F32).to_string();
        assert!(!m.contains("--qkv standard") && m.contains("--dtype bf16"), "{m}");
    }
}
