//! timestep_embed vs f64 cos/sin at the same f32 argument (output poisoned).

use crate::kernels::test_util::*;
use crate::kernels::timestep_embed::{self, cpu, freqs};
use crate::rng::Rng;
use crate::testing::{assert_close, test_gpu, Tol};

#[test]
fn timestep_embedding_matches_f64_sinusoid_up_to_1000_radians() {
    let gpu = test_gpu();
    let mut rng = Rng::new(1);
    // σ values of the schedule (incl. bf16-rounded 0.98828125), the ends, random, and t = 8 (arg 8000).
    let mut t = vec![0.0f32, 1.0, 0.98828125, 0.02, 0.5, 1e-3, 8.0, -0.75];
    t.extend(rng.vec_uniform(57, 0.0, 1.0));
    let tt = up(&gpu, &t, &[t.len()]);
    let emb = poisoned(&gpu, &[t.len(), 256]);
    gpu.run(&[timestep_embed::launch(&gpu, &timestep_embed::Args { t: &tt, emb: &emb }).unwrap()]).unwrap();
    let got = emb.to_f32(&gpu).unwrap();
    // Range reduction + polynomial: a few f32 ulps of a value in [-1, 1].
    let s = assert_close("emb", &got, &f32s(&cpu::embed(&t)), Tol { abs: 1e-6, rel: 0.0, rel_l2: 5e-7 });
    assert_eq!(timestep_embed::run(&gpu, &tt).unwrap().to_f32(&gpu).unwrap(), got, "apply = launch");
    eprintln!("timestep_embed: max_abs {:.2e} rel_l2 {:.2e}", s.max_abs, s.rel_l2);
}

#[test]
fn timestep_frequencies_follow_diffusers_formula() {
    let f = freqs();
    assert_eq!(f[0], 1.0);
    for (k, &fk) in f.iter().enumerate() {
        let want = (-(10000f64.ln()) * k as f64 / 128.0).exp();
        // the exponent is formed in f32 (as diffusers does): |−ln(1e4)·k| ≤ 1170 carries up to
        // 6e-5 absolute rounding, /128 → ≤ 5e-7 relative in freq
        assert!((fk as f64 - want).abs() <= 1e-6 * want, "freq[{k}] {fk} vs {want}");
    }
    // bit patterns of torch 2.15 `torch.exp(-math.log(10000) * arange(128, float32) / 128)`
    // (torch's exp is 1 ulp off the correctly rounded value at k = 12 and 106 only)
    for (k, bits) in [(1, 0x3f6e39f8u32), (37, 0x3d8eea6c), (64, 0x3c23d70a), (127, 0x38e15c8e)] {
        assert_eq!(f[k].to_bits(), bits, "freq[{k}]");
    }
    // layout: cos first, then sin (flip_sin_to_cos)
    let e = cpu::embed(&[0.0]);
    assert!(e[..128].iter().all(|&v| v == 1.0) && e[128..].iter().all(|&v| v == 0.0));
}
