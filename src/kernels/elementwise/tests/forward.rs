//! Element-wise kernels vs their f64 CPU reference, outputs poisoned before the run.

use crate::kernels::elementwise::{self, cpu, Op};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::testing::{assert_close, test_gpu, Tol};

#[test]
fn elementwise_ops_match_cpu_reference_at_awkward_sizes() {
    let gpu = test_gpu();
    let mut rng = Rng::new(1);
    for &n in &[1usize, 3, 17, 65, 257, 4099] {
        let a = rng.vec_uniform(n, -6.0, 6.0);
        let b = rng.vec_uniform(n, -2.0, 2.0);
        let ta = Tensor::from_f32(&gpu, &a, &[n], DType::F32, "a").unwrap();
        let tb = Tensor::from_f32(&gpu, &b, &[n], DType::F32, "b").unwrap();
        for op in [Op::Add, Op::Mul, Op::Silu, Op::GeluTanh] {
            let y = Tensor::zeros(&gpu, &[n], DType::F32, "y").unwrap();
            gpu.poison(&y.buffer);
            let bb = (!op.is_unary()).then_some(&tb);
            gpu.run(&[elementwise::launch_forward(&gpu, op, &ta, bb, &y).unwrap()]).unwrap();
            let got = y.to_f32(&gpu).unwrap();
            let want = cpu::apply(op, &a, (!op.is_unary()).then_some(&b[..]));
            assert_close(&format!("{op:?} n={n}"), &got, &want, Tol::F32_ELEMENTWISE);
        }
    }
}

#[test]
fn gelu_tanh_stays_finite_for_large_inputs() {
    let gpu = test_gpu();
    let a = vec![-1e4f32, -90.0, -10.0, 10.0, 90.0, 1e4, 2e7];
    let t = Tensor::from_f32(&gpu, &a, &[a.len()], DType::F32, "a").unwrap();
    let y = elementwise::run_forward(&gpu, Op::GeluTanh, &t, None).unwrap().to_f32(&gpu).unwrap();
    assert_close("gelu large", &y, &cpu::apply(Op::GeluTanh, &a, None), Tol::F32_ELEMENTWISE);
}

#[test]
fn fill_writes_every_element_past_one_grid_row() {
    let gpu = test_gpu();
    for &n in &[1usize, 257, 256 * 65535 + 3] {
        let y = Tensor::zeros(&gpu, &[n], DType::F32, "y").unwrap();
        gpu.poison(&y.buffer);
        gpu.run(&[crate::kernels::fill::launch(&gpu, &y, 0.25).unwrap()]).unwrap();
        let got = y.to_f32(&gpu).unwrap();
        assert!(got.iter().all(|&v| v == 0.25), "fill n={n}: not every element written");
    }
}

#[test]
fn clamp_matches_torch_clamp_at_awkward_sizes() {
    let gpu = test_gpu();
    let mut rng = Rng::new(3);
    for &n in &[1usize, 17, 257] {
        let a = rng.vec_uniform(n, -3.0, 3.0);
        let ta = Tensor::from_f32(&gpu, &a, &[n], DType::F32, "a").unwrap();
        let y = Tensor::zeros(&gpu, &[n], DType::F32, "y").unwrap();
        gpu.poison(&y.buffer);
        gpu.run(&[elementwise::launch_clamp(&gpu, &ta, &y, -1.0, 1.0).unwrap()]).unwrap();
        let want: Vec<f32> = a.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        assert_close(&format!("clamp n={n}"), &y.to_f32(&gpu).unwrap(), &want, Tol { abs: 0.0, rel: 0.0, rel_l2: 0.0 });
    }
}
