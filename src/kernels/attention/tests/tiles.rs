//! The attention tile programs on every backend lavapipe runs (the f32 emulation with 16x16 and
//! 8x8 fragments, f16 SIMT lanes) vs `cpu::tile_forward` / `cpu::tile_backward` (the f64 function
//! on the operands they multiply, rounded where they round), outputs poisoned before every run;
//! and vs the f32-operand reference, which they must miss by an f16-sized amount only.

use super::{f32s, f64s, inputs, mask_values, poisoned, shape, upload, Case, Inputs, MaskKind};
use crate::gpu::Gpu;
use crate::kernels::attention::{self, cpu, BackwardArgs, FlashConfig, Pass, Variant};
use crate::kernels::Tiles;
use crate::layout::{AttnOptions, JointShape};
use crate::rng::Rng;
use crate::testing::{assert_close, stats, test_gpu, Stats, Tol};
use crate::Error;

const BACKENDS: [Tiles; 3] = [Tiles::Emulated16, Tiles::Emulated8, Tiles::F16];

/// O vs the tile reference: f32 sums of exact f16 products (S) and of f16·f16 products (P·V);
/// a one-ulp flip of a rounded p ≥ 1/2 (the rounding is discontinuous, S differs from the f64 one
/// by ~1e-7) moves O by up to 2^-11·|v| ≤ 4.9e-4, rare enough to keep rel_l2 at f32 level.
const TOL_O: Tol = Tol { abs: 5e-4, rel: 0.0, rel_l2: 5e-5 };
/// lse = m + log(l) from unrounded p: f32 level.
const TOL_LSE: Tol = Tol { abs: 1e-5, rel: 2e-6, rel_l2: 2e-6 };
/// dQ/dK/dV vs the tile reference: sums of rounded dS and P times f16 operands; dS flips by one
/// f16 ulp as P does (|dS| up to ~|dP| ~ sqrt(Dh)), so abs scales with that.
const TOL_GRAD: Tol = Tol { abs: 2e-3, rel: 0.0, rel_l2: 5e-5 };
/// Tile vs f32 operands: f16 rounding (2^-11 relative) of q, k, v, P (and dO, dS) must show
/// (the tight checks could fail) and stay f16-sized.
const F16_SHOWS: f64 = 2e-5;
const F16_BOUND: f64 = 5e-3;

/// The magnitudes of V and dO in a case: outputs are divided by what they scale with (O by V;
/// dQ, dK, delta by V·dO; dV by dO) before the unit-scale tolerances apply.
#[derive(Clone, Copy, Debug)]
struct Units {
    v: f32,
    d_o: f32,
}

const UNIT: Units = Units { v: 1.0, d_o: 1.0 };

fn div(x: &[f32], by: f32) -> Vec<f32> {
    x.iter().map(|v| v / by).collect()
}

fn div64(x: &[f64], by: f32) -> Vec<f32> {
    x.iter().map(|&v| (v / by as f64) as f32).collect()
}

/// The backend's default layout on this adapter, explicit so the reference knows the key tile.
fn config(gpu: &Gpu, t: Tiles, pass: Pass, sh: &JointShape) -> Option<FlashConfig> {
    FlashConfig::default_for(t, pass, sh.head_dim, t.lanes(gpu), gpu.limits().max_workgroup_storage as usize)
}

fn forward(gpu: &Gpu, sh: &JointShape, x: &Inputs, opts: AttnOptions, variant: Variant) -> (Vec<f32>, Vec<f32>) {
    let (q, k, v) = (upload(gpu, &x.q, "q"), upload(gpu, &x.k, "k"), upload(gpu, &x.v, "v"));
    let mask = x.mask.as_ref().map(|m| upload(gpu, m, "mask"));
    let (o, lse) = (poisoned(gpu, sh.head_major_len(), "o"), poisoned(gpu, sh.lse_len(), "lse"));
    let args = attention::Args { q: &q, k: &k, v: &v, mask: mask.as_ref(), segments: None, opts, o: &o, lse: &lse };
    gpu.run(&[attention::launch_forward_variant(gpu, sh, &args, variant).unwrap()]).unwrap();
    (o.to_f32(gpu).unwrap(), lse.to_f32(gpu).unwrap())
}

/// (dq, dk, dv, delta) of the backward on `variant`, from the given forward outputs.
fn backward(gpu: &Gpu, sh: &JointShape, x: &Inputs, o: &[f32], lse: &[f32], variant: Variant) -> Vec<Vec<f32>> {
    let up = |v: &[f32], n: &str| upload(gpu, v, n);
    let (q, k, v, d_o, to, tl) =
        (up(&x.q, "q"), up(&x.k, "k"), up(&x.v, "v"), up(&x.d_o, "do"), up(o, "o"), up(lse, "lse"));
    let mask = x.mask.as_ref().map(|m| upload(gpu, m, "mask"));
    let (n, nl) = (sh.head_major_len(), sh.lse_len());
    let out = [poisoned(gpu, n, "dq"), poisoned(gpu, n, "dk"), poisoned(gpu, n, "dv"), poisoned(gpu, nl, "delta")];
    let args = BackwardArgs {
        q: &q,
        k: &k,
        v: &v,
        mask: mask.as_ref(),
        o: &to,
        lse: &tl,
        d_o: &d_o,
        delta: &out[3],
        dq: &out[0],
        dk: &out[1],
        dv: &out[2],
    };
    gpu.run(&attention::launch_backward_variant(gpu, sh, &args, variant).unwrap()).unwrap();
    out.iter().map(|t| t.to_f32(gpu).unwrap()).collect()
}

fn f16_sized(what: &str, got: &[f32], f32_ref: &[f64]) -> Stats {
    let s = stats(got, &f32s(f32_ref));
    assert!(
        s.rel_l2 > F16_SHOWS && s.rel_l2 < F16_BOUND,
        "{what}: rel_l2 {:.2e} vs f32 operands is not f16-sized",
        s.rel_l2
    );
    s
}

/// Forward on `t` (explicit config `c`) vs the tile reference and the f32 one; returns (O, lse).
fn check_forward(gpu: &Gpu, case: &Case, x: &Inputs, t: Tiles, c: FlashConfig, u: Units) -> (Vec<f32>, Vec<f32>) {
    let sh = &case.shape;
    let vis = cpu::Visibility::full(sh, x.mask.as_deref());
    let (o, lse) = forward(gpu, sh, x, AttnOptions::full(sh.heads), Variant::TileWith(t, c));
    let (want_o, want_lse) = cpu::tile_forward(sh, &vis, &x.q, &x.k, &x.v, c.bc);
    let name = format!("{t:?} {c:?} {sh:?} {:?} {u:?}", case.mask);
    let so = assert_close(&format!("O {name}"), &div(&o, u.v), &div64(&want_o, u.v), TOL_O);
    let sl = assert_close(&format!("lse {name}"), &lse, &f32s(&want_lse), TOL_LSE);
    let (f32_o, _) = cpu::forward(sh, &vis, &f64s(&x.q), &f64s(&x.k), &f64s(&x.v));
    let f = f16_sized(&format!("O {name}"), &o, &f32_o);
    println!(
        "{name}: O max_abs {:.2e} rel_l2 {:.2e}; lse max_abs {:.2e}; O vs f32 rel_l2 {:.2e}",
        so.max_abs, so.rel_l2, sl.max_abs, f.rel_l2
    );
    (o, lse)
}

fn check_backward(gpu: &Gpu, case: &Case, x: &Inputs, fwd: &(Vec<f32>, Vec<f32>), t: Tiles, c: FlashConfig, u: Units) {
    let sh = &case.shape;
    let got = backward(gpu, sh, x, &fwd.0, &fwd.1, Variant::TileWith(t, c));
    let a =
        cpu::TileBackward { q: &x.q, k: &x.k, v: &x.v, mask: x.mask.as_deref(), o: &fwd.0, lse: &fwd.1, d_o: &x.d_o };
    let (want, delta) = cpu::tile_backward(sh, &a);
    let exact = cpu::backward(sh, &f64s(&x.q), &f64s(&x.k), &f64s(&x.v), x.mask.as_deref(), &f64s(&x.d_o));
    let name = format!("{t:?} {c:?} {sh:?} {:?} {u:?}", case.mask);
    let vd = u.v * u.d_o;
    assert_close(&format!("delta {name}"), &div(&got[3], vd), &div64(&delta, vd), Tol::f32_dot(sh.head_dim));
    let mut line = Vec::new();
    for (i, what) in ["dQ", "dK", "dV"].iter().enumerate() {
        // at unit scale: a gradient lost to f16 subnormals (or zero) misses by rel_l2 ~1
        let unit = if i == 2 { u.d_o } else { vd };
        let s = assert_close(&format!("{what} {name}"), &div(&got[i], unit), &div64(&want[i], unit), TOL_GRAD);
        let f = f16_sized(&format!("{what} {name}"), &got[i], &exact[i]);
        line.push(format!("{what} max_abs {:.2e} rel_l2 {:.2e} (vs f32 {:.2e})", s.max_abs, s.rel_l2, f.rel_l2));
    }
    super::assert_masked_keys_have_zero_gradient(
        sh,
        x.mask.as_deref(),
        &[got[0].clone(), got[1].clone(), got[2].clone()],
    );
    println!("{name}: {}", line.join("; "));
}

#[test]
fn attention_tile_programs_match_the_rounded_reference_across_shapes_and_masks() {
    let gpu = test_gpu();
    use MaskKind::*;
    let cases = [
        (shape(1, 1, 16, 1, 1), None),
        (shape(2, 2, 16, 5, 17), Padded),
        (shape(1, 2, 32, 7, 33), NonContiguous),
        (shape(2, 1, 64, 3, 62), LeftPadded),
        (shape(1, 1, 128, 5, 12), Padded),
    ];
    for (i, (sh, mask)) in cases.into_iter().enumerate() {
        let case = Case { shape: sh, mask, amp: 1.0 };
        let x = inputs(&case, 300 + i as u64);
        for t in BACKENDS {
            let c = config(&gpu, t, Pass::Forward, &sh).expect("a forward layout fits lavapipe");
            let fwd = check_forward(&gpu, &case, &x, t, c, UNIT);
            match config(&gpu, t, Pass::Backward, &sh) {
                Some(c) => check_backward(&gpu, &case, &x, &fwd, t, c, UNIT),
                // 4-byte emulated operands at Dh 128: four 16x128 tiles alone are 32 KiB.
                Option::None => {
                    assert!(t == Tiles::Emulated16 && sh.head_dim == 128, "{t:?} {sh:?}: no backward layout")
                }
            }
        }
    }
}

#[test]
fn attention_tile_program_with_padding_and_two_subgroups_crosses_partial_tiles() {
    // Two 16-row subgroups, 16-key tiles, padded rows: S = 70 ends inside a query block and a
    // key tile, P·V runs in two rounds of 16 columns at Dh 32.
    let gpu = test_gpu();
    let case = Case { shape: shape(1, 2, 32, 6, 64), mask: MaskKind::NonContiguous, amp: 2.0 };
    let x = inputs(&case, 320);
    let c = FlashConfig { warps: 2, wr: 16, bc: 16, pad: 8 };
    let fwd = check_forward(&gpu, &case, &x, Tiles::Emulated16, c, UNIT);
    check_backward(&gpu, &case, &x, &fwd, Tiles::Emulated16, c, UNIT);
}

#[test]
fn attention_tile_programs_shift_huge_values_and_tiny_gradients_into_f16_range() {
    // V of ±1e5 overflows f16 (max 65504) rounded unscaled, dO of ~1e-9 is below its smallest
    // subnormal (6e-8): without the per-(b, head) shifts O is inf and dQ, dK, dV are zero.
    let gpu = test_gpu();
    let case = Case { shape: shape(2, 2, 32, 5, 40), mask: MaskKind::Padded, amp: 1.0 };
    for u in [Units { v: 1e5, d_o: 1.0 }, Units { v: 1.0, d_o: 1e-9 }, Units { v: 1e5, d_o: 1e-9 }] {
        let mut x = inputs(&case, 360);
        x.v.iter_mut().for_each(|v| *v *= u.v);
        x.d_o.iter_mut().for_each(|v| *v *= u.d_o);
        for t in BACKENDS {
            let sh = &case.shape;
            let c = config(&gpu, t, Pass::Forward, sh).expect("a forward layout fits lavapipe");
            let fwd = check_forward(&gpu, &case, &x, t, c, u);
            assert!(fwd.0.iter().all(|v| v.is_finite()), "{t:?} {u:?}: O not finite");
            let c = config(&gpu, t, Pass::Backward, sh).expect("a backward layout fits lavapipe");
            check_backward(&gpu, &case, &x, &fwd, t, c, u);
        }
    }
}

#[test]
fn attention_tile_backward_refuses_a_layout_over_the_workgroup_memory() {
    let gpu = test_gpu();
    let sh = shape(1, 1, 128, 1, 16);
    let case = Case { shape: sh, mask: MaskKind::None, amp: 1.0 };
    let x = inputs(&case, 330);
    let (q, k, v, d_o) =
        (upload(&gpu, &x.q, "q"), upload(&gpu, &x.k, "k"), upload(&gpu, &x.v, "v"), upload(&gpu, &x.d_o, "do"));
    let n = sh.head_major_len();
    let t: Vec<_> = (0..4).map(|i| poisoned(&gpu, if i == 3 { sh.lse_len() } else { n }, "out")).collect();
    let args = BackwardArgs {
        q: &q,
        k: &k,
        v: &v,
        mask: None,
        o: &q,
        lse: &t[3],
        d_o: &d_o,
        delta: &t[3],
        dq: &t[0],
        dk: &t[1],
        dv: &t[2],
    };
    let huge = FlashConfig { warps: 4, wr: 16, bc: 64, pad: 8 };
    let r = attention::launch_backward_variant(&gpu, &sh, &args, Variant::TileWith(Tiles::Emulated16, huge));
    assert!(matches!(r, Err(Error::TooLarge(_))), "expected TooLarge, got {:?}", r.map(|l| l.len()));
}

/// GQA and causal vs the f64 reference with the options; rows without a visible key give O = 0
/// and lse = EMPTY_ROW_LSE exactly.
#[test]
fn attention_tile_forward_matches_reference_with_causal_and_grouped_queries() {
    let gpu = test_gpu();
    use MaskKind::*;
    let cases = [
        (shape(1, 4, 16, 0, 40), 2, true, None), // 2:1 GQA, causal, S spans blocks at BR 16
        (shape(2, 3, 32, 20, 0), 1, true, LeftPadded), // 3:1, empty rows from left padding
        (shape(1, 2, 16, 5, 30), 1, false, Padded), // 2:1, not causal, joint text + image
        (shape(1, 2, 64, 7, 13), 2, true, NonContiguous),
    ];
    for (i, (sh, kv_heads, causal, mask)) in cases.into_iter().enumerate() {
        let opts = AttnOptions { kv_heads, causal };
        let mut rng = Rng::new(340 + i as u64);
        let kvn = opts.kv_len(&sh);
        let x = Inputs {
            q: rng.vec_uniform(sh.head_major_len(), -1.0, 1.0),
            k: rng.vec_uniform(kvn, -1.0, 1.0),
            v: rng.vec_uniform(kvn, -1.0, 1.0),
            mask: mask_values(&sh, mask),
            d_o: Vec::new(),
        };
        let vis = cpu::Visibility { mask: x.mask.as_deref(), opts, segments: Option::None };
        for t in BACKENDS {
            let c = config(&gpu, t, Pass::Forward, &sh).expect("a forward layout fits lavapipe");
            let (o, lse) = forward(&gpu, &sh, &x, opts, Variant::TileWith(t, c));
            let (want_o, want_lse) = cpu::tile_forward(&sh, &vis, &x.q, &x.k, &x.v, c.bc);
            let name = format!("{t:?} {sh:?} kv_heads {kv_heads} causal {causal} {mask:?}");
            let so = assert_close(&format!("O {name}"), &o, &f32s(&want_o), TOL_O);
            assert_close(&format!("lse {name}"), &lse, &f32s(&want_lse), TOL_LSE);
            let (f32_o, _) = cpu::forward(&sh, &vis, &f64s(&x.q), &f64s(&x.k), &f64s(&x.v));
            let f = f16_sized(&format!("O {name}"), &o, &f32_o);
            let empty = super::options::assert_empty_rows_are_zero(&sh, &want_lse, &o, &lse, &name);
            assert_eq!(empty > 0, mask == LeftPadded, "{name}: {empty} empty rows");
            println!(
                "{name}: O max_abs {:.2e} rel_l2 {:.2e}; vs f32 {:.2e}; {empty} empty rows",
                so.max_abs, so.rel_l2, f.rel_l2
            );
        }
    }
}

#[test]
fn attention_auto_runs_the_portable_kernels_on_a_portable_device() {
    // lavapipe resolves to `portable` (a CPU adapter): Auto must be today's kernels, bit for bit.
    let gpu = test_gpu();
    let family = gpu.kernel_choice().family;
    if Tiles::of(gpu.kernel_choice()).is_some() {
        println!("kernel family {family:?}: the tile programs run under Auto; nothing to compare");
        return;
    }
    let case = Case { shape: shape(2, 2, 16, 5, 17), mask: MaskKind::Padded, amp: 1.0 };
    let x = inputs(&case, 350);
    let sh = &case.shape;
    let opts = AttnOptions::full(sh.heads);
    let (a, b) = (forward(&gpu, sh, &x, opts, Variant::Auto), forward(&gpu, sh, &x, opts, Variant::Portable));
    assert!(a.0 == b.0 && a.1 == b.1, "Auto differs from Portable on a portable device");
}
