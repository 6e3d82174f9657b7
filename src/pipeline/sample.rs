//! The denoising loop of the Qwen-Image pipelines (diffusers `QwenImagePipeline.__call__` and the
//! Edit variants, spec qwen-image-dit.md §6): per step, the DiT on the packed latents (plus the
//! clean reference tokens of an edit), the prediction sliced to the target tokens, true CFG with
//! norm rescaling when a negative prompt is given, then the flow-match Euler step.

use crate::error::Result;
use crate::models::qwen_image::precompute::PrecomputeReport;
use crate::models::qwen_image::runtime::{Dit, DitPlan};
use crate::pipeline::cfg::true_cfg;
use crate::pipeline::embeds::PromptEmbeds;
use crate::pipeline::inputs::ForwardInputs;
use crate::pipeline::scheduler::Schedule;

/// Packed reference latents of an edit: tokens [h·w, C·4] (normalised, clean) on an (h, w) grid
/// of 2×2 patches.
#[derive(Clone, Debug)]
pub struct Reference {
    pub tokens: Vec<f32>,
    pub grid: [usize; 2],
}

/// What the loop needs besides the model.
pub struct Sampling<'a> {
    pub prompt: &'a PromptEmbeds,
    /// The negative prompt, when true CFG runs (`true_cfg > 1` and a negative given).
    pub negative: Option<&'a PromptEmbeds>,
    pub true_cfg: f32,
    /// The target's patch grid (h/2, w/2 of the latent).
    pub grid: [usize; 2],
    pub references: &'a [Reference],
    pub schedule: &'a Schedule,
}

/// Per-step figures for the progress bar and the summary.
#[derive(Clone, Debug)]
pub struct StepInfo<'a> {
    /// 1-based.
    pub step: usize,
    pub steps: usize,
    pub ms: f64,
    /// The packed latents after this step.
    pub latents: &'a [f32],
}

/// What the loop did.
#[derive(Clone, Debug)]
pub struct SampleReport {
    /// Dispatches per step (both CFG passes).
    pub dispatches_per_step: usize,
    /// Planned activation bytes of the DiT plans (both passes' plans are alive together).
    pub peak_activation_bytes: u64,
    pub step_ms: Vec<f64>,
    /// Weight streaming of each plan (the prompt's, then the negative's) over all steps.
    pub stream: Vec<crate::models::qwen_image::stream::StreamReport>,
    /// The modulation precompute, when the model precomputes (`Dit::set_modulation`).
    pub precompute: Option<PrecomputeReport>,
    /// Bytes of precomputed modulation on the GPU: the store and the plans' input rows.
    pub modulation_bytes: u64,
}

impl Sampling<'_> {
    /// Whether true CFG runs: diffusers' `do_true_cfg = true_cfg_scale > 1 and has_neg_prompt`.
    pub fn cfg(&self) -> bool {
        self.true_cfg > 1.0 && self.negative.is_some()
    }

    fn img_shapes(&self) -> Vec<[usize; 3]> {
        let mut v = vec![[1, self.grid[0], self.grid[1]]];
        v.extend(self.references.iter().map(|r| [1, r.grid[0], r.grid[1]]));
        v
    }

    fn inputs(&self, prompt: &PromptEmbeds, hidden: Vec<f32>, timestep: f32) -> ForwardInputs {
        ForwardInputs {
            batch: 1,
            hidden,
            text: prompt.embeds.clone(),
            s_txt: prompt.tokens,
            mask: prompt.mask.clone(),
            timestep: vec![timestep],
            img_shapes: self.img_shapes(),
        }
    }
}

/// Runs the loop from the packed initial latents [S_t, C·4]; returns the final packed latents.
/// `on_step` is called after every step.
pub fn sample(
    dit: &mut Dit,
    s: &Sampling,
    mut latents: Vec<f32>,
    on_step: &mut dyn FnMut(&StepInfo<'_>),
) -> Result<(Vec<f32>, SampleReport)> {
    let features = dit.cfg.in_channels;
    let target_tokens = s.grid[0] * s.grid[1];
    assert_eq!(latents.len(), target_tokens * features, "sample: latents do not match the grid");
    let refs: Vec<f32> = s.references.iter().flat_map(|r| r.tokens.iter().copied()).collect();
    let hidden = |l: &[f32]| -> Vec<f32> { l.iter().chain(&refs).copied().collect() };
    // Every step's σ is known: a precomputing model computes all modulation vectors now, once
    // for both CFG passes, and releases their weights before the plans upload the blocks'.
    let timesteps: Vec<f32> = (0..s.schedule.len()).map(|i| s.schedule.dit_timestep(i)).collect();
    let precompute = dit.prepare_timesteps(&timesteps)?;
    // Text, mask and the RoPE table are the same at every step: written once per plan.
    let plan_for = |dit: &mut Dit, p: &PromptEmbeds| -> Result<DitPlan> {
        // The first step's σ (any prepared timestep: write_step rewrites it every step).
        let inputs = s.inputs(p, hidden(&latents), timesteps.first().copied().unwrap_or(0.0));
        let plan = dit.plan(&inputs.shape(), false)?;
        plan.write_inputs(&inputs);
        Ok(plan)
    };
    let cond_plan = plan_for(dit, s.prompt)?;
    let uncond_plan: Option<DitPlan> = match (s.cfg(), s.negative) {
        (true, Some(n)) => Some(plan_for(dit, n)?),
        _ => None,
    };
    let per_pass = |p: &DitPlan| p.plan.report().total;
    let report_base = (
        per_pass(&cond_plan) + uncond_plan.as_ref().map_or(0, per_pass),
        cond_plan.plan.memory.peak_activation_bytes
            + uncond_plan.as_ref().map_or(0, |p| p.plan.memory.peak_activation_bytes),
    );
    let modulation_bytes = precompute.as_ref().map_or(0, |p| p.store_bytes)
        + cond_plan.modulation_input_bytes()
        + uncond_plan.as_ref().map_or(0, DitPlan::modulation_input_bytes);
    let out_features = dit.cfg.out_features();
    let mut step_ms = Vec::with_capacity(s.schedule.len());
    for i in 0..s.schedule.len() {
        let t0 = std::time::Instant::now();
        let t = s.schedule.dit_timestep(i);
        // The prediction of the target tokens only (edits append the references after them).
        let x = hidden(&latents);
        let predict = |plan: &DitPlan| -> Result<Vec<f32>> {
            plan.write_step(&x, &[t]);
            let mut out = plan.run()?;
            out.truncate(target_tokens * out_features);
            Ok(out)
        };
        let cond = predict(&cond_plan)?;
        let pred = match &uncond_plan {
            Some(plan) => true_cfg(&cond, &predict(plan)?, s.true_cfg as f64, out_features),
            None => cond,
        };
        s.schedule.step(i, &pred, &mut latents);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        step_ms.push(ms);
        on_step(&StepInfo { step: i + 1, steps: s.schedule.len(), ms, latents: &latents });
    }
    let (dispatches_per_step, peak_activation_bytes) = report_base;
    let stream =
        [Some(&cond_plan), uncond_plan.as_ref()].into_iter().flatten().filter_map(|p| p.stream_report()).collect();
    let report =
        SampleReport { dispatches_per_step, peak_activation_bytes, step_ms, stream, precompute, modulation_bytes };
    Ok((latents, report))
}
