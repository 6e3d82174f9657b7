//! The graph IR: tensors, typed ops, a builder. No wgpu types: a graph can be built, planned for
//! memory and counted for dispatches on a machine without a GPU (`wgdit bench dispatches --preset`).
//!
//! A graph is a list of nodes in execution order (SSA: every node writes fresh tensors). Each node
//! carries a [`Label`] (layer index + op name) that every dispatch it lowers to inherits, so the
//! executor can count dispatches per op and per layer. Nodes may belong to a checkpoint
//! [`Segment`]: in a training graph the segment's internal activations are dropped after the
//! forward and recomputed before its backward (see [`recompute`]).

pub mod autodiff;
pub mod ops;
mod ops_spec;
pub mod recompute;

pub use ops::Op;

use crate::dtype::DType;

pub type TensorId = usize;

/// Where a tensor's storage comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// Written by the caller before a run (latents, text embeddings, timesteps).
    Input,
    /// Weights: bound from outside, never planned, never written by the graph.
    Param,
    /// Produced by a node; storage assigned by the planner.
    Activation,
    /// Bound from outside like a param, but written by the graph, which only adds to it
    /// (parameter gradients accumulating over micro-batches).
    Accumulator,
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub kind: TensorKind,
}

impl TensorInfo {
    pub fn bytes(&self) -> u64 {
        self.dtype.bytes(self.shape.iter().product::<usize>()) as u64
    }
}

/// What a dispatch is accounted under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    /// Block index, or `None` for ops outside the block stack.
    pub layer: Option<usize>,
    /// Accounting category, e.g. "qkv", "attention", "ffn", "modulation".
    pub op: String,
}

#[derive(Clone, Debug)]
pub struct Node {
    /// The op with its operands.
    pub op: Op,
    pub label: Label,
    /// The checkpoint segment this forward node belongs to, if any.
    pub segment: Option<usize>,
}

/// A contiguous run of forward nodes that may be recomputed instead of stored.
#[derive(Clone, Debug)]
pub struct Segment {
    pub name: String,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub tensors: Vec<TensorInfo>,
    pub nodes: Vec<Node>,
    /// Tensors the caller reads after a run: they live to the end of the plan.
    pub outputs: Vec<TensorId>,
    pub segments: Vec<Segment>,
    layer: Option<usize>,
    segment: Option<usize>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    fn tensor(&mut self, name: &str, shape: &[usize], dtype: DType, kind: TensorKind) -> TensorId {
        self.tensors.push(TensorInfo { name: name.to_string(), shape: shape.to_vec(), dtype, kind });
        self.tensors.len() - 1
    }
    /// A tensor the caller writes before each run.
    pub fn input(&mut self, name: &str, shape: &[usize], dtype: DType) -> TensorId {
        self.tensor(name, shape, dtype, TensorKind::Input)
    }
    /// A weight bound from outside the plan.
    pub fn param(&mut self, name: &str, shape: &[usize], dtype: DType) -> TensorId {
        self.tensor(name, shape, dtype, TensorKind::Param)
    }
    /// An external buffer the graph adds to (a parameter gradient).
    pub fn accumulator(&mut self, name: &str, shape: &[usize], dtype: DType) -> TensorId {
        self.tensor(name, shape, dtype, TensorKind::Accumulator)
    }
    /// A fresh activation, to be written by the next node added.
    pub fn activation(&mut self, name: &str, shape: &[usize], dtype: DType) -> TensorId {
        self.tensor(name, shape, dtype, TensorKind::Activation)
    }
    /// Marks a tensor as read by the caller after the run.
    pub fn mark_output(&mut self, t: TensorId) {
        if !self.outputs.contains(&t) {
            self.outputs.push(t);
        }
    }
    pub fn info(&self, t: TensorId) -> &TensorInfo {
        &self.tensors[t]
    }
    pub fn shape(&self, t: TensorId) -> &[usize] {
        &self.tensors[t].shape
    }

    /// Labels the nodes added from now on with this block index (`None`: outside the blocks).
    pub fn set_layer(&mut self, layer: Option<usize>) {
        self.layer = layer;
    }
    /// Opens a checkpoint segment: nodes added until [`end_segment`](Self::end_segment) belong to it.
    pub fn begin_segment(&mut self, name: &str) {
        assert!(self.segment.is_none(), "segments do not nest");
        self.segments.push(Segment { name: name.to_string() });
        self.segment = Some(self.segments.len() - 1);
    }
    pub fn end_segment(&mut self) {
        self.segment = None;
    }

    /// Appends a node that writes fresh tensors. Its shape contract is checked by `op.check`.
    pub fn push(&mut self, op: Op, label: &str) {
        op.visit(
            |_| {},
            |o| assert!(self.producer(o).is_none(), "{label}: tensor {} written twice", self.tensors[o].name),
        );
        self.push_partial(op, label);
    }

    /// Appends a node that writes a part (a row range) of its outputs; other nodes write the rest
    /// (e.g. the text and image rows of one joint tensor in the eager layout).
    pub fn push_partial(&mut self, op: Op, label: &str) {
        op.check(self);
        op.visit(
            |i| assert!(i < self.tensors.len(), "{label}: unknown input tensor {i}"),
            |o| {
                let t = &self.tensors[o];
                assert!(
                    matches!(t.kind, TensorKind::Activation | TensorKind::Accumulator),
                    "{label}: output {} is not an activation or accumulator",
                    t.name
                );
            },
        );
        let label = Label { layer: self.layer, op: label.to_string() };
        self.nodes.push(Node { op, label, segment: self.segment });
    }

    /// The node that writes `t`, if any.
    pub fn producer(&self, t: TensorId) -> Option<usize> {
        self.nodes.iter().position(|n| n.op.writes(t))
    }

    /// Dispatches per forward run, as declared by the ops (no GPU needed).
    pub fn dispatch_count(&self) -> usize {
        self.nodes.iter().map(|n| n.op.dispatches()).sum()
    }
}
