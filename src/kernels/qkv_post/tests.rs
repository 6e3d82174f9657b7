//! The fused QKV epilogue (split + QK-RMSNorm + RoPE + head-major write) and its backward vs the
//! f64 CPU reference, every output poisoned with NaN first; the CPU backward vs central finite
//! differences of the CPU forward.

use crate::gpu::Gpu;
use crate::kernels::qkv_post::{self, cpu};
use crate::layout::{JointShape, QkvLayout};
use crate::models::qwen_image::rope;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::testing::{assert_close, test_gpu, Tol};
use std::sync::Arc;

/// Outputs are O(1) (normalised, times weights ~1, rotated): the error is f32 rounding of a
/// Dh-term sum of squares, the sqrt and a few products.
const FWD_TOL: Tol = Tol { abs: 2e-6, rel: 2e-6, rel_l2: 1e-6 };
/// The backward adds a Dh-term f32 dot product and a cancellation `w·g − x̂·m`; inputs x span
/// 1e-2..1e3 per row, so dx ∝ rstd spans a wide range: compare relative to the row scale via rel_l2
/// and a per-element bound scaled by |want|.
const BWD_TOL: Tol = Tol { abs: 1e-5, rel: 1e-4, rel_l2: 2e-6 };
/// The norm-weight gradient sums rows·H terms in f32 (chunked partial sums).
const DW_TOL: Tol = Tol { abs: 1e-4, rel: 1e-5, rel_l2: 1e-6 };

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Image shapes with `s_img` tokens (31 = an edit layout: target 4x4 + reference 3x5).
fn img_shapes(s_img: usize) -> Vec<(usize, usize, usize)> {
    match s_img {
        3 => vec![(1, 1, 3)],
        15 => vec![(1, 3, 5)],
        31 => vec![(1, 4, 4), (1, 3, 5)],
        n => vec![(1, 1, n)],
    }
}

fn axes(head_dim: usize) -> [usize; 3] {
    match head_dim {
        16 => [8, 4, 4],
        24 => [12, 6, 6],
        36 => [12, 12, 12],
        128 => [16, 56, 56],
        d => panic!("no RoPE axes for head_dim {d}"),
    }
}

/// Seeded problem: standard-layout inputs (rows scaled by 10^[-2, 3) so rstd varies), weights,
/// and the RoPE table.
struct Case {
    shape: JointShape,
    x: [Vec<f32>; 3],
    norm_w: Vec<f32>,
    table: Vec<f32>,
}

fn case(shape: JointShape, seed: u64) -> Case {
    case_scaled(shape, seed, (-2.0, 3.0))
}

/// As [`case`] with row scales 10^[lo, hi).
fn case_scaled(shape: JointShape, seed: u64, (lo, hi): (f32, f32)) -> Case {
    let mut rng = Rng::new(seed);
    let (rows, d) = (shape.rows(), shape.hidden());
    let mut part = || {
        let mut v = rng.vec_normal(rows * d, 1.0);
        for r in 0..rows {
            let s = 10f32.powf(rng.range(lo, hi));
            v[r * d..(r + 1) * d].iter_mut().for_each(|x| *x *= s);
        }
        v
    };
    let x = [part(), part(), part()];
    let norm_w = rng.vec_uniform(4 * shape.head_dim, 0.5, 1.5);
    let table = rope::table(&axes(shape.head_dim), &img_shapes(shape.s_img), shape.s_txt);
    assert_eq!(table.len(), shape.seq() * shape.head_dim);
    Case { shape, x, norm_w, table }
}

fn upload(gpu: &Gpu, v: &[f32], label: &str) -> Tensor {
    Tensor::from_f32(gpu, v, &[v.len()], DType::F32, label).unwrap()
}

fn poisoned(gpu: &Gpu, n: usize, label: &str) -> Tensor {
    let t = Tensor::zeros(gpu, &[n], DType::F32, label).unwrap();
    gpu.poison(&t.buffer);
    t
}

/// The input tensors of `layout` for `x` (standard parts).
fn inputs(gpu: &Gpu, c: &Case, layout: QkvLayout) -> Vec<Tensor> {
    match layout {
        QkvLayout::Merged => vec![upload(gpu, &cpu::merge(&c.shape, [&c.x[0], &c.x[1], &c.x[2]]), "qkv")],
        QkvLayout::Standard => c.x.iter().map(|x| upload(gpu, x, "x")).collect(),
    }
}

/// Runs the GPU forward with poisoned outputs; returns (q, k, v, saved) and the output tensors.
fn gpu_forward(gpu: &Arc<Gpu>, c: &Case, layout: QkvLayout, ins: &[Tensor]) -> [Tensor; 4] {
    let s = c.shape;
    let hm = s.head_major_len();
    let out =
        [poisoned(gpu, hm, "q"), poisoned(gpu, hm, "k"), poisoned(gpu, hm, "v"), poisoned(gpu, 2 * s.units(), "rstd")];
    let refs: Vec<&Tensor> = ins.iter().collect();
    let (w, t) = (upload(gpu, &c.norm_w, "norm_w"), upload(gpu, &c.table, "rope"));
    let a = qkv_post::Args {
        shape: s,
        layout,
        opts: qkv_post::Options::dit(&s),
        x: &refs,
        norm_weights: Some(&w),
        rope: &t,
        q: &out[0],
        k: &out[1],
        v: &out[2],
        saved: Some(&out[3]),
    };
    let l = qkv_post::launch_forward(gpu, &a).unwrap();
    gpu.run(&[l]).unwrap();
    out
}

fn shapes() -> Vec<JointShape> {
    let mut v = Vec::new();
    for batch in [1, 2] {
        for heads in [1, 2, 3] {
            for head_dim in [16, 128] {
                for s_txt in [1, 5] {
                    for s_img in [3, 15, 31] {
                        v.push(JointShape { batch, heads, head_dim, s_txt, s_img });
                    }
                }
            }
        }
    }
    // Heads of 6 and 9 vec4 (2 and 1 vec4 per lane): workgroups with idle invocations.
    v.push(JointShape { batch: 2, heads: 3, head_dim: 24, s_txt: 5, s_img: 15 });
    v.push(JointShape { batch: 1, heads: 2, head_dim: 36, s_txt: 1, s_img: 31 });
    // The real head count and size (D = 3072) on an edit layout.
    v.push(JointShape { batch: 2, heads: 24, head_dim: 128, s_txt: 7, s_img: 31 });
    v
}

#[test]
fn forward_matches_cpu_reference_for_both_layouts_at_awkward_shapes() {
    let gpu = test_gpu();
    let mut worst = (0f64, 0f64);
    for (i, shape) in shapes().into_iter().enumerate() {
        let c = case(shape, 100 + i as u64);
        let want = cpu::forward(&shape, [&to64(&c.x[0]), &to64(&c.x[1]), &to64(&c.x[2])], &to64(&c.norm_w), &c.table);
        for layout in [QkvLayout::Merged, QkvLayout::Standard] {
            let ins = inputs(&gpu, &c, layout);
            let out = gpu_forward(&gpu, &c, layout, &ins);
            for (t, w, n) in [
                (&out[0], &want.q, "q"),
                (&out[1], &want.k, "k"),
                (&out[2], &want.v, "v"),
                (&out[3], &want.rstd, "rstd"),
            ] {
                let name = format!("{n} {shape:?} {layout:?}");
                // rstd spans 1e-3..1e2 (row scales); compare it relatively.
                let tol = if n == "rstd" { Tol { abs: 0.0, rel: 1e-6, rel_l2: 1e-6 } } else { FWD_TOL };
                let s = assert_close(&name, &t.to_f32(&gpu).unwrap(), &to32(w), tol);
                if n != "rstd" {
                    worst = (worst.0.max(s.max_abs), worst.1.max(s.rel_l2));
                }
            }
        }
    }
    eprintln!("forward q/k/v vs CPU f64: worst max_abs {:.2e}, worst rel_l2 {:.2e}", worst.0, worst.1);
}

/// Runs the GPU backward (poisoned dinputs; dw pre-filled to test `+=`) and compares with the CPU.
fn check_backward(gpu: &Arc<Gpu>, c: &Case, layout: QkvLayout, seed: u64) -> [(f64, f64); 2] {
    let s = c.shape;
    let mut rng = Rng::new(seed);
    let dy: Vec<Vec<f32>> = (0..3).map(|_| rng.vec_normal(s.head_major_len(), 1.0)).collect();
    let dw0 = rng.vec_uniform(4 * s.head_dim, -1.0, 1.0);
    let ins = inputs(gpu, c, layout);
    let fwd = gpu_forward(gpu, c, layout, &ins);
    let n_in = if layout == QkvLayout::Merged { 1 } else { 3 };
    let din: Vec<Tensor> = (0..n_in).map(|_| poisoned(gpu, s.rows() * s.hidden() * 3 / n_in, "dx")).collect();
    let dyt: Vec<Tensor> = dy.iter().map(|v| upload(gpu, v, "dy")).collect();
    let dw = upload(gpu, &dw0, "dw");
    let (w, t) = (upload(gpu, &c.norm_w, "norm_w"), upload(gpu, &c.table, "rope"));
    let (ir, dr): (Vec<&Tensor>, Vec<&Tensor>) = (ins.iter().collect(), din.iter().collect());
    let a = qkv_post::BackwardArgs {
        shape: s,
        layout,
        x: &ir,
        norm_weights: &w,
        rope: &t,
        saved: &fwd[3],
        dq: &dyt[0],
        dk: &dyt[1],
        dv: &dyt[2],
        d_x: &dr,
        d_norm_weights: Some(&dw),
    };
    let l = qkv_post::launch_backward(gpu, &a).unwrap();
    gpu.run(&l).unwrap();
    let x64 = [to64(&c.x[0]), to64(&c.x[1])];
    let dy64: Vec<Vec<f64>> = dy.iter().map(|v| to64(v)).collect();
    let want = cpu::backward(&s, [&x64[0], &x64[1]], &to64(&c.norm_w), &c.table, [&dy64[0], &dy64[1], &dy64[2]]);
    let got: Vec<Vec<f32>> = din.iter().map(|t| t.to_f32(gpu).unwrap()).collect();
    let got = if layout == QkvLayout::Merged { cpu::split_merged(&s, &got[0]).to_vec() } else { got };
    let mut worst = (0f64, 0f64);
    for (j, (g, w)) in got.iter().zip(&want.dx).enumerate() {
        let st = assert_close(&format!("dx[{j}] {s:?} {layout:?}"), g, &to32(w), BWD_TOL);
        worst = (worst.0.max(st.max_abs), worst.1.max(st.rel_l2));
    }
    let want_dw: Vec<f32> = dw0.iter().zip(&want.dw).map(|(a, b)| (*a as f64 + b) as f32).collect();
    let sw = assert_close(&format!("dw {s:?} {layout:?}"), &dw.to_f32(gpu).unwrap(), &want_dw, DW_TOL);
    [worst, (sw.max_abs, sw.rel_l2)]
}

#[test]
fn backward_matches_cpu_reference_for_both_layouts_at_awkward_shapes() {
    let gpu = test_gpu();
    let (mut dx, mut dw) = ((0f64, 0f64), (0f64, 0f64));
    for (i, shape) in shapes().into_iter().enumerate() {
        let c = case(shape, 500 + i as u64);
        for layout in [QkvLayout::Merged, QkvLayout::Standard] {
            let [a, b] = check_backward(&gpu, &c, layout, 900 + i as u64);
            dx = (dx.0.max(a.0), dx.1.max(a.1));
            dw = (dw.0.max(b.0), dw.1.max(b.1));
        }
    }
    eprintln!(
        "backward vs CPU f64: dx worst max_abs {:.2e} rel_l2 {:.2e}; dw worst max_abs {:.2e} rel_l2 {:.2e}",
        dx.0, dx.1, dw.0, dw.1
    );
}

#[test]
fn norm_weight_gradient_sums_partials_over_several_chunks() {
    // 800 image units at Dh = 128 span two 512-unit partial-sum chunks; text units fit in one.
    let gpu = test_gpu();
    let c = case(JointShape { batch: 1, heads: 8, head_dim: 128, s_txt: 5, s_img: 100 }, 11);
    for layout in [QkvLayout::Merged, QkvLayout::Standard] {
        check_backward(&gpu, &c, layout, 12);
    }
}

/// L = Σ q·dq + k·dk + v·dv of the CPU forward.
fn loss(s: &JointShape, x: &[Vec<f64>; 3], w: &[f64], table: &[f32], dy: &[Vec<f64>; 3]) -> f64 {
    let f = cpu::forward(s, [&x[0], &x[1], &x[2]], w, table);
    [(&f.q, &dy[0]), (&f.k, &dy[1]), (&f.v, &dy[2])]
        .iter()
        .map(|(a, b)| a.iter().zip(b.iter()).map(|(p, q)| p * q).sum::<f64>())
        .sum()
}

#[test]
fn cpu_backward_matches_central_finite_differences() {
    let s = JointShape { batch: 2, heads: 2, head_dim: 16, s_txt: 2, s_img: 3 };
    // Row scales within 10^[-1, 1): L stays O(100), so f64 round-off over the step stays ~1e-9.
    let c = case_scaled(s, 7, (-1.0, 1.0));
    let mut rng = Rng::new(8);
    let dy: [Vec<f64>; 3] = std::array::from_fn(|_| to64(&rng.vec_normal(s.head_major_len(), 1.0)));
    let mut x: [Vec<f64>; 3] = std::array::from_fn(|j| to64(&c.x[j]));
    let mut w = to64(&c.norm_w);
    let bw = cpu::backward(&s, [&x[0], &x[1]], &w, &c.table, [&dy[0], &dy[1], &dy[2]]);
    // Step and error scale per row segment: rows span 1e-2..1e3, so both follow the row's size.
    let d = s.hidden();
    let mut worst = 0f64;
    for j in 0..3 {
        for i in 0..x[j].len() {
            let seg = |v: &[f64]| v[i / d * d..(i / d + 1) * d].iter().fold(0f64, |m, a| m.max(a.abs()));
            let (x0, h, g) = (x[j][i], 1e-5 * seg(&x[j]), seg(&bw.dx[j]));
            x[j][i] = x0 + h;
            let lp = loss(&s, &x, &w, &c.table, &dy);
            x[j][i] = x0 - h;
            let lm = loss(&s, &x, &w, &c.table, &dy);
            x[j][i] = x0;
            let fd = (lp - lm) / (2.0 * h);
            let err = (fd - bw.dx[j][i]).abs() / g;
            worst = worst.max(err);
            assert!(err < 1e-6, "dx[{j}][{i}]: finite difference {fd} vs backward {}", bw.dx[j][i]);
        }
    }
    for i in 0..w.len() {
        let w0 = w[i];
        w[i] = w0 + 1e-6;
        let lp = loss(&s, &x, &w, &c.table, &dy);
        w[i] = w0 - 1e-6;
        let lm = loss(&s, &x, &w, &c.table, &dy);
        w[i] = w0;
        let fd = (lp - lm) / 2e-6;
        assert!(
            (fd - bw.dw[i]).abs() < 1e-6 * (1.0 + fd.abs()),
            "dw[{i}]: finite difference {fd} vs backward {}",
            bw.dw[i]
        );
    }
    eprintln!("CPU backward vs finite differences: worst relative error {worst:.2e}");
}

#[test]
fn text_and_image_rows_use_their_own_stream_weights_and_positions() {
    // One text and one image token, identical inputs: the outputs differ only through the stream
    // weights and rope positions; swapping the weights of the streams swaps what the rows see.
    let s = JointShape { batch: 1, heads: 1, head_dim: 16, s_txt: 1, s_img: 3 };
    let c = case(s, 3);
    let f = cpu::forward(&s, [&to64(&c.x[0]), &to64(&c.x[1]), &to64(&c.x[2])], &to64(&c.norm_w), &c.table);
    // Text token 0 is joint position 0; its rotation angle is max_vid_index (= 1 for a 1x3 grid).
    let mut y: Vec<f64> = {
        let x = &c.x[0][..16];
        let r = 1.0 / (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 16.0 + 1e-6).sqrt();
        (0..16).map(|e| x[e] as f64 * r * c.norm_w[2 * 16 + e] as f64).collect()
    };
    rope::cpu::rotate(&mut y, &rope::table(&[8, 4, 4], &[(1, 1, 3)], 1)[..16], false);
    for (e, (a, b)) in f.q[..16].iter().zip(&y).enumerate() {
        assert!((a - b).abs() < 1e-6, "text q[{e}] uses norm_added_q and position max_vid_index");
    }
}

/// Throughput at a DiT block shape (bytes moved / GPU time, best of 5 after a warm-up). Ignored:
/// run with `cargo test --test qkv_post -- --ignored --nocapture`. Roofline: the forward moves
/// 6·rows·D·4 bytes (read q,k,v, write Q,K,V), the backward 8·rows·D·4; at 3.35 TB/s (H100) a
/// 1024² step (rows 4352, D 3072) is ≈ 96 µs forward.
#[test]
#[ignore]
fn throughput_at_a_dit_block_shape() {
    let gpu = test_gpu();
    let (s_txt, s_img) = if gpu.is_cpu() { (64, 1024) } else { (256, 4096) };
    let s = JointShape { batch: 1, heads: 24, head_dim: 128, s_txt, s_img };
    let mut rng = Rng::new(1);
    let n = s.rows() * s.hidden();
    let (hm, w) = (s.head_major_len(), upload(&gpu, &rng.vec_uniform(4 * 128, 0.5, 1.5), "w"));
    let table = rope::table(&[16, 56, 56], &[(1, 1, s_img)], s_txt);
    let t = upload(&gpu, &table, "rope");
    let new = |n| Tensor::zeros(&gpu, &[n], DType::F32, "t").unwrap();
    let (qkv, dqkv) = (upload(&gpu, &rng.vec_normal(3 * n, 1.0), "qkv"), new(3 * n));
    let (q, k, v, saved) = (new(hm), new(hm), new(hm), new(2 * s.units()));
    let (layout, x, d_x) = (QkvLayout::Merged, [&qkv], [&dqkv]);
    let a = qkv_post::Args {
        shape: s,
        layout,
        opts: qkv_post::Options::dit(&s),
        x: &x,
        norm_weights: Some(&w),
        rope: &t,
        q: &q,
        k: &k,
        v: &v,
        saved: Some(&saved),
    };
    let fwd = qkv_post::launch_forward(&gpu, &a).unwrap();
    let b = qkv_post::BackwardArgs {
        shape: s,
        layout,
        x: &x,
        norm_weights: &w,
        rope: &t,
        saved: &saved,
        dq: &q,
        dk: &k,
        dv: &v,
        d_x: &d_x,
        d_norm_weights: None,
    };
    let bwd = qkv_post::launch_backward(&gpu, &b).unwrap();
    for (name, l, bytes) in [("forward", &fwd, 6 * n * 4), ("backward", &bwd[0], 8 * n * 4)] {
        let b = gpu.bind(l).unwrap();
        let mut best = f64::INFINITY;
        for _ in 0..6 {
            let ns = gpu.submit_timed(&[&b]).unwrap().expect("timestamp queries")[0];
            best = best.min(ns);
        }
        eprintln!(
            "qkv_post {name} {s:?} on {}: {:.1} us, {:.2} GB/s",
            gpu.info().name,
            best / 1e3,
            bytes as f64 / best
        );
    }
}

mod rotate_half;
