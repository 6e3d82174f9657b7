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
        if n.op.inputs().iter().any(|&t| needs[t]) {
            for o in n.op.outputs() {
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
        if !n.op.outputs().iter().any(|o| d.grads.contains_key(o)) || !n.op.inputs().iter().any(|&t| d.needs[t]) {
            continue;
        }
        d.g.set_layer(n.label.layer);
        d.rule(&n.op);
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
        self.g.push(Op::Fill { value: 0.0, y: gt }, &format!("backward/{label}"));
        self.grads.insert(t, gt);
        gt
    }

    /// A destination for an assigning kernel's contribution to `t` (zero-filled when the kernel
    /// writes only some rows). Call [`commit`](Self::commit) after emitting the kernel.
    fn dest(&mut self, t: TensorId, covers_all: bool, label: &str) -> TensorId {
        let dt = self.fresh(t, "part");
        if !covers_all || self.grads.contains_key(&t) {
            self.g.push(Op::Fill { value: 0.0, y: dt }, &format!("backward/{label}"));
        }
        dt
    }

    /// Makes `part` the gradient of `t`, or adds it to the existing one.
    fn commit(&mut self, t: TensorId, part: TensorId, label: &str) {
        let sum = match self.grads.get(&t) {
            None => part,
            Some(&old) => {
                let s = self.fresh(t, "sum");
                self.g.push(Op::Elementwise { f: Ew::Add, a: old, b: Some(part), y: s }, &format!("backward/{label}"));
                s
            }
        };
        self.grads.insert(t, sum);
    }

    fn grad(&self, t: TensorId) -> TensorId {
        *self.grads.get(&t).unwrap_or_else(|| panic!("autodiff: no gradient for {}", self.g.info(t).name))
    }

    fn rule(&mut self, op: &Op) {
        let label = format!("backward/{}", op.name());
        match op {
            // forward: y = x·Wᵀ + b   =>   dx += dy·W (W frozen: no dW)
            Op::Gemm { gemm, x, w, bias: _, gated, lora, y } => {
                assert!(
                    gemm.act == Activation::None && gated.is_none() && lora.is_none() && !gemm.accumulate,
                    "autodiff: build training graphs with `train` (no fused epilogues)"
                );
                if self.needs[*x] {
                    let dy = self.grad(*y);
                    let dx = self.acc(*x, "gemm");
                    self.g.push_partial(Op::GemmDx { gemm: gemm.clone(), dy, w: *w, dx }, &label);
                }
            }
            // forward: t = s·x·Aᵀ; y += t·Bᵀ   =>   dB += dyᵀ·t; dt = s·dy·B; dA += dtᵀ·x; dx += dt·A
            Op::LoraApply { lora, x, a, b, t, y } => {
                let dy = self.grad(*y);
                let (da, db) = (self.acc(*a, "lora"), self.acc(*b, "lora"));
                let dt = self.fresh(*t, "scratch");
                let dx = self.needs[*x].then(|| self.acc(*x, "lora"));
                let op = Op::LoraGrads { lora: lora.clone(), x: *x, dy, t: *t, a: *a, b: *b, da, db, dt, dx };
                self.g.push_partial(op, &label);
            }
            // forward: y = f(x)   =>   dx = f'(x)·dy
            Op::Elementwise { f: f @ (Ew::Silu | Ew::GeluTanh | Ew::GeluErf), a: x, b: None, y } => {
                let dy = self.grad(*y);
                let dx = self.dest(*x, true, "act");
                self.g.push(Op::ElementwiseBackward { f: *f, x: *x, dy, dx }, &label);
                self.commit(*x, dx, "act");
            }
            // forward: out = res + gate·branch   =>   d_res = d_out; d_branch = gate·d_out;
            //          d_gate += Σ_rows d_out·branch
            Op::GatedResidual { cols, problems, res, branch, modulation, out } => {
                self.gated_residual(*cols, problems, *res, *branch, *modulation, *out)
            }
            // forward: y = LN(x)·(1 + scale) + shift   =>   dx (=), d_shift/d_scale (+=)
            Op::LayerNormMod { norm, x, modulation, y, mean, rstd } => {
                let dy = self.grad(*y);
                let covered: usize = norm.problems.iter().map(|p| p.rows).sum();
                let dx = self.dest(*x, covered == self.rows(*x), "norm");
                let d_mod = self.needs[*modulation].then(|| {
                    let pr: Vec<(usize, usize)> = norm.problems.iter().map(|p| (p.rows, p.rows_per_sample)).collect();
                    ReduceInto { acc: self.acc(*modulation, "norm"), scratch: self.scratch_rows(&pr, norm.cols) }
                });
                let op = Op::LayerNormModBackward {
                    norm: norm.clone(),
                    x: *x,
                    modulation: *modulation,
                    mean: *mean,
                    rstd: *rstd,
                    dy,
                    dx,
                    d_mod,
                };
                self.g.push_partial(op, &label);
                if self.needs[*x] {
                    self.commit(*x, dx, "norm");
                }
            }
            // forward: q, k, v = rope(rmsnorm(split(qkv)))   =>   d_qkv (=)
            Op::QkvPost { shape, layout, qkv, norm_weights, rope, q, k, v, saved } => {
                let (dq, dk, dv) = (self.grad(*q), self.grad(*k), self.grad(*v));
                let d_qkv: Vec<TensorId> = qkv.iter().map(|&t| self.dest(t, true, "qkv")).collect();
                let op = Op::QkvPostBackward {
                    shape: *shape,
                    layout: *layout,
                    qkv: qkv.clone(),
                    norm_weights: *norm_weights,
                    rope: *rope,
                    saved: *saved,
                    dq,
                    dk,
                    dv,
                    d_qkv: d_qkv.clone(),
                };
                self.g.push(op, &label);
                for (&t, &dt) in qkv.iter().zip(&d_qkv) {
                    self.commit(t, dt, "qkv");
                }
            }
            // forward: O = softmax(QKᵀ/√d)V   =>   dQ, dK, dV (=) from the saved lse
            Op::Attention { shape, opts, q, k, v, mask, segments, o, lse } => {
                assert!(
                    opts.kv_heads == shape.heads,
                    "autodiff: attention backward does not implement GQA (kv_heads {} of {} heads)",
                    opts.kv_heads,
                    shape.heads
                );
                assert!(!opts.causal, "autodiff: attention backward does not implement the causal option");
                assert!(segments.is_none(), "autodiff: attention backward does not implement segments");
                let d_o = self.grad(*o);
                let [dq, dk, dv] = [*q, *k, *v].map(|t| self.dest(t, true, "attention"));
                let delta = self.fresh(*lse, "delta");
                let op = Op::AttentionBackward {
                    shape: *shape,
                    q: *q,
                    k: *k,
                    v: *v,
                    mask: *mask,
                    o: *o,
                    lse: *lse,
                    d_o,
                    dq,
                    dk,
                    dv,
                    delta,
                };
                self.g.push(op, &label);
                for (t, dt) in [(*q, dq), (*k, dk), (*v, dv)] {
                    self.commit(t, dt, "attention");
                }
            }
            other => panic!("autodiff: no backward rule for {} with a trainable input upstream", other.name()),
        }
    }

    fn gated_residual(
        &mut self,
        cols: usize,
        problems: &[GateProblem],
        res: TensorId,
        branch: TensorId,
        modulation: TensorId,
        out: TensorId,
    ) {
        let label = "backward/gated_residual";
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
        let d_gate = self.needs[modulation].then(|| {
            let pr: Vec<(usize, usize)> = problems.iter().map(|p| (p.rows, p.rows_per_sample)).collect();
            ReduceInto { acc: self.acc(modulation, "gated_residual"), scratch: self.scratch_rows(&pr, cols) }
        });
        let op = Op::GatedResidualBackward {
            cols,
            problems: problems.to_vec(),
            d_out,
            branch,
            modulation,
            d_branch,
            d_gate,
        };
        self.g.push_partial(op, label);
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
