//! The Qwen2.5-VL options of the epilogue (no norm, rotate-half RoPE, grouped K/V heads) vs the f64
//! reference, every output poisoned first; the reference's rotation vs a hand-computed case.

use super::{poisoned, to32, to64, upload, FWD_TOL};
use crate::kernels::qkv_post::{self, cpu, Options};
use crate::layout::{JointShape, QkvLayout};
use crate::rng::Rng;
use crate::testing::{assert_close, test_gpu};

/// A table of random angles in [-π, π]: `rows` rows of Dh/2 (cos, sin) pairs.
fn table(rng: &mut Rng, rows: usize, head_dim: usize) -> Vec<f32> {
    (0..rows * head_dim / 2)
        .flat_map(|_| {
            let a = rng.range(-std::f32::consts::PI, std::f32::consts::PI);
            [a.cos(), a.sin()]
        })
        .collect()
}

/// Runs the GPU epilogue on random merged rows and compares q, k, v with the reference.
fn check(shape: JointShape, kv_heads: usize, per_sample_table: bool, seed: u64) {
    let gpu = test_gpu();
    let mut rng = Rng::new(seed);
    let (dh, s) = (shape.head_dim, shape.seq());
    let qkv = rng.vec_normal(shape.rows() * (shape.heads + 2 * kv_heads) * dh, 1.0);
    let tab = table(&mut rng, if per_sample_table { shape.batch * s } else { s }, dh);
    let opts = Options::rotate_half(kv_heads);
    let (x, t) = (upload(&gpu, &qkv, "qkv"), upload(&gpu, &tab, "rope"));
    let (q, k, v) = (
        poisoned(&gpu, shape.head_major_len(), "q"),
        poisoned(&gpu, opts.kv_len(&shape), "k"),
        poisoned(&gpu, opts.kv_len(&shape), "v"),
    );
    let a = qkv_post::Args {
        shape,
        layout: QkvLayout::Merged,
        opts,
        x: &[&x],
        norm_weights: None,
        rope: &t,
        q: &q,
        k: &k,
        v: &v,
        saved: None,
    };
    gpu.run(&[qkv_post::launch_forward(&gpu, &a).unwrap()]).unwrap();
    let want = cpu::forward_rotate_half(&shape, kv_heads, &to64(&qkv), &tab);
    let name = format!("{shape:?} kv_heads {kv_heads} per-sample table {per_sample_table}");
    for ((what, got), want) in [("q", &q), ("k", &k), ("v", &v)].into_iter().zip(&want) {
        let st = assert_close(&format!("{what} {name}"), &got.to_f32(&gpu).unwrap(), &to32(want), FWD_TOL);
        println!("{what} {name}: max_abs {:.2e}", st.max_abs);
    }
}

fn shape(batch: usize, heads: usize, head_dim: usize, s_txt: usize, s_img: usize) -> JointShape {
    JointShape { batch, heads, head_dim, s_txt, s_img }
}

#[test]
fn rotate_half_rope_matches_reference_at_head_dims_8_80_128() {
    check(shape(1, 3, 8, 17, 0), 1, false, 1); // 3:1, Dh 8 (one lane per head)
    check(shape(2, 2, 80, 13, 0), 2, false, 2); // 1:1, Dh 80 (the vision tower's)
    check(shape(1, 6, 128, 7, 0), 2, false, 3); // 3:1, Dh 128 (the LM's)
    check(shape(1, 2, 80, 0, 9), 2, false, 4); // one image stream (s_txt = 0)
    check(shape(1, 7, 16, 5, 0), 1, false, 5); // 7:1 (the LM's 28:4)
    check(shape(3, 3, 24, 1, 0), 3, false, 6); // S = 1, Dh 24 (two vec4 per lane, three lanes)
}

#[test]
fn rotate_half_rope_reads_a_per_sample_table() {
    // [B, S, Dh/2, 2]: left-padded prompts have shifted positions per sample.
    check(shape(2, 3, 16, 11, 0), 1, true, 7);
    check(shape(2, 2, 80, 5, 0), 2, true, 8);
}

#[test]
fn rotate_half_reference_matches_a_hand_computed_head() {
    // Dh = 4, angles a0, a1: x' = (x0 c0 − x2 s0, x1 c1 − x3 s1, x2 c0 + x0 s0, x3 c1 + x1 s1).
    let (a0, a1) = (0.3f32, -1.2f32);
    let cs = [a0.cos(), a0.sin(), a1.cos(), a1.sin()];
    let mut x = [1.0, 2.0, 3.0, 4.0];
    cpu::rotate_half(&mut x, &cs);
    let (c0, s0, c1, s1) = (cs[0] as f64, cs[1] as f64, cs[2] as f64, cs[3] as f64);
    let want = [c0 - 3.0 * s0, 2.0 * c1 - 4.0 * s1, 3.0 * c0 + s0, 4.0 * c1 + 2.0 * s1];
    for (g, w) in x.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{x:?} vs {want:?}");
    }
}

#[test]
#[should_panic(expected = "head_dim % 8")]
fn rotate_half_rope_refuses_a_head_dim_that_is_not_a_multiple_of_8() {
    check(shape(1, 1, 12, 3, 0), 1, false, 9);
}
