//! The executor: graph → plan → runs.
//!
//! `Plan::new` assigns activation storage by liveness ([`memory`]), allocates one GPU buffer per
//! slot, lowers every node to kernel launches ([`lower`]) and binds them once: bind groups and
//! uniform buffers are made at plan time and reused by every run (`Bound`). `Plan::run` then
//! encodes the dispatches (`Gpu::submit`: in chunks of `gpu::SUBMIT_CHUNK` submissions, so the
//! GPU starts while the rest is encoded); between runs the caller only rewrites inputs (latents,
//! timesteps) with `write_input`, so re-running costs no pipeline or bind-group work.

pub mod lower;
pub mod memory;
pub mod report;

pub use memory::MemoryPlan;
pub use report::DispatchReport;

use crate::error::{Error, Result};
use crate::gpu::{Bound, Buffer, Gpu};
use crate::graph::{Graph, Label, TensorId, TensorKind};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Plan {
    gpu: Arc<Gpu>,
    tensors: Vec<Tensor>,
    kinds: Vec<TensorKind>,
    dispatches: Vec<Bound>,
    labels: Vec<Label>,
    /// Index of the first dispatch of each node (plus the total at the end).
    node_starts: Vec<usize>,
    slots: Vec<Buffer>,
    pub memory: MemoryPlan,
}

impl Plan {
    /// Plans and binds `g`. `params` maps every param tensor of the graph to its uploaded weight.
    pub fn new(gpu: &Arc<Gpu>, g: &Graph, params: &HashMap<TensorId, Tensor>) -> Result<Plan> {
        Plan::with_memory(gpu, g, params, memory::plan(g))
    }

    /// [`new`](Self::new) with the memory plan of `g` already made (`memory::plan(g)`), for
    /// callers that decide from it first (weight streaming).
    pub fn with_memory(
        gpu: &Arc<Gpu>,
        g: &Graph,
        params: &HashMap<TensorId, Tensor>,
        memory: MemoryPlan,
    ) -> Result<Plan> {
        check_fits(gpu, g, &memory, params)?;
        let slots = memory
            .slot_bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| gpu.buffer(b, &format!("slot {i}")))
            .collect::<Result<Vec<_>>>()?;
        let mut tensors = Vec::with_capacity(g.tensors.len());
        for (t, info) in g.tensors.iter().enumerate() {
            let tensor = match (info.kind, memory.slot_of[t]) {
                (TensorKind::Param | TensorKind::Accumulator, _) => bind_param(params, t, info)?,
                (_, Some(s)) => Tensor { buffer: slots[s].clone(), shape: info.shape.clone(), dtype: info.dtype },
                // Written by nobody and read by nobody: give it a private buffer.
                (_, None) => Tensor::zeros(gpu, &info.shape, info.dtype, &info.name)?,
            };
            tensors.push(tensor);
        }
        let mut dispatches = Vec::new();
        let mut labels = Vec::new();
        let mut node_starts = Vec::with_capacity(g.nodes.len() + 1);
        for n in &g.nodes {
            node_starts.push(dispatches.len());
            let launches = lower::lower(gpu, &n.op, &tensors)?;
            assert_eq!(
                launches.len(),
                n.op.dispatches(),
                "{}: lowering disagrees with the declared dispatch count",
                n.label.op
            );
            for l in &launches {
                dispatches.push(gpu.bind(l)?);
                labels.push(n.label.clone());
            }
        }
        node_starts.push(dispatches.len());
        let kinds = g.tensors.iter().map(|t| t.kind).collect();
        Ok(Plan { gpu: gpu.clone(), tensors, kinds, dispatches, labels, node_starts, slots, memory })
    }

    /// The GPU tensor bound to graph tensor `t`.
    pub fn tensor(&self, t: TensorId) -> &Tensor {
        &self.tensors[t]
    }

    /// Writes an input tensor (f32 data, or encoded to its dtype).
    pub fn write_input(&self, t: TensorId, data: &[f32]) {
        let tensor = &self.tensors[t];
        assert_eq!(self.kinds[t], TensorKind::Input, "write_input on a non-input tensor");
        assert_eq!(data.len(), tensor.numel(), "write_input: {} values for shape {:?}", data.len(), tensor.shape);
        self.gpu.write(&tensor.buffer, 0, &tensor.dtype.encode(data));
    }

    /// Fills every activation slot with NaN (tests use it to prove outputs are fully written).
    pub fn poison_activations(&self) {
        for s in &self.slots {
            self.gpu.poison(s);
        }
    }

    /// Encodes and submits every dispatch (`Gpu::submit`; does not wait).
    pub fn run(&self) -> Result<()> {
        let refs: Vec<&Bound> = self.dispatches.iter().collect();
        self.gpu.submit(&refs)
    }

    /// Encodes and submits the dispatches of graph nodes `nodes` (does not wait): e.g. the
    /// forward of a training graph, then (after the host computed the loss gradient) its backward.
    pub fn run_nodes(&self, nodes: std::ops::Range<usize>) -> Result<()> {
        let range = self.node_starts[nodes.start]..self.node_starts[nodes.end];
        let refs: Vec<&Bound> = self.dispatches[range].iter().collect();
        self.gpu.submit(&refs)
    }

    /// [`run_nodes`](Self::run_nodes), returning the submission to wait for, with GPU
    /// timestamps around it when `stamp` is given (weight streaming: the segments between uploads).
    pub fn submit_nodes(
        &self,
        nodes: std::ops::Range<usize>,
        stamp: Option<(&crate::gpu::Stamps, u32)>,
    ) -> Result<crate::gpu::Submission> {
        let range = self.node_starts[nodes.start]..self.node_starts[nodes.end];
        let refs: Vec<&Bound> = self.dispatches[range].iter().collect();
        self.gpu.submit_stamped(&refs, stamp)
    }

    /// Number of graph nodes.
    pub fn nodes(&self) -> usize {
        self.node_starts.len() - 1
    }

    /// Runs with a timestamp around each dispatch and returns the report with GPU time per label
    /// (counts only when the adapter lacks TIMESTAMP_QUERY).
    pub fn run_timed(&self) -> Result<DispatchReport> {
        let refs: Vec<&Bound> = self.dispatches.iter().collect();
        let times = self.gpu.submit_timed(&refs)?;
        Ok(DispatchReport::new(&self.labels, times.as_deref()))
    }

    /// Reads a tensor back as f32 (waits for the GPU).
    pub fn read(&self, t: TensorId) -> Result<Vec<f32>> {
        self.tensors[t].to_f32(&self.gpu)
    }

    /// Dispatch counts per op and per layer.
    pub fn report(&self) -> DispatchReport {
        DispatchReport::new(&self.labels, None)
    }

    pub fn labels(&self) -> &[Label] {
        &self.labels
    }
}

/// Refuses a plan whose activations (device) or results (host, read back as f32) do not fit,
/// before anything is allocated. Weights are checked where they are uploaded.
fn check_fits(gpu: &Gpu, g: &Graph, memory: &MemoryPlan, params: &HashMap<TensorId, Tensor>) -> Result<()> {
    let need: u64 = memory.slot_bytes.iter().sum();
    let largest = memory.slot_bytes.iter().copied().max().unwrap_or(0);
    let unbound = g.tensors.iter().enumerate().filter(|(t, i)| {
        memory.slot_of[*t].is_none()
            && !matches!(i.kind, TensorKind::Param | TensorKind::Accumulator)
            && !params.contains_key(t)
    });
    let private: u64 = unbound.map(|(_, i)| i.bytes()).sum();
    let what = format!(
        "the activations of a {}-node graph ({} buffers, the largest {})",
        g.nodes.len(),
        memory.slot_bytes.len(),
        crate::budget::human(largest)
    );
    gpu.check_device_fits(
        need + private,
        &what,
        "lower the image size, the batch or the number of text tokens (the VAE: --tiling), or use a GPU with more memory",
    )?;
    let results: u64 = g.outputs.iter().map(|&t| g.tensors[t].shape.iter().product::<usize>() as u64 * 8).sum();
    crate::budget::check_host(results, "reading the results back to the host", "lower the image size or the batch")
}

fn bind_param(params: &HashMap<TensorId, Tensor>, t: TensorId, info: &crate::graph::TensorInfo) -> Result<Tensor> {
    let p = params
        .get(&t)
        .ok_or_else(|| Error::input(format!("no weight bound for param `{}` {:?}", info.name, info.shape)))?;
    if p.shape != info.shape || p.dtype != info.dtype {
        return Err(Error::input(format!(
            "weight `{}` is {:?} {} but the graph expects {:?} {}",
            info.name,
            p.shape,
            p.dtype.name(),
            info.shape,
            info.dtype.name()
        )));
    }
    Ok(p.clone())
}
