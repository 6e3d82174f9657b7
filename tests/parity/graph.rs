//! The DiT forward graph at the real preset, built without a GPU: dispatch counts per block per
//! mode and the memory plan.

use wgdit::models::qwen_image::dit::{build_forward, BuildOptions, ForwardShape, QkvMode};
use wgdit::models::qwen_image::{DitConfig, Modulation};
use wgdit::tensor::DType;

fn graph(mode: QkvMode, cfg: &DitConfig, shape: &ForwardShape) -> wgdit::models::qwen_image::dit::ForwardGraph {
    let opts = BuildOptions {
        train: None,
        lora: None,
        mode,
        max_binding: 2 << 30,
        keep_block_outputs: false,
        modulation: Modulation::Inline,
    };
    build_forward(cfg, shape, opts, &|_| DType::BF16)
}

fn per_layer(g: &wgdit::graph::Graph, layer: usize) -> usize {
    g.nodes.iter().filter(|n| n.label.layer == Some(layer)).map(|n| n.op.dispatches()).sum()
}

#[test]
fn dispatches_per_block_are_twenty_sixteen_and_eight() {
    let cfg = DitConfig::qwen_image();
    let shape = ForwardShape { batch: 1, s_txt: 128, img_shapes: vec![[1, 64, 64]], masked: false };
    for (mode, want) in [(QkvMode::Standard, 20), (QkvMode::Merged, 16), (QkvMode::Fused, 8)] {
        let f = graph(mode, &cfg, &shape);
        assert_eq!(per_layer(&f.graph, 0), want, "{mode:?}");
        let qkv: usize = f.graph.nodes.iter().filter(|n| n.label.layer == Some(0) && n.label.op == "qkv").count();
        assert_eq!(qkv, [6, 2, 1][mode as usize], "{mode:?} QKV projections");
    }
}
