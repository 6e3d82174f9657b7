//! The forward-only options — grouped-query attention, causal, block-diagonal segments — alone and
//! combined with the text mask, vs the f64 reference, outputs poisoned before every run. Rows that
//! see no key must give O = 0 exactly and lse = EMPTY_ROW_LSE. The graph refuses their backward.

use super::{f32s, f64s, mask_values, poisoned, shape, upload, MaskKind, TOL_LSE, TOL_O};
use crate::dtype::DType;
use crate::graph::autodiff;
use crate::graph::ops::{AttnOptions, Ew, JointShape, Op};
use crate::graph::Graph;
use crate::kernels::attention::{self, cpu, EMPTY_ROW_LSE};
use crate::rng::Rng;
use crate::testing::{assert_close, test_gpu};

struct OptCase {
    shape: JointShape,
    kv_heads: usize,
    causal: bool,
    mask: MaskKind,
    /// Segment boundaries [0, .., S].
    segments: Option<Vec<usize>>,
}

fn case(shape: JointShape, kv_heads: usize, causal: bool, mask: MaskKind, segments: Option<&[usize]>) -> OptCase {
    OptCase { shape, kv_heads, causal, mask, segments: segments.map(|s| s.to_vec()) }
}

/// Runs one case on the GPU and checks it; returns the number of rows without a visible key.
fn check(gpu: &crate::gpu::Gpu, c: &OptCase, seed: u64) -> usize {
    let sh = &c.shape;
    let opts = AttnOptions { kv_heads: c.kv_heads, causal: c.causal };
    let mut rng = Rng::new(seed);
    let q = rng.vec_uniform(sh.head_major_len(), -1.0, 1.0);
    let k = rng.vec_uniform(opts.kv_len(sh), -1.0, 1.0);
    let v = rng.vec_uniform(opts.kv_len(sh), -1.0, 1.0);
    let mask = mask_values(sh, c.mask);
    let bounds: Option<Vec<f32>> = c.segments.as_ref().map(|b| b.iter().map(|&x| x as f32).collect());
    let (tq, tk, tv) = (upload(gpu, &q, "q"), upload(gpu, &k, "k"), upload(gpu, &v, "v"));
    let tmask = mask.as_ref().map(|m| upload(gpu, m, "mask"));
    let tseg = bounds.as_ref().map(|b| upload(gpu, b, "segments"));
    let (o, lse) = (poisoned(gpu, sh.head_major_len(), "o"), poisoned(gpu, sh.lse_len(), "lse"));
    let args = attention::Args {
        q: &tq,
        k: &tk,
        v: &tv,
        mask: tmask.as_ref(),
        segments: tseg.as_ref(),
        opts,
        o: &o,
        lse: &lse,
    };
    gpu.run(&[attention::launch_forward(gpu, sh, &args).unwrap()]).unwrap();
    let vis = cpu::Visibility { mask: mask.as_deref(), opts, segments: bounds.as_deref() };
    let (want_o, want_lse) = cpu::forward(sh, &vis, &f64s(&q), &f64s(&k), &f64s(&v));
    let name = format!("{sh:?} kv_heads {} causal {} {:?} segments {:?}", c.kv_heads, c.causal, c.mask, c.segments);
    let (got_o, got_lse) = (o.to_f32(gpu).unwrap(), lse.to_f32(gpu).unwrap());
    let so = assert_close(&format!("O {name}"), &got_o, &f32s(&want_o), TOL_O);
    let sl = assert_close(&format!("lse {name}"), &got_lse, &f32s(&want_lse), TOL_LSE);
    println!("{name}: O max_abs {:.2e} rel_l2 {:.2e}; lse max_abs {:.2e}", so.max_abs, so.rel_l2, sl.max_abs);
    assert_empty_rows_are_zero(sh, &want_lse, &got_o, &got_lse, &name)
}

/// Rows whose reference lse is the sentinel have no visible key: O must be exactly 0 there.
pub(super) fn assert_empty_rows_are_zero(
    sh: &JointShape,
    want_lse: &[f64],
    o: &[f32],
    lse: &[f32],
    name: &str,
) -> usize {
    let (s, dh, hd) = (sh.seq(), sh.head_dim, sh.hidden());
    let mut empty = 0;
    for b in 0..sh.batch {
        for h in 0..sh.heads {
            for i in 0..s {
                let li = (b * sh.heads + h) * s + i;
                if want_lse[li] as f32 != EMPTY_ROW_LSE {
                    continue;
                }
                empty += 1;
                assert_eq!(lse[li], EMPTY_ROW_LSE, "{name}: lse of empty row b={b} h={h} i={i}");
                let row = sh.joint_row(b, i) * hd + h * dh;
                assert!(o[row..row + dh].iter().all(|&x| x == 0.0), "{name}: O of empty row b={b} h={h} i={i} not 0");
            }
        }
    }
    empty
}

#[test]
fn grouped_query_attention_matches_reference_at_ratios_7_1_3_1_and_2_1() {
    let gpu = test_gpu();
    use MaskKind::*;
    let cases = [
        case(shape(1, 7, 16, 0, 17), 1, false, None, Option::None), // 7:1 (the LM's 28:4)
        case(shape(2, 6, 8, 5, 12), 2, false, Padded, Option::None), // 3:1, Dh 8
        case(shape(1, 3, 80, 0, 70), 1, false, None, Option::None), // 3:1, Dh 80
        case(shape(1, 4, 128, 3, 30), 2, false, NonContiguous, Option::None), // 2:1, Dh 128
    ];
    for (i, c) in cases.iter().enumerate() {
        check(&gpu, c, 100 + i as u64);
    }
}

#[test]
fn causal_attention_matches_reference_with_and_without_left_padding() {
    let gpu = test_gpu();
    use MaskKind::*;
    let cases = [
        (case(shape(1, 2, 8, 1, 0), 2, true, None, Option::None), false), // S = 1
        (case(shape(2, 3, 16, 70, 0), 1, true, LeftPadded, Option::None), true), // empty rows
        (case(shape(1, 2, 128, 130, 0), 1, true, None, Option::None), false), // 3 query workgroups
        (case(shape(2, 4, 16, 17, 0), 4, true, NonContiguous, Option::None), false), // key 0 is valid
        (case(shape(1, 7, 128, 33, 0), 1, true, LeftPadded, Option::None), true), // 7:1 GQA, Dh 128
        (case(shape(1, 2, 16, 5, 60), 2, true, Padded, Option::None), false), // text + image, joint order
    ];
    for (i, (c, has_empty)) in cases.iter().enumerate() {
        let empty = check(&gpu, c, 200 + i as u64);
        assert_eq!(empty > 0, *has_empty, "case {i}: {empty} rows without a visible key");
    }
}

#[test]
fn segmented_attention_matches_reference_with_uneven_segments() {
    let gpu = test_gpu();
    use MaskKind::*;
    // S = 150 over 3 query workgroups: boundaries inside workgroup 0 (1, 17, 60), 1 (64, 65, 66) and 2
    // (130), segments of length 1 ([0, 1), [64, 65), [65, 66)); workgroup 2's key loop starts at 66.
    let uneven = [0, 1, 17, 60, 64, 65, 66, 130, 150];
    let cases = [
        case(shape(1, 2, 80, 0, 150), 2, false, None, Some(&uneven)), // the vision tower's Dh
        case(shape(1, 2, 8, 150, 0), 2, false, None, Some(&uneven)),
        case(shape(1, 1, 16, 0, 1), 1, false, None, Some(&[0, 1])), // S = 1
        case(shape(1, 2, 80, 0, 70), 2, false, None, Some(&[0, 70])), // one segment = full attention
        case(shape(1, 2, 16, 0, 33), 1, false, None, Some(&[0, 10, 10, 33])), // an empty segment
        case(shape(1, 1, 16, 0, 200), 1, false, None, Some(&[0, 150, 200])), // a late workgroup
    ];
    for (i, c) in cases.iter().enumerate() {
        check(&gpu, c, 300 + i as u64);
    }
}

#[test]
fn segments_causal_gqa_and_text_mask_combine() {
    let gpu = test_gpu();
    let bounds = [0, 20, 45, 70];
    let c = case(shape(2, 6, 16, 20, 50), 3, true, MaskKind::NonContiguous, Some(&bounds));
    check(&gpu, &c, 400);
    // Left padding inside the first segment with causal: its leading rows see nothing.
    let c = case(shape(2, 2, 16, 40, 0), 1, true, MaskKind::LeftPadded, Some(&[0, 13, 40]));
    assert!(check(&gpu, &c, 401) > 0);
}

/// The message of the panic `f` raises.
fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let err = std::panic::catch_unwind(f).expect_err("expected a panic");
    err.downcast_ref::<String>().cloned().or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string())).unwrap()
}

#[test]
fn autodiff_refuses_the_attention_options_it_cannot_differentiate() {
    let sh = shape(1, 4, 8, 6, 0);
    let build = |opts: AttnOptions, segmented: bool| {
        let mut g = Graph::new();
        // q downstream of the trainable x (as in a model: a projection or activation between them)
        let x = g.param("x", &[1, 4, 6, 8], DType::F32);
        let q = g.activation("q", &[1, 4, 6, 8], DType::F32);
        g.push(Op::Elementwise { f: Ew::Silu, a: x, b: None, y: q }, "act");
        let kv = [1, opts.kv_heads, 6, 8];
        let (k, v) = (g.param("k", &kv, DType::F32), g.param("v", &kv, DType::F32));
        let segments = segmented.then(|| g.input("segments", &[3], DType::F32));
        let (o, lse) = (g.activation("o", &[6, 32], DType::F32), g.activation("lse", &[1, 4, 6], DType::F32));
        g.push(Op::Attention { shape: sh, opts, q, k, v, mask: None, segments, o, lse }, "attention");
        let d_o = g.input("d_o", &[6, 32], DType::F32);
        autodiff::backward(&mut g, &[(o, d_o)], &[x]);
    };
    let full = AttnOptions::full(4);
    // (The full case differentiates: the training tests run it through the DiT.)
    let gqa = panic_message(move || build(AttnOptions { kv_heads: 2, ..full }, false));
    assert!(gqa.contains("GQA"), "{gqa}");
    let causal = panic_message(move || build(AttnOptions { causal: true, ..full }, false));
    assert!(causal.contains("causal"), "{causal}");
    let seg = panic_message(move || build(full, true));
    assert!(seg.contains("segments"), "{seg}");
}
