//! Lowering: one graph node → its kernel launches. The only place that maps ops to kernels.

use crate::gpu::{Gpu, Launch};
use crate::graph::ops::{self, Activation, Ew, GateProblem, GemmOp, LayerNormModOp, LoraApplyOp, Op};
use crate::kernels::attention;
use crate::kernels::gemm::backward::{self as gemm_backward, DxArgs, LoraGradArgs};
use crate::kernels::gemm::{self, Epilogue, GemmArgs, GemmProblem, LoraProblem, Residual};
use crate::kernels::qkv_post;
use crate::kernels::{
    elementwise, elementwise::backward as elementwise_backward, fill, gated_residual, norm::layer_norm_mod,
    norm::rms_norm, timestep_embed,
};
use crate::layout::SampleRows;
use crate::tensor::Tensor;
use crate::Result;

pub fn lower(gpu: &Gpu, op: &Op, inputs: &[&Tensor], outputs: &[&Tensor]) -> Result<Vec<Launch>> {
    let one = |l: Launch| Ok(vec![l]);
    match op {
        Op::Elementwise(e) => {
            one(elementwise::launch_forward(gpu, ew(*e), inputs[0], inputs.get(1).copied(), outputs[0])?)
        }
        Op::Gemm(g) => one(lower_gemm(gpu, g, inputs, outputs[0])?),
        Op::LoraDown { rank, problems, .. } => {
            let problems: Vec<LoraProblem> = problems
                .iter()
                .map(|&(row0, rows, a_offset)| LoraProblem { row0, rows, a_offset, b_offset: 0, scale: 1.0 })
                .collect();
            one(gemm::launch_lora_down(gpu, inputs[0], inputs[1], *rank, &problems, outputs[0], 0)?)
        }
        Op::LayerNormMod(l) => one(lower_layer_norm(gpu, l, inputs, outputs)?),
        Op::RmsNorm { eps, .. } => {
            let a = rms_norm::Args { x: inputs[0], weight: inputs[1], eps: *eps, y: outputs[0], rstd: outputs[1] };
            one(rms_norm::launch_forward(gpu, &a)?)
        }
        Op::QkvPost { shape, layout } => {
            let n_in = if *layout == ops::QkvLayout::Merged { 1 } else { 3 };

            let (x, rest) = inputs.split_at(n_in);
            one(qkv_post::launch_forward(
                gpu, *shape, *layout, x, rest[0], rest[1], outputs[0], outputs[1], outputs[2], outputs[3],
            )?)
        }
        Op::Attention { shape, masked } => {
            let mask = masked.then(|| inputs[3]);
            one(attention::launch_forward(gpu, shape, inputs[0], inputs[1], inputs[2], mask, outputs[0], outputs[1])?)
        }
        Op::TimestepEmbed => one(timestep_embed::launch(gpu, &timestep_embed::Args { t: inputs[0], emb: outputs[0] })?),
        Op::Fill(v) => one(fill::launch(gpu, outputs[0], *v)?),
        Op::GatedResidual { problems, .. } => {
            let groups = gate_groups(problems);
            let a = gated_residual::Args {
                a: inputs[1],
                modv: inputs[2],
                groups: &groups,
                write: gated_residual::Write::FromResidual,
                res: Some(inputs[0]),
                out: outputs[0],
            };
            one(gated_residual::launch_forward(gpu, &a)?)
        }
        Op::LoraApply(l) => lower_lora_apply(gpu, l, inputs, outputs),
        Op::GemmDx { gemm: g } => {
            let problems = gemm_problems(g);
            let dy_cols = Some((g.y_col0, g.n));
            let a = DxArgs {
                dy: inputs[0],
                dy_cols,
                weight: inputs[1],
                problems: &problems,
                dx: outputs[0],
                accumulate: true,
            };
            one(gemm_backward::launch_dx(gpu, &a)?)
        }
        Op::LoraGrads { lora: l, .. } => {
            let problems = lora_problems(l);
            let a = LoraGradArgs {
                x: inputs[0],
                dy: inputs[1],
                dy_cols: Some((l.y_col0, l.n)),
                t: inputs[2],
                a: inputs[3],
                b: inputs[4],
                rank: l.rank,
                problems: &problems,
                da: outputs[0],
                db: outputs[1],
                dt: outputs[2],
                dx: outputs.get(3).copied(),
            };
            gemm_backward::launch_lora_grads(gpu, &a)
        }
        Op::ElementwiseBackward(e) => {
            one(elementwise_backward::launch_backward(gpu, ew(*e), inputs[0], inputs[1], outputs[0])?)
        }
        Op::GatedResidualBackward { problems, d_gate, .. } => {
            let groups = gate_groups(problems);
            let a = gated_residual::BackwardArgs {
                branch: inputs[1],
                modv: inputs[2],
                groups: &groups,
                dx: inputs[0],
                d_branch: outputs[0],
                d_gate: d_gate.then(|| (outputs[1], outputs[2])),
            };
            gated_residual::launch_backward(gpu, &a)
        }
        Op::LayerNormModBackward { op, d_mod } => {
            let groups = norm_groups(op);
            let a = layer_norm_mod::BackwardArgs {
                x: inputs[0],
                modv: Some(inputs[1]),
                groups: &groups,
                mean: inputs[2],
                rstd: inputs[3],
                dy: inputs[4],
                dx: outputs[0],
                dmod: d_mod.then(|| (outputs[1], outputs[2])),
            };
            layer_norm_mod::launch_backward(gpu, &a)
        }
        Op::QkvPostBackward { shape, layout } => {
            let n_in = if *layout == ops::QkvLayout::Merged { 1 } else { 3 };
            let (x, rest) = inputs.split_at(n_in);
            let (nw, rope, saved, dq, dk, dv) = (rest[0], rest[1], rest[2], rest[3], rest[4], rest[5]);
            qkv_post::launch_backward(gpu, *shape, *layout, x, nw, rope, saved, dq, dk, dv, outputs, None)
        }
        Op::AttentionBackward { shape, masked } => {
            let mask = masked.then(|| inputs[3]);
            let o = 3 + *masked as usize;
            let a = attention::BackwardArgs {
                q: inputs[0],
                k: inputs[1],
                v: inputs[2],
                mask,
                o: inputs[o],
                lse: inputs[o + 1],
                d_o: inputs[o + 2],
                delta: outputs[3],
                dq: outputs[0],
                dk: outputs[1],
                dv: outputs[2],
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

/// t = s·x·Aᵀ over the problems' rows, then y[:, col0..col0+n] += t·Bᵀ.
fn lower_lora_apply(gpu: &Gpu, l: &LoraApplyOp, inputs: &[&Tensor], outputs: &[&Tensor]) -> Result<Vec<Launch>> {
    let (x, a, b, t, y) = (inputs[0], inputs[1], inputs[2], outputs[0], outputs[1]);
    let down = gemm::launch_lora_down(gpu, x, a, l.rank, &lora_problems(l), t, 0)?;
    let problems: Vec<GemmProblem> = l.problems.iter().map(|&(row0, rows)| GemmProblem::rows(row0, rows)).collect();
    let epilogue = Epilogue { residual: Residual::InPlace, ..Default::default() };
    let up = gemm::launch_forward(
        gpu,
        &GemmArgs { x: t, weight: b, n: l.n, problems: &problems, epilogue, y, y_col0: l.y_col0 },
    )?;
    Ok(vec![down, up])
}

/// Inputs in the order `GemmOp` documents: [x, w, bias?, res?, gate_src?, lora_t?, lora_b?].
fn lower_gemm(gpu: &Gpu, g: &GemmOp, inputs: &[&Tensor], y: &Tensor) -> Result<Launch> {
    let mut it = inputs[2..].iter().copied();
    let bias = if g.bias { it.next() } else { None };
    let (res, gate) = if g.residual { (it.next(), it.next()) } else { (None, None) };
    let lora = if g.lora_rank > 0 {
        let (t, b) = (it.next().expect("cannot fail: checked"), it.next().expect("cannot fail: checked"));
        Some(gemm::Lora { t, b, rank: g.lora_rank })
    } else {
        None
    };
    let problems: Vec<GemmProblem> = g
        .problems
        .iter()
        .map(|p| {
            let mut q = GemmProblem::rows(p.row0, p.rows)
                .samples(p.rows_per_sample)
                .weight(p.w_offset)
                .bias(p.b_offset)
                .lora(p.lora_b_offset);
            if let Some(m) = &p.gate {
                q = q.gate(*m);
            }
            q
        })
        .collect();
    // The graph is SSA: a residual is always another tensor; the planner never aliases it with y.
    let residual = match (res, g.accumulate) {
        (Some(r), false) => Residual::From(r),
        (None, true) => Residual::InPlace,
        (None, false) => Residual::None,
        (Some(_), true) => panic!("gemm: a residual input and accumulate are exclusive"),
    };
    let epilogue = Epilogue { bias, lora, gelu: g.act == Activation::GeluTanh, gate, residual };
    let x2;
    let x = if inputs[0].shape.len() == 2 {
        inputs[0]
    } else {
        let rows = inputs[0].numel() / g.k;
        x2 = Tensor { shape: vec![rows, g.k], ..inputs[0].clone() };
        &x2
    };
    gemm::launch_forward(
        gpu,
        &GemmArgs { x, weight: inputs[1], n: g.n, problems: &problems, epilogue, y, y_col0: g.y_col0 },
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

fn lower_layer_norm(gpu: &Gpu, l: &LayerNormModOp, inputs: &[&Tensor], outputs: &[&Tensor]) -> Result<Launch> {
    let groups = norm_groups(l);
    let a = layer_norm_mod::Args {
        x: inputs[0],
        modv: Some(inputs[1]),
        groups: &groups,
        eps: 1e-6,
        y: outputs[0],
        mean: outputs[1],
        rstd: outputs[2],
    };
    layer_norm_mod::launch_forward(gpu, &a)
}

fn ew(e: Ew) -> elementwise::Op {
    match e {
        Ew::Add => elementwise::Op::Add,
        Ew::Mul => elementwise::Op::Mul,
        Ew::Silu => elementwise::Op::Silu,
        Ew::GeluTanh => elementwise::Op::GeluTanh,
    }
}
