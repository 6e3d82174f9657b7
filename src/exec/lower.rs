//! Lowering: one graph node → its kernel launches. The only place that maps ops to kernels.

use crate::gpu::{Gpu, Launch};
use crate::graph::ops::{self, Activation, GemmOp, LayerNormModOp, ModRef, Op};
use crate::kernels::attention::{self, AttentionShape};
use crate::kernels::gemm::{self, Epilogue, GateRows, GemmArgs, GemmProblem, LoraProblem, Residual};
use crate::kernels::qkv_post::{self, QkvShape};
use crate::kernels::reduce_rows::SampleRows;
use crate::kernels::{elementwise, layer_norm_mod, rms_norm, timestep_embed};
use crate::tensor::Tensor;
use crate::Result;

pub fn lower(gpu: &Gpu, op: &Op, inputs: &[&Tensor], outputs: &[&Tensor]) -> Result<Vec<Launch>> {
    let one = |l: Launch| Ok(vec![l]);
    match op {
        Op::Elementwise(e) => one(elementwise::launch(gpu, *e, inputs[0], inputs.get(1).copied(), outputs[0])?),
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
            one(rms_norm::launch(gpu, &a)?)
        }
        Op::QkvPost { shape, layout } => {
            let n_in = if *layout == ops::QkvLayout::Merged { 1 } else { 3 };
            let layout = match layout {
                ops::QkvLayout::Merged => qkv_post::QkvLayout::Merged,
                ops::QkvLayout::Standard => qkv_post::QkvLayout::Standard,
            };
            let s = QkvShape {
                batch: shape.batch,
                heads: shape.heads,
                head_dim: shape.head_dim,
                s_txt: shape.s_txt,
                s_img: shape.s_img,
            };
            let (x, rest) = inputs.split_at(n_in);
            one(qkv_post::launch(gpu, s, layout, x, rest[0], rest[1], outputs[0], outputs[1], outputs[2], outputs[3])?)
        }
        Op::Attention { shape, masked } => {
            let s = AttentionShape {
                batch: shape.batch,
                heads: shape.heads,
                head_dim: shape.head_dim,
                s_txt: shape.s_txt,
                s_img: shape.s_img,
            };
            let mask = masked.then(|| inputs[3]);
            one(attention::launch_forward(gpu, &s, inputs[0], inputs[1], inputs[2], mask, outputs[0], outputs[1])?)
        }
        Op::TimestepEmbed => one(timestep_embed::launch(gpu, &timestep_embed::Args { t: inputs[0], emb: outputs[0] })?),
    }
}

fn gate_rows(m: &ModRef) -> GateRows {
    GateRows { offset: m.offset, sample_stride: m.sample_stride, split: m.split, alt_shift: m.alt_shift }
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
                q = q.gate(gate_rows(m));
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
    gemm::launch(gpu, &GemmArgs { x, weight: inputs[1], n: g.n, problems: &problems, epilogue, y, y_col0: g.y_col0 })
}

fn lower_layer_norm(gpu: &Gpu, l: &LayerNormModOp, inputs: &[&Tensor], outputs: &[&Tensor]) -> Result<Launch> {
    let groups: Vec<layer_norm_mod::Group> = l
        .problems
        .iter()
        .map(|p| {
            debug_assert_eq!(
                (p.shift.sample_stride, p.shift.split, p.shift.alt_shift),
                (p.scale.sample_stride, p.scale.split, p.scale.alt_shift)
            );
            let rows = SampleRows {
                row0: p.row0,
                samples: p.rows / p.rows_per_sample,
                rows_per_sample: p.rows_per_sample,
                split: p.shift.split,
                alt_rows: p.shift.alt_shift,
            };
            layer_norm_mod::Group {
                rows,
                shift_offset: p.shift.offset,
                scale_offset: p.scale.offset,
                sample_stride: p.shift.sample_stride,
            }
        })
        .collect();
    let a = layer_norm_mod::Args {
        x: inputs[0],
        modv: Some(inputs[1]),
        groups: &groups,
        eps: 1e-6,
        y: outputs[0],
        mean: outputs[1],
        rstd: outputs[2],
    };
    layer_norm_mod::launch(gpu, &a)
}
