//! GEMM backward (dx, dW/db, LoRA gradients) vs the f64 CPU reference on grouped row-range
//! problems, outputs poisoned (or pre-filled, for `+=`); and the CPU reference vs central finite
//! differences of L = Σ y·dy in f64.

use crate::gpu::Gpu;
use crate::kernels::gemm::backward::{self as bwd, cpu, DwArgs, DxArgs, LoraGradArgs};
use crate::kernels::gemm::tests::forward::TILE_VARIANTS;
use crate::kernels::gemm::{cpu as fwd, GemmProblem, LoraProblem};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::testing::{assert_close, test_gpu, Tol};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}
fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&a| a as f32).collect()
}
fn t2(gpu: &Gpu, v: &[f32], rows: usize, cols: usize, dtype: DType, label: &str) -> Tensor {
    Tensor::from_f32(gpu, v, &[rows, cols], dtype, label).unwrap()
}
fn t1(gpu: &Gpu, v: &[f32], dtype: DType, label: &str) -> Tensor {
    Tensor::from_f32(gpu, v, &[v.len()], dtype, label).unwrap()
}

/// Two problems splitting m rows unevenly (or one when m < 2), weights at odd-sized gaps.
fn two_problems(m: usize, n: usize, k: usize) -> Vec<GemmProblem> {
    if m < 2 {
        return vec![GemmProblem::rows(0, m).alpha(0.75)];
    }
    let a = m / 3 + 1;
    vec![GemmProblem::rows(0, a).alpha(0.75), GemmProblem::rows(a, m - a).weight(n * k + 2).bias(n + 1).alpha(-1.25)]
}

fn weight_len(problems: &[GemmProblem], n: usize, k: usize) -> usize {
    problems.iter().map(|p| p.weight_offset + n * k).max().unwrap()
}

#[test]
fn dx_matches_reference_for_all_weight_dtypes_written_and_accumulated() {
    let gpu = test_gpu();
    let mut rng = Rng::new(21);
    let shapes = [(1, 1, 1), (17, 65, 3), (65, 3, 257), (3, 257, 17), (96, 192, 64), (33, 17, 66)];
    for dtype in DTYPES {
        for &(m, n, k) in &shapes {
            let problems = two_problems(m, n, k);
            let dy = rng.vec_uniform(m * n, -1.0, 1.0);
            let w = dtype.round(&rng.vec_uniform(weight_len(&problems, n, k), -1.0, 1.0));
            let dx0 = rng.vec_uniform(m * k, -1.0, 1.0);
            let (tdy, tw) = (t2(&gpu, &dy, m, n, DType::F32, "dy"), t1(&gpu, &w, dtype, "w"));
            for accumulate in [false, true] {
                let dx = t2(&gpu, &dx0, m, k, DType::F32, "dx");
                if !accumulate {
                    gpu.poison(&dx.buffer);
                }
                let args = DxArgs { dy: &tdy, dy_cols: None, weight: &tw, problems: &problems, dx: &dx, accumulate };
                gpu.run(&[bwd::launch_dx(&gpu, &args).unwrap()]).unwrap();
                let mut want = f64s(&dx0);
                cpu::dx(&f64s(&dy), n, &f64s(&w), k, &problems, &mut want, accumulate);
                let name = format!("dx {m}x{n}x{k} {} accumulate={accumulate}", dtype.name());
                let s = assert_close(&name, &dx.to_f32(&gpu).unwrap(), &f32s(&want), Tol::f32_dot(n));
                eprintln!("{name}: max_abs {:.2e} rel_l2 {:.2e}", s.max_abs, s.rel_l2);
                // The tile programs against the reference on f16-rounded operands (dy rows scaled).
                let (dy_h, w_h): (Vec<f32>, Vec<f32>) =
                    (fwd::mixed_rows(&dy, n), w.iter().map(|&v| fwd::round_f16(v)).collect());
                let mut want = f64s(&dx0);
                cpu::dx(&f64s(&dy_h), n, &f64s(&w_h), k, &problems, &mut want, accumulate);
                for v in TILE_VARIANTS {
                    let dx = t2(&gpu, &dx0, m, k, DType::F32, "dx");
                    if !accumulate {
                        gpu.poison(&dx.buffer);
                    }
                    let args =
                        DxArgs { dy: &tdy, dy_cols: None, weight: &tw, problems: &problems, dx: &dx, accumulate };
                    gpu.run(&[bwd::launch_dx_variant(&gpu, &args, v).unwrap()]).unwrap();
                    assert_close(&format!("{name} {v:?}"), &dx.to_f32(&gpu).unwrap(), &f32s(&want), Tol::f32_dot(n));
                }
            }
        }
    }
}

#[test]
fn dx_tile_programs_keep_gradients_of_1e_minus_9_that_f16_alone_would_flush() {
    // Gradients far below f16's smallest normal (6.1e-5) survive: each dy row has its own scale.
    let gpu = test_gpu();
    let mut rng = Rng::new(25);
    let (m, n, k) = (20, 70, 40);
    let problems = vec![GemmProblem::rows(0, m)];
    let dy: Vec<f32> = rng.vec_uniform(m * n, -1.0, 1.0).iter().map(|v| v * 1e-9).collect();
    let w = DType::BF16.round(&rng.vec_uniform(n * k, -1.0, 1.0));
    let (tdy, tw) = (t2(&gpu, &dy, m, n, DType::F32, "dy"), t1(&gpu, &w, DType::BF16, "w"));
    let mut want = vec![0.0; m * k];
    cpu::dx(&f64s(&dy), n, &f64s(&w), k, &problems, &mut want, false);
    let want: Vec<f32> = want.iter().map(|v| (v * 1e9) as f32).collect();
    for v in TILE_VARIANTS {
        let dx = t2(&gpu, &vec![0.0; m * k], m, k, DType::F32, "dx");
        let args = DxArgs { dy: &tdy, dy_cols: None, weight: &tw, problems: &problems, dx: &dx, accumulate: false };
        gpu.run(&[bwd::launch_dx_variant(&gpu, &args, v).unwrap()]).unwrap();
        let got: Vec<f32> = dx.to_f32(&gpu).unwrap().iter().map(|v| v * 1e9).collect();
        let s = crate::testing::stats(&got, &want);
        assert!(s.rel_l2 < 2e-3, "{v:?}: rel_l2 {:.2e} of gradients at 1e-9", s.rel_l2);
    }
}

#[test]
fn dw_and_db_accumulate_over_each_problems_rows() {
    let gpu = test_gpu();
    let mut rng = Rng::new(22);
    for &(m, n, k) in &[(1, 1, 1), (17, 65, 3), (257, 3, 17), (3, 17, 65), (96, 48, 64)] {
        let problems = two_problems(m, n, k);
        let dy = rng.vec_uniform(m * n, -1.0, 1.0);
        let x = rng.vec_uniform(m * k, -1.0, 1.0);
        let dw0 = rng.vec_uniform(weight_len(&problems, n, k), -1.0, 1.0);
        let db0 = rng.vec_uniform(2 * n + 1, -1.0, 1.0);
        let (dw, db) = (t1(&gpu, &dw0, DType::F32, "dw"), t1(&gpu, &db0, DType::F32, "db"));
        let args = DwArgs {
            dy_cols: None,
            dy: &t2(&gpu, &dy, m, n, DType::F32, "dy"),
            x: &t2(&gpu, &x, m, k, DType::F32, "x"),
            problems: &problems,
            dw: &dw,
            db: Some(&db),
        };
        gpu.run(&[bwd::launch_dw(&gpu, &args).unwrap()]).unwrap();
        let (mut want_w, mut want_b) = (f64s(&dw0), f64s(&db0));
        cpu::dw(&f64s(&dy), n, &f64s(&x), k, &problems, &mut want_w, Some(&mut want_b));
        let tol = Tol::f32_dot(m); // a sum over the problem's rows, added to an O(1) value
        let s = assert_close(&format!("dw {m}x{n}x{k}"), &dw.to_f32(&gpu).unwrap(), &f32s(&want_w), tol);
        assert_close(&format!("db {m}x{n}x{k}"), &db.to_f32(&gpu).unwrap(), &f32s(&want_b), tol);
        eprintln!("dw {m}x{n}x{k}: max_abs {:.2e} rel_l2 {:.2e}", s.max_abs, s.rel_l2);
    }
}

/// The two-stream layout: txt rows [0, 32), img rows [32, 96), separate A/B blocks and scales.
fn lora_problems(n: usize, k: usize, r: usize) -> Vec<LoraProblem> {
    vec![
        LoraProblem { row0: 0, rows: 32, a_offset: 0, b_offset: 0, scale: 0.5 },
        LoraProblem { row0: 32, rows: 64, a_offset: r * k, b_offset: n * r, scale: 2.0 },
    ]
}

#[test]
fn lora_grads_match_reference_on_two_stream_problems() {
    let gpu = test_gpu();
    let mut rng = Rng::new(23);
    let (m, n, k, r) = (96, 48, 65, 8);
    let problems = lora_problems(n, k, r);
    let u = |rng: &mut Rng, len| rng.vec_uniform(len, -1.0, 1.0);
    let (x, dy, t, a, b) =
        (u(&mut rng, m * k), u(&mut rng, m * n), u(&mut rng, m * r), u(&mut rng, 2 * r * k), u(&mut rng, 2 * n * r));
    let (da0, db0, dx0) = (u(&mut rng, 2 * r * k), u(&mut rng, 2 * n * r), u(&mut rng, m * k));
    let (da, db, dx) =
        (t1(&gpu, &da0, DType::F32, "dA"), t1(&gpu, &db0, DType::F32, "dB"), t2(&gpu, &dx0, m, k, DType::F32, "dx"));
    let dt = Tensor::zeros(&gpu, &[m, r], DType::F32, "dt").unwrap();
    gpu.poison(&dt.buffer);
    let args = LoraGradArgs {
        dy_cols: None,
        x: &t2(&gpu, &x, m, k, DType::F32, "x"),
        dy: &t2(&gpu, &dy, m, n, DType::F32, "dy"),
        t: &t2(&gpu, &t, m, r, DType::F32, "t"),
        a: &t1(&gpu, &a, DType::F32, "A"),
        b: &t1(&gpu, &b, DType::F32, "B"),
        rank: r,
        problems: &problems,
        da: &da,
        db: &db,
        dt: &dt,
        dx: Some(&dx),
    };
    gpu.run(&bwd::launch_lora_grads(&gpu, &args).unwrap()).unwrap();
    let (mut wa, mut wb, mut wx) = (f64s(&da0), f64s(&db0), f64s(&dx0));
    let wt = cpu::lora_grads(
        &f64s(&x),
        k,
        &f64s(&dy),
        n,
        &f64s(&t),
        &f64s(&a),
        &f64s(&b),
        r,
        &problems,
        &mut wa,
        &mut wb,
        Some(&mut wx),
    );
    // dt: a length-n dot; dA, dB: sums over 64 rows of such terms (the inputs of dA already carry
    // dt's rounding, relative 1e-6 · sqrt(n)); dx adds a length-r dot of dt.
    for (name, buf, want, tol) in [
        ("dt", &dt, &wt, Tol::f32_dot(n)),
        ("dB", &db, &wb, Tol::f32_dot(64)),
        ("dA", &da, &wa, Tol::f32_dot(64 * n)),
        ("dx", &dx, &wx, Tol::f32_dot(n)),
    ] {
        let s = assert_close(&format!("lora {name}"), &buf.to_f32(&gpu).unwrap(), &f32s(want), tol);
        eprintln!("lora {name}: max_abs {:.2e} rel_l2 {:.2e}", s.max_abs, s.rel_l2);
    }
}

/// Parameters of y = x·Wᵀ + b + t·Bᵀ with t = s·x·Aᵀ, two problems, all f64.
#[derive(Clone)]
struct Lin {
    x: Vec<f64>,
    w: Vec<f64>,
    b: Vec<f64>,
    a: Vec<f64>,
    bm: Vec<f64>,
}

const FD: (usize, usize, usize, usize) = (7, 4, 5, 2); // m, n, k, r

fn fd_problems() -> (Vec<GemmProblem>, Vec<LoraProblem>) {
    let (_, n, k, r) = FD;
    let lora = vec![
        LoraProblem { row0: 0, rows: 3, a_offset: 0, b_offset: 0, scale: 0.7 },
        LoraProblem { row0: 3, rows: 4, a_offset: r * k, b_offset: n * r, scale: -1.3 },
    ];
    let alpha = [0.8, 1.1];
    let lin = lora
        .iter()
        .enumerate()
        .map(|(i, p)| GemmProblem::rows(p.row0, p.rows).weight(i * n * k).bias(i * n).lora(p.b_offset).alpha(alpha[i]))
        .collect();
    (lin, lora)
}

/// t = s·x·Aᵀ per problem (the forward's saved down-projection).
fn fd_t(p: &Lin) -> Vec<f64> {
    let (m, _, k, r) = FD;
    let (_, lora) = fd_problems();
    let probs: Vec<_> =
        lora.iter().map(|q| GemmProblem::rows(q.row0, q.rows).weight(q.a_offset).alpha(q.scale)).collect();
    let mut t = vec![0.0; m * r];
    let g = fwd::Gemm {
        x: &p.x,
        k,
        weight: &p.a,
        n: r,
        problems: &probs,
        bias: None,
        lora: None,
        gelu: false,
        gate: None,
        residual: None,
        ldy: r,
        y_col0: 0,
    };
    fwd::gemm(&g, &mut t);
    t
}

/// L = Σ y·dy.
fn fd_loss(p: &Lin, dy: &[f64]) -> f64 {
    let (m, n, k, r) = FD;
    let (lin, _) = fd_problems();
    let t = fd_t(p);
    let mut y = vec![0.0; m * n];
    let g = fwd::Gemm {
        x: &p.x,
        k,
        weight: &p.w,
        n,
        problems: &lin,
        bias: Some(&p.b),
        lora: Some((&t, &p.bm, r)),
        gelu: false,
        gate: None,
        residual: None,
        ldy: n,
        y_col0: 0,
    };
    fwd::gemm(&g, &mut y);
    y.iter().zip(dy).map(|(a, b)| a * b).sum()
}

/// Central differences of L in every element of the field `pick` selects.
fn fd_grad(p: &Lin, dy: &[f64], pick: fn(&mut Lin) -> &mut Vec<f64>) -> Vec<f64> {
    let h = 1e-3;
    let len = pick(&mut p.clone()).len();
    (0..len)
        .map(|i| {
            let (mut hi, mut lo) = (p.clone(), p.clone());
            pick(&mut hi)[i] += h;
            pick(&mut lo)[i] -= h;
            (fd_loss(&hi, dy) - fd_loss(&lo, dy)) / (2.0 * h)
        })
        .collect()
}

#[test]
fn backward_references_match_central_finite_differences_in_f64() {
    let (m, n, k, r) = FD;
    let mut rng = Rng::new(24);
    let mut u = |len| f64s(&rng.vec_uniform(len, -1.0, 1.0));
    let p = Lin { x: u(m * k), w: u(2 * n * k), b: u(2 * n), a: u(2 * r * k), bm: u(2 * n * r) };
    let dy = u(m * n);
    let (lin, lora) = fd_problems();
    // Analytic: base linear, then the LoRA path (its dx adds to the base dx).
    let mut dx = vec![0.0; m * k];
    cpu::dx(&dy, n, &p.w, k, &lin, &mut dx, false);
    let (mut dw, mut db) = (vec![0.0; p.w.len()], vec![0.0; p.b.len()]);
    cpu::dw(&dy, n, &p.x, k, &lin, &mut dw, Some(&mut db));
    let (mut da, mut dbm) = (vec![0.0; p.a.len()], vec![0.0; p.bm.len()]);
    cpu::lora_grads(&p.x, k, &dy, n, &fd_t(&p), &p.a, &p.bm, r, &lora, &mut da, &mut dbm, Some(&mut dx));
    type Pick = fn(&mut Lin) -> &mut Vec<f64>;
    let fields: [(&str, &Vec<f64>, Pick); 5] = [
        ("dx", &dx, |q| &mut q.x),
        ("dW", &dw, |q| &mut q.w),
        ("db", &db, |q| &mut q.b),
        ("dA", &da, |q| &mut q.a),
        ("dB", &dbm, |q| &mut q.bm),
    ];
    for (name, got, pick) in fields {
        let want = fd_grad(&p, &dy, pick);
        // L is linear in each parameter: the central difference is exact up to f64 rounding.
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-9, "{name}: analytic vs finite differences max error {err:.3e}\n{got:?}\n{want:?}");
    }
}
