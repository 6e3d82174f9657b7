//! `wgdit cache` on the tiny pipelines with their text encoder: both dataset layouts, the sample
//! files equal `vae encode` and `encode-prompt` of the same pictures and captions bit for bit,
//! `train` runs on the result, a rerun skips what is cached, bad entries are named, edit pairs get
//! their references; the crop against Pillow and the bucket rule against numbers worked by hand.

use std::path::{Path, PathBuf};
use std::process::Command;
use wgdit::pipeline::dims::Size;
use wgdit::testing::{test_gpu, text_pipeline, TempDir};
use wgdit::train::data::buckets::{crop_and_resize, crop_plan, default_set, nearest, Crop};

fn wgdit(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wgdit")).args(args).env("NODEVICE_SELECT", "1").output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A noise PNG of `w × h`.
fn png(path: &Path, w: u32, h: u32, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut rng = wgdit::rng::Rng::new(seed);
    let img = ::image::RgbImage::from_fn(w, h, |_, _| ::image::Rgb([0; 3].map(|_: u8| rng.next_u64() as u8)));
    img.save(path).unwrap();
}

/// A kohya folder: a.png 64×64 (its bucket's size), b.png 100×60, 2_cat/c.png 40×90 (twice).
fn kohya(dir: &Path) {
    png(&dir.join("a.png"), 64, 64, 1);
    std::fs::write(dir.join("a.txt"), "a red square\nsecond line is ignored").unwrap();
    png(&dir.join("b.png"), 100, 60, 2);
    std::fs::write(dir.join("b.txt"), "  a wide picture \n").unwrap();
    png(&dir.join("2_cat/c.png"), 40, 90, 3);
    std::fs::write(dir.join("2_cat/c.txt"), "a tall cat").unwrap();
}

fn tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{name} in {}", path.display()));
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    (t.shape().to_vec(), bytemuck::pod_collect_to_vec(t.data()))
}

fn metadata(cache: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(cache.join("metadata.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The sample file of the first line whose image is `image`.
fn sample_of(cache: &Path, image: &str) -> PathBuf {
    let line = metadata(cache).into_iter().find(|l| l["image"] == image).unwrap();
    cache.join(line["file"].as_str().unwrap())
}

fn cache_args<'a>(model: &'a Path, data: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec!["cache", "--model", s(model), "--data", s(data), "--output", s(out), "--resolution", "4096"]
}

#[test]
fn diffsynth_crops_match_pillow_bilinear_bit_for_bit() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/crop.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["cases"]).unwrap();
    for c in cases.as_array().unwrap() {
        let name = c[0].as_str().unwrap();
        let n = |v: &serde_json::Value, i: usize| v[i].as_u64().unwrap() as u32;
        let (w, h, target) = (n(&c[1], 0), n(&c[1], 1), Size::new(n(&c[2], 0), n(&c[2], 1)));
        let plan = Crop { resized: Size::new(n(&c[3], 0), n(&c[3], 1)), left: n(&c[3], 2), top: n(&c[3], 3) };
        assert_eq!(crop_plan(w, h, target), plan, "{name}");
        let input = st.tensor(&format!("{name}/input")).unwrap().data().to_vec();
        let got = crop_and_resize(&::image::RgbImage::from_raw(w, h, input).unwrap(), target).unwrap();
        assert_eq!(got.as_raw().as_slice(), st.tensor(&format!("{name}/output")).unwrap().data(), "{name}");
    }
}

#[test]
fn buckets_and_crops_follow_the_rule_as_worked_by_hand() {
    // Tiny VAE (factor 4): sides in multiples of 8, step s = 32, area 4096: q = 64, lo = 32, hi = 128;
    // w = 32 → 4096 // 32 = 128 → 32×128; w = 64 → 64×64; w = 96 → 42 → 32: 96×32; w = 128 → 32.
    let set = default_set(4096, 8);
    let want = [(32, 128), (32, 96), (64, 64), (96, 32), (128, 32)].map(|(w, h)| Size::new(w, h));
    assert_eq!(set, want);
    // 100×60: ln(1.667) = 0.511 from 64×64, |ln 3 − 0.511| = 0.588 from 96×32 → 64×64.
    assert_eq!(nearest(&set, 100, 60), Size::new(64, 64));
    // 40×90: ln(0.444) = −0.811; 32×96 is |−1.099 + 0.811| = 0.288 away, 64×64 0.811 → 32×96.
    assert_eq!(nearest(&set, 40, 90), Size::new(32, 96));
    // 90×40, the transpose, lands in the transposed bucket (the log distance is symmetric).
    assert_eq!(nearest(&set, 90, 40), Size::new(96, 32));
    // 200×50 = 4:1 exactly.
    assert_eq!(nearest(&set, 200, 50), Size::new(128, 32));
    // 100×60 → 64×64: scale = max(0.64, 1.0667) → 106.67 → 107 × 64, left = round(43 / 2 = 21.5) = 22.
    assert_eq!(crop_plan(100, 60, Size::new(64, 64)), Crop { resized: Size::new(107, 64), left: 22, top: 0 });
    // Real VAE, 1024²: 1920×1080 (ln 1.778 = 0.575) → 1344×768 (w = 1344: 1048576 // 1344 = 780 → 768;
    // ln 1.75 = 0.560, 0.016 away; 1280×768 is 0.065 away). scale = max(0.7, 0.7111) → 1365.33 → 1365,
    // left = round(21 / 2 = 10.5) = 10 (half to even, as Python's round).
    let real = default_set(1024 * 1024, 16);
    assert_eq!(nearest(&real, 1920, 1080), Size::new(1344, 768));
    assert_eq!(crop_plan(1920, 1080, Size::new(1344, 768)), Crop { resized: Size::new(1365, 768), left: 10, top: 0 });
}

#[test]
fn a_kohya_folder_caches_what_vae_encode_and_encode_prompt_give_and_trains() {
    let dir = TempDir::new("cache-kohya");
    let (data, out) = (dir.path().join("data"), dir.path().join("cache"));
    kohya(&data);
    let model = text_pipeline("t2i").unwrap();
    let (ok, log) = wgdit(&cache_args(&model, &data, &out));
    assert!(ok, "{log}");
    assert!(log.contains("3 samples, 4 lines with repeats") && log.contains("3 encoded"), "{log}");
    assert!(log.contains("32x96    1 sample") && log.contains("64x64    2 sample"), "the buckets are printed: {log}");
    let lines = metadata(&out);
    assert_eq!(lines.len(), 4, "c.png twice (2_cat)");
    assert_eq!(lines.iter().filter(|l| l["image"] == "2_cat/c.png").count(), 2);
    assert_eq!(lines.iter().find(|l| l["image"] == "b.png").unwrap()["caption"], "a wide picture");

    // b.png: the cached latents are `vae encode` of DiffSynth's crop, normalised; a.png needs no crop.
    let cfg = wgdit::models::qwen_image_vae::VaeConfig::from_file(&model.join("vae/config.json")).unwrap();
    for (image, caption, target) in [("b.png", "a wide picture", (64, 64)), ("a.png", "a red square", (64, 64))] {
        let cropped = dir.path().join(format!("crop-{image}"));
        let src = ::image::open(data.join(image)).unwrap().to_rgb8();
        crop_and_resize(&src, Size::new(target.0, target.1)).unwrap().save(&cropped).unwrap();
        let raw = dir.path().join("raw.safetensors");
        let (ok, log) = wgdit(&["vae", "encode", "--model", s(&model), "--image", s(&cropped), "--output", s(&raw)]);
        assert!(ok, "{log}");
        let (shape, mut z) = tensor(&raw, "latents");
        wgdit::models::qwen_image_vae::normalize_latents(&cfg, &mut z);
        let sample = sample_of(&out, image);
        let (cshape, cached) = tensor(&sample, "latents");
        assert_eq!((cshape.as_slice(), &shape[..]), (&[4, 16, 16][..], &[1, 4, 1, 16, 16][..]));
        assert_eq!(cached, z, "{image}: latents bit-identical to vae encode of the crop");
        let emb = dir.path().join("emb.safetensors");
        let (ok, log) = wgdit(&["encode-prompt", "--model", s(&model), "--prompt", caption, "--output", s(&emb)]);
        assert!(ok, "{log}");
        let ((es, e), (cs, c)) = (tensor(&emb, "prompt_embeds"), tensor(&sample, "prompt_embeds"));
        assert_eq!((&es[1..], e), (&cs[..], c), "{image}: embeddings bit-identical to encode-prompt");
    }

    // `train --data` opens it and a couple of steps run.
    let dit = wgdit::models::qwen_image::DitConfig::from_file(&model.join("transformer/config.json")).unwrap();
    let ds = wgdit::train::data::Dataset::open(&out, &dit).unwrap();
    assert_eq!(ds.len(), 4);
    assert!(ds.groups().len() >= 2, "two buckets, so at least two shapes");
    let mut o =
        wgdit::train::run::TrainOptions::new(model.join("transformer"), out.clone(), dir.path().join("lora"), 2);
    (o.rank, o.alpha) = (2, 2.0);
    let r = wgdit::train::run::train(&test_gpu(), &o).unwrap();
    assert_eq!(r.losses.len(), 2);
    assert!(r.losses.iter().all(|l| l.is_finite()), "{:?}", r.losses);
}

#[test]
fn a_rerun_skips_what_is_cached_and_re_encodes_a_changed_caption() {
    let dir = TempDir::new("cache-resume");
    let (data, out) = (dir.path().join("data"), dir.path().join("cache"));
    kohya(&data);
    let model = text_pipeline("t2i").unwrap();
    let gpu = test_gpu();
    let mut o = wgdit::train::cache::CacheOptions::new(model.clone(), data.clone(), out.clone());
    o.resolution = 4096;
    let first = wgdit::train::cache::cache(&gpu, &o).unwrap();
    assert_eq!((first.encoded, first.reused, first.samples), (3, 0, 3));
    let a_before = std::fs::read(sample_of(&out, "a.png")).unwrap();
    let again = wgdit::train::cache::cache(&gpu, &o).unwrap();
    assert_eq!((again.encoded, again.reused, again.stale), (0, 3, 0), "nothing to do the second time");
    std::fs::write(data.join("a.txt"), "a blue square").unwrap();
    let changed = wgdit::train::cache::cache(&gpu, &o).unwrap();
    assert_eq!((changed.encoded, changed.reused, changed.stale), (1, 2, 1), "only a.png again; its old file is stale");
    let a_line = metadata(&out).into_iter().find(|l| l["image"] == "a.png").unwrap();
    assert_eq!(a_line["caption"], "a blue square");
    let a_after = std::fs::read(sample_of(&out, "a.png")).unwrap();
    assert_ne!(a_before, a_after, "the new caption's embeddings");
    assert!(!out.join("staging").exists(), "staged embeddings are removed");
    // Other buckets: c.png (40×90, ln 0.444 = −0.811) moves to 32×64 (ln 0.5, 0.118 away), the others stay.
    o.buckets = Some("64x64,32x64".into());
    let rebucketed = wgdit::train::cache::cache(&gpu, &o).unwrap();
    let want = vec![(Size::new(32, 64), 1), (Size::new(64, 64), 2)];
    assert_eq!((rebucketed.encoded, rebucketed.buckets), (1, want), "only c.png is encoded again");
}

#[test]
fn bad_entries_are_all_named_in_one_error_and_skipped_only_when_asked() {
    let dir = TempDir::new("cache-bad");
    let (data, out) = (dir.path().join("data"), dir.path().join("cache"));
    kohya(&data);
    std::fs::write(data.join("broken.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    std::fs::write(data.join("broken.txt"), "x").unwrap();
    png(&data.join("nocaption.jpg"), 64, 64, 9);
    png(&data.join("tiny.png"), 16, 16, 10);
    std::fs::write(data.join("tiny.txt"), "too small").unwrap();
    std::fs::write(data.join("empty.png"), b"").unwrap();
    std::fs::write(data.join("empty.txt"), "\n").unwrap();
    let model = text_pipeline("t2i").unwrap();
    let (ok, log) = wgdit(&cache_args(&model, &data, &out));
    assert!(!ok, "{log}");
    assert!(log.contains("4 bad entries") && log.contains("--skip-bad"), "{log}");
    for needle in [
        "broken.png: unreadable image",
        "nocaption.jpg: missing caption file nocaption.txt",
        "tiny.png: tiny image: 16x16 is smaller than the smallest bucket side 32",
        "empty.png: empty caption",
    ] {
        assert!(log.contains(needle), "`{needle}` in {log}");
    }
    assert!(!out.join("metadata.jsonl").exists() && !out.join("samples").exists(), "nothing written");
    let (ok, log) = wgdit(&[&cache_args(&model, &data, &out)[..], &["--skip-bad"]].concat());
    assert!(ok, "{log}");
    assert!(log.contains("warning: skipped broken.png") && log.contains("4 bad skipped"), "{log}");
    assert_eq!(metadata(&out).len(), 4);
}

#[test]
fn a_diffsynth_csv_with_quoted_captions_caches_and_a_mismatched_model_is_refused() {
    let dir = TempDir::new("cache-csv");
    let (data, out) = (dir.path().join("data"), dir.path().join("cache"));
    png(&data.join("img/one.png"), 64, 64, 4);
    png(&data.join("img/two.png"), 96, 32, 5);
    let csv =
        "\u{feff}image,prompt\r\nimg/one.png,\"a cat, \"\"quoted\"\",\non two lines\"\r\nimg/two.png,a wide dog\r\n";
    std::fs::write(data.join("metadata.csv"), csv).unwrap();
    let model = text_pipeline("t2i").unwrap();
    let (ok, log) = wgdit(&cache_args(&model, &data, &out));
    assert!(ok, "{log}");
    let lines = metadata(&out);
    assert_eq!(lines[0]["caption"], "a cat, \"quoted\",\non two lines");
    assert_eq!((lines[1]["image"].as_str(), &lines[1]["bucket"]), (Some("img/two.png"), &serde_json::json!([96, 32])));
    // An Edit pipeline needs edit_image entries; a T2I pipeline refuses them.
    let plus = text_pipeline("edit-plus").unwrap();
    let other = dir.path().join("other");
    let (ok, log) = wgdit(&cache_args(&plus, &data, &other));
    assert!(!ok && log.contains("no entry") && log.contains("edit image"), "{log}");
    std::fs::write(data.join("metadata.csv"), "image,prompt,edit_image\nimg/one.png,x,img/two.png\n").unwrap();
    let (ok, log) = wgdit(&cache_args(&model, &data, &other));
    assert!(!ok && log.contains("is text to image"), "{log}");
    assert!(!other.exists(), "nothing written");
    // An output folder that holds something else is not taken over.
    let (ok, log) = wgdit(&cache_args(&model, &data, &data.join("img")));
    assert!(!ok && log.contains("is not a wgdit cache"), "{log}");
}

#[test]
fn edit_pairs_on_edit_plus_get_their_references_as_generate_sizes_them() {
    let dir = TempDir::new("cache-edit");
    let (data, out) = (dir.path().join("data"), dir.path().join("cache"));
    png(&data.join("target.png"), 64, 64, 6);
    png(&data.join("edit/a.png"), 64, 64, 7);
    png(&data.join("edit/b.png"), 100, 60, 8);
    let prompt = "Put the hat from picture 2 on the cat in picture 1.";
    std::fs::write(
        data.join("metadata.csv"),
        format!("image,prompt,edit_image\ntarget.png,{prompt},\"['edit/a.png', 'edit/b.png']\"\n"),
    )
    .unwrap();
    let model = text_pipeline("edit-plus").unwrap();
    let areas = ["--ref-area", "4096", "--condition-area", "1600"];
    let (ok, log) = wgdit(&[&cache_args(&model, &data, &out)[..], &areas].concat());
    assert!(ok, "{log}");
    let sample = sample_of(&out, "target.png");
    // calculate_dimensions(4096, ·) in multiples of 32: 64×64 → 64×64; 100×60: √(4096·5/3) = 82.6 → 96,
    // 82.6 / (5/3) = 49.6 → 64: 96×64; latents at factor 4.
    let (s0, r0) = tensor(&sample, "ref_latents.0");
    let (s1, _) = tensor(&sample, "ref_latents.1");
    assert_eq!((s0, s1), (vec![4, 16, 16], vec![4, 16, 24]));
    // ref_latents.0 is the VAE of the LANCZOS-resized reference, normalised (generate's references).
    let gpu = test_gpu();
    let mut vae = wgdit::models::qwen_image_vae::Vae::open(&gpu, &model.join("vae")).unwrap();
    let a = wgdit::image::pixels::load_rgb(&data.join("edit/a.png")).unwrap();
    let x = wgdit::image::pixels::vae_input(&wgdit::image::resize::resize_lanczos(&a, 64, 64).unwrap());
    let mut z = vae.encode(&x, 64, 64).unwrap();
    wgdit::models::qwen_image_vae::normalize_latents(&vae.config, &mut z);
    assert_eq!(r0, z);
    // The embeddings are encode-prompt's with both pictures.
    let emb = dir.path().join("emb.safetensors");
    let (ea, eb) = (data.join("edit/a.png"), data.join("edit/b.png"));
    let args = ["encode-prompt", "--model", s(&model), "--prompt", prompt, "--image", s(&ea), "--image", s(&eb)];
    let (ok, log) = wgdit(&[&args[..], &areas, &["--output", s(&emb)]].concat());
    assert!(ok, "{log}");
    assert_eq!(tensor(&emb, "prompt_embeds").1, tensor(&sample, "prompt_embeds").1);
    let dit = wgdit::models::qwen_image::DitConfig::from_file(&model.join("transformer/config.json")).unwrap();
    let ds = wgdit::train::data::Dataset::open(&out, &dit).unwrap();
    assert_eq!(ds.samples[0].refs, vec![[4, 16, 16], [4, 16, 24]]);
    let mut o =
        wgdit::train::run::TrainOptions::new(model.join("transformer"), out.clone(), dir.path().join("lora"), 2);
    (o.rank, o.alpha) = (2, 2.0);
    let r = wgdit::train::run::train(&gpu, &o).unwrap();
    assert!(r.losses.len() == 2 && r.losses.iter().all(|l| l.is_finite()), "{:?}", r.losses);

    // Edit v1 takes one reference: two are a bad entry; one gives ref_latents.0 alone.
    let v1 = text_pipeline("edit").unwrap();
    let out1 = dir.path().join("cache-v1");
    let (ok, log) = wgdit(&[&cache_args(&v1, &data, &out1)[..], &areas].concat());
    assert!(!ok && log.contains("target.png: 2 edit images, but QwenImageEditPipeline takes one"), "{log}");
    std::fs::write(data.join("metadata.csv"), format!("image,prompt,edit_image\ntarget.png,{prompt},edit/b.png\n"))
        .unwrap();
    let (ok, log) = wgdit(&[&cache_args(&v1, &data, &out1)[..], &areas].concat());
    assert!(ok, "{log}");
    let bytes = std::fs::read(sample_of(&out1, "target.png")).unwrap();
    let names = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert!(names.contains(&"ref_latents.0".to_string()) && !names.contains(&"ref_latents.1".to_string()), "{names:?}");
}
