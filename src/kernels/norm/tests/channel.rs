//! channel_rms_norm (with and without SiLU) and softmax_rows vs their f64 references at awkward
//! shapes, outputs poisoned with NaN.

use crate::kernels::norm::{channel_rms_norm, softmax_rows};
use crate::kernels::test_util::*;
use crate::rng::Rng;
use crate::testing::{assert_close, test_gpu, Tol};

#[test]
fn channel_rms_norm_matches_reference_at_awkward_shapes() {
    let gpu = test_gpu();
    for (i, &(rows, c)) in [(1, 1), (3, 4), (17, 3), (65, 8), (257, 17), (9, 384)].iter().enumerate() {
        for silu in [false, true] {
            let mut rng = Rng::new(i as u64);
            let mut x = normal(&mut rng, rows * c, 2.0);
            if rows > 2 {
                x[c..2 * c].fill(0.0); // an all-zero pixel: the 1e-12 clamp keeps it 0, not NaN
            }
            let g = rng.vec_uniform(c, 0.5, 1.5);
            let (tx, tg, y) = (up(&gpu, &x, &[rows, c]), up(&gpu, &g, &[c]), poisoned(&gpu, &[rows, c]));
            let a = channel_rms_norm::Args { x: &tx, gamma: &tg, silu, y: &y };
            gpu.run(&[channel_rms_norm::launch_forward(&gpu, &a).unwrap()]).unwrap();
            let want = f32s(&channel_rms_norm::cpu::forward(&f64s(&x), &f64s(&g), silu));
            // One f32 sum of C squares, a sqrt, a division and (SiLU) an exp per element.
            let tol = Tol { abs: 2e-6, rel: 1e-5, rel_l2: 2e-6 };
            assert_close(&format!("channel_rms_norm {rows}x{c} silu={silu}"), &y.to_f32(&gpu).unwrap(), &want, tol);
        }
    }
}

#[test]
fn softmax_rows_matches_reference_at_awkward_shapes() {
    let gpu = test_gpu();
    for (i, &(rows, cols)) in [(1, 1), (3, 17), (17, 300), (5, 1000)].iter().enumerate() {
        let mut rng = Rng::new(50 + i as u64);
        let x = normal(&mut rng, rows * cols, 4.0);
        let (tx, y) = (up(&gpu, &x, &[rows, cols]), poisoned(&gpu, &[rows, cols]));
        gpu.run(&[softmax_rows::launch_forward(&gpu, &tx, &y, rows, cols).unwrap()]).unwrap();
        let want = f32s(&softmax_rows::cpu::forward(&f64s(&x), cols));
        assert_close(&format!("softmax {rows}x{cols}"), &y.to_f32(&gpu).unwrap(), &want, Tol::F32_ELEMENTWISE);
    }
}
