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
        for op in [Op::Add, Op::Mul, Op::Silu, Op::GeluTanh, Op::GeluErf] {
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
fn erfc_reference_matches_tabulated_values() {
    // erfc values from Abramowitz & Stegun Table 7.1 / mpmath (15+ digits).
    let table = [
        (0.0, 1.0),
        (0.5, 0.4795001221869535),
        (1.0, 0.15729920705028513),
        (2.0, 0.004677734981047266),
        (2.5, 0.000_406_952_017_444_959),
        (3.0, 2.209049699858544e-05),
        (5.0, 1.537_459_794_428_035e-12),
        (7.0, 4.183825607779414e-23),
        (-1.0, 1.8427007929497148),
    ];
    for (z, want) in table {
        let got = cpu::erfc(z);
        assert!((got - want).abs() <= 1e-12 * want, "erfc({z}) = {got}, want {want}");
    }
}

/// Exact GELU on a dense grid of [-10, 10] (plus the tails) vs the f64 reference. Measured on
/// lavapipe (Mesa 22.3): max |err| 3.8e-7 over [-10, 10] (below 0.5 ulp of 10), 1.1e-7 for |x| ≤ 1;
/// relative error 4.6e-7 for x ≥ -1, 8.4e-7 down to x = -3 and 6.7e-6 down to -10 (|gelu| ≈ 8e-23
/// there): the negative tail's error is the f32 rounding of the exp argument −x²/2 (≈ 50·6e-8 at
/// x = −10) plus WGSL's exp accuracy (3 + 2|arg| ulp allowed). Bounds leave about 2× headroom.
#[test]
fn gelu_erf_is_accurate_over_minus_10_to_10() {
    let gpu = test_gpu();
    let n = 200_001;
    let mut a: Vec<f32> = (0..n).map(|i| -10.0 + 20.0 * i as f32 / (n - 1) as f32).collect();
    a.extend([-1e4f32, -90.0, -14.0, -1e-30, 0.0, 1e-30, 14.0, 90.0, 1e4, 3e38, -3e38]);
    let t = Tensor::from_f32(&gpu, &a, &[a.len()], DType::F32, "a").unwrap();
    let y = Tensor::zeros(&gpu, &[a.len()], DType::F32, "y").unwrap();
    gpu.poison(&y.buffer);
    gpu.run(&[elementwise::launch_forward(&gpu, Op::GeluErf, &t, None, &y).unwrap()]).unwrap();
    let got = y.to_f32(&gpu).unwrap();
    // (lowest x, highest x, max abs error, max relative error) per range
    let mut ranges = [
        (-1.0, 1.0, 0f64, 0f64),
        (-10.0, 10.0, 0.0, 0.0),
        (-3.0, f64::INFINITY, 0.0, 0.0),
        (-1.0, f64::INFINITY, 0.0, 0.0),
    ];
    for (&x, &g) in a.iter().zip(&got) {
        let want = cpu::gelu_erf(x as f64);
        assert!(g.is_finite(), "gelu_erf({x}) = {g}");
        let err = (g as f64 - want).abs();
        for r in ranges.iter_mut().filter(|r| (r.0..=r.1).contains(&(x as f64))) {
            r.2 = r.2.max(err);
            if want.abs() >= 1e-30 {
                r.3 = r.3.max(err / want.abs());
            }
        }
    }
    let bounds = [(2.5e-7, 1.0), (1e-6, 1.5e-5), (1.0, 3e-6), (1.0, 1e-6)]; // (abs, rel) per range
    for (r, (abs, rel)) in ranges.iter().zip(bounds) {
        println!("gelu_erf on [{}, {}]: max abs {:.2e}, max rel {:.2e}", r.0, r.1, r.2, r.3);
        assert!(r.2 <= abs && r.3 <= rel, "gelu_erf on [{}, {}]: abs {:.2e} rel {:.2e}", r.0, r.1, r.2, r.3);
    }
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

#[test]
fn chunked_submissions_give_the_same_bits_as_one_submission() {
    // 301 dependent dispatches ping-ponging between two buffers (y = x + c): split into
    // submissions of 7 (43 submissions, the last short) they must see every earlier write.
    let gpu = test_gpu();
    let n = 1000;
    let mut rng = crate::rng::Rng::new(9);
    let (x0, c) = (rng.vec_uniform(n, -1.0, 1.0), rng.vec_uniform(n, -1e-2, 1e-2));
    let mut want = x0.clone();
    for _ in 0..301 {
        want.iter_mut().zip(&c).for_each(|(w, c)| *w += c);
    }
    let run = |chunk: usize| {
        let up = |v: &[f32]| Tensor::from_f32(&gpu, v, &[n], DType::F32, "x").unwrap();
        let (a, b, ct) = (up(&x0), up(&x0), up(&c));
        let bound: Vec<_> = (0..301)
            .map(|k| {
                let (src, dst) = if k % 2 == 0 { (&a, &b) } else { (&b, &a) };
                gpu.bind(&elementwise::launch_forward(&gpu, Op::Add, src, Some(&ct), dst).unwrap()).unwrap()
            })
            .collect();
        gpu.set_submit_chunk(chunk);
        gpu.submit(&bound.iter().collect::<Vec<_>>()).unwrap();
        gpu.set_submit_chunk(crate::gpu::SUBMIT_CHUNK);
        b.to_f32(&gpu).unwrap() // step 300 (even) wrote b last
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let one = run(0);
    assert_eq!(bits(&one), bits(&want), "one submission vs the f32 host loop");
    for chunk in [1, 7, 128] {
        assert_eq!(bits(&run(chunk)), bits(&one), "chunks of {chunk}");
    }
}
