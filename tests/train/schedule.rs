//! The training schedule vs DiffSynth's own numbers (fixture from tools/gen_schedule_fixture.py,
//! which runs diffsynth 2.1.12's FlowMatchScheduler): the σ table, the bf16 snap, the weights.

use wgdit::rng::Rng;
use wgdit::testing::{assert_close, Tol};
use wgdit::train::schedule::{torch_linspace, Sampling, TrainSchedule};

struct Fixture(Vec<u8>);

impl Fixture {
    fn load() -> Fixture {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/train/schedule.safetensors");
        Fixture(std::fs::read(path).expect("fixture missing: run tools/gen_schedule_fixture.py"))
    }
    fn bytes(&self, name: &str) -> Vec<u8> {
        let st = safetensors::SafeTensors::deserialize(&self.0).expect("fixture parses");
        st.tensor(name).unwrap_or_else(|_| panic!("fixture lacks {name}")).data().to_vec()
    }
    fn f32s(&self, name: &str) -> Vec<f32> {
        self.bytes(name).chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }
    fn i64s(&self, name: &str) -> Vec<i64> {
        self.bytes(name).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    }
}

// The table is computed with torch's f32 operations in torch's order (fused linspace, reciprocal
// times scalar): bit-exact.
const TABLE: Tol = Tol { abs: 0.0, rel: 0.0, rel_l2: 0.0 };
// Weights normalise by a 1000-term sum that torch adds in its own order (ours: f64, rounded):
// the normaliser can differ by an ulp or two, scaling every weight alike.
const WEIGHTS: Tol = Tol { abs: 1e-6, rel: 5e-7, rel_l2: 5e-7 };

#[test]
fn sigma_table_runs_from_one_to_the_terminal_value() {
    let l = torch_linspace(1.0, 0.0, 1001);
    assert_eq!((l[0], l[500], l[1000]), (1.0, 0.5, 0.0));
    let s = TrainSchedule::qwen_image();
    // DiffSynth's own last sigma is 0.01999998 (1 − (1 − s)/scale rounds in f32), not 0.02
    assert_eq!(s.sigmas[0], 1.0);
    assert!((s.sigmas[999] - 0.02).abs() < 5e-8, "sigma[999] = {}", s.sigmas[999]);
    assert!(s.sigmas.windows(2).all(|w| w[1] < w[0]), "sigmas decrease");
}

#[test]
fn sigma_and_timestep_tables_match_diffsynth() {
    let f = Fixture::load();
    let s = TrainSchedule::qwen_image();
    let st = assert_close("sigmas", &s.sigmas, &f.f32s("sigmas"), TABLE);
    let tt = assert_close("timesteps", &s.timesteps, &f.f32s("timesteps"), TABLE);
    let exact = s.sigmas.iter().zip(f.f32s("sigmas")).filter(|(a, b)| **a == *b).count();
    println!(
        "sigmas: max_abs {:.3e} rel_l2 {:.3e}, {exact}/1000 bit-exact; timesteps max_abs {:.3e}",
        st.max_abs, st.rel_l2, tt.max_abs
    );
    // spec §7.1 reference values
    for (i, want) in [(0, 1.0), (100, 0.9533), (500, 0.6955), (750, 0.4361), (999, 0.02)] {
        assert!((s.sigmas[i] - want).abs() < 5e-5, "sigma[{i}] = {} (spec {want})", s.sigmas[i]);
    }
}

#[test]
fn bf16_timestep_snaps_to_the_same_index_as_diffsynth() {
    let f = Fixture::load();
    let s = TrainSchedule::qwen_image();
    let t_bf16 = f.f32s("t_bf16");
    let snap = f.i64s("snap");
    let mut moved = 0;
    for i in 0..1000 {
        let t = wgdit::tensor::DType::BF16.round(&[s.timesteps[i]])[0];
        assert_eq!(t, t_bf16[i], "bf16 timestep {i}");
        assert_eq!(s.snap(t) as i64, snap[i], "snap of index {i} (t = {t})");
        moved += (snap[i] != i as i64) as usize;
    }
    assert!(moved > 0, "the bf16 snap moves some indices");
    println!("bf16 snap: {moved}/1000 indices move, all as in DiffSynth");
}

#[test]
fn loss_weights_match_diffsynth_and_average_one() {
    let f = Fixture::load();
    let s = TrainSchedule::qwen_image();
    let st = assert_close("weights", &s.weights, &f.f32s("weights"), WEIGHTS);
    println!("weights: max_abs {:.3e} rel_l2 {:.3e}", st.max_abs, st.rel_l2);
    let mean = s.weights.iter().map(|&w| w as f64).sum::<f64>() / 1000.0;
    assert!((mean - 1.0).abs() < 1e-5, "mean weight {mean}");
    assert_eq!(s.weights[0], 0.0, "w(σ = 1) = 0");
    let (imax, wmax) = s.weights.iter().enumerate().fold((0, 0f32), |b, (i, &w)| if w > b.1 { (i, w) } else { b });
    assert!((wmax - 1.68).abs() < 0.01 && (s.sigmas[imax] - 0.5).abs() < 0.01, "max {wmax} at σ {}", s.sigmas[imax]);
}

#[test]
fn diffsynth_draws_look_up_sigma_and_weight_at_the_snapped_index() {
    let s = TrainSchedule::qwen_image();
    let mut rng = Rng::new(7);
    for _ in 0..200 {
        let d = s.sample(&mut rng, Sampling::DiffSynth);
        let i = d.drawn.expect("diffsynth draws an index");
        let j = s.snap(d.timestep);
        // bf16 has 8 bits of mantissa: t moves by at most half its spacing (2 below 1024)
        assert!((s.timesteps[i] - d.timestep).abs() <= 2.0, "t {} from table {}", d.timestep, s.timesteps[i]);
        assert_eq!((d.sigma, d.weight), (s.sigmas[j], s.weights[j]));
    }
    // same seed, same draws
    let a: Vec<_> = (0..5).scan(Rng::new(3), |r, _| Some(s.sample(r, Sampling::DiffSynth))).collect();
    let b: Vec<_> = (0..5).scan(Rng::new(3), |r, _| Some(s.sample(r, Sampling::DiffSynth))).collect();
    assert_eq!(a, b);
}

#[test]
fn uniform_draws_are_in_zero_one_with_unit_weight() {
    let s = TrainSchedule::qwen_image();
    let mut rng = Rng::new(11);
    let draws: Vec<_> = (0..2000).map(|_| s.sample(&mut rng, Sampling::Uniform)).collect();
    assert!(draws.iter().all(|d| d.sigma > 0.0 && d.sigma <= 1.0 && d.weight == 1.0 && d.timestep == d.sigma * 1000.0));
    let mean = draws.iter().map(|d| d.sigma as f64).sum::<f64>() / 2000.0;
    assert!((mean - 0.5).abs() < 0.03, "mean σ {mean}");
}

#[test]
fn add_noise_interpolates_and_the_target_is_noise_minus_x0() {
    let (xt, v) = wgdit::train::schedule::noisy_and_target(&[1.0, -2.0], &[0.5, 4.0], 0.25);
    assert_eq!(xt, [0.875, -0.5]);
    assert_eq!(v, [-0.5, 6.0]);
}
