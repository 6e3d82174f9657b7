//! `--precision mixed`: the DiT forward and whole pictures through the tile programs (f16
//! operands, f32 accumulation) against diffusers in float32, on the kernel families lavapipe
//! runs: `coop-emulated` (what `coop` computes) and `f16`. The errors are f16 operand rounding
//! (a relative 2^-11 per operand), measured and bounded here (docs/kernels.md "Precision").

use crate::diffusers_fixtures::{fixtures, model_paths, run_model_on, Fixture};
use crate::generate::{options, CASES};
use std::sync::Arc;
use wgdit::gpu::{Family, Gpu, GpuOptions, Precision};
use wgdit::models::qwen_image::QkvMode;
use wgdit::pipeline::generate::generate;
use wgdit::testing::{stats, TempDir};

const MIXED: [Family; 2] = [Family::CoopEmulated, Family::F16];

/// DiT output vs diffusers f32: measured 3.7e-4..6.5e-4 on lavapipe (the f32 kernels: 1e-6..1e-5, tests/parity/dit.rs).
const DIT_REL_L2: f64 = 1.5e-3;
/// Whole pictures, a few steps, [0, 1] image: measured 3.4e-4..6.6e-4 (the f32 bound is 1e-3).
const IMAGE_REL_L2: f64 = 2e-3;

fn gpu(family: Family) -> Arc<Gpu> {
    let g = Gpu::new(&GpuOptions { kernels: Some(family), ..Default::default() }).expect("a GPU adapter");
    assert_eq!(g.kernel_choice().precision, Precision::Mixed);
    g
}

#[test]
fn dit_forward_in_mixed_precision_stays_within_f16_rounding_of_diffusers_in_every_mode() {
    let cases = ["odd_grid", "batch_mask", "edit_ref", "zero_cond_t"];
    for family in MIXED {
        let gpu = gpu(family);
        for case in cases {
            let inputs = fixtures().join(format!("dit/cases/{case}.inputs.safetensors"));
            let model = Fixture::read(&inputs).meta("model");
            let want = Fixture::read(&fixtures().join(format!("dit/cases/{case}.expected.safetensors"))).get("output");
            let (mp, cp) = model_paths(&model);
            for mode in QkvMode::ALL {
                let (_, out) = run_model_on(&gpu, &mp, cp.as_deref(), &inputs, mode, Default::default());
                let s = stats(&out, &want);
                println!("{} {case} {}: rel_l2 {:.2e} max_abs {:.2e}", family.name(), mode.name(), s.rel_l2, s.max_abs);
                assert!(out.iter().all(|v| v.is_finite()), "{case}: non-finite output");
                assert!(s.rel_l2 <= DIT_REL_L2, "{} {case} {mode:?}: rel_l2 {:.3e}", family.name(), s.rel_l2);
                // Not the f32 result: the f16 rounding must show (else this test checks nothing).
                assert!(s.rel_l2 > 1e-6, "{} {case}: mixed precision gave f32's result", family.name());
            }
        }
    }
}

#[test]
fn pictures_in_mixed_precision_stay_within_f16_rounding_of_diffusers() {
    let dir = TempDir::new("mixed-generate");
    for family in MIXED {
        let gpu = gpu(family);
        for c in CASES.iter().filter(|c| ["t2i_cfg", "edit_plus"].contains(&c.name)) {
            let case_file = fixtures().join(format!("pipeline/cases/{}.safetensors", c.name));
            let out = dir.path().join(format!("{}-{}.safetensors", c.name, family.name()));
            let o = options(c, &case_file, out.clone());
            generate(&gpu, &o, &mut |_| {}).unwrap();
            let s = stats(&Fixture::read(&out).get("image"), &Fixture::read(&case_file).get("image"));
            println!("{} {}: image rel_l2 {:.2e} max_abs {:.2e}", family.name(), c.name, s.rel_l2, s.max_abs);
            assert!(s.rel_l2 <= IMAGE_REL_L2, "{} {}: image rel_l2 {:.3e}", family.name(), c.name, s.rel_l2);
        }
    }
}
