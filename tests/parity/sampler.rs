//! The denoising loop against diffusers' QwenImagePipeline (tests/fixtures/pipeline, float32):
//! every step's prediction and latents, and the final latents, from the recorded initial latents
//! and prompt embeddings, in every --qkv mode.

use crate::diffusers_fixtures::{fixtures, Fixture};
use safetensors::SafeTensors;
use wgdit::models::qwen_image::latents::unpack;
use wgdit::models::qwen_image::open::open;
use wgdit::models::qwen_image::runtime::Dit;
use wgdit::models::qwen_image::QkvMode;
use wgdit::pipeline::embeds::PromptEmbeds;
use wgdit::pipeline::folder::PipelineFolder;
use wgdit::pipeline::sample::{sample, Sampling};
use wgdit::pipeline::scheduler::{Schedule, SchedulerConfig};
use wgdit::testing::{stats, test_gpu};

/// Relative L2 of one transformer step from diffusers' own latents (fixture README: components
/// ≤ 1e-4) and of the whole loop's latents (whole pipelines ≤ 1e-3).
const STEP_REL_L2: f64 = 1e-4;
const LOOP_REL_L2: f64 = 1e-3;

fn run_t2i(case: &str, steps: usize, cfg: bool, mode: QkvMode) {
    let gpu = test_gpu();
    let folder = PipelineFolder::open(&fixtures().join("pipeline/t2i")).unwrap();
    let fx = Fixture::read(&fixtures().join(format!("pipeline/cases/{case}.safetensors")));
    let st = SafeTensors::deserialize(&fx.bytes).unwrap();
    let (dcfg, ckpt) = open(&folder.transformer, None).unwrap();
    let prompt = PromptEmbeds::from_safetensors(&st, dcfg.joint_attention_dim, false).unwrap();
    let negative = cfg.then(|| PromptEmbeds::from_safetensors(&st, dcfg.joint_attention_dim, true).unwrap());
    let noise_shape = fx.shape("noise"); // [1, 1, C, h, w]
    let (c, h, w) = (noise_shape[2], noise_shape[3], noise_shape[4]);
    let grid = [h / 2, w / 2];
    let sched = SchedulerConfig::from_file(&folder.scheduler_config).unwrap();
    let schedule = Schedule::for_pipeline(&sched, steps, grid[0] * grid[1]).unwrap();
    assert_eq!(schedule.sigmas, fx.get("sigmas"), "{case}: the schedule is bit-exact");
    let mut dit = Dit::new(&gpu, dcfg, Box::new(ckpt), mode).unwrap();
    let s = Sampling {
        prompt: &prompt,
        negative: negative.as_ref(),
        true_cfg: 4.0,
        grid,
        references: &[],
        schedule: &schedule,
    };
    assert_eq!(s.cfg(), cfg);
    let init = wgdit::models::qwen_image::latents::pack(&fx.get("noise"), [c, h, w], 2);
    if fx.names().contains(&"latents_init".to_string()) {
        assert_eq!(init, fx.get("latents_init"), "{case}: pack(noise) is the pipeline's packing");
    }
    // Every step's latents: step 0 is one transformer call from diffusers' own latents.
    let mut worst_step = Vec::new();
    let (latents, report) = sample(&mut dit, &s, init, &mut |info| {
        let want = fx.get(&format!("step{}.latents", info.step - 1));
        worst_step.push(stats(info.latents, &want).rel_l2);
    })
    .unwrap();
    assert!(worst_step[0] <= STEP_REL_L2, "{case} {mode:?}: step 0 latents rel_l2 {:.3e}", worst_step[0]);
    let got = unpack(&latents, [c, h, w], 2);
    let want = fx.get("latents_final");
    let r = stats(&got, &want);
    println!(
        "{case} {}: step latents rel_l2 {:?}, latents_final rel_l2 {:.2e} max_abs {:.2e} ({} dispatches/step)",
        mode.name(),
        worst_step.iter().map(|v| format!("{v:.1e}")).collect::<Vec<_>>(),
        r.rel_l2,
        r.max_abs,
        report.dispatches_per_step
    );
    assert!(r.rel_l2 <= LOOP_REL_L2, "{case} {mode:?}: final latents rel_l2 {:.3e}", r.rel_l2);
}

#[test]
fn t2i_with_true_cfg_and_a_shorter_negative_matches_diffusers_in_every_mode() {
    for mode in QkvMode::ALL {
        run_t2i("t2i_cfg", 3, true, mode);
    }
}

#[test]
fn t2i_without_a_negative_prompt_runs_no_cfg_and_matches_diffusers() {
    run_t2i("t2i_nocfg", 5, false, QkvMode::Fused);
}
