//! Activation backward kernels vs the f64 reference (outputs poisoned); the reference derivative
//! vs central finite differences of the forward reference.

use crate::kernels::elementwise::backward::{self as elementwise_backward, cpu};
use crate::kernels::elementwise::{cpu as fwd, Op};
use crate::kernels::test_util::*;
use crate::rng::Rng;
use crate::testing::{assert_close, test_gpu, Tol};

#[test]
fn activation_backward_matches_reference_at_awkward_sizes() {
    let gpu = test_gpu();
    let mut rng = Rng::new(1);
    for &n in &[1usize, 3, 17, 65, 257, 4099] {
        let x = rng.vec_uniform(n, -8.0, 8.0);
        let dy = normal(&mut rng, n, 1.0);
        let (tx, tdy) = (up(&gpu, &x, &[n]), up(&gpu, &dy, &[n]));
        for op in [Op::Silu, Op::GeluTanh, Op::GeluErf] {
            let dx = poisoned(&gpu, &[n]);
            gpu.run(&[elementwise_backward::launch_backward(&gpu, op, &tx, &tdy, &dx).unwrap()]).unwrap();
            let s = assert_close(
                &format!("{op:?}' n={n}"),
                &dx.to_f32(&gpu).unwrap(),
                &cpu::backward(op, &x, &dy),
                Tol::F32_ELEMENTWISE,
            );
            if n == 4099 {
                eprintln!("{op:?}': max_abs {:.2e} rel_l2 {:.2e}", s.max_abs, s.rel_l2);
            }
        }
    }
}

#[test]
fn activation_backward_stays_finite_for_huge_inputs() {
    let gpu = test_gpu();
    let x = vec![-3e38f32, -1e13, -2e7, -90.0, -20.0, -19.9, 0.0, 19.9, 20.0, 90.0, 2e7, 1e13, 3e38];
    let dy = vec![1.0f32; x.len()];
    let (tx, tdy) = (up(&gpu, &x, &[x.len()]), up(&gpu, &dy, &[x.len()]));
    for op in [Op::Silu, Op::GeluTanh, Op::GeluErf] {
        let dx = poisoned(&gpu, &[x.len()]);
        gpu.run(&[elementwise_backward::launch_backward(&gpu, op, &tx, &tdy, &dx).unwrap()]).unwrap();
        // the f64 reference is finite everywhere except silu' at -3e38 (exp overflow → 0·(-inf) in f64 too)
        let want: Vec<f32> = cpu::backward(op, &x, &dy).iter().map(|v| if v.is_nan() { 0.0 } else { *v }).collect();
        assert_close(&format!("{op:?}' huge"), &dx.to_f32(&gpu).unwrap(), &want, Tol::F32_ELEMENTWISE);
    }
}

#[test]
fn mul_backward_gives_both_operand_gradients() {
    let gpu = test_gpu();
    let mut rng = Rng::new(2);
    let n = 65;
    let (a, b, dy) = (normal(&mut rng, n, 1.0), normal(&mut rng, n, 1.0), normal(&mut rng, n, 1.0));
    let (ta, tb, tdy) = (up(&gpu, &a, &[n]), up(&gpu, &b, &[n]), up(&gpu, &dy, &[n]));
    let (da, db) = (poisoned(&gpu, &[n]), poisoned(&gpu, &[n]));
    gpu.run(&elementwise_backward::mul_backward(&gpu, &ta, &tb, &tdy, &da, &db).unwrap()).unwrap();
    let want = |o: &[f32]| -> Vec<f32> { dy.iter().zip(o).map(|(d, v)| d * v).collect() };
    assert_close("da", &da.to_f32(&gpu).unwrap(), &want(&b), Tol::F32_ELEMENTWISE);
    assert_close("db", &db.to_f32(&gpu).unwrap(), &want(&a), Tol::F32_ELEMENTWISE);
}

#[test]
fn activation_derivatives_match_finite_differences() {
    let mut rng = Rng::new(3);
    for op in [Op::Silu, Op::GeluTanh, Op::GeluErf] {
        let f = |x: f64| match op {
            Op::Silu => fwd::silu(x),
            Op::GeluTanh => fwd::gelu_tanh(x),
            _ => fwd::gelu_erf(x),
        };
        for _ in 0..200 {
            let x = rng.range(-8.0, 8.0) as f64;
            let h = 1e-5;
            let fd = (f(x + h) - f(x - h)) / (2.0 * h);
            let d = cpu::derivative(op, x);
            assert!((fd - d).abs() < 1e-8 * d.abs().max(1.0), "{op:?}'({x}): fd {fd} vs {d}");
        }
    }
}
