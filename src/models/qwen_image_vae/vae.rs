//! The VAE graphs for one image (T = 1), read like diffusers' `autoencoder_kl_qwenimage.py` reduced
//! as spec vae-and-text-encoder.md §1.4 says: every causal 3×3×3 conv is a 2-D 3×3 conv with its last
//! time tap, `time_conv`s never run, the mid-block attention is 2-D over h·w tokens.
//!
//! Activations are pixels-major `[h·w, C]` f32 (one row per pixel, channels contiguous): a 1×1
//! conv is then a plain GEMM, the channel norm is a row norm, and the attention's Q, K are
//! row-major token matrices. Every channel norm (+ SiLU) is applied by the conv that consumes it
//! while gathering (only per-pixel denominators are stored), and each resnet's conv2 and the
//! attention's proj accumulate into their residual: a full-resolution resnet holds two
//! activations, not four. Weights are graph params in their stored dtype, laid out
//! `[co, kh, kw, ci]` (see [`ParamSrc`]; `load.rs` derives them from the checkpoint).
//!
//! The mid-block attention (single head, head_dim = C: 384 in the real VAE, beyond the DiT flash
//! kernel's 128) runs as row chunks: per chunk of query rows, scores `Q_c·Kᵀ/sqrt(C)` by the conv
//! kernel as a 1×1 GEMM, a row softmax, then `P·V` against `Vᵀ` (written transposed by the V
//! projection) into the chunk's rows of O. The chunk is sized so its score buffer stays within
//! `scores_budget` bytes: never an S×S buffer larger than a binding (docs/vae.md).

use super::config::VaeConfig;
use super::names::{decoder_layers, encoder_layers, Layer};
use crate::dtype::DType;
use crate::graph::ops::{ConvOp, ConvOut, PreNorm};
use crate::graph::{Graph, Op, TensorId};
use crate::layout::Conv2dShape;

/// How a graph param is derived from checkpoint tensors (load.rs applies it).
#[derive(Clone, Debug, PartialEq)]
pub enum ParamSrc {
    /// `<name>` (a conv weight `[co, ci, (3,) kh, kw]` or `[co, ci, 1, 1(, 1)]`) as `[co, kh, kw, ci]`
    /// in its stored dtype; a 3-D kernel keeps its last time tap.
    ConvWeight { name: String, co: usize, ci: usize, k: usize },
    /// Rows `row0 .. row0 + rows` of `<name>` (weight rows or bias entries; the q/k/v blocks of
    /// `to_qkv`), weights in their stored dtype, biases as f32.
    Rows { name: String, row0: usize, rows: usize, weight: bool },
    /// `<name>` widened to f32 (biases, gammas).
    F32 { name: String },
}

/// A built VAE graph: its pixels-major input and output, and where each param comes from.
pub struct VaeGraph {
    pub graph: Graph,
    /// `[h·w, C_in]` f32.
    pub input: TensorId,
    /// `[H·W, C_out]` f32.
    pub output: TensorId,
    pub params: Vec<(TensorId, ParamSrc)>,
    /// (height, width) of the input and of the output.
    pub input_hw: (usize, usize),
    pub output_hw: (usize, usize),
}

/// What to build.
#[derive(Clone, Copy, Debug)]
pub struct GraphOptions {
    /// Most bytes of one attention score chunk (and of its softmax).
    pub scores_budget: u64,
    /// Clamp the decoded image to [-1, 1] (diffusers' `_decode`; its tiled path does not).
    pub clamp: bool,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions { scores_budget: 256 << 20, clamp: true }
    }
}

struct Builder<'a> {
    g: Graph,
    params: Vec<(TensorId, ParamSrc)>,
    /// Stored dtype of a checkpoint weight by name (F32 when planning without weights).
    dtype: &'a dyn Fn(&str) -> DType,
    opts: GraphOptions,
    h: usize,
    w: usize,
    x: TensorId,
    c: usize,
    n: usize,
    /// The norm the next conv applies to the cursor while gathering.
    pre: Option<PreNorm>,
}

impl Builder<'_> {
    fn act(&mut self, name: &str, rows: usize, cols: usize) -> TensorId {
        self.n += 1;
        self.g.activation(&format!("{name}#{}", self.n), &[rows, cols], DType::F32)
    }

    fn param(&mut self, tag: &str, shape: &[usize], dtype: DType, src: ParamSrc) -> TensorId {
        let t = self.g.param(tag, shape, dtype);
        self.params.push((t, src));
        t
    }

    fn conv_weight(&mut self, path: &str, ci: usize, co: usize, k: usize) -> TensorId {
        let name = format!("{path}.weight");
        let dt = (self.dtype)(&name);
        let shape = if k == 1 { vec![co, ci] } else { vec![co, k, k, ci] };
        self.param(&name, &shape, dt, ParamSrc::ConvWeight { name: name.clone(), co, ci, k })
    }

    fn f32_param(&mut self, name: String, len: usize) -> TensorId {
        self.param(&name, &[len], DType::F32, ParamSrc::F32 { name: name.clone() })
    }

    /// `y = conv(x) + b` with the checkpoint conv at `path`, of the pending norm of x if one is set
    /// ([`norm`](Self::norm)); `into`: accumulated into that tensor (the residual) instead of a
    /// fresh one. Moves the cursor to y.
    fn conv(&mut self, path: &str, shape: Conv2dShape, into: Option<TensorId>) -> TensorId {
        let w = self.conv_weight(path, shape.ci, shape.co, shape.kh);
        let b = self.f32_param(format!("{path}.bias"), shape.co);
        let pre = self.pre.take();
        let (y, accumulate) = match into {
            Some(r) => (r, true),
            None => (self.act(path, shape.out_pixels(), shape.co), false),
        };
        let conv = ConvOp { accumulate, ..ConvOp::plain(shape) };
        let op = Op::Conv2d { conv, x: self.x, w, bias: Some(b), res: None, pre, y };
        if accumulate {
            self.g.push_partial(op, "conv");
        } else {
            self.g.push(op, "conv");
        }
        (self.x, self.c, self.h, self.w) = (y, shape.co, shape.out_h(), shape.out_w());
        y
    }

    /// `QwenImageRMS_norm` (+ SiLU) of the cursor, applied by the next conv while it gathers: only
    /// the per-pixel denominators are stored.
    fn norm(&mut self, gamma_name: &str, silu: bool) -> PreNorm {
        let gamma = self.f32_param(gamma_name.to_string(), self.c);
        let denom = self.act(&format!("{gamma_name}.denom"), self.h * self.w, 1);
        self.g.push(Op::ChannelNormDenom { cols: self.c, x: self.x, denom }, "norm");
        let p = PreNorm { denom, gamma, silu };
        self.pre = Some(p.clone());
        p
    }

    /// `QwenImageResidualBlock`: `conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))) + shortcut(x)`; conv2
    /// accumulates into the shortcut, which is x itself when ci = co (the block updates in place).
    fn res(&mut self, path: &str, ci: usize, co: usize) {
        let (x, h, w) = (self.x, self.h, self.w);
        let shortcut = if ci != co {
            let s = self.conv(&format!("{path}.conv_shortcut"), Conv2dShape::same(h, w, ci, co, 1), None);
            (self.x, self.c) = (x, ci);
            s
        } else {
            x
        };
        self.norm(&format!("{path}.norm1.gamma"), true);
        self.conv(&format!("{path}.conv1"), Conv2dShape::same(h, w, ci, co, 3), None);
        self.norm(&format!("{path}.norm2.gamma"), true);
        self.conv(&format!("{path}.conv2"), Conv2dShape::same(h, w, co, co, 3), Some(shortcut));
    }

    /// `QwenImageAttentionBlock`: `proj(softmax(q·kᵀ/sqrt(C))·v) + x`, q, k, v = `to_qkv(norm(x))` split;
    /// proj accumulates into x.
    fn attn(&mut self, path: &str, c: usize) {
        let (x, s, h, w) = (self.x, self.h * self.w, self.h, self.w);
        let pre = self.norm(&format!("{path}.norm.gamma"), false);
        self.pre = None; // the three projections share it explicitly
        let mm = |ci: usize, co: usize, rows: usize| Conv2dShape::matmul(rows, ci, co);
        let mut qkv = [0; 3];
        for (i, part) in ["q", "k", "v"].into_iter().enumerate() {
            let wname = format!("{path}.to_qkv.weight");
            let dt = (self.dtype)(&wname);
            let src = ParamSrc::Rows { name: wname, row0: i * c, rows: c, weight: true };
            let w = self.param(&format!("{path}.to_qkv.weight[{part}]"), &[c, c], dt, src);
            let bsrc = ParamSrc::Rows { name: format!("{path}.to_qkv.bias"), row0: i * c, rows: c, weight: false };
            let b = self.param(&format!("{path}.to_qkv.bias[{part}]"), &[c], DType::F32, bsrc);
            // V is written transposed ([C, S]) so that P·V is a GEMM against Vᵀ rows.
            let (y, out) = if i == 2 {
                (self.act(&format!("{path}.vT"), c, s), ConvOut::Transposed { row0: 0, ld: s })
            } else {
                (self.act(&format!("{path}.{part}"), s, c), ConvOut::Rows { row0: 0 })
            };
            let conv = ConvOp { out, ..ConvOp::plain(mm(c, c, s)) };
            let op = Op::Conv2d { conv, x, w, bias: Some(b), res: None, pre: Some(pre.clone()), y };
            self.g.push(op, "attention");
            qkv[i] = y;
        }
        let o = self.act(&format!("{path}.o"), s, c);
        let chunk = attention_chunk_rows(s, self.opts.scores_budget);
        for r0 in (0..s).step_by(chunk) {
            let rows = chunk.min(s - r0);
            let scores = self.act(&format!("{path}.scores"), rows, s);
            let alpha = 1.0 / (c as f32).sqrt();
            let conv = ConvOp { alpha, x_pix0: r0, ..ConvOp::plain(mm(c, s, rows)) };
            let op = Op::Conv2d { conv, x: qkv[0], w: qkv[1], bias: None, res: None, pre: None, y: scores };
            self.g.push(op, "attention");
            let p = self.act(&format!("{path}.probs"), rows, s);
            self.g.push(Op::Softmax { rows, cols: s, x: scores, y: p }, "attention");
            let conv = ConvOp { out: ConvOut::Rows { row0: r0 }, ..ConvOp::plain(mm(s, c, rows)) };
            let op = Op::Conv2d { conv, x: p, w: qkv[2], bias: None, res: None, pre: None, y: o };
            self.g.push_partial(op, "attention");
        }
        (self.x, self.c) = (o, c);
        self.conv(&format!("{path}.proj"), mm(c, c, s), Some(x));
        (self.h, self.w) = (h, w);
    }

    fn layer(&mut self, l: &Layer) {
        let (h, w) = (self.h, self.w);
        match l {
            Layer::Conv3 { path, ci, co } => {
                self.conv(path, Conv2dShape::same(h, w, *ci, *co, 3), None);
            }
            Layer::Res { path, ci, co } => self.res(path, *ci, *co),
            Layer::Attn { path, c } => self.attn(path, *c),
            Layer::Down { path, c, .. } => {
                // ZeroPad2d((0, 1, 0, 1)) then a 3×3 conv with stride 2 (time_conv: not for images).
                let s = Conv2dShape { stride: 2, pad: [0, 1, 0, 1], ..Conv2dShape::same(h, w, *c, *c, 3) };
                self.conv(&format!("{path}.resample.1"), s, None);
            }
            Layer::Up { path, c, .. } => {
                let s = Conv2dShape { upsample: true, ..Conv2dShape::same(h, w, *c, c / 2, 3) };
                self.conv(&format!("{path}.resample.1"), s, None);
            }
            Layer::NormSilu { path, c } => {
                debug_assert_eq!(*c, self.c);
                self.norm(&format!("{path}.gamma"), true);
            }
        }
    }
}

/// Query rows per attention chunk: as many as keep one `[rows, S]` f32 score buffer within
/// `budget` bytes (at least 1).
pub fn attention_chunk_rows(s: usize, budget: u64) -> usize {
    ((budget / (4 * s as u64)) as usize).clamp(1, s.max(1))
}

fn start<'a>(dtype: &'a dyn Fn(&str) -> DType, opts: GraphOptions, h: usize, w: usize, c: usize) -> Builder<'a> {
    let mut g = Graph::new();
    let x = g.input("x", &[h * w, c], DType::F32);
    Builder { g, params: Vec::new(), dtype, opts, h, w, x, c, n: 0, pre: None }
}

fn finish(mut b: Builder, input: TensorId, input_hw: (usize, usize)) -> VaeGraph {
    b.g.mark_output(b.x);
    VaeGraph { graph: b.g, input, output: b.x, params: b.params, input_hw, output_hw: (b.h, b.w) }
}

/// `vae.encode(x).latent_dist.mode()` for an `h × w` image (multiples of the spatial factor):
/// input `[h·w, input_channels]`, output the posterior mean `[h/f · w/f, z_dim]` (quant_conv
/// computes only its first z_dim output channels: the mean; the log-variance is not needed).
pub fn encoder(cfg: &VaeConfig, h: usize, w: usize, dtype: &dyn Fn(&str) -> DType, opts: GraphOptions) -> VaeGraph {
    let mut b = start(dtype, opts, h, w, cfg.input_channels);
    let input = b.x;
    for l in encoder_layers(cfg) {
        b.layer(&l);
    }
    b.g.set_layer(None);
    let (hh, ww, z) = (b.h, b.w, cfg.z_dim);
    // quant_conv [2z, 2z] restricted to its first z rows: W rows 0..z and bias 0..z are a prefix.
    let wq = b.conv_weight("quant_conv", 2 * z, 2 * z, 1);
    let bq = b.f32_param("quant_conv.bias".into(), 2 * z);
    let y = b.act("latents", hh * ww, z);
    let conv = ConvOp::plain(Conv2dShape::matmul(hh * ww, 2 * z, z));
    b.g.push(Op::Conv2d { conv, x: b.x, w: wq, bias: Some(bq), res: None, pre: None, y }, "conv");
    (b.x, b.c) = (y, z);
    finish(b, input, (h, w))
}

/// `vae.decode(z).sample[:, :, 0]` for `h × w` latents: input `[h·w, z_dim]`, output the image
/// `[H·W, input_channels]`, H = f·h, clamped to [-1, 1] when `opts.clamp`.
pub fn decoder(cfg: &VaeConfig, h: usize, w: usize, dtype: &dyn Fn(&str) -> DType, opts: GraphOptions) -> VaeGraph {
    let mut b = start(dtype, opts, h, w, cfg.z_dim);
    let input = b.x;
    b.conv("post_quant_conv", Conv2dShape::same(h, w, cfg.z_dim, cfg.z_dim, 1), None);
    for l in decoder_layers(cfg) {
        b.layer(&l);
    }
    if opts.clamp {
        let y = b.act("image", b.h * b.w, b.c);
        b.g.push(Op::Clamp { lo: -1.0, hi: 1.0, x: b.x, y }, "clamp");
        b.x = y;
    }
    finish(b, input, (h, w))
}

/// One mid-block attention block alone on `[s, c]` (tests of the chunked path at real widths).
#[cfg(test)]
pub(crate) fn attention_block(c: usize, s: usize, scores_budget: u64) -> VaeGraph {
    let opts = GraphOptions { scores_budget, clamp: false };
    let mut b = start(&|_| DType::F32, opts, s, 1, c);
    let input = b.x;
    // The block updates its input in place: copy the graph input into an activation first.
    let x = b.act("x", s, c);
    b.g.push(Op::Clamp { lo: f32::MIN, hi: f32::MAX, x: input, y: x }, "copy");
    b.x = x;
    b.attn("attn", c);
    finish(b, input, (s, 1))
}
