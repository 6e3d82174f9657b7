//! Parity of the DiT forward with diffusers 0.42.1 in float32 (fixtures made by
//! tools/gen_dit_fixtures.py), in all three execution modes, and block-by-block agreement.

use crate::diffusers_fixtures::{fixtures, model_paths, run_model, Fixture};
use wgdit::dtype::DType;
use wgdit::models::qwen_image::load::TensorSource;
use wgdit::models::qwen_image::lora::LoraSet;
use wgdit::models::qwen_image::modulation::{is_modulation_tensor, Modulation};
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

/// One forward of a case with the modulation inline or precomputed for the inputs' timesteps
/// (in pieces of at most `piece_bytes` of weights): (output, weight bytes on the GPU after
/// planning, bytes of the plan graph's checkpoint params).
fn forward_modulation(case: &str, mode: QkvMode, lora: &str, m: Modulation, piece_bytes: u64) -> (Vec<f32>, u64, u64) {
    let inputs = fixtures().join(format!("dit/cases/{case}.inputs.safetensors"));
    let (mp, cp) = model_paths(&Fixture::read(&inputs).meta("model"));
    let (cfg, ckpt) = open(&mp, cp.as_deref()).unwrap();
    let set = match lora {
        "" => LoraSet::default(),
        f => LoraSet::load(&[(fixtures().join("lora").join(f), 1.0)], &cfg).unwrap(),
    };
    let inputs = ForwardInputs::from_file(&inputs, &cfg).unwrap();
    let mut dit = Dit::new(&wgdit::testing::test_gpu(), cfg, Box::new(ckpt), mode).unwrap();
    dit.set_loras(set);
    if m == Modulation::Precompute {
        dit.precompute_in_pieces(&inputs.timestep, piece_bytes).unwrap();
    }
    let plan = dit.plan(&inputs.shape(), false).unwrap();
    plan.plan.poison_activations();
    let g = &plan.graph;
    assert_eq!((g.timestep.is_some(), g.modulation.is_some()), (m == Modulation::Inline, m == Modulation::Precompute));
    let param_bytes = g.params.iter().map(|(t, _)| g.graph.info(*t).bytes()).sum();
    (plan.forward(&inputs).unwrap(), dit.weight_bytes(), param_bytes)
}

/// Bytes of the modulation and time-embedding tensors as uploaded (weights in their stored
/// dtype, biases widened to f32).
fn modulation_weight_bytes(case: &str) -> u64 {
    let inputs = fixtures().join(format!("dit/cases/{case}.inputs.safetensors"));
    let (mp, cp) = model_paths(&Fixture::read(&inputs).meta("model"));
    let (cfg, ckpt) = open(&mp, cp.as_deref()).unwrap();
    let names = wgdit::models::qwen_image::names::expected_tensors(&cfg);
    let modulation = names.iter().filter(|(n, _)| is_modulation_tensor(n));
    modulation
        .map(|(n, s)| {
            let numel = s.iter().product::<usize>();
            if n.ends_with(".weight") {
                ckpt.meta(n).unwrap().0.bytes(numel) as u64
            } else {
                4 * numel as u64
            }
        })
        .sum()
}

#[test]
fn precomputed_modulation_equals_the_inline_forward_bit_for_bit_in_every_mode() {
    // The precompute runs the same GEMM kernels on the same inputs (SiLU(temb) rows of the same
    // timesteps, the same weights and LoRA factors), one output element per dot product, so the
    // vectors and everything after them are bit-identical, not merely close. batch_mask has two
    // samples at different σ, zero_cond_t the t = 0 rows of Edit-2511, peft LoRAs on every
    // img_mod.1 / txt_mod.1 (the GEMM side path in standard/merged, the accumulate path in fused).
    for (case, lora) in [("batch_mask", ""), ("zero_cond_t", ""), ("edit_ref", ""), ("batch_mask", "peft.safetensors")]
    {
        let released = modulation_weight_bytes(case);
        for mode in QkvMode::ALL {
            let (want, inline_weights, inline_params) = forward_modulation(case, mode, lora, Modulation::Inline, 0);
            // One piece for everything, and one unit per piece (a block's two modulations, then
            // norm_out): the stacking around a column changes no value.
            for piece_bytes in [u64::MAX, 1] {
                let (got, pre_weights, pre_params) =
                    forward_modulation(case, mode, lora, Modulation::Precompute, piece_bytes);
                assert!(got.iter().all(|v| v.is_finite()), "{case} {mode:?}: non-finite output");
                let diff = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(
                    diff, 0,
                    "{case} {lora} {mode:?} pieces ≤ {piece_bytes} B: {diff} outputs differ from inline"
                );
                assert_eq!(inline_weights - pre_weights, released, "{case} {mode:?}: weights on the GPU");
                assert_eq!(inline_params - pre_params, released, "{case} {mode:?}: the plan's weight bytes");
            }
            println!("{case} {lora} {}: bit-identical; {released} weight bytes released", mode.name());
        }
    }
}
