//! channel_norm_denom and softmax_rows vs their f64 references at awkward shapes, outputs
//! poisoned with NaN. (The norm applied in the conv's gather is tested in kernels::conv.)

use crate::kernels::norm::{channel_norm_denom, softmax_rows};
use crate::kernels::test_util::*;
use crate::rng::Rng;
use crate::testing::{assert_close, test_gpu, Tol};

#[test]
fn channel_norm_denom_matches_reference_at_awkward_shapes() {
    let gpu = test_gpu();
    for (i, &(rows, c)) in [(1, 1), (3, 4), (17, 3), (65, 8), (257, 17), (9, 384)].iter().enumerate() {
        let mut rng = Rng::new(i as u64);
        let mut x = normal(&mut rng, rows * c, 2.0);
        if rows > 2 {
            x[c..2 * c].fill(0.0); // an all-zero pixel: the 1e-12 clamp, not a zero denominator
        }
        let (tx, d) = (up(&gpu, &x, &[rows, c]), poisoned(&gpu, &[rows]));
        gpu.run(&[channel_norm_denom::launch_forward(&gpu, &tx, c, &d).unwrap()]).unwrap();
        let want = f32s(&channel_norm_denom::cpu::denom(&f64s(&x), c));
        // One f32 sum of C squares and a sqrt.
        let tol = Tol { abs: 1e-12, rel: 1e-5, rel_l2: 2e-6 };
        assert_close(&format!("channel_norm_denom {rows}x{c}"), &d.to_f32(&gpu).unwrap(), &want, tol);
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
