//! Weight streaming (models::qwen_image::stream, docs/streaming.md): a plan whose later blocks
//! stream through the 2-slot ring gives the resident plan's output bit for bit — all resident,
//! some streamed, none resident; every `--qkv` mode; runtime LoRAs; training forward + backward
//! — uploads what it streams, and a budget below the all-streamed minimum is refused. Models:
//! seeded random weights (bf16 matrices, f32 vectors) of the tiny architecture with 5 blocks.

use std::collections::HashMap;
use std::sync::Arc;
use wgdit::gpu::Gpu;
use wgdit::models::qwen_image::bench::random_inputs;
use wgdit::models::qwen_image::dit::ForwardShape;
use wgdit::models::qwen_image::load::RandomWeights;
use wgdit::models::qwen_image::lora::{LoraPart, LoraSet};
use wgdit::models::qwen_image::residency::residency;
use wgdit::models::qwen_image::runtime::Dit;
use wgdit::models::qwen_image::training;
use wgdit::models::qwen_image::{DitConfig, QkvMode};
use wgdit::nn::TrainLora;
use wgdit::pipeline::inputs::ForwardInputs;
use wgdit::rng::Rng;
use wgdit::tensor::{DType, Tensor};
use wgdit::testing::test_gpu;

const LAYERS: usize = 5;

fn config() -> DitConfig {
    DitConfig { num_layers: LAYERS, ..DitConfig::tiny() }
}

fn shape() -> ForwardShape {
    ForwardShape { batch: 1, s_txt: 5, img_shapes: vec![[1, 4, 6]], masked: false }
}

fn model(gpu: &Arc<Gpu>, mode: QkvMode, lora: &LoraSet) -> Dit {
    let cfg = config();
    let mut dit = Dit::new(gpu, cfg.clone(), Box::new(RandomWeights::new(&cfg, DType::BF16, 3)), mode).unwrap();
    dit.set_loras(lora.clone());
    dit
}

/// One forward with blocks `0..resident` resident (`None`: every block, no streaming): the
/// output of two runs (the second finds the ring holding the last blocks) and the bytes each
/// run uploaded.
fn forward(
    gpu: &Arc<Gpu>,
    mode: QkvMode,
    lora: &LoraSet,
    resident: usize,
    inputs: &ForwardInputs,
) -> [(Vec<f32>, u64); 2] {
    let mut dit = model(gpu, mode, lora);
    dit.set_resident_blocks(Some(resident));
    let plan = dit.plan(&inputs.shape(), false).unwrap();
    assert_eq!(plan.is_streamed(), resident < LAYERS);
    plan.plan.poison_activations();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let out = plan.forward(inputs).unwrap();
        runs.push((out, plan.stream_report().unwrap().uploaded_bytes));
    }
    runs.try_into().unwrap()
}

/// Blocks' laid-out bytes of `dit` for the test shape.
fn block_bytes(dit: &Dit) -> Vec<u64> {
    dit.stream_inputs(&shape()).block_bytes
}

fn check_every_residency(lora: &LoraSet) {
    let gpu = test_gpu();
    let inputs = random_inputs(&config(), &shape(), 11);
    for mode in QkvMode::ALL {
        let blocks = block_bytes(&model(&gpu, mode, lora));
        let [(want, _), _] = forward(&gpu, mode, lora, LAYERS, &inputs);
        assert!(want.iter().all(|v| v.is_finite()), "{mode:?}: non-finite resident output");
        for resident in [0, 1, 3, 4] {
            let [(first, up1), (second, up2)] = forward(&gpu, mode, lora, resident, &inputs);
            assert_eq!(first, want, "{mode:?}, {resident} resident: streamed output differs");
            assert_eq!(second, want, "{mode:?}, {resident} resident: second streamed run differs");
            let streamed: u64 = blocks[resident..].iter().sum();
            assert_eq!(up1, streamed, "{mode:?}, {resident} resident: first run uploads every streamed block once");
            // With more streamed blocks than slots every block is uploaded again; otherwise the
            // ring still holds them.
            let again = if LAYERS - resident > 2 { streamed } else { 0 };
            assert_eq!(up2, again, "{mode:?}, {resident} resident: second run's uploads");
        }
    }
}

#[test]
fn streamed_blocks_give_the_resident_output_bit_for_bit_in_every_mode() {
    check_every_residency(&LoraSet::default());
}

/// LoRAs on single Linears, the q/k/v stack (GEMM side path) and a modulation (fused mode's
/// accumulate path), in streamed and resident blocks.
fn loras() -> LoraSet {
    let (d, rank) = (config().hidden(), 2);
    let mut rng = Rng::new(5);
    let mut part = |out: usize, inp: usize| LoraPart {
        a: rng.vec_normal(rank * inp, 0.2),
        b: rng.vec_normal(out * rank, 0.2),
        rank,
    };
    let mut set = LoraSet::default();
    for (m, out, inp) in [
        ("transformer_blocks.0.attn.to_q", d, d),
        ("transformer_blocks.1.img_mlp.net.2", d, 4 * d),
        ("transformer_blocks.2.txt_mod.1", 6 * d, d),
        ("transformer_blocks.3.attn.add_k_proj", d, d),
        ("transformer_blocks.4.attn.to_out.0", d, d),
    ] {
        set.modules.insert(m.to_string(), vec![part(out, inp)]);
    }
    set
}

#[test]
fn streamed_blocks_with_runtime_loras_give_the_resident_output_bit_for_bit() {
    check_every_residency(&loras());
}

#[test]
fn streamed_blocks_with_precomputed_modulation_give_the_resident_output_bit_for_bit() {
    let gpu = test_gpu();
    let inputs = random_inputs(&config(), &shape(), 6);
    for mode in QkvMode::ALL {
        let run = |resident: usize| {
            let mut dit = model(&gpu, mode, &LoraSet::default());
            let inline = dit.stream_inputs(&shape());
            dit.precompute_modulation(&inputs.timestep).unwrap();
            let s = dit.stream_inputs(&shape());
            // The modulation weights leave the plan: fused mode's chunks no longer stay resident,
            // and the other modes' blocks get smaller.
            assert!(s.other_bytes < inline.other_bytes || mode != QkvMode::Fused, "{mode:?}");
            assert!(s.block_bytes.iter().zip(&inline.block_bytes).all(|(p, i)| p < i) || mode == QkvMode::Fused);
            dit.set_resident_blocks(Some(resident));
            let plan = dit.plan(&shape(), false).unwrap();
            plan.plan.poison_activations();
            let out = plan.forward(&inputs).unwrap();
            let up = plan.stream_report().unwrap().uploaded_bytes;
            assert_eq!(up, s.block_bytes[resident..].iter().sum::<u64>(), "{mode:?}, {resident} resident: uploads");
            out
        };
        let want = run(LAYERS);
        for resident in [0, 2] {
            assert_eq!(run(resident), want, "{mode:?}, {resident} resident, precomputed modulation");
        }
    }
}

#[test]
fn a_budget_picks_the_residency_and_below_the_all_streamed_minimum_is_refused() {
    let inputs = random_inputs(&config(), &shape(), 2);
    for mode in QkvMode::ALL {
        let s = model(&test_gpu(), mode, &LoraSet::default()).stream_inputs(&shape());
        let want = {
            let gpu = test_gpu();
            let mut dit = model(&gpu, mode, &LoraSet::default());
            dit.set_resident_blocks(Some(LAYERS));
            dit.plan(&shape(), false).unwrap().forward(&inputs).unwrap()
        };
        // Budgets exactly at a residency's peak pick it (a fresh device holds nothing else).
        for resident in [0, 1, 2, LAYERS] {
            let r = residency(&s.block_bytes, s.other_bytes, s.activation_peak, resident);
            let gpu = test_gpu();
            let mut dit = model(&gpu, mode, &LoraSet::default());
            dit.set_vram_budget(Some(r.peak_bytes));
            let plan = dit.plan(&shape(), false).unwrap();
            assert_eq!(plan.residency.as_ref(), Some(&r), "{mode:?}: budget of {resident} resident blocks");
            assert_eq!(plan.forward(&inputs).unwrap(), want, "{mode:?}, {resident} resident");
            let report = plan.stream_report().unwrap();
            assert_eq!(report.uploaded_bytes, r.streamed_bytes_per_forward, "{mode:?}, {resident} resident");
            assert_eq!(report.resident_blocks, resident);
            // The device holds what the decision planned (resident weights + ring + activations),
            // less the slot-layout padding (256-byte offsets) the plan counts for resident blocks.
            let (held, padding) = (gpu.held_bytes(), (resident * 64 * 256) as u64);
            assert!(
                held <= r.peak_bytes && r.peak_bytes - held <= padding,
                "{mode:?}, {resident} resident: held {held}"
            );
        }
        let min = residency(&s.block_bytes, s.other_bytes, s.activation_peak, 0).peak_bytes;
        let mut dit = model(&test_gpu(), mode, &LoraSet::default());
        dit.set_vram_budget(Some(min - 1));
        let e = dit.plan(&shape(), false).err().expect("a budget below the minimum must be refused").to_string();
        let need = wgdit::budget::human(min);
        assert!(e.contains(&format!("needs at least {need}")) && e.contains("--vram-budget"), "unclear: {e}");
        assert!(e.contains("every transformer block streamed"), "{e}");
    }
}

/// Forward + backward of a LoRA training step with blocks `0..resident` resident: the output,
/// every LoRA gradient, and the bytes uploaded over the two steps.
fn train_step(gpu: &Arc<Gpu>, mode: QkvMode, checkpointing: bool, resident: usize) -> (Vec<Vec<f32>>, u64) {
    let cfg = config();
    let mut dit = model(gpu, mode, &LoraSet::default());
    dit.set_resident_blocks(Some(resident));
    let inputs = random_inputs(&cfg, &shape(), 4);
    let suffixes = ["attn.to_q", "attn.add_v_proj", "attn.to_out.0", "img_mlp.net.2", "txt_mod.1"];
    let modules = (0..LAYERS).flat_map(|i| suffixes.map(|s| format!("transformer_blocks.{i}.{s}"))).collect();
    let train = TrainLora { modules, rank: 2, scale: 0.5, checkpointing };
    let tg = training::build(&dit, &shape(), &train);
    let mut rng = Rng::new(8);
    let mut extra = HashMap::new();
    for &(_, a, b) in &tg.fg.trainable {
        for t in [a, b] {
            let s = tg.fg.graph.shape(t).to_vec();
            extra.insert(
                t,
                Tensor::from_f32(gpu, &rng.vec_normal(s.iter().product(), 0.3), &s, DType::F32, "lora").unwrap(),
            );
        }
    }
    for &(_, da, db) in &tg.grads {
        for t in [da, db] {
            let s = tg.fg.graph.shape(t).to_vec();
            extra.insert(t, Tensor::zeros(gpu, &s, DType::F32, "grad").unwrap());
        }
    }
    let (grads, d_out, split) = (tg.grads.clone(), tg.d_output, tg.forward_nodes);
    let dy = rng.vec_normal(tg.fg.graph.shape(d_out).iter().product(), 1.0);
    let plan = dit.plan_graph(tg.fg, extra).unwrap();
    plan.plan.poison_activations();
    let mut out = Vec::new();
    // Two steps: gradients accumulate, and the second finds the ring as the first left it.
    for _ in 0..2 {
        plan.write_inputs(&inputs);
        plan.run_nodes(0..split).unwrap();
        out.push(plan.image_rows(plan.graph.output).unwrap());
        plan.plan.write_input(d_out, &dy);
        plan.run_nodes(split..plan.plan.nodes()).unwrap();
    }
    out.extend(grads.iter().flat_map(|(_, a, b)| [*a, *b]).map(|t| plan.plan.read(t).unwrap()));
    (out, plan.stream_report().map_or(0, |r| r.uploaded_bytes))
}

#[test]
fn streamed_training_steps_give_the_resident_gradients_bit_for_bit() {
    let gpu = test_gpu();
    for (mode, checkpointing) in [(QkvMode::Fused, true), (QkvMode::Merged, false), (QkvMode::Standard, true)] {
        let (want, none) = train_step(&gpu, mode, checkpointing, LAYERS);
        assert_eq!(none, 0);
        for resident in [0, 2] {
            let (got, uploaded) = train_step(&gpu, mode, checkpointing, resident);
            assert_eq!(got.len(), want.len());
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "{mode:?}, checkpointing {checkpointing}, {resident} resident: tensor {k} differs");
            }
            // Forward ascending, backward descending, twice: a block the ring still holds
            // (block i lives in slot (i − resident) mod 2) is not uploaded again.
            let blocks = block_bytes(&model(&gpu, mode, &LoraSet::default()));
            let order: Vec<usize> = (resident..LAYERS).chain((resident..LAYERS).rev()).collect();
            let (mut held, mut want_up) = ([None; 2], 0);
            for &b in order.iter().chain(&order) {
                let s = (b - resident) % 2;
                if held[s] != Some(b) {
                    held[s] = Some(b);
                    want_up += blocks[b];
                }
            }
            assert_eq!(uploaded, want_up, "{mode:?}, {resident} resident: uploads of two training steps");
        }
    }
}

#[test]
fn a_kernel_bound_to_a_buffer_view_touches_only_that_range() {
    let gpu = test_gpu();
    let align = gpu.limits().storage_offset_alignment.max(4) as u64;
    let arena = gpu.arena(3 * align.max(64), "arena").unwrap();
    let n = (align.max(64) / 4) as usize;
    let view = Tensor::view(&arena, align.max(64), &[n], DType::F32);
    assert_eq!(view.offset(), align.max(64));
    gpu.run(&[wgdit::kernels::fill::launch(&gpu, &view, 2.5).unwrap()]).unwrap();
    assert_eq!(view.to_f32(&gpu).unwrap(), vec![2.5; n]);
    let all: Vec<f32> = gpu.download_f32(&arena).unwrap();
    assert!(all[..n].iter().chain(&all[2 * n..]).all(|&v| v == 0.0), "bytes outside the view were written");
    assert_eq!(&all[n..2 * n], &vec![2.5; n][..]);
}
