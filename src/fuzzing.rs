//! Entry points for fuzzing every parser of untrusted bytes: each takes raw bytes, runs the
//! parser (and what a caller then does with a successful parse), and must never panic, hang or
//! allocate without bound. The cargo-fuzz targets in `fuzz/` call these (`cargo +nightly fuzz run
//! <target>`); the tests below run a deterministic mutation sweep of real fixture files through
//! each one on stable Rust, so CI exercises them too.

use crate::models::qwen_image::DitConfig;
use crate::models::qwen_image_vae::VaeConfig;

/// `model_index.json` of a pipeline folder.
pub fn model_index(data: &[u8]) {
    let _ = crate::pipeline::folder::parse_index(&String::from_utf8_lossy(data));
}

/// `scheduler/scheduler_config.json`; a parsed config must build a schedule.
pub fn scheduler_config(data: &[u8]) {
    use crate::pipeline::scheduler::{Schedule, SchedulerConfig};
    if let Ok(c) = SchedulerConfig::from_json_str(&String::from_utf8_lossy(data)) {
        let _ = Schedule::for_pipeline(&c, 4, 4096);
    }
}

/// `vae/config.json`; a parsed config must give its names table and spatial factor.
pub fn vae_config(data: &[u8]) {
    if let Ok(c) = VaeConfig::from_json_str(&String::from_utf8_lossy(data)) {
        let _ = (crate::models::qwen_image_vae::names::expected_tensors(&c), c.spatial_factor());
    }
}

/// A prompt embeddings file (`--prompt-embeds`), for a transformer of text width 24.
pub fn prompt_embeds(data: &[u8]) {
    if let Ok(st) = safetensors::SafeTensors::deserialize(data) {
        for negative in [false, true] {
            if let Ok(mut p) = crate::pipeline::embeds::PromptEmbeds::from_safetensors(&st, 24, negative) {
                p.truncate(3);
            }
        }
    }
}

/// A `--noise` file, for a 4-channel 8×12 latent.
pub fn noise(data: &[u8]) {
    let _ = crate::pipeline::generate::noise_from_bytes(data, [4, 8, 12]);
}

/// A latents file (`wgdit vae decode --latents`), for a VAE of z_dim 4.
pub fn vae_latents(data: &[u8]) {
    if let Ok((v, h, w)) = crate::pipeline::vae::latents_from_bytes(data, 4) {
        assert_eq!(v.len(), 4 * h * w, "a parsed latents tensor matches its shape");
    }
}

/// An image file (`--image`, `wgdit vae encode --image`): PNG, JPEG or WebP.
pub fn image(data: &[u8]) {
    if let Ok(img) = crate::image::pixels::decode_rgb(data) {
        let _ = crate::image::pixels::vae_input(&img);
    }
}

/// A `wgdit forward --inputs` file, for the tiny DiT (text width 24, 16 channels).
pub fn dit_inputs(data: &[u8]) {
    if let Ok(st) = safetensors::SafeTensors::deserialize(data) {
        let _ = crate::pipeline::inputs::ForwardInputs::from_safetensors(&st, &DitConfig::tiny());
    }
}

#[cfg(test)]
mod tests {
    use crate::rng::Rng;
    use std::path::Path;

    /// Mutates `seed` at a few random bytes (sometimes truncating it first), `n` times.
    fn mutations(seed: &[u8], n: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| {
                let mut b = seed.to_vec();
                if rng.below(8) == 0 {
                    b.truncate(rng.below(b.len() as u64 + 1) as usize);
                }
                for _ in 0..1 + rng.below(4) {
                    if !b.is_empty() {
                        let i = rng.below(b.len() as u64) as usize;
                        b[i] = rng.next_u64() as u8;
                    }
                }
                b
            })
            .collect()
    }

    fn fixture(p: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Every target on its real seed and on `n` mutations of it (headers only for big files).
    fn sweep(target: fn(&[u8]), seed: &[u8], n: usize, tag: u64) {
        target(seed);
        target(&[]);
        for m in mutations(&seed[..seed.len().min(4096)], n, &mut Rng::new(tag)) {
            target(&m);
        }
    }

    #[test]
    fn every_parser_survives_mutated_real_files() {
        sweep(super::model_index, &fixture("pipeline/edit-plus/model_index.json"), 2000, 1);
        sweep(super::scheduler_config, &fixture("pipeline/t2i/scheduler/scheduler_config.json"), 2000, 2);
        sweep(super::vae_config, &fixture("pipeline/t2i/vae/config.json"), 3000, 3);
        sweep(super::prompt_embeds, &fixture("pipeline/cases/t2i_cfg.safetensors"), 2000, 4);
        sweep(super::noise, &fixture("pipeline/cases/t2i_cfg.safetensors"), 2000, 5);
        sweep(super::vae_latents, &fixture("pipeline/cases/vae_decode.safetensors"), 3000, 6);
        sweep(super::image, &fixture("pipeline/inputs/ref_a.png"), 1000, 7);
        sweep(super::image, &fixture("pipeline_math/images/photo.jpg"), 300, 8);
        sweep(super::image, &fixture("pipeline_math/images/lossless.webp"), 300, 9);
        sweep(super::dit_inputs, &fixture("dit/cases/odd_grid.inputs.safetensors"), 2000, 10);
    }

    #[test]
    fn the_real_seeds_parse() {
        use crate::pipeline::folder::{parse_index, PipelineClass};
        let text = String::from_utf8(fixture("pipeline/edit-plus/model_index.json")).unwrap();
        assert_eq!(parse_index(&text).unwrap().0, PipelineClass::EditPlus);
        assert!(crate::image::pixels::decode_rgb(&fixture("pipeline/inputs/ref_a.png")).is_ok());
        let noise =
            crate::pipeline::generate::noise_from_bytes(&fixture("pipeline/cases/t2i_cfg.safetensors"), [4, 8, 12]);
        assert_eq!(noise.unwrap().len(), 4 * 8 * 12);
    }
}
