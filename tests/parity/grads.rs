//! LoRA gradients of the whole DiT through the executor's autodiff, against PyTorch autograd
//! (diffusers model + peft LoRA in float32: tests/fixtures/lora/cases/grad_peft*.safetensors).

use crate::diffusers_fixtures::{fixtures, model_paths, Fixture};
use std::collections::HashMap;
use wgdit::models::qwen_image::bench::random_inputs;
use wgdit::models::qwen_image::dit::ForwardShape;
use wgdit::models::qwen_image::load::RandomWeights;
use wgdit::models::qwen_image::lora::read_lora;
use wgdit::models::qwen_image::open::open;
use wgdit::models::qwen_image::runtime::Dit;
use wgdit::models::qwen_image::training;
use wgdit::models::qwen_image::DitConfig;
use wgdit::models::qwen_image::QkvMode;
use wgdit::nn::TrainLora;
use wgdit::pipeline::inputs::ForwardInputs;
use wgdit::rng::Rng;
use wgdit::tensor::{DType, Tensor};
use wgdit::testing::{stats, test_gpu};

const REL_L2: f64 = 1e-4;

/// Runs forward + backward of `case` and returns (forward rel-L2 vs diffusers, worst gradient
/// error vs autograd, the gradients, planned peak activation bytes).
fn run(case: &str, mode: QkvMode, checkpointing: bool) -> (f64, f64, Vec<Vec<f32>>, u64) {
    run_on(&test_gpu(), case, mode, checkpointing, REL_L2)
}

/// [`run`] on a given device, each gradient within `tol` (rel-L2).
fn run_on(
    gpu: &std::sync::Arc<wgdit::gpu::Gpu>,
    case: &str,
    mode: QkvMode,
    checkpointing: bool,
    tol: f64,
) -> (f64, f64, Vec<Vec<f32>>, u64) {
    let gpu = gpu.clone();
    let fx = Fixture::read(&fixtures().join(format!("lora/cases/{case}.safetensors")));
    let (mp, _) = model_paths(&fx.meta("model"));
    let (cfg, ckpt) = open(&mp, None).unwrap();
    let inputs = ForwardInputs::from_file(&fixtures().join(fx.meta("inputs")), &cfg).unwrap();
    let lora = read_lora(&fixtures().join("lora").join(fx.meta("lora"))).unwrap();
    let first = lora.modules.values().next().unwrap();
    let modules = lora.modules.keys().cloned().collect();
    let train = TrainLora { modules, rank: first.rank(), scale: first.scale() as f32, checkpointing };
    let mut dit = Dit::new(&gpu, cfg.clone(), Box::new(ckpt), mode).unwrap();
    let tg = training::build(&dit, &inputs.shape(), &train);
    let mut extra = HashMap::new();
    for (m, a, b) in &tg.fg.trainable {
        let l = &lora.modules[m];
        extra.insert(*a, Tensor::from_f32(&gpu, &l.a.data, &l.a.shape, DType::F32, "A").unwrap());
        extra.insert(*b, Tensor::from_f32(&gpu, &l.b.data, &l.b.shape, DType::F32, "B").unwrap());
    }
    let (grads, d_out) = (tg.grads.clone(), tg.d_output);
    zero_grads(&gpu, &tg, &mut extra);
    let plan = dit.plan_graph(tg.fg, extra).unwrap();
    plan.plan.poison_activations();
    plan.write_inputs(&inputs);
    // dL/d(output) = dy on the image rows; the text rows of the joint output are not model output.
    let mut dy = vec![0.0; inputs.batch * inputs.s_txt * cfg.out_features()];
    dy.extend(fx.get("dy"));
    plan.plan.write_input(d_out, &dy);
    plan.submit().unwrap();
    let out = plan.image_rows(plan.graph.output).unwrap();
    let fwd = stats(&out, &fx.get("output")).rel_l2;
    let mut worst: f64 = 0.0;
    let mut all = Vec::new();
    for (m, da, db) in &grads {
        for (t, ab) in [(da, "A"), (db, "B")] {
            let got = plan.plan.read(*t).unwrap();
            let want = fx.get(&format!("grad.transformer.{m}.lora_{ab}.weight"));
            let s = stats(&got, &want);
            let norm: f64 = want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            // Exactly-zero references (the last block's dead text stream) must come out zero.
            let err = if norm == 0.0 { s.max_abs } else { s.rel_l2 };
            assert!(err <= tol, "{case} {mode:?} {m}.lora_{ab}: error {err:.3e} (max_abs {:.3e})", s.max_abs);
            worst = worst.max(err);
            all.push(got);
        }
    }
    (fwd, worst, all, plan.plan.memory.peak_activation_bytes)
}

fn check(case: &str, mode: QkvMode) {
    let (fwd, worst, grads, _) = run(case, mode, false);
    assert!(fwd <= REL_L2, "{case} {mode:?}: training forward rel_l2 {fwd:.3e}");
    println!(
        "{case} {}: forward rel_l2 {fwd:.2e}, worst LoRA gradient error {worst:.2e} over {} tensors",
        mode.name(),
        grads.len()
    );
}

/// Gradients and planned peak of a 6-block random model with random LoRAs on DiffSynth's targets.
fn deep_run(checkpointing: bool) -> (Vec<Vec<f32>>, (u64, u64)) {
    let gpu = test_gpu();
    let cfg = DitConfig { num_layers: 6, ..DitConfig::from_file(&model_paths("tiny").0.join("config.json")).unwrap() };
    let mut dit =
        Dit::new(&gpu, cfg.clone(), Box::new(RandomWeights::new(&cfg, DType::F32, 5)), QkvMode::Fused).unwrap();
    let shape = ForwardShape { batch: 1, s_txt: 6, img_shapes: vec![[1, 4, 4]], masked: false };
    let inputs = random_inputs(&cfg, &shape, 1);
    let suffixes = [
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.add_q_proj",
        "attn.to_out.0",
        "img_mlp.net.2",
        "img_mod.1",
        "txt_mod.1",
    ];
    let modules = (0..6).flat_map(|i| suffixes.map(|s| format!("transformer_blocks.{i}.{s}"))).collect();
    let train = TrainLora { modules, rank: 2, scale: 0.5, checkpointing };
    let tg = training::build(&dit, &shape, &train);
    let mut rng = Rng::new(9);
    let mut extra = HashMap::new();
    for &(_, a, b) in &tg.fg.trainable {
        for t in [a, b] {
            let shape = tg.fg.graph.shape(t).to_vec();
            let v = rng.vec_normal(shape.iter().product(), 0.3);
            extra.insert(t, Tensor::from_f32(&gpu, &v, &shape, DType::F32, "lora").unwrap());
        }
    }
    let (grads, d_out) = (tg.grads.clone(), tg.d_output);
    zero_grads(&gpu, &tg, &mut extra);
    let rows = tg.fg.graph.shape(d_out).iter().product();
    let plan = dit.plan_graph(tg.fg, extra).unwrap();
    plan.plan.poison_activations();
    plan.write_inputs(&inputs);
    plan.plan.write_input(d_out, &rng.vec_normal(rows, 1.0));
    plan.submit().unwrap();
    let all = grads.iter().flat_map(|(_, a, b)| [*a, *b]).map(|t| plan.plan.read(t).unwrap()).collect();
    let m = &plan.plan.memory;
    (all, (m.peak_activation_bytes, m.live_activation_bytes))
}

#[test]
fn checkpointing_gives_the_same_gradients_with_less_activation_memory() {
    let (plain, peak_plain) = deep_run(false);
    let (ckpt, peak_ckpt) = deep_run(true);
    assert!(plain.iter().flatten().all(|v| v.is_finite()) && plain.iter().flatten().any(|&v| v != 0.0));
    assert_eq!(plain, ckpt, "recomputation must reproduce the gradients exactly");
    println!("6 blocks: planned peak activations stored {peak_plain:?} B, checkpointed {peak_ckpt:?} B");
    assert!(peak_ckpt < peak_plain, "checkpointing should lower the peak: {peak_ckpt:?} vs {peak_plain:?}");
}

#[test]
fn lora_gradients_match_autograd_on_edit_inputs_in_standard_mode() {
    check("grad_peft", QkvMode::Standard);
}

#[test]
fn lora_gradients_match_autograd_on_edit_inputs_in_merged_and_fused_modes() {
    check("grad_peft", QkvMode::Merged);
    check("grad_peft", QkvMode::Fused);
}

#[test]
fn lora_gradients_match_autograd_on_a_masked_batch_in_every_mode() {
    for mode in QkvMode::ALL {
        check("grad_peft_batch_mask", mode);
    }
}

/// Binds a zeroed buffer to every parameter gradient of the training graph.
fn zero_grads(gpu: &std::sync::Arc<wgdit::gpu::Gpu>, tg: &training::TrainGraph, extra: &mut HashMap<usize, Tensor>) {
    for &(_, da, db) in &tg.grads {
        for t in [da, db] {
            let shape = tg.fg.graph.shape(t).to_vec();
            extra.insert(t, Tensor::zeros(gpu, &shape, DType::F32, "grad").unwrap());
        }
    }
}

#[test]
fn lora_gradients_in_mixed_precision_stay_within_f16_rounding_of_autograd() {
    // The forward and dx GEMMs and the attention forward and backward run as tile programs on
    // f16 operands (V and dO shifted per (b, head) in the attention; LoRA down-projections and
    // dA/dB stay f32): measured worst 2.4e-3 (edit) and 4.4e-3 (padded batch), bounded at 8e-3.
    use wgdit::gpu::{Family, Gpu, GpuOptions};
    for family in [Family::CoopEmulated, Family::F16] {
        let gpu = Gpu::new(&GpuOptions { kernels: Some(family), ..Default::default() }).unwrap();
        for (case, mode) in [("grad_peft", QkvMode::Standard), ("grad_peft_batch_mask", QkvMode::Fused)] {
            let (fwd, worst, grads, _) = run_on(&gpu, case, mode, false, 8e-3);
            println!(
                "{} {case} {}: forward rel_l2 {fwd:.2e}, worst LoRA gradient error {worst:.2e} over {} tensors",
                family.name(),
                mode.name(),
                grads.len()
            );
            assert!(fwd <= 1.5e-3, "{case}: forward rel_l2 {fwd:.3e}");
            assert!(worst > 1e-6, "{case}: the f16 rounding does not show in the gradients");
        }
    }
}

#[test]
fn edit_2511_training_keeps_zero_cond_t_matches_diffusers_forward_and_trains_on_the_target_tokens() {
    // Edit-pair training on an Edit-2511 model (zero_cond_t): the training graph's forward, with
    // a fresh LoRA (B = 0), is diffusers' forward on the same target + reference tokens; and a
    // loss gradient on the target rows only (the trainer's loss) reaches the LoRA (finite,
    // nonzero dB).
    let gpu = test_gpu();
    let inputs_file = fixtures().join("dit/cases/zero_cond_t.inputs.safetensors");
    let fx_in = Fixture::read(&inputs_file);
    let (mp, cp) = model_paths(&fx_in.meta("model"));
    let (cfg, ckpt) = open(&mp, cp.as_deref()).unwrap();
    assert!(cfg.zero_cond_t, "the fixture model is an Edit-2511 config");
    let inputs = ForwardInputs::from_file(&inputs_file, &cfg).unwrap();
    assert!(inputs.img_shapes.len() > inputs.batch, "references are appended after the target");
    let want = Fixture::read(&fixtures().join("dit/cases/zero_cond_t.expected.safetensors")).get("output");
    let modules = wgdit::models::qwen_image::bench::diffsynth_modules(&cfg);
    let train = TrainLora { modules, rank: 2, scale: 1.0, checkpointing: false };
    let mut dit = Dit::new(&gpu, cfg.clone(), Box::new(ckpt), QkvMode::Fused).unwrap();
    let tg = training::build(&dit, &inputs.shape(), &train);
    let mut rng = Rng::new(4);
    let mut extra = HashMap::new();
    for (_, a, b) in &tg.fg.trainable {
        let (sa, sb) = (tg.fg.graph.shape(*a).to_vec(), tg.fg.graph.shape(*b).to_vec());
        let av = rng.vec_uniform(sa.iter().product(), -0.5, 0.5);
        extra.insert(*a, Tensor::from_f32(&gpu, &av, &sa, DType::F32, "A").unwrap());
        extra.insert(*b, Tensor::zeros(&gpu, &sb, DType::F32, "B").unwrap());
    }
    let (grads, d_out) = (tg.grads.clone(), tg.d_output);
    zero_grads(&gpu, &tg, &mut extra);
    let plan = dit.plan_graph(tg.fg, extra).unwrap();
    plan.write_inputs(&inputs);
    // dL/d(output) on the target tokens only, as the trainer's loss: reference rows get zero.
    let tokens: Vec<usize> = inputs.img_shapes.iter().map(|s| s[0] * s[1] * s[2]).collect();
    let (s_target, s_img): (usize, usize) = (tokens[0], tokens.iter().sum());
    let f = cfg.out_features();
    let mut dy = vec![0.0; inputs.batch * inputs.s_txt * f];
    for _ in 0..inputs.batch {
        dy.extend(rng.vec_uniform(s_target * f, -1.0, 1.0));
        dy.extend(std::iter::repeat_n(0.0, (s_img - s_target) * f));
    }
    plan.plan.write_input(d_out, &dy);
    plan.submit().unwrap();
    let out = plan.image_rows(plan.graph.output).unwrap();
    let s = stats(&out[..want.len()], &want);
    assert!(s.rel_l2 <= REL_L2, "training forward with zero_cond_t vs diffusers: rel_l2 {:.3e}", s.rel_l2);
    let mut nonzero = 0;
    for (m, _, db) in &grads {
        let g = plan.plan.read(*db).unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{m}: non-finite dB");
        nonzero += g.iter().any(|v| *v != 0.0) as usize;
    }
    assert!(nonzero > grads.len() / 2, "only {nonzero} of {} LoRA B gradients are nonzero", grads.len());
}
