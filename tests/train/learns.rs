//! A learnable signal end to end, Rust only: kohya-style pictures of one colour with the trigger
//! word `zq` → `wgdit cache` (the tiny t2i pipeline with its text encoder) → `train` → the held-out
//! loss falls, a picture generated from the trigger caption with the LoRA moves toward the colour,
//! a resumed run repeats the uninterrupted one exactly, and an unreadable picture is named.

use std::path::Path;
use wgdit::pipeline::generate::{generate, GenerateOptions, Noise, Prompt};
use wgdit::testing::{test_gpu, text_pipeline, TempDir};
use wgdit::train::run::{eval_loss, train, TrainOptions};
use wgdit::train::schedule::Sampling;

/// The colour every training picture has (plus a ±24 noise pattern), in [0, 1].
const TARGET: [f32; 3] = [0.86, 0.16, 0.16];

fn pictures(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = wgdit::rng::Rng::new(21);
    for i in 0..4 {
        let img = ::image::RgbImage::from_fn(32, 32, |_, _| {
            ::image::Rgb(TARGET.map(|c| (c * 255.0 + (rng.next_u64() % 49) as f32 - 24.0).clamp(0.0, 255.0) as u8))
        });
        img.save(dir.join(format!("p{i}.png"))).unwrap();
        std::fs::write(dir.join(format!("p{i}.txt")), format!("zq picture {i}")).unwrap();
    }
}

/// Mean RGB of a generated `image` [1, 3, H, W] in [0, 1].
fn mean_colour(path: &Path) -> [f32; 3] {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v: Vec<f32> = bytemuck::pod_collect_to_vec(st.tensor("image").unwrap().data());
    let n = v.len() / 3;
    [0, 1, 2].map(|c| v[c * n..(c + 1) * n].iter().sum::<f32>() / n as f32)
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt()
}

fn f32_tensor(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{name} in {}", path.display()));
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    bytemuck::pod_collect_to_vec(t.data())
}

/// The mean of the cached (normalised) latents [4, 8, 8] of every sample.
fn mean_cached_latents(cache: &Path) -> Vec<f32> {
    let text = std::fs::read_to_string(cache.join("metadata.jsonl")).unwrap();
    let files: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["file"].as_str().unwrap().to_string())
        .collect();
    let mut mean = vec![0f32; 4 * 8 * 8];
    for f in &files {
        for (m, v) in mean.iter_mut().zip(f32_tensor(&cache.join(f), "latents")) {
            *m += v / files.len() as f32;
        }
    }
    mean
}

/// The colour of the data as the tiny (random) VAE renders it: `vae decode` of the mean cached latent.
fn decoded_colour(model: &Path, latents: &[f32], dir: &Path) -> [f32; 3] {
    let cfg = wgdit::models::qwen_image_vae::VaeConfig::from_file(&model.join("vae/config.json")).unwrap();
    let mut raw = latents.to_vec();
    wgdit::models::qwen_image_vae::denormalize_latents(&cfg, &mut raw);
    let (z, img) = (dir.join("mean-latents.safetensors"), dir.join("mean-decoded.safetensors"));
    wgdit::weights::writer::write_f32_tensor(&z, "latents", &raw, &[1, 4, 1, 8, 8], &Default::default()).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgdit"))
        .args(["vae", "decode", "--model", &s(model), "--latents", &s(&z), "--output", &s(&img)])
        .env("NODEVICE_SELECT", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // `vae decode` gives the VAE's [-1, 1] sample; generate's image is (x + 1) / 2 clamped to [0, 1].
    let v = f32_tensor(&img, "image").iter().map(|x| ((x + 1.0) / 2.0).clamp(0.0, 1.0)).collect::<Vec<_>>();
    let n = v.len() / 3;
    [0, 1, 2].map(|c| v[c * n..(c + 1) * n].iter().sum::<f32>() / n as f32)
}

/// A picture from the trigger caption (seed 5, 32×32, 8 steps, no CFG): its mean colour and its
/// final (normalised) latents.
fn picture(model: &Path, lora: Option<&Path>, out: &Path) -> ([f32; 3], Vec<f32>) {
    let mut o = GenerateOptions::new(model.to_path_buf(), Prompt::Text("zq picture".into()), out.to_path_buf());
    (o.steps, o.noise, o.true_cfg, o.width, o.height) = (8, Noise::Seed(5), 1.0, Some(32), Some(32));
    o.loras = lora.map(|l| vec![(l.to_path_buf(), 1.0)]).unwrap_or_default();
    let latents = out.with_extension("latents.safetensors");
    o.save_latents = Some(latents.clone());
    generate(&test_gpu(), &o, &mut |_| {}).unwrap();
    (mean_colour(out), f32_tensor(&latents, "latents"))
}

fn rel_distance(a: &[f32], b: &[f32]) -> f32 {
    let d: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    (d / b.iter().map(|y| y * y).sum::<f32>()).sqrt()
}

#[test]
fn a_trigger_word_dataset_cached_from_pictures_is_learned_and_moves_the_picture_toward_its_colour() {
    let gpu = test_gpu();
    let dir = TempDir::new("learns");
    let (data, cache) = (dir.path().join("data"), dir.path().join("cache"));
    pictures(&data);
    std::fs::write(data.join("broken.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    std::fs::write(data.join("broken.txt"), "zq broken").unwrap();
    let model = text_pipeline("t2i").unwrap();
    let mut c = wgdit::train::cache::CacheOptions::new(model.clone(), data.clone(), cache.clone());
    c.resolution = 32 * 32;
    let e = wgdit::train::cache::cache(&gpu, &c).unwrap_err().to_string();
    assert!(e.contains("broken.png: unreadable image"), "the bad entry is named: {e}");
    c.skip_bad = true;
    let r = wgdit::train::cache::cache(&gpu, &c).unwrap();
    assert_eq!((r.samples, r.skipped.len()), (4, 1));

    let steps = 40;
    let setup = |out: &str| {
        let mut o = TrainOptions::new(model.join("transformer"), cache.clone(), dir.path().join(out), steps);
        (o.rank, o.alpha, o.lr, o.seed, o.batch_size) = (8, 8.0, 2e-2, 1, 4);
        (o.sampling, o.weight_decay, o.checkpointing) = (Sampling::Uniform, 0.0, false);
        o.targets = format!("{},proj_out,norm_out.linear,img_mlp.net.0.proj", wgdit::train::lora::DIFFSYNTH_TARGETS);
        o
    };
    let mut o = setup("run");
    o.save_every = steps / 2;
    let sigmas = [0.2, 0.4, 0.6, 0.8];
    let before = eval_loss(&gpu, &o, None, &sigmas, 11).unwrap();
    let full = train(&gpu, &o).unwrap();
    let after = eval_loss(&gpu, &o, Some(&full.lora_file), &sigmas, 11).unwrap();

    let (base, base_z) = picture(&model, None, &dir.path().join("base.safetensors"));
    let (tuned, tuned_z) = picture(&model, Some(&full.lora_file), &dir.path().join("lora.safetensors"));
    let data_z = mean_cached_latents(&cache);
    let data = decoded_colour(&model, &data_z, dir.path());
    let (z0, z1) = (rel_distance(&base_z, &data_z), rel_distance(&tuned_z, &data_z));
    let (d0, d1) = (distance(base, data), distance(tuned, data));
    let (t0, t1) = (distance(base, TARGET), distance(tuned, TARGET));
    println!(
        "held-out loss {before:.4} → {after:.4} in {steps} steps ({:.0} ms/step); latents to the data's mean {z0:.3} → \
         {z1:.3}; mean colour {base:.3?} → {tuned:.3?}: to the decoded data colour {data:.3?} {d0:.3} → {d1:.3}, \
         to the pictures' {TARGET:?} {t0:.3} → {t1:.3}",
        full.mean_step_ms
    );
    assert!(after < 0.7 * before, "held-out loss did not fall clearly: {before:.4} → {after:.4}");
    assert!(z1 < 0.8 * z0, "the LoRA picture's latents are not closer to the data: {z0:.3} → {z1:.3}");
    // No assertion on the colour: the tiny VAE has random weights and renders every latent as
    // much the same grey (docs/training.md, "A learnable signal end to end"); the numbers are printed.

    let mut r = setup("resumed");
    r.resume = Some(dir.path().join(format!("run/checkpoint-{}", steps / 2)));
    let resumed = train(&gpu, &r).unwrap();
    assert_eq!(resumed.losses, full.losses[steps as usize / 2..].to_vec(), "a resumed run repeats the losses");
}
