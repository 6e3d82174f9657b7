//! From `vae/diffusion_pytorch_model.safetensors` to graph params: validation against the names
//! table (every missing, mis-shaped, unsupported or unexpected tensor reported in one error) and
//! the derivations of [`ParamSrc`]: 3×3×3 conv weights reduced to their last time tap `W[:, :, 2]`
//! (spec §1.2.1: a single frame sees `[0, 0, x]` through the causal padding) and reordered to
//! `[co, kh, kw, ci]` in their stored dtype (f32, f16 or bf16: no host widening), the q/k/v blocks
//! of `to_qkv`, biases and gammas widened to f32.

use super::config::VaeConfig;
use super::names::expected_tensors;
use super::vae::ParamSrc;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::weights::checkpoint::Checkpoint;
use crate::weights::safetensors::dtype_from_str;
use std::collections::HashSet;

/// Checks every tensor the config needs against the checkpoint; all problems in one error.
pub fn validate(cfg: &VaeConfig, ckpt: &Checkpoint) -> Result<()> {
    let (mut missing, mut misshaped, mut dtype) = (Vec::new(), Vec::new(), Vec::new());
    let mut used = HashSet::new();
    for (name, want) in expected_tensors(cfg) {
        let Some(e) = ckpt.get(&name) else {
            missing.push(name);
            continue;
        };
        let info = ckpt.info(e);
        if info.shape != want {
            misshaped.push(format!("{name}: {:?}, expected {want:?}", info.shape));
        }
        if dtype_from_str(&info.dtype).is_none() {
            dtype.push(format!("{name}: {}", info.dtype));
        }
        used.insert(name);
    }
    let mut unexpected: Vec<String> =
        ckpt.entries.iter().map(|e| e.name.clone()).filter(|n| !used.contains(n)).collect();
    unexpected.sort();
    if missing.is_empty() && misshaped.is_empty() && dtype.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    let list = |v: &[String]| {
        let head: Vec<&str> = v.iter().take(12).map(String::as_str).collect();
        let more = if v.len() > 12 { format!(", … ({} in all)", v.len()) } else { String::new() };
        format!("{}{more}", head.join(", "))
    };
    let mut msg = format!(
        "{} does not match the VAE config (base_dim {}, z_dim {}, dim_mult {:?}):",
        ckpt.path.display(),
        cfg.base_dim,
        cfg.z_dim,
        cfg.dim_mult
    );
    for (what, v) in [
        ("missing", &missing),
        ("wrong shape", &misshaped),
        ("unsupported dtype (F32, F16, BF16 only)", &dtype),
        ("unexpected", &unexpected),
    ] {
        if !v.is_empty() {
            msg += &format!("\n  {what}: {}", list(v));
        }
    }
    msg += "\n  (is this the diffusers AutoencoderKLQwenImage folder `vae/`? Original Wan / ComfyUI key names are not read.)";
    Err(Error::input(msg))
}

/// The bytes and dtype of one graph param (the checkpoint validated first).
pub fn param_bytes(ckpt: &Checkpoint, src: &ParamSrc) -> Result<(DType, Vec<u8>)> {
    match src {
        ParamSrc::ConvWeight { name, co, ci, k } => {
            let v = ckpt.view(name)?;
            let es = v.dtype.bytes(1);
            Ok((v.dtype, conv_weight_bytes(v.bytes, v.shape, es, *co, *ci, *k)))
        }
        ParamSrc::Rows { name, row0, rows, weight } => {
            let v = ckpt.view(name)?;
            let row = v.numel() / v.shape[0];
            let es = v.dtype.bytes(1);
            let raw = &v.bytes[row0 * row * es..(row0 + rows) * row * es];
            Ok(if *weight { (v.dtype, raw.to_vec()) } else { (DType::F32, DType::F32.encode(&v.dtype.decode(raw))) })
        }
        ParamSrc::F32 { name } => {
            let v = ckpt.view(name)?;
            Ok((DType::F32, DType::F32.encode(&v.to_f32())))
        }
    }
}

/// A conv weight `[co, ci, (t,) k, k]` as `[co, k, k, ci]`, keeping the last time tap of a 3-D
/// kernel; element size `es` bytes, the stored dtype kept.
pub fn conv_weight_bytes(raw: &[u8], shape: &[usize], es: usize, co: usize, ci: usize, k: usize) -> Vec<u8> {
    let t = if shape.len() == 5 { shape[2] } else { 1 };
    debug_assert_eq!(shape.iter().product::<usize>(), co * ci * t * k * k);
    let mut out = vec![0u8; co * k * k * ci * es];
    for o in 0..co {
        for i in 0..ci {
            for ky in 0..k {
                for kx in 0..k {
                    let src = ((((o * ci + i) * t + (t - 1)) * k + ky) * k + kx) * es;
                    let dst = (((o * k + ky) * k + kx) * ci + i) * es;
                    out[dst..dst + es].copy_from_slice(&raw[src..src + es]);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::conv_weight_bytes;

    #[test]
    fn conv_weights_keep_the_last_time_tap_and_become_channels_last() {
        // W[o, i, t, y, x] = 10000o + 1000i + 100t + 10y + x, co 2, ci 3, t 3, k 3.
        let (co, ci, k) = (2, 3, 3);
        let mut w = Vec::new();
        for o in 0..co {
            for i in 0..ci {
                for t in 0..3 {
                    for y in 0..k {
                        for x in 0..k {
                            w.push((10000 * o + 1000 * i + 100 * t + 10 * y + x) as f32);
                        }
                    }
                }
            }
        }
        let raw: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = conv_weight_bytes(&raw, &[co, ci, 3, k, k], 4, co, ci, k);
        let got: Vec<f32> = out.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        for o in 0..co {
            for y in 0..k {
                for x in 0..k {
                    for i in 0..ci {
                        let want = (10000 * o + 1000 * i + 200 + 10 * y + x) as f32;
                        assert_eq!(got[((o * k + y) * k + x) * ci + i], want);
                    }
                }
            }
        }
    }
}
