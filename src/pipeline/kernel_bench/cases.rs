//! The rows of `wgdit bench kernels`: every GEMM shape of one Qwen-Image DiT block at 1024²
//! (4096 image tokens, 256 text tokens) and of one Qwen2.5-VL-7B text-encoder layer at a
//! 256-token prompt, taken from the model configs, and the joint attention at 1k-16k tokens; or
//! the `--quick` subset at small shapes (CI on lavapipe).

use crate::layout::JointShape;
use crate::models::qwen2_5_vl::EncoderConfig;
use crate::models::qwen_image::DitConfig;
use crate::pipeline::dims::{packed_seq_len, Size, SizeRules};

/// Text tokens of the DiT's text stream and of the encoder's prompt (a typical prompt, with the
/// chat template).
pub const TEXT_TOKENS: usize = 256;
/// Joint sequence lengths of the attention rows (B = 1).
pub const ATTENTION_TOKENS: [usize; 4] = [1024, 4096, 8192, 16384];

/// One GEMM row: `y[M, N] = x[M, K]·Wᵀ (+ bias) (then GELU)`; W in bf16 (the checkpoints' dtype).
#[derive(Clone, Debug, PartialEq)]
pub struct GemmCase {
    /// The layers it stands for (`dit.img_qkv`, `te.gate_proj/up_proj`).
    pub name: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub bias: bool,
    pub gelu: bool,
}

/// One attention row: non-causal joint attention, no mask, forward or backward.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnCase {
    pub name: String,
    pub shape: JointShape,
    pub backward: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Case {
    Gemm(GemmCase),
    Attention(AttnCase),
}

impl Case {
    /// The `kernel` key of the JSON rows.
    pub fn kernel(&self) -> &'static str {
        match self {
            Case::Gemm(_) => "gemm",
            Case::Attention(a) if a.backward => "attention_backward",
            Case::Attention(_) => "attention_forward",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Case::Gemm(g) => &g.name,
            Case::Attention(a) => &a.name,
        }
    }

    /// The `shape` key: `M4096 N9216 K3072` or `B1 H24 S4096 Dh128`.
    pub fn shape(&self) -> String {
        match self {
            Case::Gemm(g) => format!("M{} N{} K{}", g.m, g.n, g.k),
            Case::Attention(a) => {
                let s = &a.shape;
                format!("B{} H{} S{} Dh{}", s.batch, s.heads, s.seq(), s.head_dim)
            }
        }
    }

    /// Matmul FLOPs (docs/kernels.md, "Kernel bench"): GEMM 2·M·N·K (the epilogue is not
    /// counted); attention forward 4·B·H·S²·Dh (Q·Kᵀ and P·V), backward 2.5× that (Q·Kᵀ
    /// recomputed, dP = dO·Vᵀ, dQ, dK, dV); exp() and the softmax are not counted.
    pub fn flop(&self) -> f64 {
        match self {
            Case::Gemm(g) => 2.0 * g.m as f64 * g.n as f64 * g.k as f64,
            Case::Attention(a) => {
                let s = &a.shape;
                let fwd = 4.0 * (s.batch * s.heads) as f64 * (s.seq() as f64).powi(2) * s.head_dim as f64;
                if a.backward {
                    2.5 * fwd
                } else {
                    fwd
                }
            }
        }
    }

    /// The largest single buffer the row binds, in bytes (f32 activations, bf16 weights).
    pub fn largest_binding(&self) -> u64 {
        match self {
            Case::Gemm(g) => (4 * g.m * g.k).max(4 * g.m * g.n).max(2 * g.n * g.k) as u64,
            Case::Attention(a) => 4 * a.shape.head_major_len() as u64,
        }
    }
}

fn gemm(name: &str, m: usize, n: usize, k: usize, bias: bool, gelu: bool) -> Case {
    Case::Gemm(GemmCase { name: name.to_string(), m, n, k, bias, gelu })
}

fn attention(name: &str, heads: usize, head_dim: usize, s_txt: usize, seq: usize) -> [Case; 2] {
    let shape = JointShape { batch: 1, heads, head_dim, s_txt, s_img: seq - s_txt };
    [false, true].map(|backward| Case::Attention(AttnCase { name: name.to_string(), shape, backward }))
}

/// The rows of a run: the full list, or the `--quick` subset.
pub fn cases(quick: bool) -> Vec<Case> {
    if quick {
        return quick_cases();
    }
    let mut v = dit_block(&DitConfig::qwen_image());
    v.extend(text_encoder_layer(&EncoderConfig::qwen2_5_vl_7b()));
    let dit = DitConfig::qwen_image();
    for s in ATTENTION_TOKENS {
        v.extend(attention("attn.joint", dit.num_attention_heads, dit.attention_head_dim, TEXT_TOKENS, s));
    }
    v
}

/// `--quick`: seconds on lavapipe.
fn quick_cases() -> Vec<Case> {
    let mut v =
        vec![gemm("quick.gemm", 256, 768, 768, true, false), gemm("quick.gemm+gelu", 256, 768, 768, true, true)];
    v.extend(attention("quick.attention", 2, 64, 32, 256));
    v
}

/// One dual-stream block (diffusers `QwenImageTransformerBlock`): merged QKV, output
/// projection, FFN up (GELU-tanh) and down per stream, and the modulation `img_mod`/`txt_mod`
/// (SiLU(temb) [1, D] → 6·D: a GEMV at batch 1).
fn dit_block(c: &DitConfig) -> Vec<Case> {
    let d = c.hidden();
    let img = packed_seq_len(&SizeRules::qwen_image(), Size::new(1024, 1024));
    let mut v = Vec::new();
    for (stream, m) in [("img", img), ("txt", TEXT_TOKENS)] {
        v.push(gemm(&format!("dit.{stream}_qkv"), m, 3 * d, d, true, false));
        v.push(gemm(&format!("dit.{stream}_out"), m, d, d, true, false));
        v.push(gemm(&format!("dit.{stream}_ffn_up+gelu"), m, 4 * d, d, true, true));
        v.push(gemm(&format!("dit.{stream}_ffn_down"), m, d, 4 * d, true, false));
    }
    v.push(gemm("dit.img_mod/txt_mod", 1, 6 * d, d, true, false));
    v
}

/// One Qwen2.5-VL-7B language-model layer (HF `Qwen2_5_VLDecoderLayer`): q/k/v with bias
/// (grouped-query: k and v have kv_heads·head_dim columns), o, and the SwiGLU MLP.
fn text_encoder_layer(c: &EncoderConfig) -> Vec<Case> {
    let t = &c.text;
    let (h, m) = (t.hidden_size, TEXT_TOKENS);
    vec![
        gemm("te.q_proj", m, t.num_attention_heads * t.head_dim, h, true, false),
        gemm("te.k_proj/v_proj", m, t.num_key_value_heads * t.head_dim, h, true, false),
        gemm("te.o_proj", m, h, t.num_attention_heads * t.head_dim, false, false),
        gemm("te.gate_proj/up_proj", m, t.intermediate_size, h, false, false),
        gemm("te.down_proj", m, h, t.intermediate_size, false, false),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_rows_are_the_real_models_shapes() {
        let all = cases(false);
        let find = |n: &str| all.iter().find(|c| c.name() == n).unwrap_or_else(|| panic!("no row {n}"));
        assert_eq!(find("dit.img_qkv").shape(), "M4096 N9216 K3072");
        assert_eq!(find("dit.img_ffn_down").shape(), "M4096 N3072 K12288");
        assert_eq!(find("dit.txt_ffn_up+gelu").shape(), "M256 N12288 K3072");
        assert_eq!(find("dit.img_mod/txt_mod").shape(), "M1 N18432 K3072");
        assert_eq!(find("te.k_proj/v_proj").shape(), "M256 N512 K3584");
        assert_eq!(find("te.down_proj").shape(), "M256 N3584 K18944");
        let attn: Vec<String> = all.iter().filter(|c| c.kernel() == "attention_backward").map(Case::shape).collect();
        assert_eq!(attn, ["B1 H24 S1024 Dh128", "B1 H24 S4096 Dh128", "B1 H24 S8192 Dh128", "B1 H24 S16384 Dh128"]);
    }

    #[test]
    fn flops_follow_the_stated_convention() {
        let q = cases(true);
        assert_eq!(q[0].flop(), 2.0 * 256.0 * 768.0 * 768.0);
        let fwd = 4.0 * 2.0 * 256.0 * 256.0 * 64.0;
        assert_eq!((q[2].kernel(), q[2].flop()), ("attention_forward", fwd));
        assert_eq!((q[3].kernel(), q[3].flop()), ("attention_backward", 2.5 * fwd));
    }
}
