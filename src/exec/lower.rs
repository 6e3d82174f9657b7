//! Lowering: one graph node → its kernel launches. The only place that maps ops to kernels.

use crate::gpu::{Gpu, Launch};
use crate::graph::ops::{Activation, Ew, GateProblem, GemmOp, LayerNormModOp, LoraApplyOp, Op, QkvLayout};
use crate::graph::TensorId;
use crate::kernels::attention;
use crate::kernels::conv;
use crate::kernels::gemm::backward::{self as gemm_backward, DxArgs, LoraGradArgs};
use crate::kernels::gemm::{self, Epilogue, GemmArgs, GemmProblem, LoraProblem, Residual};
use crate::kernels::norm::{channel_norm_denom, softmax_rows};
use crate::kernels::qkv_post;
use crate::kernels::{
    elementwise, elementwise::backward as elementwise_backward, fill, gated_residual, norm::layer_norm_mod,
    norm::rms_norm, timestep_embed,
};
use crate::layout::SampleRows;
use crate::tensor::Tensor;
use crate::Result;

/// The launches of `op`, with its operands bound to `tensors` (indexed by tensor id).
pub fn lower(gpu: &Gpu, op: &Op, tensors: &[Tensor]) -> Result<Vec<Launch>> {
    let t = |id: TensorId| &tensors[id];
    let one = |l: Launch| Ok(vec![l]);
    match op {
        Op::Elementwise { f, a, b, y } => one(elementwise::launch_forward(gpu, ew(*f), t(*a), b.map(t), t(*y))?),
        Op::Gemm { gemm, x, w, bias, gated, lora, y } => {
            let operands = GemmOperands {
                x: t(*x),
                w: t(*w),
                bias: bias.map(t),
                gated: gated.as_ref().map(|g| (t(g.res), t(g.gate))),
                lora: lora.as_ref().map(|l| gemm::Lora { t: t(l.t), b: t(l.b), rank: l.rank }),
                y: t(*y),
            };
            one(lower_gemm(gpu, gemm, operands)?)
        }
        Op::LoraDown { rank, problems, x, a, t: out, .. } => {
            let problems: Vec<LoraProblem> = problems
                .iter()
                .map(|&(row0, rows, a_offset)| LoraProblem { row0, rows, a_offset, b_offset: 0, scale: 1.0 })
                .collect();
            one(gemm::launch_lora_down(gpu, t(*x), t(*a), *rank, &problems, t(*out), 0)?)
        }
        Op::LayerNormMod { norm, x, modulation, y, mean, rstd } => {
            let groups = norm_groups(norm);
            let a = layer_norm_mod::Args {
                x: t(*x),
                modv: Some(t(*modulation)),
                groups: &groups,
                eps: 1e-6,
                y: t(*y),
                mean: t(*mean),
                rstd: t(*rstd),
            };
            one(layer_norm_mod::launch_forward(gpu, &a)?)
        }
        Op::RmsNorm { eps, x, weight, y, rstd, .. } => {
            let a = rms_norm::Args { x: t(*x), weight: t(*weight), eps: *eps, y: t(*y), rstd: t(*rstd) };
            one(rms_norm::launch_forward(gpu, &a)?)
        }
        Op::QkvPost { shape, layout, qkv, norm_weights, rope, q, k, v, saved } => {
            let x: Vec<&Tensor> = qkv.iter().map(|&i| t(i)).collect();
            let a = qkv_post::Args {
                shape: *shape,
                layout: *layout,
                opts: qkv_post::Options::dit(shape),
                x: &x,
                norm_weights: Some(t(*norm_weights)),
                rope: t(*rope),
                q: t(*q),
                k: t(*k),
                v: t(*v),
                saved: Some(t(*saved)),
            };
            one(qkv_post::launch_forward(gpu, &a)?)
        }
        Op::QkvRope { shape, kv_heads, qkv, rope, q, k, v } => {
            let a = qkv_post::Args {
                shape: *shape,
                layout: QkvLayout::Merged,
                opts: qkv_post::Options::rotate_half(*kv_heads),
                x: &[t(*qkv)],
                norm_weights: None,
                rope: t(*rope),
                q: t(*q),
                k: t(*k),
                v: t(*v),
                saved: None,
            };
            one(qkv_post::launch_forward(gpu, &a)?)
        }
        Op::Attention { shape, opts, q, k, v, mask, segments, o, lse } => {
            let a = attention::Args {
                q: t(*q),
                k: t(*k),
                v: t(*v),
                mask: mask.map(t),
                segments: segments.map(t),
                opts: *opts,
                o: t(*o),
                lse: t(*lse),
            };
            one(attention::launch_forward(gpu, shape, &a)?)
        }
        Op::TimestepEmbed { t: ts, emb } => {
            one(timestep_embed::launch(gpu, &timestep_embed::Args { t: t(*ts), emb: t(*emb) })?)
        }
        Op::Fill { value, y } => one(fill::launch(gpu, t(*y), *value)?),
        Op::Conv2d { conv: c, x, w, bias, res, pre, y } => {
            let residual = match (res, c.accumulate) {
                (Some(r), _) => conv::Residual::From(t(*r)),
                (None, true) => conv::Residual::InPlace,
                (None, false) => conv::Residual::None,
            };
            let a = conv::Args {
                shape: c.shape,
                x: t(*x),
                x_pix0: c.x_pix0,
                weight: t(*w),
                w_offset: 0,
                bias: bias.map(t),
                residual,
                pre: pre.as_ref().map(|p| conv::PreNorm { denom: t(p.denom), gamma: t(p.gamma), silu: p.silu }),
                alpha: c.alpha,
                y: t(*y),
                y_layout: c.out,
            };
            one(conv::launch_forward(gpu, &a)?)
        }
        Op::ChannelNormDenom { cols, x, denom } => {
            one(channel_norm_denom::launch_forward(gpu, t(*x), *cols, t(*denom))?)
        }
        Op::Softmax { rows, cols, x, y } => one(softmax_rows::launch_forward(gpu, t(*x), t(*y), *rows, *cols)?),
        Op::Clamp { lo, hi, x, y } => one(elementwise::launch_clamp(gpu, t(*x), t(*y), *lo, *hi)?),
        Op::GatedResidual { problems, res, branch, modulation, out, .. } => {
            let groups = gate_groups(problems);
            let a = gated_residual::Args {
                a: t(*branch),
                modv: t(*modulation),
                groups: &groups,
                write: gated_residual::Write::FromResidual,
                res: Some(t(*res)),
                out: t(*out),
            };
            one(gated_residual::launch_forward(gpu, &a)?)
        }
        Op::LoraApply { lora, x, a, b, t: tt, y } => lower_lora_apply(gpu, lora, [t(*x), t(*a), t(*b), t(*tt), t(*y)]),
        Op::GemmDx { gemm, dy, w, dx } => {
            let problems = gemm_problems(gemm);
            let a = DxArgs {
                dy: t(*dy),
                dy_cols: Some((gemm.y_col0, gemm.n)),
                weight: t(*w),
                problems: &problems,
                dx: t(*dx),
                accumulate: true,
            };
            one(gemm_backward::launch_dx(gpu, &a)?)
        }
        Op::LoraGrads { lora, x, dy, t: tt, a, b, da, db, dt, dx } => {
            let problems = lora_problems(lora);
            let a = LoraGradArgs {
                x: t(*x),
                dy: t(*dy),
                dy_cols: Some((lora.y_col0, lora.n)),
                t: t(*tt),
                a: t(*a),
                b: t(*b),
                rank: lora.rank,
                problems: &problems,
                da: t(*da),
                db: t(*db),
                dt: t(*dt),
                dx: dx.map(t),
            };
            gemm_backward::launch_lora_grads(gpu, &a)
        }
        Op::ElementwiseBackward { f, x, dy, dx } => {
            one(elementwise_backward::launch_backward(gpu, ew(*f), t(*x), t(*dy), t(*dx))?)
        }
        Op::GatedResidualBackward { problems, d_out, branch, modulation, d_branch, d_gate, .. } => {
            let groups = gate_groups(problems);
            let a = gated_residual::BackwardArgs {
                branch: t(*branch),
                modv: t(*modulation),
                groups: &groups,
                dx: t(*d_out),
                d_branch: t(*d_branch),
                d_gate: d_gate.as_ref().map(|r| (t(r.acc), t(r.scratch))),
            };
            gated_residual::launch_backward(gpu, &a)
        }
        Op::LayerNormModBackward { norm, x, modulation, mean, rstd, dy, dx, d_mod } => {
            let groups = norm_groups(norm);
            let a = layer_norm_mod::BackwardArgs {
                x: t(*x),
                modv: Some(t(*modulation)),
                groups: &groups,
                mean: t(*mean),
                rstd: t(*rstd),
                dy: t(*dy),
                dx: t(*dx),
                dmod: d_mod.as_ref().map(|r| (t(r.acc), t(r.scratch))),
            };
            layer_norm_mod::launch_backward(gpu, &a)
        }
        Op::QkvPostBackward { shape, layout, qkv, norm_weights, rope, saved, dq, dk, dv, d_qkv } => {
            let x: Vec<&Tensor> = qkv.iter().map(|&i| t(i)).collect();
            let d_x: Vec<&Tensor> = d_qkv.iter().map(|&i| t(i)).collect();
            let a = qkv_post::BackwardArgs {
                shape: *shape,
                layout: *layout,
                x: &x,
                norm_weights: t(*norm_weights),
                rope: t(*rope),
                saved: t(*saved),
                dq: t(*dq),
                dk: t(*dk),
                dv: t(*dv),
                d_x: &d_x,
                d_norm_weights: None,
            };
            qkv_post::launch_backward(gpu, &a)
        }
        Op::AttentionBackward { shape, q, k, v, mask, o, lse, d_o, dq, dk, dv, delta } => {
            let a = attention::BackwardArgs {
                q: t(*q),
                k: t(*k),
                v: t(*v),
                mask: mask.map(t),
                o: t(*o),
                lse: t(*lse),
                d_o: t(*d_o),
                delta: t(*delta),
                dq: t(*dq),
                dk: t(*dk),
                dv: t(*dv),
            };
            attention::launch_backward(gpu, shape, &a)
        }
    }
}

fn gate_groups(problems: &[GateProblem]) -> Vec<gated_residual::Group> {
    problems
        .iter()
        .map(|p| gated_residual::Group {
            rows: SampleRows::of(p.row0, p.rows, p.rows_per_sample, &p.gate),
            gate_offset: p.gate.offset,
            sample_stride: p.gate.sample_stride,
        })
        .collect()
}

fn lora_problems(l: &LoraApplyOp) -> Vec<LoraProblem> {
    l.problems
        .iter()
        .map(|&(row0, rows)| LoraProblem { row0, rows, a_offset: 0, b_offset: 0, scale: l.scale })
        .collect()
}

/// t = s·x·Aᵀ over the problems' rows, then y[:, col0..col0+n] += t·Bᵀ. `operands` = [x, a, b, t, y].
fn lower_lora_apply(gpu: &Gpu, l: &LoraApplyOp, operands: [&Tensor; 5]) -> Result<Vec<Launch>> {
    let [x, a, b, t, y] = operands;
    let down = gemm::launch_lora_down(gpu, x, a, l.rank, &lora_problems(l), t, 0)?;
    let problems: Vec<GemmProblem> = l.problems.iter().map(|&(row0, rows)| GemmProblem::rows(row0, rows)).collect();
    let epilogue = Epilogue { residual: Residual::InPlace, ..Default::default() };
    let up = gemm::launch_forward(
        gpu,
        &GemmArgs { x: t, weight: b, n: l.n, problems: &problems, epilogue, y, y_col0: l.y_col0 },
    )?;
    Ok(vec![down, up])
}

/// The bound operands of an `Op::Gemm`.
struct GemmOperands<'t> {
    x: &'t Tensor,
    w: &'t Tensor,
    bias: Option<&'t Tensor>,
    /// (residual, gate source).
    gated: Option<(&'t Tensor, &'t Tensor)>,
    lora: Option<gemm::Lora<'t>>,
    y: &'t Tensor,
}

/// Inputs in the order `GemmOp` documents: [x, w, bias?, res?, gate_src?, lora_t?, lora_b?].
fn lower_gemm(gpu: &Gpu, g: &GemmOp, o: GemmOperands) -> Result<Launch> {
    let problems = gemm_problems(g);
    // The graph is SSA: a residual is always another tensor; the planner never aliases it with y.
    let (residual, gate) = match (o.gated, g.accumulate) {
        (Some((r, gate)), _) => (Residual::From(r), Some(gate)),
        (None, true) => (Residual::InPlace, None),
        (None, false) => (Residual::None, None),
    };
    let epilogue = Epilogue { bias: o.bias, lora: o.lora, gelu: g.act == Activation::GeluTanh, gate, residual };
    let x2;
    let x = if o.x.shape.len() == 2 {
        o.x
    } else {
        let rows = o.x.numel() / g.k;
        x2 = Tensor { shape: vec![rows, g.k], ..o.x.clone() };
        &x2
    };
    gemm::launch_forward(
        gpu,
        &GemmArgs { x, weight: o.w, n: g.n, problems: &problems, epilogue, y: o.y, y_col0: g.y_col0 },
    )
}

fn gemm_problems(g: &GemmOp) -> Vec<GemmProblem> {
    g.problems
        .iter()
        .map(|p| {
            let q = GemmProblem::rows(p.row0, p.rows)
                .samples(p.rows_per_sample)
                .weight(p.w_offset)
                .bias(p.b_offset)
                .lora(p.lora_b_offset);
            match &p.gate {
                Some(m) => q.gate(*m),
                None => q,
            }
        })
        .collect()
}

/// Shift and scale share one sample stride and zero_cond_t rule (they come from one vector).
fn norm_groups(l: &LayerNormModOp) -> Vec<layer_norm_mod::Group> {
    l.problems
        .iter()
        .inspect(|p| {
            debug_assert_eq!(
                (p.shift.sample_stride, p.shift.split, p.shift.alt_shift),
                (p.scale.sample_stride, p.scale.split, p.scale.alt_shift)
            )
        })
        .map(|p| layer_norm_mod::Group {
            rows: SampleRows::of(p.row0, p.rows, p.rows_per_sample, &p.shift),
            shift_offset: p.shift.offset,
            scale_offset: p.scale.offset,
            sample_stride: p.shift.sample_stride,
        })
        .collect()
}

fn ew(e: Ew) -> elementwise::Op {
    match e {
        Ew::Add => elementwise::Op::Add,
        Ew::Mul => elementwise::Op::Mul,
        Ew::Silu => elementwise::Op::Silu,
        Ew::GeluTanh => elementwise::Op::GeluTanh,
        Ew::GeluErf => elementwise::Op::GeluErf,
    }
}
