//! Typed ops. Each variant holds its parameters and its operands by name (tensor ids, no wgpu
//! types); [`Op::inputs`] / [`Op::outputs`] list them for the planner, [`Op::check`] is the shape
//! contract and [`Op::dispatches`] the number of dispatches it lowers to. Lowering to kernels
//! lives in `crate::exec::lower`, the backward rules in `graph::autodiff`.

pub use super::ops_spec::*;
use super::{Graph, TensorId};
use crate::dtype::DType;

type T = TensorId;

/// The gated residual epilogue of a GEMM: `y = res + gate ⊙ (x·Wᵀ + b)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Gated {
    pub res: T,
    /// The modulation tensor the problems' `gate` references point into.
    pub gate: T,
}

/// The LoRA side path of a GEMM: `y += t·Bᵀ` with `t` [x rows, rank] computed by a `LoraDown`.
#[derive(Clone, Debug, PartialEq)]
pub struct SideLora {
    pub t: T,
    pub b: T,
    pub rank: usize,
}

/// Where a per-sample row reduction of a backward op goes: `acc` (+=) and its partial-row scratch.
#[derive(Clone, Debug, PartialEq)]
pub struct ReduceInto {
    pub acc: T,
    pub scratch: T,
}

/// The VAE's channel RMS norm (+ SiLU) that a `Conv2d` applies to its input while gathering:
/// `x / denom · sqrt(ci) · gamma`, `denom` from a `ChannelNormDenom` of the same x.
#[derive(Clone, Debug, PartialEq)]
pub struct PreNorm {
    pub denom: T,
    pub gamma: T,
    pub silu: bool,
}

#[derive(Clone, Debug)]
pub enum Op {
    /// `y = a ∘ b` or `y = f(a)` (f32, same shape).
    Elementwise { f: Ew, a: T, b: Option<T>, y: T },
    /// Grouped GEMM `y = act(x·Wᵀ + b)`, optionally gated into a residual and with a LoRA side
    /// path, over up to 4 problems.
    Gemm { gemm: GemmOp, x: T, w: T, bias: Option<T>, gated: Option<Gated>, lora: Option<SideLora>, y: T },
    /// LoRA down-projection `t = x·Aᵀ` (scale folded into A) for the rows of each problem
    /// `(row0, rows, a_offset)`, A [rank, k] at `a_offset`; t [rows, rank].
    LoraDown { k: usize, rank: usize, problems: Vec<(usize, usize, usize)>, x: T, a: T, t: T },
    /// LayerNorm + adaLN modulation; saves mean and rstd [rows].
    LayerNormMod { norm: LayerNormModOp, x: T, modulation: T, y: T, mean: T, rstd: T },
    /// RMSNorm with weight; saves rstd [rows].
    RmsNorm { cols: usize, eps: f32, x: T, weight: T, y: T, rstd: T },
    /// QK-RMSNorm + RoPE + head-major Q, K, V. `qkv` = [merged] or [q, k, v] (per `layout`);
    /// norm_weights [4, Dh], rope [S_joint, Dh/2, 2]; saves the q/k rstd [2, rows, H].
    QkvPost { shape: JointShape, layout: QkvLayout, qkv: Vec<T>, norm_weights: T, rope: T, q: T, k: T, v: T, saved: T },
    /// Head split + rotate-half RoPE of q and k (Qwen2.5-VL; no norm), forward only: `qkv`
    /// [B·S, (H + 2·kv_heads)·Dh] f32 rows `[q | k | v]` → q [B, H, S, Dh], k and v
    /// [B, kv_heads, S, Dh]; rope [S, Dh/2, 2] (cos, sin of angle i, shared by dims i and i + Dh/2)
    /// shared by the batch, or [B, S, Dh/2, 2] per sample. Dh % 8 == 0.
    QkvRope { shape: JointShape, kv_heads: usize, qkv: T, rope: T, q: T, k: T, v: T },
    /// Joint flash attention; o [rows, H·Dh] in joint rows, lse [B, H, S] saved for the backward.
    /// q [B, H, S, Dh], k and v [B, opts.kv_heads, S, Dh] f32; mask [B, s_txt] (1 = valid text key);
    /// `segments` = f32 boundaries [0, .., S] of block-diagonal attention (cu_seqlens). GQA, causal
    /// and segments are forward-only (autodiff refuses them).
    Attention {
        shape: JointShape,
        opts: AttnOptions,
        q: T,
        k: T,
        v: T,
        mask: Option<T>,
        segments: Option<T>,
        o: T,
        lse: T,
    },
    /// The 256-channel sinusoid of σ·1000 (cos first): t [B] → emb [B, 256].
    TimestepEmbed { t: T, emb: T },
    /// `y = value` over the whole tensor.
    Fill { value: f32, y: T },
    /// 2-D convolution as an implicit GEMM, W `[co, kh, kw, ci]`, of `pre`'s normalisation of x if
    /// given; `res` is added in the epilogue (or y itself with `conv.accumulate`: y is then read and
    /// written, listed as an output only). With `ConvOut` row offsets several nodes write parts of
    /// one `y` (`push_partial`).
    Conv2d { conv: ConvOp, x: T, w: T, bias: Option<T>, res: Option<T>, pre: Option<PreNorm>, y: T },
    /// Per-row denominators `max(‖x[r, :]‖, 1e-12)` of the channel RMS norm over rows of `cols`.
    ChannelNormDenom { cols: usize, x: T, denom: T },
    /// Row softmax over the first `rows` rows of `cols` values.
    Softmax { rows: usize, cols: usize, x: T, y: T },
    /// `y = clamp(x, lo, hi)`.
    Clamp { lo: f32, hi: f32, x: T, y: T },
    /// `out = res + gate ⊙ branch` per problem rows.
    GatedResidual { cols: usize, problems: Vec<GateProblem>, res: T, branch: T, modulation: T, out: T },
    /// Trainable LoRA (two dispatches: `t = s·x·Aᵀ`, then `y += t·Bᵀ`; y is accumulated).
    LoraApply { lora: LoraApplyOp, x: T, a: T, b: T, t: T, y: T },

    // ---- backward ops (built by `graph::autodiff`) ----
    /// `dx += dy[:, cols]·W` per problem.
    GemmDx { gemm: GemmOp, dy: T, w: T, dx: T },
    /// LoRA gradients: da, db, dx (+=); dt is scratch.
    LoraGrads { lora: LoraApplyOp, x: T, dy: T, t: T, a: T, b: T, da: T, db: T, dt: T, dx: Option<T> },
    /// dx = f'(x)·dy.
    ElementwiseBackward { f: Ew, x: T, dy: T, dx: T },
    /// d_branch = gate·d_out (=); d_gate += Σ d_out·branch.
    GatedResidualBackward {
        cols: usize,
        problems: Vec<GateProblem>,
        d_out: T,
        branch: T,
        modulation: T,
        d_branch: T,
        d_gate: Option<ReduceInto>,
    },
    /// LayerNorm+modulation backward: dx over the problems' rows (=), d_modulation (+=).
    LayerNormModBackward {
        norm: LayerNormModOp,
        x: T,
        modulation: T,
        mean: T,
        rstd: T,
        dy: T,
        dx: T,
        d_mod: Option<ReduceInto>,
    },
    /// d_qkv (=, one per `qkv` input) from dq, dk, dv.
    QkvPostBackward {
        shape: JointShape,
        layout: QkvLayout,
        qkv: Vec<T>,
        norm_weights: T,
        rope: T,
        saved: T,
        dq: T,
        dk: T,
        dv: T,
        d_qkv: Vec<T>,
    },
    /// dq, dk, dv (=) from the saved lse; delta is scratch.
    AttentionBackward {
        shape: JointShape,
        q: T,
        k: T,
        v: T,
        mask: Option<T>,
        o: T,
        lse: T,
        d_o: T,
        dq: T,
        dk: T,
        dv: T,
        delta: T,
    },
}

/// Calls `$i` on every input and `$o` on every output of `$op`, in declaration order. Used with
/// `&Op` (operands bind as `&TensorId`) and `&mut Op` (as `&mut TensorId`): one list for both.
macro_rules! visit_operands {
    ($op:expr, $i:ident, $o:ident) => {
        match $op {
            Op::Elementwise { a, b, y, .. } => {
                $i(a);
                if let Some(b) = b {
                    $i(b)
                }
                $o(y)
            }
            Op::Gemm { x, w, bias, gated, lora, y, .. } => {
                $i(x);
                $i(w);
                if let Some(b) = bias {
                    $i(b)
                }
                if let Some(Gated { res, gate }) = gated {
                    $i(res);
                    $i(gate)
                }
                if let Some(SideLora { t, b, .. }) = lora {
                    $i(t);
                    $i(b)
                }
                $o(y)
            }
            Op::LoraDown { x, a, t, .. } => {
                $i(x);
                $i(a);
                $o(t)
            }
            Op::LayerNormMod { x, modulation, y, mean, rstd, .. } => {
                $i(x);
                $i(modulation);
                $o(y);
                $o(mean);
                $o(rstd)
            }
            Op::RmsNorm { x, weight, y, rstd, .. } => {
                $i(x);
                $i(weight);
                $o(y);
                $o(rstd)
            }
            Op::QkvPost { qkv, norm_weights, rope, q, k, v, saved, .. } => {
                for t in qkv {
                    $i(t)
                }
                $i(norm_weights);
                $i(rope);
                $o(q);
                $o(k);
                $o(v);
                $o(saved)
            }
            Op::QkvRope { qkv, rope, q, k, v, .. } => {
                $i(qkv);
                $i(rope);
                $o(q);
                $o(k);
                $o(v)
            }
            Op::Attention { q, k, v, mask, segments, o, lse, .. } => {
                $i(q);
                $i(k);
                $i(v);
                if let Some(m) = mask {
                    $i(m)
                }
                if let Some(s) = segments {
                    $i(s)
                }
                $o(o);
                $o(lse)
            }
            Op::TimestepEmbed { t, emb } => {
                $i(t);
                $o(emb)
            }
            Op::Fill { y, .. } => $o(y),
            Op::Conv2d { x, w, bias, res, pre, y, .. } => {
                $i(x);
                $i(w);
                if let Some(b) = bias {
                    $i(b)
                }
                if let Some(r) = res {
                    $i(r)
                }
                if let Some(PreNorm { denom, gamma, .. }) = pre {
                    $i(denom);
                    $i(gamma)
                }
                $o(y)
            }
            Op::ChannelNormDenom { x, denom, .. } => {
                $i(x);
                $o(denom)
            }
            Op::Softmax { x, y, .. } | Op::Clamp { x, y, .. } => {
                $i(x);
                $o(y)
            }
            Op::GatedResidual { res, branch, modulation, out, .. } => {
                $i(res);
                $i(branch);
                $i(modulation);
                $o(out)
            }
            Op::LoraApply { x, a, b, t, y, .. } => {
                $i(x);
                $i(a);
                $i(b);
                $o(t);
                $o(y)
            }
            Op::GemmDx { dy, w, dx, .. } => {
                $i(dy);
                $i(w);
                $o(dx)
            }
            Op::LoraGrads { x, dy, t, a, b, da, db, dt, dx, .. } => {
                $i(x);
                $i(dy);
                $i(t);
                $i(a);
                $i(b);
                $o(da);
                $o(db);
                $o(dt);
                if let Some(dx) = dx {
                    $o(dx)
                }
            }
            Op::ElementwiseBackward { x, dy, dx, .. } => {
                $i(x);
                $i(dy);
                $o(dx)
            }
            Op::GatedResidualBackward { d_out, branch, modulation, d_branch, d_gate, .. } => {
                $i(d_out);
                $i(branch);
                $i(modulation);
                $o(d_branch);
                if let Some(ReduceInto { acc, scratch }) = d_gate {
                    $o(acc);
                    $o(scratch)
                }
            }
            Op::LayerNormModBackward { x, modulation, mean, rstd, dy, dx, d_mod, .. } => {
                $i(x);
                $i(modulation);
                $i(mean);
                $i(rstd);
                $i(dy);
                $o(dx);
                if let Some(ReduceInto { acc, scratch }) = d_mod {
                    $o(acc);
                    $o(scratch)
                }
            }
            Op::QkvPostBackward { qkv, norm_weights, rope, saved, dq, dk, dv, d_qkv, .. } => {
                for t in qkv {
                    $i(t)
                }
                $i(norm_weights);
                $i(rope);
                $i(saved);
                $i(dq);
                $i(dk);
                $i(dv);
                for t in d_qkv {
                    $o(t)
                }
            }
            Op::AttentionBackward { q, k, v, mask, o, lse, d_o, dq, dk, dv, delta, .. } => {
                $i(q);
                $i(k);
                $i(v);
                if let Some(m) = mask {
                    $i(m)
                }
                $i(o);
                $i(lse);
                $i(d_o);
                $o(dq);
                $o(dk);
                $o(dv);
                $o(delta)
            }
        }
    };
}

impl Op {
    /// The op's name (the graph builder's label names the accounting category).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Elementwise { f: Ew::Add, .. } => "add",
            Op::Elementwise { f: Ew::Mul, .. } => "mul",
            Op::Elementwise { f: Ew::Silu, .. } => "silu",
            Op::Elementwise { f: Ew::GeluTanh, .. } => "gelu",
            Op::Elementwise { f: Ew::GeluErf, .. } => "gelu_erf",
            Op::Gemm { .. } => "gemm",
            Op::LoraDown { .. } => "lora_down",
            Op::LayerNormMod { .. } => "layer_norm_mod",
            Op::RmsNorm { .. } => "rms_norm",
            Op::QkvPost { .. } => "qkv_post",
            Op::QkvRope { .. } => "qkv_rope",
            Op::Attention { .. } => "attention",
            Op::TimestepEmbed { .. } => "timestep_embed",
            Op::Fill { .. } => "fill",
            Op::Conv2d { .. } => "conv2d",
            Op::ChannelNormDenom { .. } => "channel_norm_denom",
            Op::Softmax { .. } => "softmax",
            Op::Clamp { .. } => "clamp",
            Op::GatedResidual { .. } => "gated_residual",
            Op::LoraApply { .. } => "lora",
            Op::GemmDx { .. } => "gemm_dx",
            Op::LoraGrads { .. } => "lora_grads",
            Op::ElementwiseBackward { .. } => "elementwise_backward",
            Op::GatedResidualBackward { .. } => "gated_residual_backward",
            Op::LayerNormModBackward { .. } => "layer_norm_mod_backward",
            Op::QkvPostBackward { .. } => "qkv_post_backward",
            Op::AttentionBackward { .. } => "attention_backward",
        }
    }

    /// Dispatches this op lowers to (the executor asserts that lowering agrees).
    pub fn dispatches(&self) -> usize {
        match self {
            Op::LoraApply { .. } => 2,
            // dB, dt, dA (+ dx): gemm_backward::launch_lora_grads.
            Op::LoraGrads { dx, .. } => 3 + dx.is_some() as usize,
            Op::AttentionBackward { .. } => 2,
            // d_branch, then the two passes of reduce_rows for d_gate.
            Op::GatedResidualBackward { d_gate, .. } => 1 + 2 * d_gate.is_some() as usize,
            // dx, then two reduce_rows passes each for d_shift and d_scale.
            Op::LayerNormModBackward { d_mod, .. } => 1 + 4 * d_mod.is_some() as usize,
            _ => 1,
        }
    }

    /// The tensors the op reads, in declaration order.
    pub fn inputs(&self) -> Vec<TensorId> {
        let mut ins = Vec::new();
        self.visit(|t| ins.push(t), |_| {});
        ins
    }

    /// The tensors the op writes (or, for accumulating outputs, adds to), in declaration order.
    pub fn outputs(&self) -> Vec<TensorId> {
        let mut outs = Vec::new();
        self.visit(|_| {}, |t| outs.push(t));
        outs
    }

    /// Whether the op writes `t` (no allocation: the builder asks for every new node).
    pub fn writes(&self, t: TensorId) -> bool {
        let mut found = false;
        self.visit(|_| {}, |o| found |= o == t);
        found
    }

    /// Calls `input` on every input and `output` on every output.
    pub fn visit(&self, mut input: impl FnMut(TensorId), mut output: impl FnMut(TensorId)) {
        let mut i = |t: &TensorId| input(*t);
        let mut o = |t: &TensorId| output(*t);
        visit_operands!(self, i, o);
    }

    /// Rewrites every operand: `input` maps inputs, `output` maps outputs (the recompute rewrite).
    pub fn map_operands(
        &mut self,
        mut input: impl FnMut(TensorId) -> TensorId,
        mut output: impl FnMut(TensorId) -> TensorId,
    ) {
        let mut i = |t: &mut TensorId| *t = input(*t);
        let mut o = |t: &mut TensorId| *t = output(*t);
        visit_operands!(self, i, o);
    }

    /// Panics with the op name when the tensors break the op's shape contract.
    pub fn check(&self, g: &Graph) {
        let name = self.name();
        let numel = |t: TensorId| g.shape(t).iter().product::<usize>();
        let f32_only = |ts: &[TensorId]| {
            for &t in ts {
                assert_eq!(g.info(t).dtype, DType::F32, "{name}: {} must be f32", g.info(t).name);
            }
        };
        match self {
            Op::Elementwise { f, a, b, y } => {
                assert_eq!(b.is_none(), f.is_unary(), "{name}: operand count");
                let all: Vec<TensorId> = [*a, *y].into_iter().chain(*b).collect();
                f32_only(&all);
                for &t in &all {
                    assert_eq!(numel(t), numel(*y), "{name}: element counts differ");
                }
            }
            Op::Gemm { gemm, x, w, bias, gated, lora, y } => {
                check_gemm(g, gemm, *x, *w, *y);
                assert!(!(gated.is_some() && gemm.accumulate), "gemm: a residual input and accumulate are exclusive");
                if let Some(b) = bias {
                    assert!(numel(*b) >= gemm.n, "gemm: bias too small");
                }
                if let Some(l) = lora {
                    assert_eq!(g.shape(l.t)[1], l.rank, "gemm: lora t columns");
                }
            }
            Op::LoraDown { k, rank, problems, a, t, .. } => {
                for &(_, _, a_off) in problems {
                    assert!(a_off + rank * k <= numel(*a), "{name}: A too small");
                }
                assert_eq!(g.shape(*t)[1], *rank, "{name}: t columns");
            }
            Op::LayerNormMod { norm, x, y, .. } => {
                for p in &norm.problems {
                    assert!(p.row0 + p.rows <= g.shape(*x)[0].min(g.shape(*y)[0]), "{name}: rows");
                }
            }
            Op::RmsNorm { cols, x, weight, y, .. } => {
                assert_eq!(g.shape(*weight), &[*cols], "{name}: weight");
                assert_eq!(numel(*x), numel(*y), "{name}: shapes");
            }
            Op::QkvPost { shape, layout, qkv, q, k, v, .. } => {
                let n_in = if *layout == QkvLayout::Merged { 1 } else { 3 };
                assert_eq!(qkv.len(), n_in, "{name}: {layout:?} takes {n_in} projection inputs");
                let hm = [shape.batch, shape.heads, shape.s_txt + shape.s_img, shape.head_dim];
                for o in [q, k, v] {
                    assert_eq!(g.shape(*o), &hm, "{name}: head-major outputs");
                }
            }
            Op::QkvRope { shape, kv_heads, qkv, rope, q, k, v } => {
                let kv = *kv_heads;
                assert!(kv >= 1 && shape.heads % kv == 0, "{name}: kv_heads {kv} must divide heads {}", shape.heads);
                assert_eq!(shape.head_dim % 8, 0, "{name}: rotate-half RoPE needs head_dim % 8 == 0");
                f32_only(&[*qkv, *rope, *q, *k, *v]);
                let cols = (shape.heads + 2 * kv) * shape.head_dim;
                assert_eq!(numel(*qkv), shape.rows() * cols, "{name}: qkv [B·S, (H + 2·kv_heads)·Dh]");
                let table = shape.seq() * shape.head_dim;
                assert!(
                    numel(*rope) == table || numel(*rope) == shape.batch * table,
                    "{name}: rope [S, Dh/2, 2] or [B, S, Dh/2, 2]"
                );
                assert_eq!(g.shape(*q), &[shape.batch, shape.heads, shape.seq(), shape.head_dim], "{name}: q");
                for t in [k, v] {
                    assert_eq!(g.shape(*t), &[shape.batch, kv, shape.seq(), shape.head_dim], "{name}: k, v");
                }
            }
            Op::Attention { shape, opts, q, k, v, mask, segments, o, lse } => {
                let kv = opts.kv_heads;
                assert!(kv >= 1 && shape.heads % kv == 0, "{name}: kv_heads {kv} must divide heads {}", shape.heads);
                f32_only(&[*q, *k, *v, *o, *lse]);
                assert_eq!(numel(*q), shape.head_major_len(), "{name}: q [B, H, S, Dh]");
                for t in [k, v] {
                    assert_eq!(numel(*t), opts.kv_len(shape), "{name}: k, v [B, kv_heads, S, Dh]");
                }
                assert_eq!(g.shape(*o), &[shape.rows(), shape.hidden()], "{name}: output rows");
                assert_eq!(numel(*lse), shape.lse_len(), "{name}: lse [B, H, S]");
                if let Some(m) = mask {
                    f32_only(&[*m]);
                    assert_eq!(numel(*m), shape.batch * shape.s_txt, "{name}: mask [B, s_txt]");
                }
                if let Some(sg) = segments {
                    f32_only(&[*sg]);
                    assert!(numel(*sg) >= 2, "{name}: segments need at least the boundaries [0, S]");
                }
            }
            Op::TimestepEmbed { t, emb } => {
                assert_eq!(g.shape(*emb), &[numel(*t), 256], "{name}: [B, 256]");
            }
            Op::LoraApply { lora, a, b, .. } => {
                assert_eq!(g.shape(*a), &[lora.rank, lora.k], "{name}: A");
                assert_eq!(g.shape(*b), &[lora.n, lora.rank], "{name}: B");
            }
            Op::Conv2d { conv, x, w, bias, res, pre, y } => {
                check_conv(g, conv, [*x, *w, *y], *bias, *res);
                if let Some(p) = pre {
                    f32_only(&[*x, p.denom, p.gamma]);
                    assert_eq!(numel(p.gamma), conv.shape.ci, "{name}: prenorm gamma [ci]");
                    assert!(numel(p.denom) * conv.shape.ci == numel(*x), "{name}: prenorm denominators per x row");
                }
            }
            Op::ChannelNormDenom { cols, x, denom } => {
                f32_only(&[*x, *denom]);
                assert!(numel(*x) % cols == 0 && numel(*x) / cols == numel(*denom), "{name}: one denominator per row");
            }
            Op::Softmax { rows, cols, x, y } => {
                f32_only(&[*x, *y]);
                assert!(rows * cols <= numel(*x).min(numel(*y)), "{name}: {rows}x{cols} exceeds the tensors");
            }
            Op::Clamp { x, y, .. } => {
                f32_only(&[*x, *y]);
                assert_eq!(numel(*x), numel(*y), "{name}: element counts differ");
            }
            Op::QkvPostBackward { qkv, d_qkv, .. } => {
                assert_eq!(qkv.len(), d_qkv.len(), "{name}: one gradient per projection input");
            }
            _ => {}
        }
    }
}

fn check_gemm(g: &Graph, op: &GemmOp, x: TensorId, w: TensorId, y: TensorId) {
    assert!(!op.problems.is_empty() && op.problems.len() <= 4, "gemm: 1..=4 problems");
    let (xs, w, ys) = (g.shape(x), g.info(w), g.shape(y));
    assert_eq!(xs[xs.len() - 1], op.k, "gemm: x columns");
    assert!(op.y_col0 + op.n <= ys[ys.len() - 1], "gemm: y columns");
    let x_rows = xs.iter().product::<usize>() / op.k;
    let y_rows = ys.iter().product::<usize>() / ys[ys.len() - 1];
    let w_numel = w.shape.iter().product::<usize>();
    for p in &op.problems {
        assert!(p.row0 + p.rows <= x_rows.min(y_rows), "gemm: rows {p:?}");
        assert!(p.w_offset + op.n * op.k <= w_numel, "gemm: weight {} too small for {p:?}", w.name);
    }
}

fn check_conv(g: &Graph, c: &ConvOp, [x, w, y]: [TensorId; 3], bias: Option<TensorId>, res: Option<TensorId>) {
    let s = &c.shape;
    let numel = |t: TensorId| g.shape(t).iter().product::<usize>();
    assert!(numel(x) >= (c.x_pix0 + s.in_pixels()) * s.ci, "conv2d: x {} too small for {s:?}", g.info(x).name);
    assert!(numel(w) >= s.co * s.k(), "conv2d: weight {} too small for {s:?}", g.info(w).name);
    let y_end = match c.out {
        ConvOut::Rows { row0 } => (row0 + s.out_pixels()) * s.co,
        ConvOut::Transposed { row0, ld } => {
            assert!(row0 + s.out_pixels() <= ld, "conv2d: transposed rows exceed ld");
            s.co * ld
        }
    };
    assert!(numel(y) >= y_end, "conv2d: y {} too small for {s:?}", g.info(y).name);
    if let Some(b) = bias {
        assert!(numel(b) >= s.co, "conv2d: bias {} too small", g.info(b).name);
    }
    if let Some(r) = res {
        assert_eq!(numel(r), numel(y), "conv2d: residual {}", g.info(r).name);
        assert!(!c.accumulate, "conv2d: a residual input and accumulate are exclusive");
    }
}
