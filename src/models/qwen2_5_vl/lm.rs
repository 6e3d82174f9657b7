//! The Qwen2.5-VL language model on the graph (transformers `Qwen2_5_VLTextModel`; spec §2.6):
//! pre-norm decoder layers, then the final RMSNorm, whose output is `hidden_states[-1]`.
//!
//! ```text
//! per layer:  h = RMSNorm(x)·w_in;  qkv = h·[Wq;Wk;Wv]ᵀ + [bq;bk;bv]     (one merged GEMM)
//!             q, k, v = split + M-RoPE (rotate_half);  o = causal GQA attention
//!             x += o·Woᵀ                                                 (GEMM accumulating into x)
//!             h = RMSNorm(x)·w_post;  x += (silu(h·Wgᵀ) ⊙ h·Wuᵀ)·Wdᵀ   (down GEMM accumulating into x)
//! end:        y = RMSNorm(x)·w_norm
//! ```
//!
//! The residual stream `x` [L, D] is an accumulator bound from outside, and so is the RoPE table:
//! a graph holds any range of layers, so the same builder makes the resident plan (all layers:
//! activations reused across layers by liveness) and the streaming plans (one layer, weights
//! rewritten per layer). One sequence (batch 1) per run: a batch of prompts is encoded one
//! prompt at a time, which gives the same valid rows as transformers' padded batch (attention is
//! causal and padded keys are masked, so a sample never sees another's tokens).

use super::config::TextConfig;
use super::names::layer;
use crate::dtype::DType;
use crate::graph::ops::*;
use crate::graph::{Graph, TensorId};
use crate::nn::linear::ParamSource;

/// A graph over some decoder layers (and optionally the final norm) of an L-token sequence.
pub struct LmGraph {
    pub graph: Graph,
    /// Params and how to read them from the checkpoint (canonical names).
    pub params: Vec<(TensorId, ParamSource)>,
    /// The residual stream [L, D] (accumulator, bound from outside).
    pub x: TensorId,
    /// The (cos, sin) table [L, head_dim/2, 2] (bound from outside).
    pub rope: TensorId,
    /// The final norm's output [L, D], when the graph ends with it.
    pub out: Option<TensorId>,
}

/// A graph with its checkpoint params (shared with the vision tower's builder).
pub(super) struct Builder<'a> {
    pub g: Graph,
    pub params: Vec<(TensorId, ParamSource)>,
    pub dtype: &'a dyn Fn(&str) -> DType,
}

impl Builder<'_> {
    /// A weight stacked (rows in order) from `names`, in its stored dtype.
    pub(super) fn weight(&mut self, names: &[String], n: usize, k: usize) -> TensorId {
        let t = self.g.param(&names.join("+"), &[n, k], (self.dtype)(&names[0]));
        self.params.push((t, ParamSource { parts: names.to_vec(), dtype: None }));
        t
    }
    /// A vector (bias, norm weight) stacked from `names`, widened to f32.
    pub(super) fn vector(&mut self, names: &[String], n: usize) -> TensorId {
        let t = self.g.param(&names.join("+"), &[n], DType::F32);
        self.params.push((t, ParamSource { parts: names.to_vec(), dtype: Some(DType::F32) }));
        t
    }
    /// `y = x·Wᵀ (+ b)` into a new [rows, n], or `y += x·Wᵀ` into `into`.
    pub(super) fn gemm(
        &mut self,
        x: TensorId,
        w: TensorId,
        bias: Option<TensorId>,
        into: Option<TensorId>,
        label: &str,
    ) -> TensorId {
        let (rows, k) = (self.g.shape(x)[0], self.g.shape(x)[1]);
        let n = self.g.shape(w)[0];
        let y = into.unwrap_or_else(|| self.g.activation(label, &[rows, n], DType::F32));
        let gemm = GemmOp {
            n,
            k,
            problems: vec![GemmProblem::rows(0, rows)],
            act: Activation::None,
            y_col0: 0,
            accumulate: into.is_some(),
        };
        let op = Op::Gemm { gemm, x, w, bias, gated: None, lora: None, y };
        // Accumulating into the residual stream writes it again in every layer: a partial write.
        if into.is_some() {
            self.g.push_partial(op, label);
        } else {
            self.g.push(op, label);
        }
        y
    }
    pub(super) fn rms_norm(&mut self, x: TensorId, weight: &str, eps: f32, label: &str) -> TensorId {
        let (rows, cols) = (self.g.shape(x)[0], self.g.shape(x)[1]);
        let w = self.vector(&[weight.to_string()], cols);
        let y = self.g.activation(label, &[rows, cols], DType::F32);
        let rstd = self.g.activation(&format!("{label}.rstd"), &[rows], DType::F32);
        self.g.push(Op::RmsNorm { cols, eps, x, weight: w, y, rstd }, label);
        y
    }
    pub(super) fn ew(&mut self, f: Ew, a: TensorId, b: Option<TensorId>, label: &str) -> TensorId {
        let shape = self.g.shape(a).to_vec();
        let y = self.g.activation(label, &shape, DType::F32);
        self.g.push(Op::Elementwise { f, a, b, y }, label);
        y
    }
}

/// Builds layers `layers` of an `l`-token sequence, and the final norm when `final_norm`.
pub fn build(
    cfg: &TextConfig,
    l: usize,
    layers: std::ops::Range<usize>,
    final_norm: bool,
    dtype: &dyn Fn(&str) -> DType,
) -> LmGraph {
    let d = cfg.hidden_size;
    let mut b = Builder { g: Graph::new(), params: Vec::new(), dtype };
    let x = b.g.accumulator("x", &[l, d], DType::F32);
    let rope = b.g.param("rope", &[l, cfg.head_dim / 2, 2], DType::F32);
    let eps = cfg.rms_norm_eps as f32;
    for i in layers {
        b.g.set_layer(Some(i));
        let p = layer(i);
        let h = b.rms_norm(x, &format!("{p}.input_layernorm.weight"), eps, "input_norm");
        attention(&mut b, cfg, &p, h, x, rope);
        let h = b.rms_norm(x, &format!("{p}.post_attention_layernorm.weight"), eps, "post_norm");
        let (i_sz, name) = (cfg.intermediate_size, |m: &str| vec![format!("{p}.mlp.{m}.weight")]);
        let wg = b.weight(&name("gate_proj"), i_sz, d);
        let wu = b.weight(&name("up_proj"), i_sz, d);
        let wd = b.weight(&name("down_proj"), d, i_sz);
        let gate = b.gemm(h, wg, None, None, "mlp_gate");
        let up = b.gemm(h, wu, None, None, "mlp_up");
        let act = b.ew(Ew::Silu, gate, None, "mlp_silu");
        let m = b.ew(Ew::Mul, act, Some(up), "mlp_mul");
        b.gemm(m, wd, None, Some(x), "mlp_down");
    }
    b.g.set_layer(None);
    let out = final_norm.then(|| {
        let y = b.rms_norm(x, "model.norm.weight", eps, "final_norm");
        b.g.mark_output(y);
        y
    });
    LmGraph { graph: b.g, params: b.params, x, rope, out }
}

/// Self-attention of one layer: merged q/k/v GEMM, split + M-RoPE, causal GQA flash attention,
/// and the output projection accumulated into the residual `x`.
fn attention(b: &mut Builder, cfg: &TextConfig, p: &str, h: TensorId, x: TensorId, rope: TensorId) {
    let (d, hd) = (cfg.hidden_size, cfg.head_dim);
    let (hq, hkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let l = b.g.shape(h)[0];
    let mods: Vec<String> = ["q_proj", "k_proj", "v_proj"].iter().map(|m| format!("{p}.self_attn.{m}")).collect();
    let n = (hq + 2 * hkv) * hd;
    let w = b.weight(&mods.iter().map(|m| format!("{m}.weight")).collect::<Vec<_>>(), n, d);
    let bias = b.vector(&mods.iter().map(|m| format!("{m}.bias")).collect::<Vec<_>>(), n);
    let qkv = b.gemm(h, w, Some(bias), None, "qkv");
    let shape = JointShape { batch: 1, heads: hq, head_dim: hd, s_txt: l, s_img: 0 };
    let opts = AttnOptions { kv_heads: hkv, causal: true };
    let q = b.g.activation("q", &[1, hq, l, hd], DType::F32);
    let k = b.g.activation("k", &[1, hkv, l, hd], DType::F32);
    let v = b.g.activation("v", &[1, hkv, l, hd], DType::F32);
    b.g.push(Op::QkvRope { shape, kv_heads: hkv, qkv, rope, q, k, v }, "rope");
    let o = b.g.activation("attn", &[l, hq * hd], DType::F32);
    let lse = b.g.activation("attn.lse", &[1, hq, l], DType::F32);
    b.g.push(Op::Attention { shape, opts, q, k, v, mask: None, segments: None, o, lse }, "attention");
    let wo = b.weight(&[format!("{p}.self_attn.o_proj.weight")], d, hq * hd);
    b.gemm(o, wo, None, Some(x), "o_proj");
}
