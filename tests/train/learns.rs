//! A learnable signal end to end, from the pictures of tests/fixtures/train/learn
//! (tools/gen_learn_fixture.py) through the tiny pipelines with a colour-faithful VAE
//! (`testing::learn_pipeline`):
//! - text to image: kohya-style pictures of one colour with the trigger word `zq` → `wgdit cache` →
//!   `train` → the held-out loss falls, a picture generated from the trigger caption with the LoRA
//!   moves toward the colour, a resumed run repeats the uninterrupted one exactly, and an
//!   unreadable picture is named;
//! - edit pairs (DiffSynth layout): "invert the colours" → `cache` → `train` → the loss on a pair
//!   never trained on falls, and the edit of that pair's input moves toward its inverse.

use std::path::Path;
use wgdit::pipeline::generate::{generate, GenerateOptions, Noise, Prompt};
use wgdit::testing::{learn_pipeline, test_gpu, TempDir};
use wgdit::train::run::{eval_loss, train, TrainOptions};
use wgdit::train::samples::{sample_path, SampleOptions};
use wgdit::train::schedule::Sampling;

/// The colour every training picture has (plus a ±24 noise pattern), in [0, 1].
const TARGET: [f32; 3] = [0.86, 0.16, 0.16];

/// A copy of `tests/fixtures/train/learn/<rel>` under `dir` (tests add bad entries to it).
fn learn_data(rel: &str, dir: &Path) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/learn").join(rel);
    wgdit::testing::copy_tree(&src, &dir.join(rel), None).unwrap();
    dir.join(rel)
}

/// Mean RGB of a picture file in [0, 1].
fn png_colour(path: &Path) -> [f32; 3] {
    let img = ::image::open(path).unwrap().to_rgb8();
    let n = (img.width() * img.height()) as f32;
    [0, 1, 2].map(|c| img.pixels().map(|p| p[c] as f32 / 255.0).sum::<f32>() / n)
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
    let (data, cache) = (learn_data("kohya", dir.path()), dir.path().join("cache"));
    std::fs::write(data.join("2_zq/broken.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    std::fs::write(data.join("2_zq/broken.txt"), "zq broken").unwrap();
    let model = learn_pipeline("t2i").unwrap();
    let mut c = wgdit::train::cache::CacheOptions::new(model.clone(), data.clone(), cache.clone());
    c.resolution = 32 * 32;
    let e = wgdit::train::cache::cache(&gpu, &c).unwrap_err().to_string();
    assert!(e.contains("broken.png: unreadable image"), "the bad entry is named: {e}");
    c.skip_bad = true;
    let r = wgdit::train::cache::cache(&gpu, &c).unwrap();
    assert_eq!((r.samples, r.lines, r.skipped.len()), (4, 8, 1), "4 pictures, each twice (2_zq)");

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
    assert!(distance(data, TARGET) < 0.02, "the VAE renders the data's colour: {data:.3?} vs {TARGET:?}");
    assert!(t1 < 0.6 * t0, "the LoRA picture's colour is not closer to the pictures': {t0:.3} → {t1:.3}");

    let mut r = setup("resumed");
    r.resume = Some(dir.path().join(format!("run/checkpoint-{}", steps / 2)));
    let resumed = train(&gpu, &r).unwrap();
    assert_eq!(resumed.losses, full.losses[steps as usize / 2..].to_vec(), "a resumed run repeats the losses");
}

/// Reference and vision areas of the edit test (the references stay 32×32).
const EDIT_AREA: u64 = 32 * 32;

/// The edit of `image` by the tiny Edit pipeline (seed 5, 8 steps, no CFG) with an optional LoRA:
/// its mean colour.
fn edited(model: &Path, image: &Path, lora: Option<&Path>, out: &Path) -> [f32; 3] {
    let mut o = GenerateOptions::new(model.to_path_buf(), Prompt::Text("invert the colours".into()), out.to_path_buf());
    (o.steps, o.noise, o.true_cfg) = (8, Noise::Seed(5), 1.0);
    (o.images, o.ref_area, o.condition_area) = (vec![image.to_path_buf()], EDIT_AREA, EDIT_AREA);
    o.loras = lora.map(|l| vec![(l.to_path_buf(), 1.0)]).unwrap_or_default();
    generate(&test_gpu(), &o, &mut |_| {}).unwrap();
    mean_colour(out)
}

#[test]
fn an_edit_pair_dataset_is_learned_and_the_edit_of_an_unseen_picture_moves_toward_its_transformation() {
    let gpu = test_gpu();
    let dir = TempDir::new("learns-edit");
    let data = learn_data("edit", dir.path());
    let model = learn_pipeline("edit").unwrap();
    let cache_of = |data: &Path, out: &str| {
        let mut c = wgdit::train::cache::CacheOptions::new(model.clone(), data.to_path_buf(), dir.path().join(out));
        (c.resolution, c.ref_area, c.condition_area) = (32 * 32, EDIT_AREA, EDIT_AREA);
        let r = wgdit::train::cache::cache(&gpu, &c).unwrap();
        (dir.path().join(out), r.samples)
    };
    let (train_cache, n) = cache_of(&data, "cache");
    assert_eq!(n, 8);
    let recorded = wgdit::train::data::cache_areas(&train_cache).unwrap();
    assert_eq!(recorded, Some((EDIT_AREA, EDIT_AREA)), "the cache records its reference areas");
    // The held-out pair, in a dataset of its own.
    let held = dir.path().join("heldout");
    std::fs::create_dir_all(&held).unwrap();
    for f in ["in.png", "out.png"] {
        std::fs::copy(data.join("heldout").join(f), held.join(f)).unwrap();
    }
    std::fs::write(held.join("metadata.csv"), "image,prompt,edit_image\nout.png,invert the colours,in.png\n").unwrap();
    let (held_cache, _) = cache_of(&held, "heldout-cache");

    // Fewer steps learn the mean target only (the edit ignores its input): at 200 steps the edit is
    // as far from the inverse as from the targets' mean (docs/training.md).
    let steps = 400;
    let mut o = TrainOptions::new(model.clone(), train_cache, dir.path().join("run"), steps);
    (o.rank, o.alpha, o.lr, o.seed, o.batch_size) = (8, 8.0, 2e-2, 1, 4);
    (o.sampling, o.weight_decay, o.checkpointing) = (Sampling::Uniform, 0.0, false);
    o.targets = format!("{},proj_out,norm_out.linear,img_mlp.net.0.proj", wgdit::train::lora::DIFFSYNTH_TARGETS);
    // Samples of the held-out input at steps 0, 200 and 400, with the areas the cache recorded.
    let mut samples = SampleOptions::new(200, vec!["invert the colours".into()]);
    (samples.images, samples.steps, samples.seed) = (vec![data.join("heldout/in.png")], 8, 5);
    o.samples = Some(samples);
    let mut on_held = o.clone();
    on_held.data = held_cache;
    let sigmas = [0.2, 0.4, 0.6, 0.8];
    let before = eval_loss(&gpu, &on_held, None, &sigmas, 11).unwrap();
    let run = train(&gpu, &o).unwrap();
    let after = eval_loss(&gpu, &on_held, Some(&run.lora_file), &sigmas, 11).unwrap();

    let input = data.join("heldout/in.png");
    let want = png_colour(&data.join("heldout/out.png"));
    let base = edited(&model, &input, None, &dir.path().join("base.safetensors"));
    let tuned = edited(&model, &input, Some(&run.lora_file), &dir.path().join("lora.safetensors"));
    // What a LoRA that ignored its input would aim at: the mean of the training targets.
    let targets: Vec<[f32; 3]> = (0..8).map(|i| png_colour(&data.join(format!("out/p{i}.png")))).collect();
    let mean_target = [0, 1, 2].map(|c| targets.iter().map(|t| t[c]).sum::<f32>() / 8.0);
    let (t0, t1) = (distance(base, want), distance(tuned, want));
    println!(
        "held-out pair loss {before:.4} → {after:.4} in {steps} steps ({:.0} ms/step); the edit of the held-out \
         input {:.3?}: {base:.3?} → {tuned:.3?}, to its inverse {want:.3?} {t0:.3} → {t1:.3} (to the training \
         targets' mean {mean_target:.3?}: {:.3})",
        run.mean_step_ms,
        png_colour(&input),
        distance(tuned, mean_target)
    );
    // The last sample (drawn on the trained DiT, references sized as the cache sized them) is the
    // picture generate makes with the final LoRA, to the 8-bit rounding of the PNG.
    let sample = png_colour(&sample_path(&o.output, steps, 0));
    assert!(distance(sample, tuned) < 4e-3, "the last sample {sample:.4?} differs from generate's {tuned:.4?}");
    let first = png_colour(&sample_path(&o.output, 0, 0));
    assert!(distance(first, base) < 4e-3, "the step-0 sample {first:.4?} is not the base model's {base:.4?}");
    assert!(after < 0.7 * before, "the held-out pair's loss did not fall clearly: {before:.4} → {after:.4}");
    assert!(t1 < 0.6 * t0, "the edit is not closer to the inverse of its input: {t0:.3} → {t1:.3}");
    let m = distance(tuned, mean_target);
    assert!(t1 < 0.7 * m, "the edit follows the training targets' mean ({m:.3}), not its input ({t1:.3})");
}
