//! The executor: liveness-planned memory, bind-once replay, dispatch accounting, checkpointing.

use std::collections::HashMap;
use wgdit::exec::{memory, Plan};
use wgdit::graph::ops::Ew;
use wgdit::graph::{recompute, Graph, Op};
use wgdit::kernels::elementwise::{cpu, Op as K};
use wgdit::rng::Rng;
use wgdit::tensor::DType;
use wgdit::testing::{assert_close, test_gpu, Tol};

/// x → silu → gelu → (+x) → ... a chain of `depth` two-op layers.
fn chain(depth: usize, n: usize) -> (Graph, usize, usize) {
    let mut g = Graph::new();
    let x = g.input("x", &[n], DType::F32);
    let mut h = x;
    for l in 0..depth {
        g.set_layer(Some(l));
        let a = g.activation(&format!("a{l}"), &[n], DType::F32);
        g.push(Op::Elementwise { f: Ew::Silu, a: h, b: None, y: a }, "act");
        let b = g.activation(&format!("b{l}"), &[n], DType::F32);
        g.push(Op::Elementwise { f: Ew::Add, a, b: Some(x), y: b }, "residual");
        h = b;
    }
    g.mark_output(h);
    (g, x, h)
}

fn chain_cpu(depth: usize, x: &[f32]) -> Vec<f32> {
    let mut h = x.to_vec();
    for _ in 0..depth {
        h = cpu::apply(K::Add, &cpu::apply(K::Silu, &h, None), Some(x));
    }
    h
}

#[test]
fn planner_reuses_dead_activations() {
    let (g, _, _) = chain(6, 1000);
    let m = memory::plan(&g);
    assert_eq!(m.naive_activation_bytes, 12 * 4000);
    // At most two activations are alive at once in this chain.
    assert!(m.peak_activation_bytes <= 2 * 4000, "peak {} naive {}", m.peak_activation_bytes, m.naive_activation_bytes);
}

#[test]
fn plan_reruns_with_new_inputs_and_counts_dispatches() {
    let gpu = test_gpu();
    let (g, x, y) = chain(4, 300);
    let plan = Plan::new(&gpu, &g, &HashMap::new()).unwrap();
    let mut rng = Rng::new(7);
    for _ in 0..2 {
        let xv = rng.vec_uniform(300, -3.0, 3.0);
        plan.poison_activations();
        plan.write_input(x, &xv);
        plan.run().unwrap();
        assert_close("chain", &plan.read(y).unwrap(), &chain_cpu(4, &xv), Tol::F32_ELEMENTWISE);
    }
    let r = plan.report();
    assert_eq!(r.total, 8);
    assert_eq!(r.by_op["act"], 4);
    assert_eq!(r.by_layer["002"], 2);
    let timed = plan.run_timed().unwrap();
    assert_eq!(timed.total, 8);
    if gpu.caps().timestamp_query {
        assert_eq!(timed.gpu_ns_by_op.len(), 2);
    }
}

/// Forward: per layer a = silu(h), b = a * a inside a checkpoint segment; a "backward" chain reads
/// every layer's internal `a` in reverse, as a real backward reads saved activations.
fn training_like(depth: usize, n: usize, segments: bool) -> (Graph, usize, usize, usize) {
    let mut g = Graph::new();
    let x = g.input("x", &[n], DType::F32);
    let mut h = x;
    let mut saved = Vec::new();
    for l in 0..depth {
        g.set_layer(Some(l));
        if segments {
            g.begin_segment(&format!("block {l}"));
        }
        let a = g.activation("a", &[n], DType::F32);
        g.push(Op::Elementwise { f: Ew::Silu, a: h, b: None, y: a }, "act");
        let b = g.activation("b", &[n], DType::F32);
        g.push(Op::Elementwise { f: Ew::Mul, a, b: Some(a), y: b }, "square");
        g.end_segment();
        saved.push(a);
        h = b;
    }
    let first_backward = g.nodes.len();
    let mut d = h;
    for l in (0..depth).rev() {
        g.set_layer(Some(l));
        let nd = g.activation("grad", &[n], DType::F32);
        g.push(Op::Elementwise { f: Ew::Mul, a: d, b: Some(saved[l]), y: nd }, "backward");
        d = nd;
    }
    g.mark_output(d);
    (g, x, d, first_backward)
}

#[test]
fn checkpointing_recomputes_segments_with_less_memory_and_same_result() {
    let gpu = test_gpu();
    let (n, depth) = (257, 5);
    let (g_plain, x0, y0, _) = training_like(depth, n, false);
    let (mut g_ckpt, x1, y1, first_bwd) = training_like(depth, n, true);
    let recomputed = recompute::apply(&mut g_ckpt, first_bwd);
    assert_eq!(recomputed, 2 * depth);
    let (m0, m1) = (memory::plan(&g_plain), memory::plan(&g_ckpt));
    assert!(
        m1.peak_activation_bytes < m0.peak_activation_bytes,
        "checkpointed peak {} should be below stored peak {}",
        m1.peak_activation_bytes,
        m0.peak_activation_bytes
    );
    let xv = Rng::new(3).vec_uniform(n, -1.0, 1.0);
    let run = |g: &Graph, x: usize, y: usize| {
        let p = Plan::new(&gpu, g, &HashMap::new()).unwrap();
        p.poison_activations();
        p.write_input(x, &xv);
        p.run().unwrap();
        (p.read(y).unwrap(), p.report())
    };
    let (a, r0) = run(&g_plain, x0, y0);
    let (b, r1) = run(&g_ckpt, x1, y1);
    assert_eq!(a, b, "recomputation must reproduce the stored activations exactly");
    assert_eq!(r1.total, r0.total + 2 * depth);
    assert_eq!(r1.by_op["recompute/act"], depth);
}

/// The text encoder's attention ops through graph → plan → run: merged q|k|v rows → `QkvRope`
/// (rotate-half, GQA 3:1) → causal `Attention` with a left-padding mask (or block-diagonal
/// segments) → exact GELU, against the CPU references composed by hand.
fn lm_attention_block(segments: Option<&[f32]>, causal: bool, seed: u64) {
    use wgdit::graph::ops::{AttnOptions, JointShape};
    use wgdit::kernels::{attention, qkv_post};
    let gpu = test_gpu();
    let (b, h, kv, dh, s) = (2, 6, 2, 16, 21);
    let sh = JointShape { batch: b, heads: h, head_dim: dh, s_txt: s, s_img: 0 };
    let cols = (h + 2 * kv) * dh;
    let mut g = Graph::new();
    let qkv = g.input("qkv", &[b * s, cols], DType::F32);
    let rope = g.input("rope", &[s, dh / 2, 2], DType::F32);
    let mask = g.input("mask", &[b, s], DType::F32);
    let seg = segments.map(|sg| g.input("segments", &[sg.len()], DType::F32));
    let (q, k, v) = (
        g.activation("q", &[b, h, s, dh], DType::F32),
        g.activation("k", &[b, kv, s, dh], DType::F32),
        g.activation("v", &[b, kv, s, dh], DType::F32),
    );
    g.push(Op::QkvRope { shape: sh, kv_heads: kv, qkv, rope, q, k, v }, "qkv_rope");
    let (o, lse) = (g.activation("o", &[b * s, h * dh], DType::F32), g.activation("lse", &[b, h, s], DType::F32));
    let opts = AttnOptions { kv_heads: kv, causal };
    g.push(Op::Attention { shape: sh, opts, q, k, v, mask: Some(mask), segments: seg, o, lse }, "attention");
    let y = g.activation("y", &[b * s, h * dh], DType::F32);
    g.push(Op::Elementwise { f: Ew::GeluErf, a: o, b: None, y }, "gelu");
    g.mark_output(y);
    let plan = Plan::new(&gpu, &g, &HashMap::new()).unwrap();
    let mut rng = Rng::new(seed);
    let xv = rng.vec_normal(b * s * cols, 1.0);
    let table: Vec<f32> = (0..s * dh / 2).flat_map(|i| [(i as f32 * 0.37).cos(), (i as f32 * 0.37).sin()]).collect();
    let mv: Vec<f32> = (0..b * s).map(|i| (i % s >= 4 * (i / s)) as u8 as f32).collect(); // sample 1: 4 pads
    plan.poison_activations();
    plan.write_input(qkv, &xv);
    plan.write_input(rope, &table);
    plan.write_input(mask, &mv);
    if let (Some(t), Some(sg)) = (seg, segments) {
        plan.write_input(t, sg);
    }
    plan.run().unwrap();
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let [qr, kr, vr] = qkv_post::cpu::forward_rotate_half(&sh, kv, &f64s(&xv), &table);
    let vis = attention::cpu::Visibility { mask: Some(&mv), opts, segments };
    let (or, _) = attention::cpu::forward(&sh, &vis, &qr, &kr, &vr);
    let want: Vec<f32> = or.iter().map(|&x| cpu::gelu_erf(x) as f32).collect();
    // The rotation's f32 error (≈5e-7) feeds the attention's (abs 2e-6, its kernel tolerance); GELU's
    // slope is at most 1.13.
    assert_close("lm attention block", &plan.read(y).unwrap(), &want, Tol { abs: 3e-6, rel: 1e-5, rel_l2: 1e-5 });
}

#[test]
fn language_model_attention_ops_run_through_the_graph() {
    lm_attention_block(None, true, 11);
}

#[test]
fn window_attention_ops_run_through_the_graph() {
    lm_attention_block(Some(&[0.0, 8.0, 9.0, 21.0]), false, 12);
}
