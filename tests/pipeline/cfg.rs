//! `wgdit::pipeline::cfg` against the Qwen pipelines' true-CFG lines run in torch (fixture: `cfg/*`).

use crate::common::{assert_bits, f32s, shape};
use wgdit::pipeline::cfg::{l2_norm, true_cfg};

const CASES: [&str; 5] = ["c64", "c16", "c13", "c7", "c3"];

#[test]
fn true_cfg_matches_the_pipeline_bit_for_bit() {
    for name in CASES {
        let channels = *shape(&format!("cfg/{name}/cond")).last().unwrap();
        let cond = f32s(&format!("cfg/{name}/cond"));
        let neg = f32s(&format!("cfg/{name}/neg"));
        for scale in [4.0, 2.5] {
            let want = f32s(&format!("cfg/{name}/s{scale:.1}"));
            assert_bits(&true_cfg(&cond, &neg, scale, channels), &want, &format!("{name} scale {scale}"));
        }
    }
}

#[test]
fn l2_norm_matches_torch_norm_including_odd_tails() {
    for name in CASES {
        let channels = *shape(&format!("cfg/{name}/cond")).last().unwrap();
        let cond = f32s(&format!("cfg/{name}/cond"));
        let got: Vec<f32> = cond.chunks_exact(channels).map(l2_norm).collect();
        assert_bits(&got, &f32s(&format!("cfg/{name}/norm")), &format!("{name} norm"));
    }
}

#[test]
fn guidance_scale_one_returns_the_conditional_prediction_rescaled_to_itself() {
    let cond = f32s("cfg/c64/cond");
    let neg = f32s("cfg/c64/neg");
    let out = true_cfg(&cond, &neg, 1.0, 64);
    // comb = neg + 1·(cond − neg) is cond up to rounding, so the output is cond to a few ulps.
    for (o, c) in out.iter().zip(&cond) {
        assert!((o - c).abs() <= 4.0 * f32::EPSILON * c.abs().max(1.0), "{o} vs {c}");
    }
}
