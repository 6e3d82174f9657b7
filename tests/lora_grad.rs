//! LoRA gradients of the whole DiT through the executor's autodiff, against PyTorch autograd
//! (diffusers model + peft LoRA in float32: tests/fixtures/lora/cases/grad_peft*.safetensors).

mod dit_common;

use dit_common::{fixtures, model_paths, Fixture};
use std::collections::HashMap;
use wgdit::graph::autodiff;
use wgdit::model::dit::TrainLora;
use wgdit::model::inputs::ForwardInputs;
use wgdit::model::open::open;
use wgdit::model::runtime::Dit;
use wgdit::model::QkvMode;
use wgdit::tensor::{DType, Tensor};
use wgdit::testing::{stats, test_gpu};
use wgdit::weights::lora::read_lora;

const REL_L2: f64 = 1e-4;

fn check(case: &str, mode: QkvMode) {
    let gpu = test_gpu();
    let fx = Fixture::read(&fixtures().join(format!("lora/cases/{case}.safetensors")));
    let (mp, _) = model_paths(&fx.meta("model"));
    let (cfg, ckpt) = open(&mp, None).unwrap();
    let inputs = ForwardInputs::from_file(&fixtures().join(fx.meta("inputs")), &cfg).unwrap();
    let lora = read_lora(&fixtures().join("lora").join(fx.meta("lora"))).unwrap();
    let first = lora.modules.values().next().unwrap();
    let train =
        TrainLora { modules: lora.modules.keys().cloned().collect(), rank: first.rank(), scale: first.scale() as f32 };
    let mut dit = Dit::new(&gpu, cfg.clone(), Box::new(ckpt), mode).unwrap();
    let mut fg = dit.training_graph(&inputs.shape(), &train);
    let rows = fg.graph.shape(fg.output)[0];
    let d_out = fg.graph.input("d_output", &[rows, cfg.out_features()], DType::F32);
    let wrt: Vec<_> = fg.trainable.iter().flat_map(|&(_, a, b)| [a, b]).collect();
    let grads = autodiff::backward(&mut fg.graph, &[(fg.output, d_out)], &wrt);
    for &g in grads.values() {
        fg.graph.mark_output(g);
    }
    let mut extra = HashMap::new();
    for (m, a, b) in &fg.trainable {
        let l = &lora.modules[m];
        extra.insert(*a, Tensor::from_f32(&gpu, &l.a.data, &l.a.shape, DType::F32, "A").unwrap());
        extra.insert(*b, Tensor::from_f32(&gpu, &l.b.data, &l.b.shape, DType::F32, "B").unwrap());
    }
    let trainable = fg.trainable.clone();
    let plan = dit.plan_graph(fg, extra).unwrap();
    plan.plan.poison_activations();
    plan.write_inputs(&inputs);
    // dL/d(output) = dy on the image rows; the text rows of the joint output are not model output.
    let mut dy = vec![0.0; inputs.batch * inputs.s_txt * cfg.out_features()];
    dy.extend(fx.get("dy"));
    plan.plan.write_input(d_out, &dy);
    plan.plan.run().unwrap();
    let out = plan.image_rows(plan.graph.output).unwrap();
    let s = stats(&out, &fx.get("output"));
    assert!(s.rel_l2 <= REL_L2, "{case} {mode:?}: training forward rel_l2 {:.3e}", s.rel_l2);
    let mut worst: f64 = 0.0;
    for (m, a, b) in &trainable {
        for (t, ab) in [(a, "A"), (b, "B")] {
            let got = plan.plan.read(grads[t]).unwrap();
            let want = fx.get(&format!("grad.transformer.{m}.lora_{ab}.weight"));
            let s = stats(&got, &want);
            let norm: f64 = want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            // Exactly-zero references (the last block's dead text stream) must come out zero.
            let err = if norm == 0.0 { s.max_abs } else { s.rel_l2 };
            worst = worst.max(err);
            assert!(err <= REL_L2, "{case} {mode:?} {m}.lora_{ab}: error {err:.3e} (max_abs {:.3e})", s.max_abs);
        }
    }
    println!(
        "{case} {}: forward rel_l2 {:.2e}, worst LoRA gradient error {worst:.2e} over {} tensors",
        mode.name(),
        s.rel_l2,
        2 * trainable.len()
    );
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
