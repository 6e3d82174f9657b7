//! Typed ops. Each variant holds its own parameters (no wgpu types) and declares, next to its
//! shape check: how many dispatches it lowers to and which of its tensors its backward reads
//! (`saves`). Lowering to kernels lives in `crate::exec::lower`.

pub use super::ops_spec::*;
use super::{Graph, TensorId};
use crate::dtype::DType;

/// Which tensors of a node its backward needs: indices into its inputs / outputs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Saves {
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
}

#[derive(Clone, Debug)]
pub enum Op {
    /// `y = a ∘ b` or `y = f(a)` (f32, same shape). Inputs [a] or [a, b]; outputs [y].
    Elementwise(Ew),
    /// Grouped GEMM. Inputs [x, w, bias?, res?, gate_src?, lora_t?, lora_b?] (present per the
    /// op's flags, in this order); outputs [y].
    Gemm(GemmOp),
    /// LoRA down-projection `t = x·Aᵀ` (scale folded into A) for the rows of each problem
    /// `(row0, rows, a_offset)`, A [rank, k] at `a_offset`. Inputs [x, a]; outputs [t [rows, rank]].
    LoraDown { k: usize, rank: usize, problems: Vec<(usize, usize, usize)> },
    /// LayerNorm + adaLN modulation. Inputs [x, modulation]; outputs [y, mean [rows], rstd [rows]].
    LayerNormMod(LayerNormModOp),
    /// RMSNorm with weight. Inputs [x, w]; outputs [y, rstd [rows]].
    RmsNorm { cols: usize, eps: f32 },
    /// QK-RMSNorm + RoPE + head-major Q, K, V. Inputs [qkv] (merged) or [q, k, v] (standard),
    /// then [norm_weights [4, Dh], rope [S_joint, Dh/2, 2]]; outputs [q, k, v, saved [2, rows, H]].
    QkvPost { shape: JointShape, layout: QkvLayout },
    /// Joint flash attention. Inputs [q, k, v, mask?]; outputs [o (joint rows), lse].
    Attention { shape: JointShape, masked: bool },
    /// The 256-channel sinusoid of σ·1000 (cos first). Inputs [t [B]]; outputs [emb [B, 256]].
    TimestepEmbed,
    /// `y = value` over the whole tensor. Inputs []; outputs [y].
    Fill(f32),
    /// `out = res + gate ⊙ branch` per problem rows. Inputs [res, branch, modulation]; outputs [out].
    GatedResidual { cols: usize, problems: Vec<GateProblem> },
    /// Trainable LoRA (two dispatches: down, then accumulate into y). Inputs [x, a, b];
    /// outputs [t, y] (y accumulated).
    LoraApply(LoraApplyOp),

    // ---- backward ops (built by `graph::autodiff`) ----
    /// `dx += dy[:, cols]·W` per problem. Inputs [dy, w]; outputs [dx].
    GemmDx { gemm: GemmOp },
    /// LoRA gradients: inputs [x, dy, t, a, b]; outputs [da (+=), db (+=), dt (scratch), dx (+=)?].
    LoraGrads { lora: LoraApplyOp, dx: bool },
    /// dx = f'(x)·dy. Inputs [x, dy]; outputs [dx].
    ElementwiseBackward(Ew),
    /// d_branch = gate·d_out (=); d_gate += Σ d_out·branch. Inputs [d_out, branch, modulation];
    /// outputs [d_branch] or [d_branch, d_modulation, scratch].
    GatedResidualBackward { cols: usize, problems: Vec<GateProblem>, d_gate: bool },
    /// LayerNorm+modulation backward. Inputs [x, modulation, mean, rstd, dy]; outputs [dx (rows
    /// of the problems, =)] or [dx, d_modulation (+=), scratch].
    LayerNormModBackward { op: LayerNormModOp, d_mod: bool },
    /// Inputs [qkv | q, k, v, norm_weights, rope, saved, dq, dk, dv]; outputs [d_qkv | dq, dk, dv] (=).
    QkvPostBackward { shape: JointShape, layout: QkvLayout },
    /// Inputs [q, k, v, mask?, o, lse, d_o]; outputs [dq, dk, dv, delta (scratch)] (=).
    AttentionBackward { shape: JointShape, masked: bool },
}

impl Op {
    /// The op's name (the graph builder's label names the accounting category).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Elementwise(Ew::Add) => "add",
            Op::Elementwise(Ew::Mul) => "mul",
            Op::Elementwise(Ew::Silu) => "silu",
            Op::Elementwise(Ew::GeluTanh) => "gelu",
            Op::Gemm(_) => "gemm",
            Op::LoraDown { .. } => "lora_down",
            Op::LayerNormMod(_) => "layer_norm_mod",
            Op::RmsNorm { .. } => "rms_norm",
            Op::QkvPost { .. } => "qkv_post",
            Op::Attention { .. } => "attention",
            Op::TimestepEmbed => "timestep_embed",
            Op::Fill(_) => "fill",
            Op::GatedResidual { .. } => "gated_residual",
            Op::LoraApply(_) => "lora",
            Op::GemmDx { .. } => "gemm_dx",
            Op::LoraGrads { .. } => "lora_grads",
            Op::ElementwiseBackward(_) => "elementwise_backward",
            Op::GatedResidualBackward { .. } => "gated_residual_backward",
            Op::LayerNormModBackward { .. } => "layer_norm_mod_backward",
            Op::QkvPostBackward { .. } => "qkv_post_backward",
            Op::AttentionBackward { .. } => "attention_backward",
        }
    }

    /// Dispatches this op lowers to (the executor asserts that lowering agrees).
    pub fn dispatches(&self) -> usize {
        match self {
            Op::LoraApply(_) => 2,
            // dB, dt, dA (+ dx): gemm_backward::launch_lora_grads.
            Op::LoraGrads { dx, .. } => 3 + *dx as usize,
            Op::AttentionBackward { .. } => 2,
            // d_branch, then the two passes of reduce_rows for d_gate.
            Op::GatedResidualBackward { d_gate, .. } => 1 + 2 * *d_gate as usize,
            // dx, then two reduce_rows passes each for d_shift and d_scale.
            Op::LayerNormModBackward { d_mod, .. } => 1 + 4 * *d_mod as usize,
            _ => 1,
        }
    }

    /// What the backward of this op reads.
    pub fn saves(&self) -> Saves {
        let inputs = |v: &[usize]| Saves { inputs: v.to_vec(), outputs: vec![] };
        match self {
            // d(a+b) needs nothing; d(a*b) needs both; silu'/gelu' need the input.
            Op::Elementwise(Ew::Add) => Saves::default(),
            Op::Elementwise(Ew::Mul) => inputs(&[0, 1]),
            Op::Elementwise(_) => inputs(&[0]),
            // dx = dy·W needs only the (frozen) weight; GELU' needs the pre-activation, which the
            // backward recomputes from x; LoRA dA needs x and dB needs t; gates need y.
            Op::Gemm(_) => inputs(&[0, 1]),
            Op::LoraDown { .. } => inputs(&[0, 1]),
            Op::LayerNormMod(_) => inputs(&[0, 1]),
            Op::RmsNorm { .. } => inputs(&[0, 1]),
            Op::QkvPost { .. } => Saves { inputs: vec![0], outputs: vec![] },
            Op::Attention { .. } => Saves { inputs: vec![0, 1, 2], outputs: vec![0, 1] },
            Op::TimestepEmbed => Saves::default(),
            Op::Fill(_) => Saves::default(),
            // d_gate needs the branch; d_branch needs the (input) gate.
            Op::GatedResidual { .. } => inputs(&[1, 2]),
            // dA needs x, dB needs t, dt needs B, dx needs A.
            Op::LoraApply(_) => Saves { inputs: vec![0, 1, 2], outputs: vec![0] },
            // Backward ops are not differentiated again.
            _ => Saves::default(),
        }
    }

    /// Panics with the op name when the tensors break the op's shape contract.
    pub fn check(&self, g: &Graph, inputs: &[TensorId], outputs: &[TensorId]) {
        let name = self.name();
        let numel = |t: TensorId| g.shape(t).iter().product::<usize>();
        match self {
            Op::Elementwise(e) => {
                let want = if e.is_unary() { 1 } else { 2 };
                assert_eq!(inputs.len(), want, "{name}: inputs");
                assert_eq!(outputs.len(), 1, "{name}: outputs");
                for &t in inputs.iter().chain(outputs) {
                    assert_eq!(g.info(t).dtype, DType::F32, "{name}: f32 only");
                    assert_eq!(numel(t), numel(outputs[0]), "{name}: element counts differ");
                }
            }
            Op::Gemm(op) => check_gemm(g, op, inputs, outputs),
            Op::LoraDown { k, rank, problems } => {
                assert_eq!((inputs.len(), outputs.len()), (2, 1), "{name}: operands");
                for &(_, _, a_off) in problems {
                    assert!(a_off + rank * k <= numel(inputs[1]), "{name}: A too small");
                }
                assert_eq!(g.shape(outputs[0])[1], *rank, "{name}: t columns");
            }
            Op::LayerNormMod(op) => {
                assert_eq!((inputs.len(), outputs.len()), (2, 3), "{name}: operands");
                for p in &op.problems {
                    assert!(p.row0 + p.rows <= g.shape(inputs[0])[0].min(g.shape(outputs[0])[0]), "{name}: rows");
                }
            }
            Op::RmsNorm { cols, .. } => {
                assert_eq!((inputs.len(), outputs.len()), (2, 2), "{name}: operands");
                assert_eq!(g.shape(inputs[1]), &[*cols], "{name}: weight");
                assert_eq!(numel(inputs[0]), numel(outputs[0]), "{name}: shapes");
            }
            Op::QkvPost { shape, layout } => {
                let n_in = if *layout == QkvLayout::Merged { 1 } else { 3 };
                assert_eq!((inputs.len(), outputs.len()), (n_in + 2, 4), "{name}: operands");
                let hm = [shape.batch, shape.heads, shape.s_txt + shape.s_img, shape.head_dim];
                for &o in &outputs[..3] {
                    assert_eq!(g.shape(o), &hm, "{name}: head-major outputs");
                }
            }
            Op::Attention { shape, masked } => {
                assert_eq!(inputs.len(), 3 + *masked as usize, "{name}: inputs");
                assert_eq!(g.shape(outputs[0]), &[shape.rows(), shape.hidden()], "{name}: output rows");
            }
            Op::TimestepEmbed => {
                assert_eq!(g.shape(outputs[0]), &[numel(inputs[0]), 256], "{name}: [B, 256]");
            }
            Op::Fill(_) => assert_eq!((inputs.len(), outputs.len()), (0, 1), "{name}: operands"),
            Op::GatedResidual { .. } => assert_eq!((inputs.len(), outputs.len()), (3, 1), "{name}: operands"),
            Op::LoraApply(l) => {
                assert_eq!((inputs.len(), outputs.len()), (3, 2), "{name}: operands");
                assert_eq!(g.shape(inputs[1]), &[l.rank, l.k], "{name}: A");
                assert_eq!(g.shape(inputs[2]), &[l.n, l.rank], "{name}: B");
            }
            _ => {}
        }
    }
}

fn check_gemm(g: &Graph, op: &GemmOp, inputs: &[TensorId], outputs: &[TensorId]) {
    let want = 2 + op.bias as usize + 2 * op.residual as usize + 2 * (op.lora_rank > 0) as usize;
    assert_eq!(inputs.len(), want, "gemm: {} inputs for flags {op:?}", inputs.len());
    assert_eq!(outputs.len(), 1, "gemm: outputs");
    assert!(!op.problems.is_empty() && op.problems.len() <= 4, "gemm: 1..=4 problems");
    let (x, w, y) = (g.shape(inputs[0]), g.info(inputs[1]), g.shape(outputs[0]));
    assert_eq!(x[x.len() - 1], op.k, "gemm: x columns");
    assert!(op.y_col0 + op.n <= y[y.len() - 1], "gemm: y columns");
    let x_rows = g.shape(inputs[0]).iter().product::<usize>() / op.k;
    let y_rows = y.iter().product::<usize>() / y[y.len() - 1];
    let w_numel = w.shape.iter().product::<usize>();
    for p in &op.problems {
        assert!(p.row0 + p.rows <= x_rows.min(y_rows), "gemm: rows {p:?}");
        assert!(p.w_offset + op.n * op.k <= w_numel, "gemm: weight {} too small for {p:?}", w.name);
    }
}
