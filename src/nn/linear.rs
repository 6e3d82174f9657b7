//! Linear layers on the graph: `y = act(x·Wᵀ + b)` as grouped GEMMs whose weights are
//! checkpoint tensors in their stored dtype (several modules stacked along N, several problems per
//! dispatch), with runtime LoRAs on the GEMM's side path and trainable LoRAs for training graphs.
//! Model-agnostic: a model names its modules and says which stacks form one merged module.

use crate::dtype::DType;
use crate::graph::ops::*;
use crate::graph::{Graph, TensorId};
use std::collections::HashMap;

/// How a graph param is assembled from checkpoint tensors (named in the standard diffusers
/// layout; the loader resolves them in merged checkpoints too): the parts' rows stacked in order.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSource {
    pub parts: Vec<String>,
    /// `None`: keep the stored dtype (weights); `Some(F32)`: widen (biases, norm weights: small).
    pub dtype: Option<DType>,
}

/// One low-rank update of a module: ΔW = B · A with the scale folded into A.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPart {
    /// [rank, in], already multiplied by alpha/rank × strength.
    pub a: Vec<f32>,
    /// [out, rank].
    pub b: Vec<f32>,
    pub rank: usize,
}

/// Where runtime LoRAs come from: the parts applied to a module (by its standard path).
pub trait LoraParts {
    fn parts(&self, module: &str) -> &[LoraPart];
}

/// Trainable LoRAs: standard module paths, rank, and scale = alpha / rank.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainLora {
    pub modules: Vec<String>,
    pub rank: usize,
    pub scale: f32,
    /// Each block is a checkpoint segment: recomputed before its backward instead of stored.
    pub checkpointing: bool,
}

/// The params, host-made LoRA factors and trainable LoRAs of the linear layers of one graph.
pub struct Linears<'a> {
    /// Every param and how to build it from the checkpoint.
    pub params: Vec<(TensorId, ParamSource)>,
    /// Params made on the host (runtime LoRA factors), f32.
    pub host_params: Vec<(TensorId, Vec<f32>)>,
    /// Training graphs: (module, A [rank, in], B [out, rank]) of every trainable LoRA.
    pub trainable: Vec<(String, TensorId, TensorId)>,
    wdtype: &'a dyn Fn(&str) -> DType,
    lora: Option<&'a dyn LoraParts>,
    train: Option<&'a TrainLora>,
    /// Output rows of every Linear module (for the stacked-module LoRA path).
    out_rows: HashMap<String, usize>,
    /// The merged module a stack of modules forms (`to_q, to_k, to_v` → `to_qkv`), if any.
    merged: fn(&[String]) -> Option<String>,
}

impl<'a> Linears<'a> {
    /// `wdtype` gives the stored dtype of a checkpoint tensor; `out_rows` the output rows of
    /// every Linear module.
    pub fn new(
        wdtype: &'a dyn Fn(&str) -> DType,
        lora: Option<&'a dyn LoraParts>,
        train: Option<&'a TrainLora>,
        out_rows: HashMap<String, usize>,
        merged: fn(&[String]) -> Option<String>,
    ) -> Linears<'a> {
        Linears {
            params: Vec::new(),
            host_params: Vec::new(),
            trainable: Vec::new(),
            wdtype,
            lora,
            train,
            out_rows,
            merged,
        }
    }

    /// Whether this is a training graph (no fused epilogues, trainable LoRAs).
    pub fn training(&self) -> Option<&'a TrainLora> {
        self.train
    }

    /// The stored dtype of checkpoint tensor `name`.
    pub fn stored_dtype(&self, name: &str) -> DType {
        (self.wdtype)(name)
    }

    pub fn param(&mut self, g: &mut Graph, shape: &[usize], parts: Vec<String>, dtype: Option<DType>) -> TensorId {
        let dt = dtype.unwrap_or_else(|| (self.wdtype)(&parts[0]));
        debug_assert!(
            dtype.is_some() || parts.iter().all(|p| (self.wdtype)(p) == dt),
            "{}: a stacked weight mixes dtypes",
            parts[0]
        );
        let t = g.param(&parts.join("+"), shape, dt);
        self.params.push((t, ParamSource { parts, dtype }));
        t
    }
    /// A weight [n, k] stacked from `modules`' `.weight` (rows in order), in its stored dtype.
    pub fn weight(&mut self, g: &mut Graph, modules: &[String], n: usize, k: usize) -> TensorId {
        self.param(g, &[n, k], modules.iter().map(|m| format!("{m}.weight")).collect(), None)
    }
    /// The biases of `modules` stacked, widened to f32.
    pub fn bias(&mut self, g: &mut Graph, modules: &[String], n: usize) -> TensorId {
        self.param(g, &[n], modules.iter().map(|m| format!("{m}.bias")).collect(), Some(DType::F32))
    }
    /// A one-problem GEMM `y = act(x·Wᵀ + b)` over all rows of x ([rows, k]) into a new [rows, n].
    pub fn linear(
        &mut self,
        g: &mut Graph,
        x: TensorId,
        module: &str,
        n: usize,
        act: Activation,
        label: &str,
    ) -> TensorId {
        let (rows, k) = (g.shape(x)[0], g.shape(x)[1]);
        let y = g.activation(module, &[rows, n], DType::F32);
        let problems = vec![GemmProblem::rows(0, rows)];
        let modules = vec![vec![module.to_string()]];
        self.emit(g, Emit { x, y, n, k, problems, modules, act, gated: None, label, y_col0: 0 });
        y
    }
}

/// One GEMM dispatch to emit: problem p computes `modules[p]` (stacked along N, `n` rows in all)
/// into columns `y_col0..y_col0 + n` of y.
#[derive(Clone)]
pub struct Emit<'l> {
    pub x: TensorId,
    pub y: TensorId,
    pub n: usize,
    pub k: usize,
    pub problems: Vec<GemmProblem>,
    pub modules: Vec<Vec<String>>,
    pub act: Activation,
    /// (residual, gate source) of a gated residual epilogue.
    pub gated: Option<(TensorId, TensorId)>,
    pub label: &'l str,
    pub y_col0: usize,
}

/// Stacks of at most this many modules per problem (q, k, v) take their LoRAs through the GEMM's
/// side path (one dense B per problem); longer stacks (the fused modulation chunks) get one
/// accumulating up-projection per LoRA'd module instead, so B stays the size of the LoRA.
const MAX_EPILOGUE_STACK: usize = 3;

impl<'a> Linears<'a> {
    /// Emits the weights, the LoRA side path of any LoRA'd module, and the GEMM (a partial write:
    /// the problems cover only their rows of y). A stack whose modules are stored in different
    /// dtypes (GGUF files keep some `to_v` in Q6_K next to Q4_K `to_q`, `to_k`; `norm_out` in
    /// F16 next to quantized modulations) is emitted as one GEMM per run of equal dtypes, each
    /// on its own columns: one dispatch reads one weight dtype, and re-encoding a quantized
    /// tensor into another format would change its values.
    pub fn emit(&mut self, g: &mut Graph, e: Emit) {
        match self.dtype_runs(&e) {
            None => self.emit_uniform(g, e, true),
            Some(runs) => {
                for run in runs {
                    self.emit_uniform(g, run, false);
                }
                if self.train.is_some() {
                    self.train_loras(g, &e);
                }
            }
        }
    }

    /// The single-dtype GEMMs a mixed-dtype stack splits into (`None` when it has one dtype):
    /// per problem, each run of consecutive modules of one dtype on its columns of y.
    fn dtype_runs<'l>(&self, e: &Emit<'l>) -> Option<Vec<Emit<'l>>> {
        let dtype = |m: &String| self.stored_dtype(&format!("{m}.weight"));
        let first = dtype(&e.modules[0][0]);
        if e.modules.iter().flatten().all(|m| dtype(m) == first) {
            return None;
        }
        let mut runs = Vec::new();
        for (pr, ms) in e.problems.iter().zip(&e.modules) {
            let mut col = 0;
            for run in ms.chunk_by(|a, b| dtype(a) == dtype(b)) {
                let n: usize = if run.len() == ms.len() { e.n } else { run.iter().map(|m| self.out_rows[m]).sum() };
                assert!(e.gated.is_none() || n == e.n, "{}: a gated epilogue over a mixed-dtype stack", run[0]);
                let problems = vec![GemmProblem { w_offset: 0, b_offset: 0, lora_b_offset: 0, ..pr.clone() }];
                let modules = vec![run.to_vec()];
                runs.push(Emit { n, problems, modules, y_col0: e.y_col0 + col, ..e.clone() });
                col += n;
            }
        }
        Some(runs)
    }

    /// [`emit`](Self::emit) for a stack of one dtype; `train_loras`: add the trainable LoRAs
    /// (a split stack adds them once over the whole stack instead).
    fn emit_uniform(&mut self, g: &mut Graph, mut e: Emit, train_loras: bool) {
        if self.train.is_some() {
            return self.emit_train(g, e, train_loras);
        }
        let names: Vec<String> = e.modules.concat();
        let (w, b) = self.stacked_weights(g, &mut e);
        let has_lora = names.iter().any(|m| !self.lora_parts(m).is_empty());
        let epilogue = has_lora && e.modules.iter().all(|m| m.len() <= MAX_EPILOGUE_STACK);
        let gated = e.gated.map(|(res, gate)| Gated { res, gate });
        let lora = epilogue.then(|| {
            let (rank, t, b) = self.lora_side_path(g, &e);
            for (p, pr) in e.problems.iter_mut().enumerate() {
                pr.lora_b_offset = p * e.n * rank;
            }
            SideLora { t, b, rank }
        });
        let gemm =
            GemmOp { n: e.n, k: e.k, problems: e.problems.clone(), act: e.act, y_col0: e.y_col0, accumulate: false };
        g.push_partial(Op::Gemm { gemm, x: e.x, w, bias: Some(b), gated, lora, y: e.y }, e.label);
        if has_lora && !epilogue {
            self.lora_accumulate(g, &e);
        }
    }

    /// The weight and bias params stacking every problem's modules (problem p's block at
    /// p·n·k / p·n), with the problems' offsets set to match.
    fn stacked_weights(&mut self, g: &mut Graph, e: &mut Emit) -> (TensorId, TensorId) {
        let names: Vec<String> = e.modules.concat();
        let w = self.weight(g, &names, e.n * e.problems.len(), e.k);
        let b = self.bias(g, &names, e.n * e.problems.len());
        for (p, pr) in e.problems.iter_mut().enumerate() {
            pr.w_offset = p * e.n * e.k;
            pr.b_offset = p * e.n;
        }
        (w, b)
    }

    fn lora_parts(&self, module: &str) -> &'a [LoraPart] {
        self.lora.map_or(&[], |l| l.parts(module))
    }

    pub fn host_param(&mut self, g: &mut Graph, name: &str, shape: &[usize], data: Vec<f32>) -> TensorId {
        let t = g.param(name, shape, DType::F32);
        self.host_params.push((t, data));
        t
    }

    /// The LoRA side path of a GEMM: per problem, A = the module parts' A stacked (zero rows up
    /// to the common rank R) and B = their B placed at the module's rows and the part's columns.
    /// Emits t = x·Aᵀ (one dispatch) and returns (R, t, B).
    fn lora_side_path(&mut self, g: &mut Graph, e: &Emit) -> (usize, TensorId, TensorId) {
        let ranks: Vec<usize> =
            e.modules.iter().map(|ms| ms.iter().flat_map(|m| self.lora_parts(m)).map(|p| p.rank).sum()).collect();
        let rank = ranks.iter().copied().max().unwrap_or(0);
        let (n, k, pc) = (e.n, e.k, e.problems.len());
        let (mut a, mut bm) = (vec![0f32; pc * rank * k], vec![0f32; pc * n * rank]);
        for (p, ms) in e.modules.iter().enumerate() {
            let per = n / ms.len();
            let mut col = 0;
            for (mi, m) in ms.iter().enumerate() {
                for part in self.lora_parts(m) {
                    let a0 = (p * rank + col) * k;
                    a[a0..a0 + part.rank * k].copy_from_slice(&part.a);
                    for row in 0..per {
                        let dst = p * n * rank + (mi * per + row) * rank + col;
                        bm[dst..dst + part.rank].copy_from_slice(&part.b[row * part.rank..(row + 1) * part.rank]);
                    }
                    col += part.rank;
                }
            }
        }
        let label = e.modules.concat().join("+");
        let at = self.host_param(g, &format!("lora_A[{label}]"), &[pc * rank, k], a);
        let bt = self.host_param(g, &format!("lora_B[{label}]"), &[pc * n, rank], bm);
        let x_rows = g.shape(e.x)[0];
        let t = g.activation("lora_t", &[x_rows, rank], DType::F32);
        let problems = e.problems.iter().enumerate().map(|(p, pr)| (pr.row0, pr.rows, p * rank * k)).collect();
        g.push(Op::LoraDown { k, rank, problems, x: e.x, a: at, t }, "lora");
        (rank, t, bt)
    }

    /// LoRAs of a long module stack: per LoRA'd module, t = x·Aᵀ, then y[:, col..] += t·Bᵀ.
    fn lora_accumulate(&mut self, g: &mut Graph, e: &Emit) {
        assert_eq!(e.problems.len(), 1, "stacked-module LoRA path takes one problem");
        let pr = e.problems[0].clone();
        let mut col = e.y_col0;
        for m in e.modules.concat() {
            let rows = self.out_rows[&m];
            let parts = self.lora_parts(&m);
            if !parts.is_empty() {
                let rank: usize = parts.iter().map(|p| p.rank).sum();
                let a: Vec<f32> = parts.iter().flat_map(|p| p.a.iter().copied()).collect();
                let mut bm = vec![0f32; rows * rank];
                let mut c0 = 0;
                for part in parts {
                    for row in 0..rows {
                        bm[row * rank + c0..row * rank + c0 + part.rank]
                            .copy_from_slice(&part.b[row * part.rank..(row + 1) * part.rank]);
                    }
                    c0 += part.rank;
                }
                let at = self.host_param(g, &format!("lora_A[{m}]"), &[rank, e.k], a);
                let bt = self.host_param(g, &format!("lora_B[{m}]"), &[rows, rank], bm);
                let t = g.activation("lora_t", &[g.shape(e.x)[0], rank], DType::F32);
                let problems = vec![(pr.row0, pr.rows, 0)];
                g.push(Op::LoraDown { k: e.k, rank, problems, x: e.x, a: at, t }, "lora");
                let up = GemmProblem { w_offset: 0, b_offset: 0, gate: None, lora_b_offset: 0, ..pr.clone() };
                let gemm = GemmOp {
                    n: rows,
                    k: rank,
                    problems: vec![up],
                    act: Activation::None,
                    y_col0: col,
                    accumulate: true,
                };
                let op = Op::Gemm { gemm, x: t, w: bt, bias: None, gated: None, lora: None, y: e.y };
                g.push_partial(op, "lora");
            }
            col += rows;
        }
    }

    /// Training GEMM: the plain GEMM, then (`with_loras`) one trainable LoRA (down +
    /// accumulating up) per targeted module on its columns and its problem's rows.
    fn emit_train(&mut self, g: &mut Graph, mut e: Emit, with_loras: bool) {
        assert!(e.act == Activation::None && e.gated.is_none(), "training graphs do not fuse epilogues");
        let (w, b) = self.stacked_weights(g, &mut e);
        let gemm = GemmOp {
            n: e.n,
            k: e.k,
            problems: e.problems.clone(),
            act: Activation::None,
            y_col0: e.y_col0,
            accumulate: false,
        };
        g.push_partial(Op::Gemm { gemm, x: e.x, w, bias: Some(b), gated: None, lora: None, y: e.y }, e.label);
        if with_loras {
            self.train_loras(g, &e);
        }
    }

    /// The trainable LoRAs of the modules of `e`, each on its columns and its problem's rows.
    fn train_loras(&mut self, g: &mut Graph, e: &Emit) {
        let train = self.train.expect("cannot fail: training graph");
        let x_rows = g.shape(e.x)[0];
        for (pr, ms) in e.problems.iter().zip(&e.modules) {
            // A LoRA on a merged q/k/v module (`--targets to_qkv,...`) spans the stacked q, k, v.
            let units: Vec<(String, usize)> = match (self.merged)(ms).filter(|m| train.modules.contains(m)) {
                Some(merged) => vec![(merged, ms.iter().map(|m| self.out_rows[m]).sum())],
                None => ms.iter().map(|m| (m.clone(), self.out_rows[m])).collect(),
            };
            let mut col = e.y_col0;
            for (m, rows) in units {
                if train.modules.contains(&m) {
                    let r = train.rank;
                    let a = g.param(&format!("{m}.lora_A"), &[r, e.k], DType::F32);
                    let bm = g.param(&format!("{m}.lora_B"), &[rows, r], DType::F32);
                    self.trainable.push((m.clone(), a, bm));
                    let t = g.activation("lora_t", &[x_rows, r], DType::F32);
                    let l = LoraApplyOp {
                        k: e.k,
                        n: rows,
                        rank: r,
                        scale: train.scale,
                        y_col0: col,
                        problems: vec![(pr.row0, pr.rows)],
                    };
                    g.push_partial(Op::LoraApply { lora: l, x: e.x, a, b: bm, t, y: e.y }, "lora");
                }
                col += rows;
            }
        }
    }
}
