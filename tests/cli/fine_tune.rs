//! The README's four commands from captioned pictures (and from edit pairs) to a LoRA that
//! diffusers and ComfyUI load, run as a user runs them: `wgdit cache`, `wgdit train` with sample
//! images, `wgdit generate --lora`, `wgdit convert --format comfyui`, on the tiny pipelines with
//! the colour-faithful VAE (`testing::learn_pipeline`) and the datasets of
//! tests/fixtures/train/learn (tools/gen_learn_fixture.py).

use super::{fixture, tmp, wgdit};
use std::path::Path;

/// Mean RGB of a PNG in [0, 1].
fn colour(path: &Path) -> [f32; 3] {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    let n = (img.width() * img.height()) as f32;
    [0, 1, 2].map(|c| img.pixels().map(|p| p[c] as f32 / 255.0).sum::<f32>() / n)
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt()
}

#[track_caller]
fn run(args: &[&str]) -> String {
    let (ok, log) = wgdit(args);
    assert!(ok, "wgdit {}: {log}", args.join(" "));
    log
}

#[test]
fn the_readme_commands_take_captioned_pictures_to_a_lora_that_generate_and_comfyui_use() {
    let dir = tmp("fine-tune");
    let _ = std::fs::remove_dir_all(&dir);
    let model = wgdit::testing::learn_pipeline("t2i").unwrap();
    let (m, data) = (model.display().to_string(), fixture("train/learn/kohya"));
    let p = |rel: &str| dir.join(rel).display().to_string();
    let log = run(&["cache", "--model", &m, "--data", &data, "--output", &p("cache"), "--resolution", "1024"]);
    assert!(log.contains("4 samples, 8 lines with repeats"), "{log}");
    let log = run(&[
        "train",
        "--model",
        &m,
        "--data",
        &p("cache"),
        "--output",
        &p("run"),
        "--steps",
        "40",
        "--rank",
        "8",
        "--alpha",
        "8",
        "--lr",
        "2e-2",
        "--seed",
        "1",
        "--batch-size",
        "4",
        "--timestep-sampling",
        "uniform",
        "--weight-decay",
        "0",
        "--checkpointing",
        "off",
        "--targets",
        &format!("{},proj_out,norm_out.linear,img_mlp.net.0.proj", wgdit::train::lora::DIFFSYNTH_TARGETS),
        "--sample-every",
        "20",
        "--sample-prompt",
        "zq picture",
        "--sample-size",
        "32x32",
        "--sample-steps",
        "8",
        "--sample-seed",
        "5",
    ]);
    assert!(log.contains("wrote") && log.contains("lora.safetensors"), "{log}");
    for f in ["lora.safetensors", "loss.csv", "loss.svg"] {
        assert!(dir.join("run").join(f).is_file(), "run/{f}: {log}");
    }
    // The samples show it learn: step 0 is the base model's picture, the last one the LoRA's.
    let target = [0.86, 0.16, 0.16];
    let s: Vec<[f32; 3]> =
        [0, 20, 40].iter().map(|k| colour(&dir.join(format!("run/samples/step-{k:06}-0.png")))).collect();
    assert!(distance(s[2], target) < 0.6 * distance(s[0], target), "samples {s:?} do not move toward {target:?}");
    // generate with a LoRA file: the trigger prompt at the samples' settings.
    let draw = |lora: &str, out: &str| {
        run(&[
            "generate",
            "--model",
            &m,
            "--lora",
            &p(lora),
            "--prompt",
            "zq picture",
            "--width",
            "32",
            "--height",
            "32",
            "--steps",
            "8",
            "--seed",
            "5",
            "--true-cfg",
            "1",
            "--output",
            &p(out),
        ]);
        colour(&dir.join(out))
    };
    let picture = draw("run/lora.safetensors", "picture.png");
    assert!(distance(picture, s[2]) < 4e-3, "generate --lora {picture:?} vs the last sample {:?}", s[2]);
    run(&[
        "convert",
        "--input",
        &p("run/lora.safetensors"),
        "--output",
        &p("comfyui.safetensors"),
        "--to",
        "standard",
        "--format",
        "comfyui",
    ]);
    // ComfyUI's keys, and generate takes that file to the same picture.
    let bytes = std::fs::read(dir.join("comfyui.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.names().iter().all(|k| k.starts_with("diffusion_model.")), "{:?}", st.names());
    assert!(distance(draw("comfyui.safetensors", "comfyui.png"), picture) < 4e-3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn edit_pairs_go_through_the_same_commands_with_an_edit_pipeline_and_sample_images() {
    let dir = tmp("fine-tune-edit");
    let _ = std::fs::remove_dir_all(&dir);
    let model = wgdit::testing::learn_pipeline("edit").unwrap();
    let (m, data) = (model.display().to_string(), fixture("train/learn/edit"));
    let p = |rel: &str| dir.join(rel).display().to_string();
    let area = (32 * 32).to_string();
    let log = run(&[
        "cache",
        "--model",
        &m,
        "--data",
        &data,
        "--output",
        &p("cache"),
        "--resolution",
        "1024",
        "--ref-area",
        &area,
        "--condition-area",
        &area,
    ]);
    assert!(log.contains("8 samples"), "{log}");
    // The samples take their reference areas from the cache (no --sample-*-area flags).
    let input = fixture("train/learn/edit/heldout/in.png");
    run(&[
        "train",
        "--model",
        &m,
        "--data",
        &p("cache"),
        "--output",
        &p("run"),
        "--steps",
        "4",
        "--rank",
        "4",
        "--lr",
        "1e-2",
        "--batch-size",
        "4",
        "--sample-every",
        "4",
        "--sample-prompt",
        "invert the colours",
        "--sample-image",
        &input,
        "--sample-steps",
        "4",
        "--sample-seed",
        "5",
    ]);
    run(&[
        "generate",
        "--model",
        &m,
        "--lora",
        &p("run/lora.safetensors"),
        "--prompt",
        "invert the colours",
        "--image",
        &input,
        "--ref-area",
        &area,
        "--condition-area",
        &area,
        "--steps",
        "4",
        "--seed",
        "5",
        "--output",
        &p("edited.png"),
    ]);
    let (sample, edited) = (colour(&dir.join("run/samples/step-000004-0.png")), colour(&dir.join("edited.png")));
    assert!(distance(sample, edited) < 4e-3, "the last sample {sample:?} vs generate's edit {edited:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
