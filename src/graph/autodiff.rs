//! Reverse-mode differentiation of a forward graph: appends, node by node in reverse, the
//! backward nodes each op's rule calls for, only where a gradient is needed (tensors downstream of
//! a trainable param). One rule per op kind, each next to what it differentiates.
//!
//! Gradient storage: every tensor's gradient is one graph tensor (`grads`). Kernels that
//! accumulate (`+=`: GEMM dx, LoRA dA/dB/dx, d_modulation) write into it, after a zero fill when
//! it is first created; kernels that assign (`=`) write a fresh tensor, which becomes the gradient
//! when it is the first contribution and covers every row, and is otherwise added to it. Param
//! gradients are external buffers that only accumulate (see [`backward`]).

use super::ops::*;
use super::{Graph, TensorId};
use crate::dtype::DType;
use std::collections::{HashMap, HashSet};

struct Diff<'g> {
    g: &'g mut Graph,
    needs: Vec<bool>,
    grads: HashMap<TensorId, TensorId>,
    /// Gated-residual outputs whose identity path (d_res += d_out) is done.
    residual_done: HashSet<TensorId>,
}

/// Appends the backward of `g`'s nodes to `g`. `seeds` = (tensor, its gradient tensor);
/// returns the gradient of every `wrt` tensor. Those gradients are graph params (bound from
/// outside): the backward only adds to them (`+=`), so micro-batches accumulate until the caller
/// zeroes them (after each optimizer step).
pub fn backward(g: &mut Graph, seeds: &[(TensorId, TensorId)], wrt: &[TensorId]) -> HashMap<TensorId, TensorId> {
    let forward = g.nodes.clone();
    let mut needs = vec![false; g.tensors.len()];
    for &t in wrt {
        needs[t] = true;
    }
    for n in &forward {
        if n.inputs.iter().any(|&t| needs[t]) {
            for &o in &n.outputs {
                needs[o] = true;
            }
        }
    }
    let mut grads: HashMap<TensorId, TensorId> = seeds.iter().copied().collect();
    for &t in wrt {
        let info = g.info(t).clone();
        grads.insert(t, g.accumulator(&format!("grad:{}", info.name), &info.shape, DType::F32));
    }
    let mut d = Diff { g, needs, grads, residual_done: HashSet::new() };
    for n in forward.iter().rev() {
        if !n.outputs.iter().any(|o| d.grads.contains_key(o)) || !n.inputs.iter().any(|&t| d.needs[t]) {
            continue;
        }
        d.g.set_layer(n.label.layer);
        d.rule(&n.op, &n.inputs, &n.outputs);
    }
    d.g.set_layer(None);
    wrt.iter().map(|&t| (t, d.grads[&t])).collect()
}

impl Diff<'_> {
    fn fresh(&mut self, like: TensorId, what: &str) -> TensorId {
        let info = self.g.info(like).clone();
        self.g.activation(&format!("d_{} ({what})", info.name), &info.shape, DType::F32)
    }

    fn rows(&self, t: TensorId) -> usize {
        self.g.shape(t)[0]
    }

    /// The gradient of `t` for accumulating kernels: created zero-filled on first use.
    fn acc(&mut self, t: TensorId, label: &str) -> TensorId {
        if let Some(&gt) = self.grads.get(&t) {
            return gt;
        }
        let gt = self.fresh(t, "acc");
        self.g.push(Op::Fill(0.0), &[], &[gt], &format!("backward/{label}"));
        self.grads.insert(t, gt);
        gt
    }

    /// A destination for an assigning kernel's contribution to `t` (zero-filled when the kernel
    /// writes only some rows). Call [`commit`](Self::commit) after emitting the kernel.
    fn dest(&mut self, t: TensorId, covers_all: bool, label: &str) -> TensorId {
        let dt = self.fresh(t, "part");
        if !covers_all || self.grads.contains_key(&t) {
            self.g.push(Op::Fill(0.0), &[], &[dt], &format!("backward/{label}"));
        }
        dt
    }

    /// Makes `part` the gradient of `t`, or adds it to the existing one.
    fn commit(&mut self, t: TensorId, part: TensorId, label: &str) {
        let sum = match self.grads.get(&t) {
            None => part,
            Some(&old) => {
                let s = self.fresh(t, "sum");
                self.g.push(Op::Elementwise(Ew::Add), &[old, part], &[s], &format!("backward/{label}"));
                s
            }
        };
        self.grads.insert(t, sum);
    }

    fn grad(&self, t: TensorId) -> TensorId {
        *self.grads.get(&t).unwrap_or_else(|| panic!("autodiff: no gradient for {}", self.g.info(t).name))
    }

    fn rule(&mut self, op: &Op, ins: &[TensorId], outs: &[TensorId]) {
        let label = format!("backward/{}", op.name());
        match op {
            // forward: y = x·Wᵀ + b   =>   dx += dy·W (W frozen: no dW)
            Op::Gemm(g) => {
                assert!(
                    g.act == Activation::None && !g.residual && g.lora_rank == 0 && !g.accumulate,
                    "autodiff: build training graphs with `train` (no fused epilogues)"
                );
                if self.needs[ins[0]] {
                    let dy = self.grad(outs[0]);
                    let dx = self.acc(ins[0], "gemm");
                    self.g.push_partial(Op::GemmDx { gemm: g.clone() }, &[dy, ins[1]], &[dx], &label);
                }
            }
            // forward: t = s·x·Aᵀ; y += t·Bᵀ   =>   dB += dyᵀ·t; dt = s·dy·B; dA += dtᵀ·x; dx += dt·A
            Op::LoraApply(l) => {
                let dy = self.grad(outs[1]);
                let (da, db) = (self.acc(ins[1], "lora"), self.acc(ins[2], "lora"));
                let dt = self.fresh(outs[0], "scratch");
                let mut o = vec![da, db, dt];
                let dx = self.needs[ins[0]];
                if dx {
                    o.push(self.acc(ins[0], "lora"));
                }
                let op = Op::LoraGrads { lora: l.clone(), dx };
                self.g.push_partial(op, &[ins[0], dy, outs[0], ins[1], ins[2]], &o, &label);
            }
            // forward: y = f(x)   =>   dx = f'(x)·dy
            Op::Elementwise(e @ (Ew::Silu | Ew::GeluTanh)) => {
                let dy = self.grad(outs[0]);
                let dx = self.dest(ins[0], true, "act");
                self.g.push(Op::ElementwiseBackward(*e), &[ins[0], dy], &[dx], &label);
                self.commit(ins[0], dx, "act");
            }
            // forward: out = res + gate·branch   =>   d_res = d_out; d_branch = gate·d_out;
            //          d_gate += Σ_rows d_out·branch
            Op::GatedResidual { cols, problems } => self.gated_residual(*cols, problems, ins, outs[0]),
            // forward: y = LN(x)·(1 + scale) + shift   =>   dx (=), d_shift/d_scale (+=)
            Op::LayerNormMod(l) => {
                let dy = self.grad(outs[0]);
                let covered: usize = l.problems.iter().map(|p| p.rows).sum();
                let dx = self.dest(ins[0], covered == self.rows(ins[0]), "norm");
                let d_mod = self.needs[ins[1]];
                let mut o = vec![dx];
                if d_mod {
                    o.push(self.acc(ins[1], "norm"));
                    let pr: Vec<(usize, usize)> = l.problems.iter().map(|p| (p.rows, p.rows_per_sample)).collect();
                    o.push(self.scratch_rows(&pr, l.cols));
                }
                self.g.push_partial(
                    Op::LayerNormModBackward { op: l.clone(), d_mod },
                    &[ins[0], ins[1], outs[1], outs[2], dy],
                    &o,
                    &label,
                );
                if self.needs[ins[0]] {
                    self.commit(ins[0], dx, "norm");
                }
            }
            // forward: q, k, v = rope(rmsnorm(split(qkv)))   =>   d_qkv (=)
            Op::QkvPost { shape, layout } => {
                let n_in = ins.len() - 2;
                let (dq, dk, dv) = (self.grad(outs[0]), self.grad(outs[1]), self.grad(outs[2]));
                let dests: Vec<TensorId> = ins[..n_in].iter().map(|&t| self.dest(t, true, "qkv")).collect();
                let mut i = ins.to_vec();
                i.extend([outs[3], dq, dk, dv]);
                self.g.push(Op::QkvPostBackward { shape: *shape, layout: *layout }, &i, &dests, &label);
                for (&t, &dt) in ins[..n_in].iter().zip(&dests) {
                    self.commit(t, dt, "qkv");
                }
            }
            // forward: O = softmax(QKᵀ/√d)V   =>   dQ, dK, dV (=) from the saved lse
            Op::Attention { shape, masked } => {
                let d_o = self.grad(outs[0]);
                let dests: Vec<TensorId> = ins[..3].iter().map(|&t| self.dest(t, true, "attention")).collect();
                let delta = self.fresh(outs[1], "delta");
                let mut i = ins.to_vec();
                i.extend([outs[0], outs[1], d_o]);
                let mut o = dests.clone();
                o.push(delta);
                self.g.push(Op::AttentionBackward { shape: *shape, masked: *masked }, &i, &o, &label);
                for (&t, &dt) in ins[..3].iter().zip(&dests) {
                    self.commit(t, dt, "attention");
                }
            }
            other => panic!("autodiff: no backward rule for {} with a trainable input upstream", other.name()),
        }
    }

    fn gated_residual(&mut self, cols: usize, problems: &[GateProblem], ins: &[TensorId], out: TensorId) {
        let label = "backward/gated_residual";
        let (res, branch, modv) = (ins[0], ins[1], ins[2]);
        let d_out = self.grad(out);
        // The identity path once per output tensor (its row-range nodes share one res).
        if self.needs[res] && self.residual_done.insert(out) {
            match self.grads.get(&res) {
                // d_out is not written after this point: share it.
                None => {
                    self.grads.insert(res, d_out);
                }
                Some(_) => self.commit(res, d_out, "gated_residual"),
            }
        }
        let covered: usize = problems.iter().map(|p| p.rows).sum();
        let d_branch = self.dest(branch, covered == self.rows(branch), "gated_residual");
        let d_gate = self.needs[modv];
        let mut o = vec![d_branch];
        if d_gate {
            o.push(self.acc(modv, "gated_residual"));
            let pr: Vec<(usize, usize)> = problems.iter().map(|p| (p.rows, p.rows_per_sample)).collect();
            o.push(self.scratch_rows(&pr, cols));
        }
        self.g.push_partial(
            Op::GatedResidualBackward { cols, problems: problems.to_vec(), d_gate },
            &[d_out, branch, modv],
            &o,
            label,
        );
        if self.needs[branch] {
            self.commit(branch, d_branch, "gated_residual");
        }
    }

    /// Scratch for the per-sample row reductions (`kernels::norm::reduce_rows`): one partial row per
    /// chunk of at most 32 rows that crosses neither a sample nor the zero_cond_t split, so at
    /// most ceil(rows/32) + 2 per sample, over `cols` columns. `problems`: (rows, rows per sample).
    fn scratch_rows(&mut self, problems: &[(usize, usize)], cols: usize) -> TensorId {
        let chunks: usize = problems.iter().map(|&(rows, rps)| rows.div_ceil(32) + 2 * rows / rps).sum();
        self.g.activation("reduce scratch", &[chunks * cols], DType::F32)
    }
}
