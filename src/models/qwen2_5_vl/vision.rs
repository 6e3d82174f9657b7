//! The vision tower (transformers `Qwen2_5_VisionTransformerPretrainedModel`; spec §2.7) on the
//! graph, over the patches of one or more images already put in window order on the host
//! (`positions::window_index`, in units of one merge group):
//!
//! ```text
//! x = pixel_values·W_patchᵀ                               (Conv3d with kernel = stride: a GEMM)
//! per block:  x += proj(attn(RMSNorm(x)))  window (segments) or full (per image) attention,
//!                                           2-D rotate-half RoPE, q/k/v from one merged GEMM
//!             x += down(silu(gate(h)) ⊙ up(h)),  h = RMSNorm(x)
//! merger:     y = mlp2(gelu_erf(mlp0(RMSNorm(x) viewed [N/4, 4C])))    [N/4, out_hidden]
//! ```
//! The caller un-permutes the merger's rows (`argsort(window_index)`).

use super::config::VisionConfig;
use super::lm::Builder;
use crate::dtype::DType;
use crate::graph::ops::*;
use crate::graph::{Graph, TensorId};
use crate::nn::linear::ParamSource;

/// RMSNorm epsilon of the vision tower (fixed in transformers).
const EPS: f32 = 1e-6;

/// The vision graph of `n` patches.
pub struct VisionGraph {
    pub graph: Graph,
    pub params: Vec<(TensorId, ParamSource)>,
    /// `pixel_values` rows in window order [n, C·T·P·P].
    pub pixels: TensorId,
    /// The (cos, sin) table [n, head_dim/2, 2] in window order (bound from outside).
    pub rope: TensorId,
    /// Window boundaries (f32, patches) and image boundaries (full-attention blocks).
    pub windows: TensorId,
    pub images: TensorId,
    /// [n / merge², out_hidden], in window order.
    pub out: TensorId,
}

/// The names every vision tensor has (canonical, `visual.*`) with its shape.
pub fn vision_tensors(v: &VisionConfig) -> Vec<(String, Vec<usize>)> {
    let (c, i, o) = (v.hidden_size, v.intermediate_size, v.out_hidden_size);
    let m = c * v.spatial_merge_size * v.spatial_merge_size;
    let mut t = vec![(
        "visual.patch_embed.proj.weight".to_string(),
        vec![c, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size],
    )];
    for b in 0..v.depth {
        let p = format!("visual.blocks.{b}");
        for (name, shape) in [
            ("norm1.weight", vec![c]),
            ("norm2.weight", vec![c]),
            ("attn.qkv.weight", vec![3 * c, c]),
            ("attn.qkv.bias", vec![3 * c]),
            ("attn.proj.weight", vec![c, c]),
            ("attn.proj.bias", vec![c]),
            ("mlp.gate_proj.weight", vec![i, c]),
            ("mlp.gate_proj.bias", vec![i]),
            ("mlp.up_proj.weight", vec![i, c]),
            ("mlp.up_proj.bias", vec![i]),
            ("mlp.down_proj.weight", vec![c, i]),
            ("mlp.down_proj.bias", vec![c]),
        ] {
            t.push((format!("{p}.{name}"), shape));
        }
    }
    for (name, shape) in [
        ("visual.merger.ln_q.weight", vec![c]),
        ("visual.merger.mlp.0.weight", vec![m, m]),
        ("visual.merger.mlp.0.bias", vec![m]),
        ("visual.merger.mlp.2.weight", vec![o, m]),
        ("visual.merger.mlp.2.bias", vec![o]),
    ] {
        t.push((name.to_string(), shape));
    }
    t
}

/// Builds the tower over `n` patches with `windows` / `images` segment counts.
pub fn build(v: &VisionConfig, n: usize, windows: usize, images: usize, dtype: &dyn Fn(&str) -> DType) -> VisionGraph {
    let (c, heads) = (v.hidden_size, v.num_heads);
    let hd = c / heads;
    let k = v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size;
    let mut b = Builder { g: Graph::new(), params: Vec::new(), dtype };
    let pixels = b.g.input("pixel_values", &[n, k], DType::F32);
    let rope = b.g.param("vision.rope", &[n, hd / 2, 2], DType::F32);
    let win = b.g.input("window_segments", &[windows + 1], DType::F32);
    let img = b.g.input("image_segments", &[images + 1], DType::F32);
    let wp = b.weight(&["visual.patch_embed.proj.weight".into()], c, k);
    let x = b.gemm(pixels, wp, None, None, "patch_embed");
    let shape = JointShape { batch: 1, heads, head_dim: hd, s_txt: n, s_img: 0 };
    for i in 0..v.depth {
        b.g.set_layer(Some(i));
        let p = format!("visual.blocks.{i}");
        let segments = if v.fullatt_block_indexes.contains(&i) { img } else { win };
        let h = b.rms_norm(x, &format!("{p}.norm1.weight"), EPS, "norm1");
        let w = b.weight(&[format!("{p}.attn.qkv.weight")], 3 * c, c);
        let bias = b.vector(&[format!("{p}.attn.qkv.bias")], 3 * c);
        let qkv = b.gemm(h, w, Some(bias), None, "qkv");
        let q = b.g.activation("q", &[1, heads, n, hd], DType::F32);
        let kk = b.g.activation("k", &[1, heads, n, hd], DType::F32);
        let vv = b.g.activation("v", &[1, heads, n, hd], DType::F32);
        b.g.push(Op::QkvRope { shape, kv_heads: heads, qkv, rope, q, k: kk, v: vv }, "rope");
        let o = b.g.activation("attn", &[n, c], DType::F32);
        let lse = b.g.activation("attn.lse", &[1, heads, n], DType::F32);
        let opts = AttnOptions { kv_heads: heads, causal: false };
        b.g.push(
            Op::Attention { shape, opts, q, k: kk, v: vv, mask: None, segments: Some(segments), o, lse },
            "attention",
        );
        let w = b.weight(&[format!("{p}.attn.proj.weight")], c, c);
        let bias = b.vector(&[format!("{p}.attn.proj.bias")], c);
        b.gemm(o, w, Some(bias), Some(x), "proj");
        let h = b.rms_norm(x, &format!("{p}.norm2.weight"), EPS, "norm2");
        let lin = |b: &mut Builder, m: &str, rows: usize, cols: usize| {
            let w = b.weight(&[format!("{p}.mlp.{m}.weight")], rows, cols);
            (w, b.vector(&[format!("{p}.mlp.{m}.bias")], rows))
        };
        let (wg, bg) = lin(&mut b, "gate_proj", v.intermediate_size, c);
        let (wu, bu) = lin(&mut b, "up_proj", v.intermediate_size, c);
        let (wd, bd) = lin(&mut b, "down_proj", c, v.intermediate_size);
        let gate = b.gemm(h, wg, Some(bg), None, "mlp_gate");
        let up = b.gemm(h, wu, Some(bu), None, "mlp_up");
        let act = b.ew(Ew::Silu, gate, None, "mlp_silu");
        let m = b.ew(Ew::Mul, act, Some(up), "mlp_mul");
        b.gemm(m, wd, Some(bd), Some(x), "mlp_down");
    }
    b.g.set_layer(None);
    let unit = v.spatial_merge_size * v.spatial_merge_size;
    let (mn, mc) = (n / unit, c * unit);
    // ln_q per patch, written as [N/4, 4C]: four consecutive patches (one merge group) per row.
    let lnw = b.vector(&["visual.merger.ln_q.weight".into()], c);
    let y = b.g.activation("merger.ln_q", &[mn, mc], DType::F32);
    let rstd = b.g.activation("merger.ln_q.rstd", &[n], DType::F32);
    b.g.push(Op::RmsNorm { cols: c, eps: EPS, x, weight: lnw, y, rstd }, "merger_norm");
    let w0 = b.weight(&["visual.merger.mlp.0.weight".into()], mc, mc);
    let b0 = b.vector(&["visual.merger.mlp.0.bias".into()], mc);
    let h = b.gemm(y, w0, Some(b0), None, "merger_fc1");
    let h = b.ew(Ew::GeluErf, h, None, "merger_gelu");
    let w2 = b.weight(&["visual.merger.mlp.2.weight".into()], v.out_hidden_size, mc);
    let b2 = b.vector(&["visual.merger.mlp.2.bias".into()], v.out_hidden_size);
    let out = b.gemm(h, w2, Some(b2), None, "merger_fc2");
    b.g.mark_output(out);
    VisionGraph { graph: b.g, params: b.params, pixels, rope, windows: win, images: img, out }
}

/// The vision RoPE table [n, head_dim/2, 2] for patch positions (row, col): frequencies
/// `1/θ^(2k/(head_dim/2))`, k < head_dim/4, θ = 10000; the first half of the angles take the row,
/// the second half the column (`rot_pos_emb`: `concat(θ_h, θ_w)`).
pub fn rope_table(head_dim: usize, positions: &[[u32; 2]]) -> Vec<f32> {
    let dim = head_dim / 2;
    let inv: Vec<f32> = (0..dim / 2).map(|k| (1.0 / 10000f64.powf(2.0 * k as f64 / dim as f64)) as f32).collect();
    let mut out = Vec::with_capacity(positions.len() * dim * 2);
    for p in positions {
        for &coord in p {
            for &f in &inv {
                let a = coord as f32 * f;
                out.extend([a.cos(), a.sin()]);
            }
        }
    }
    out
}
