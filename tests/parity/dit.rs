//! Parity of the DiT forward with diffusers 0.42.1 in float32 (fixtures made by
//! tools/gen_dit_fixtures.py), in all three execution modes, and block-by-block agreement.

use crate::diffusers_fixtures::{fixtures, model_paths, run_model, Fixture};
use wgdit::dtype::DType;
use wgdit::models::qwen_image::load::TensorSource;
use wgdit::models::qwen_image::open::open;
use wgdit::models::qwen_image::runtime::Dit;
use wgdit::models::qwen_image::runtime::DitPlan;
use wgdit::models::qwen_image::QkvMode;
use wgdit::pipeline::inputs::ForwardInputs;
use wgdit::testing::stats;

/// Runs one case in one mode: (plan, output, expected).
fn run(case: &str, mode: QkvMode) -> (DitPlan, Vec<f32>, Fixture) {
    let inputs = fixtures().join(format!("dit/cases/{case}.inputs.safetensors"));
    let model = Fixture::read(&inputs).meta("model");
    let expected = Fixture::read(&fixtures().join(format!("dit/cases/{case}.expected.safetensors")));
    let (mp, cp) = model_paths(&model);
    let (plan, out) = run_model(&mp, cp.as_deref(), &inputs, mode, Default::default());
    (plan, out, expected)
}

const REL_L2: f64 = 1e-4;

fn check_case(case: &str) {
    for mode in QkvMode::ALL {
        let (_, out, expected) = run(case, mode);
        let want = expected.get("output");
        let s = stats(&out, &want);
        println!("{case} {}: rel_l2 {:.2e} max_abs {:.2e}", mode.name(), s.rel_l2, s.max_abs);
        assert!(out.iter().all(|v| v.is_finite()), "{case} {mode:?}: non-finite output");
        assert!(
            s.rel_l2 <= REL_L2,
            "{case} {mode:?}: rel_l2 {:.3e} > {REL_L2:e} (max_abs {:.3e} at {})",
            s.rel_l2,
            s.max_abs,
            s.worst
        );
    }
}

#[test]
fn odd_grid_matches_diffusers_in_every_mode() {
    check_case("odd_grid");
}

#[test]
fn padded_batch_with_noncontiguous_mask_matches_diffusers_in_every_mode() {
    check_case("batch_mask");
}

#[test]
fn bf16_weights_with_f32_mask_match_diffusers_in_every_mode() {
    check_case("batch_mask_f32");
}

#[test]
fn edit_mode_with_a_reference_of_another_size_matches_diffusers_in_every_mode() {
    check_case("edit_ref");
}

#[test]
fn zero_cond_t_with_two_references_matches_diffusers_in_every_mode() {
    check_case("zero_cond_t");
}

#[test]
fn sharded_comfy_and_merged_checkpoints_match_diffusers_in_every_mode() {
    for case in ["sharded", "comfy", "merged"] {
        check_case(case);
    }
}

#[test]
fn modes_agree_block_by_block_and_with_diffusers_blocks() {
    let runs: Vec<_> = QkvMode::ALL.iter().map(|&m| run("batch_mask", m)).collect();
    let layers = runs[0].0.graph.block_outputs.len();
    for i in 0..layers {
        let img: Vec<Vec<f32>> = runs.iter().map(|r| r.0.image_rows(r.0.graph.block_outputs[i]).unwrap()).collect();
        let want = runs[0].2.get(&format!("block.{i}.img"));
        for (m, got) in QkvMode::ALL.iter().zip(&img) {
            let s = stats(got, &want);
            assert!(s.rel_l2 <= REL_L2, "block {i} image stream, {m:?} vs diffusers: rel_l2 {:.3e}", s.rel_l2);
            let s = stats(got, &img[0]);
            assert!(s.rel_l2 <= 1e-6, "block {i} image stream, {m:?} vs standard: rel_l2 {:.3e}", s.rel_l2);
        }
        // The last block's text stream is dead compute (diffusers discards it); wgdit skips its FFN.
        if i + 1 < layers {
            let want = runs[0].2.get(&format!("block.{i}.txt"));
            for (m, r) in QkvMode::ALL.iter().zip(&runs) {
                let got = r.0.text_rows(r.0.graph.block_outputs[i]).unwrap();
                let s = stats(&got, &want);
                assert!(s.rel_l2 <= REL_L2, "block {i} text stream, {m:?}: rel_l2 {:.3e}", s.rel_l2);
            }
        }
    }
}

/// A source whose tensors matching `pick` are presented in `dtype` instead of their stored one:
/// `round_only` keeps the stored dtype but rounds the values through `dtype` (the uniform
/// checkpoint a mixed one must equal).
struct Recast {
    inner: Box<dyn TensorSource>,
    pick: fn(&str) -> bool,
    dtype: DType,
    round_only: bool,
}

impl TensorSource for Recast {
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn meta(&self, name: &str) -> Option<(DType, Vec<usize>)> {
        let (dt, shape) = self.inner.meta(name)?;
        Some((if (self.pick)(name) && !self.round_only { self.dtype } else { dt }, shape))
    }
    fn bytes(&self, name: &str) -> wgdit::Result<std::borrow::Cow<'_, [u8]>> {
        let raw = self.inner.bytes(name)?;
        if !(self.pick)(name) {
            return Ok(raw);
        }
        let dt = self.inner.meta(name).unwrap().0;
        let v = self.dtype.decode(&self.dtype.encode(&dt.decode(&raw)));
        Ok(std::borrow::Cow::Owned(if self.round_only { dt.encode(&v) } else { self.dtype.encode(&v) }))
    }
    fn describe(&self) -> String {
        "recast".into()
    }
}

#[test]
fn mixed_dtype_stacks_split_into_gemms_that_equal_the_uniform_checkpoint_in_every_mode() {
    // GGUF files keep some to_v / add_v_proj in another type than to_q, to_k, and norm_out in
    // F16 next to quantized modulations: such stacks are emitted as one GEMM per dtype run,
    // which must compute exactly what one GEMM over the same values does.
    let case = fixtures().join("dit/cases/batch_mask.inputs.safetensors");
    let (mp, cp) = model_paths(&Fixture::read(&case).meta("model"));
    let pick: fn(&str) -> bool = |n| {
        n.ends_with("to_v.weight")
            || n.ends_with("add_v_proj.weight")
            || n == "transformer_blocks.0.img_mod.1.weight"
            || n == "norm_out.linear.weight"
            || n == "transformer_blocks.1.txt_mlp.net.2.weight"
    };
    let gpu = wgdit::testing::test_gpu();
    for mode in QkvMode::ALL {
        let mut outs = Vec::new();
        for round_only in [false, true] {
            let (cfg, ckpt) = open(&mp, cp.as_deref()).unwrap();
            let inputs = ForwardInputs::from_file(&case, &cfg).unwrap();
            let src = Recast { inner: Box::new(ckpt), pick, dtype: DType::F16, round_only };
            let mut dit = Dit::new(&gpu, cfg, Box::new(src), mode).unwrap();
            let plan = dit.plan(&inputs.shape(), false).unwrap();
            outs.push((plan.plan.report().total, plan.forward(&inputs).unwrap()));
        }
        // Standard mode stacks nothing that the recast makes mixed (each stream's GEMM is its own).
        let split = outs[0].0 > outs[1].0;
        assert!(
            split || mode == QkvMode::Standard,
            "{mode:?}: the mixed stacks were not split ({} dispatches)",
            outs[0].0
        );
        assert_eq!(outs[0].1, outs[1].1, "{mode:?}: split GEMMs differ from the uniform checkpoint");
    }
}
