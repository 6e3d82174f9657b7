//! The training graph of a LoRA fine-tune: the forward without fused epilogues, with trainable
//! LoRAs, then its reverse-mode backward (`graph::autodiff`) from dL/d(output), with per-block
//! gradient checkpointing when asked (`graph::recompute`).

use crate::dtype::DType;
use crate::graph::{autodiff, recompute, TensorId};
use crate::models::qwen_image::dit::{build_forward, BuildOptions, ForwardGraph, ForwardShape, QkvMode};
use crate::models::qwen_image::runtime::Dit;
use crate::models::qwen_image::{DitConfig, Modulation};
use crate::nn::TrainLora;

pub struct TrainGraph {
    /// Forward and backward nodes; `fg.trainable` lists the LoRA params.
    pub fg: ForwardGraph,
    /// Input: dL/d(output), [R, out] in the joint layout (zero on the text rows).
    pub d_output: TensorId,
    /// (module, dA, dB) for every trainable LoRA: params of the graph (bind zeroed f32 buffers),
    /// accumulated (`+=`) by every run.
    pub grads: Vec<(String, TensorId, TensorId)>,
    /// Dispatches of the forward part (the backward follows; run them apart to compute the loss
    /// gradient from the forward's output in between).
    pub forward_nodes: usize,
    /// Forward nodes recomputed by checkpointing.
    pub recomputed: usize,
}

pub fn build(dit: &Dit, shape: &ForwardShape, train: &TrainLora) -> TrainGraph {
    finish(dit.training_graph(shape, train), dit.cfg.out_features(), train)
}

/// The same without a loaded model (counts and memory plans of a preset): `wdtype` gives each
/// weight's stored dtype.
pub fn build_unloaded(
    cfg: &DitConfig,
    shape: &ForwardShape,
    mode: QkvMode,
    train: &TrainLora,
    max_binding: u64,
    wdtype: &dyn Fn(&str) -> DType,
) -> TrainGraph {
    let opts = BuildOptions {
        train: Some(train),
        lora: None,
        mode,
        max_binding,
        keep_block_outputs: false,
        modulation: Modulation::Inline,
    };
    finish(build_forward(cfg, shape, opts, wdtype), cfg.out_features(), train)
}

fn finish(mut fg: ForwardGraph, out_features: usize, train: &TrainLora) -> TrainGraph {
    let rows = fg.graph.shape(fg.output)[0];
    let d_output = fg.graph.input("d_output", &[rows, out_features], DType::F32);
    let wrt: Vec<TensorId> = fg.trainable.iter().flat_map(|&(_, a, b)| [a, b]).collect();
    let first_backward = fg.graph.nodes.len();
    let g = autodiff::backward(&mut fg.graph, &[(fg.output, d_output)], &wrt);
    let grads: Vec<(String, TensorId, TensorId)> =
        fg.trainable.iter().map(|(m, a, b)| (m.clone(), g[a], g[b])).collect();
    let recomputed = if train.checkpointing { recompute::apply(&mut fg.graph, first_backward) } else { 0 };
    TrainGraph { fg, d_output, grads, recomputed, forward_nodes: first_backward }
}
