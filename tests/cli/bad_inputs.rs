//! The bad-input suite (issue 9, docs/reliability.md): the binary on each class of bad input
//! exits with 1 (never 101, a panic), names the thing, writes no output and leaves every input
//! byte for byte as it was. Tiny fixtures only, copied into a scratch folder first, so that no
//! case can harm the committed ones.

use crate::fixture;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A pid above Linux's pid_max: never a running process.
const DEAD_PID: u32 = 0x7fff_fff0;

/// Runs the binary; (exit code, stdout + stderr).
fn run(args: &[&str]) -> (i32, String) {
    run_env(args, &[])
}

/// Runs the binary with extra environment variables.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wgdit"));
    cmd.args(args).env("NODEVICE_SELECT", "1").envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), log)
}

/// A hash of a file, or of every file under a folder (names and bytes).
fn hash(p: &Path) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(q) = stack.pop() {
        if q.is_dir() {
            let mut es: Vec<PathBuf> = std::fs::read_dir(&q).unwrap().map(|e| e.unwrap().path()).collect();
            es.sort();
            stack.extend(es);
        } else if let Ok(b) = std::fs::read(&q) {
            q.hash(&mut h);
            b.hash(&mut h);
        }
    }
    h.finish()
}

/// The command exits with 1, says `needle`, panics nowhere, writes none of `outputs` and
/// leaves `inputs` unchanged.
#[track_caller]
fn refused(args: &[&str], inputs: &[&Path], outputs: &[&Path], needle: &str) {
    refused_env(args, &[], inputs, outputs, needle)
}

/// [`refused`] with extra environment variables.
#[track_caller]
fn refused_env(args: &[&str], env: &[(&str, &str)], inputs: &[&Path], outputs: &[&Path], needle: &str) {
    let before: Vec<u64> = inputs.iter().map(|p| hash(p)).collect();
    let (code, log) = run_env(args, env);
    assert_eq!(code, 1, "exit code 1 expected for {args:?}: {log}");
    assert!(!log.contains("panicked"), "a panic: {log}");
    assert!(log.contains(needle), "error should mention `{needle}`: {log}");
    for o in outputs {
        assert!(!o.exists(), "no output may be written: {}", o.display());
    }
    for (p, h) in inputs.iter().zip(before) {
        assert_eq!(hash(p), h, "input {} changed", p.display());
    }
}

/// A fresh scratch folder holding a copy of the tiny model (`model/`) and the odd-grid inputs.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("wgdit-bad-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("model")).unwrap();
        for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
            std::fs::copy(fixture(&format!("dit/tiny/{f}")), dir.join("model").join(f)).unwrap();
        }
        std::fs::copy(fixture("dit/cases/odd_grid.inputs.safetensors"), dir.join("inputs.safetensors")).unwrap();
        Scratch { dir }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn model(&self) -> PathBuf {
        self.p("model")
    }
    fn weights(&self) -> PathBuf {
        self.p("model/diffusion_pytorch_model.safetensors")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

type Tensors = BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>;

fn read_tensors(p: &Path) -> Tensors {
    let bytes = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec()))).collect()
}

fn write_tensors(p: &Path, t: &Tensors) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = t
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, p).unwrap();
}

fn f32s(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// The odd-grid inputs, edited, written to `name`.
fn inputs_with(sc: &Scratch, name: &str, edit: impl FnOnce(&mut Tensors)) -> PathBuf {
    let mut t = read_tensors(&sc.p("inputs.safetensors"));
    edit(&mut t);
    let p = sc.p(name);
    write_tensors(&p, &t);
    p
}

fn forward<'a>(sc: &'a Scratch, model: &'a str, inputs: &'a str, out: &'a str) -> Vec<&'a str> {
    let _ = sc;
    vec!["forward", "--model", model, "--inputs", inputs, "--output", out]
}

#[test]
fn forward_never_overwrites_its_model_or_inputs_through_any_path() {
    let sc = Scratch::new("clobber");
    let (model, weights, inputs) = (sc.model(), sc.weights(), sc.p("inputs.safetensors"));
    std::fs::create_dir(sc.p("sub")).unwrap();
    std::fs::hard_link(&weights, sc.p("hard.safetensors")).unwrap();
    std::os::unix::fs::symlink(&weights, sc.p("soft.safetensors")).unwrap();
    let dotdot = sc.p("sub/../model/diffusion_pytorch_model.safetensors");
    for out in [weights.clone(), dotdot, sc.p("hard.safetensors"), sc.p("soft.safetensors")] {
        refused(&forward(&sc, s(&model), s(&inputs), s(&out)), &[&model, &inputs], &[], "never overwritten");
    }
    refused(&forward(&sc, s(&weights), s(&inputs), s(&inputs)), &[&model, &inputs], &[], "is the input");
}

#[test]
fn forward_refuses_empty_wrapping_and_non_finite_inputs() {
    let sc = Scratch::new("inputs");
    let (model, out) = (sc.model(), sc.p("out.safetensors"));
    let batch0 = inputs_with(&sc, "b0.safetensors", |t| {
        t.insert("hidden_states".into(), (safetensors::Dtype::F32, vec![0, 15, 16], vec![]));
        t.insert("encoder_hidden_states".into(), (safetensors::Dtype::F32, vec![0, 7, 24], vec![]));
        t.insert("timestep".into(), (safetensors::Dtype::F32, vec![0], vec![]));
    });
    let txt0 = inputs_with(&sc, "t0.safetensors", |t| {
        t.insert("encoder_hidden_states".into(), (safetensors::Dtype::F32, vec![1, 0, 24], vec![]));
    });
    // 3·5 + 2^33·2^31 = 15 + 2^64: the old u64 product wrapped to hidden_states' 15 tokens.
    let wrap = inputs_with(&sc, "wrap.safetensors", |t| {
        let v: Vec<i64> = vec![1, 3, 5, 1, 1 << 33, 1 << 31];
        t.insert("img_shapes".into(), (safetensors::Dtype::I64, vec![2, 3], bytemuck::cast_slice(&v).to_vec()));
    });
    let nan = inputs_with(&sc, "nan.safetensors", |t| {
        let b = &mut t.get_mut("hidden_states").unwrap().2;
        b[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let inf_t = inputs_with(&sc, "inf.safetensors", |t| {
        t.insert("timestep".into(), (safetensors::Dtype::F32, vec![1], f32s(&[f32::INFINITY])));
    });
    for (inputs, needle) in [
        (&batch0, "batch 0"),
        (&txt0, "0 text tokens"),
        (&wrap, "too large token count"),
        (&nan, "hidden_states has 1 non-finite"),
        (&inf_t, "timestep has 1 non-finite"),
    ] {
        refused(&forward(&sc, s(&model), s(inputs), s(&out)), &[&model, inputs], &[&out], needle);
    }
}

#[test]
fn forward_refuses_bad_loras_and_configs() {
    let sc = Scratch::new("lora");
    let (model, inputs, out) = (sc.model(), sc.p("inputs.safetensors"), sc.p("out.safetensors"));
    let rank0 = sc.p("rank0.safetensors");
    let mut t = Tensors::new();
    t.insert(
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight".into(),
        (safetensors::Dtype::F32, vec![0, 32], vec![]),
    );
    t.insert(
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight".into(),
        (safetensors::Dtype::F32, vec![32, 0], vec![]),
    );
    write_tensors(&rank0, &t);
    let mut args = forward(&sc, s(&model), s(&inputs), s(&out));
    args.extend(["--lora", s(&rank0)]);
    refused(&args, &[&model, &inputs, &rank0], &[&out], "rank 0");
    let nan_strength = format!("{}:nan", fixture("lora/peft.safetensors"));
    let mut args = forward(&sc, s(&model), s(&inputs), s(&out));
    args.extend(["--lora", &nan_strength]);
    refused(&args, &[&model, &inputs], &[&out], "not a finite number");
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(sc.p("model/config.json")).unwrap()).unwrap();
    for (key, v) in [("patch_size", 1u64 << 32), ("num_layers", 1_000_000_000)] {
        let mut c = cfg.clone();
        c[key] = v.into();
        let path = sc.p(&format!("{key}.json"));
        std::fs::write(&path, c.to_string()).unwrap();
        let mut args = forward(&sc, s(&model), s(&inputs), s(&out));
        args.extend(["--config", s(&path)]);
        refused(&args, &[&model, &inputs, &path], &[&out], key);
    }
}

#[test]
fn a_non_finite_forward_output_is_refused_unless_allowed_and_stale_temporaries_are_removed() {
    let sc = Scratch::new("nanout");
    let mut w = read_tensors(&sc.weights());
    let bias = w.get_mut("proj_out.bias").unwrap();
    let n = bias.2.len() / 4;
    bias.2 = f32s(&vec![f32::NAN; n]);
    write_tensors(&sc.weights(), &w);
    let (model, inputs, out) = (sc.model(), sc.p("inputs.safetensors"), sc.p("out.safetensors"));
    refused(&forward(&sc, s(&model), s(&inputs), s(&out)), &[&model, &inputs], &[&out], "output has 240 non-finite");
    let stale = sc.p(&format!("out.safetensors.tmp-{DEAD_PID}"));
    std::fs::write(&stale, b"left by a killed run").unwrap();
    let mut args = forward(&sc, s(&model), s(&inputs), s(&out));
    args.push("--allow-nonfinite");
    let (code, log) = run(&args);
    assert_eq!(code, 0, "{log}");
    assert!(out.exists() && !stale.exists() && log.contains("removed"), "{log}");
}

#[test]
fn integer_weights_are_named_as_an_unsupported_dtype() {
    let sc = Scratch::new("int8");
    let mut w = read_tensors(&sc.weights());
    let t = w.get_mut("transformer_blocks.0.attn.norm_q.weight").unwrap();
    (t.0, t.2) = (safetensors::Dtype::I8, vec![0x38; 16]);
    write_tensors(&sc.weights(), &w);
    let (model, inputs, out) = (sc.model(), sc.p("inputs.safetensors"), sc.p("out.safetensors"));
    let args = forward(&sc, s(&model), s(&inputs), s(&out));
    refused(&args, &[&model, &inputs], &[&out], "I8");
    let (_, log) = run(&args);
    assert!(!log.contains("missing:") && !log.contains("unexpected:"), "one message, not missing + unexpected: {log}");
}

#[test]
fn convert_devices_and_bench_refuse_what_they_cannot_do() {
    let sc = Scratch::new("misc");
    let foreign = sc.p("vae.safetensors");
    let mut t = Tensors::new();
    t.insert("decoder.conv_in.weight".into(), (safetensors::Dtype::F32, vec![2], f32s(&[1.0, 2.0])));
    write_tensors(&foreign, &t);
    let out = sc.p("converted.safetensors");
    let args = ["convert", "--input", s(&foreign), "--output", s(&out), "--to", "merged"];
    refused(&args, &[&foreign], &[&out], "no Qwen-Image DiT tensor");
    refused(&["devices", "--adapter", "99"], &[], &[], "--adapter 99");
    refused(
        &["bench", "dispatches", "--preset", "qwen-image", "--tokens", "4611686018427387904"],
        &[],
        &[],
        "--tokens",
    );
}

#[test]
fn vae_and_generate_never_overwrite_their_inputs() {
    let sc = Scratch::new("pipeline");
    let lat = sc.p("latents.safetensors");
    std::fs::copy(fixture("pipeline/cases/vae_decode.safetensors"), &lat).unwrap();
    let vae = fixture("pipeline/t2i/vae");
    refused(
        &["vae", "decode", "--model", &vae, "--latents", s(&lat), "--output", s(&lat)],
        &[&lat],
        &[],
        "is the input",
    );
    let embeds = sc.p("embeds.safetensors");
    std::fs::copy(fixture("pipeline/cases/t2i_cfg.safetensors"), &embeds).unwrap();
    let folder = fixture("pipeline/t2i");
    let gen = ["generate", "--model", &folder, "--prompt-embeds", s(&embeds), "--steps", "1"];
    refused(&[&gen[..], &["--output", s(&embeds)]].concat(), &[&embeds], &[], "is the input");
    let out = sc.p("out.safetensors");
    let both = [&gen[..], &["--output", s(&out), "--save-latents", s(&out)]].concat();
    refused(&both, &[&embeds], &[&out], "--save-latents and --output");
}

#[test]
fn plans_over_the_memory_budget_are_refused_before_anything_is_allocated() {
    let sc = Scratch::new("budget");
    let (model, inputs, out) = (sc.model(), sc.p("inputs.safetensors"), sc.p("out.safetensors"));
    let fwd = forward(&sc, s(&model), s(&inputs), s(&out));
    let small = [("WGDIT_VRAM_BUDGET", "64K")];
    // The DiT plans within the budget (streaming blocks); below its all-streamed minimum it refuses.
    refused_env(&fwd, &small, &[&model, &inputs], &[&out], "even with every transformer block streamed");
    refused_env(&fwd, &small, &[&model, &inputs], &[&out], "but the budget is 64.0 KiB");
    refused_env(&fwd, &small, &[], &[&out], "WGDIT_VRAM_BUDGET");
    // A CPU adapter's device memory is the host's; with the device budget set, the host check
    // is the one that refuses (the results read back).
    let tiny_ram = [("WGDIT_RAM_BUDGET", "16")];
    refused_env(&fwd, &tiny_ram, &[&model, &inputs], &[&out], "host memory (a CPU adapter) less a 1 B margin");
    let host_only = [("WGDIT_VRAM_BUDGET", "1G"), ("WGDIT_RAM_BUDGET", "16")];
    refused_env(&fwd, &host_only, &[&model, &inputs], &[&out], "of host memory but only 16 B is available");
    refused_env(&fwd, &[("WGDIT_VRAM_BUDGET", "lots")], &[], &[&out], "`lots` is not a size");
    let folder = fixture("pipeline/t2i");
    let embeds = fixture("pipeline/cases/t2i_cfg.safetensors");
    let png = sc.p("x.png");
    let gen = ["generate", "--model", &folder, "--prompt-embeds", &embeds, "--steps", "2", "--output", s(&png)];
    refused_env(&gen, &[("WGDIT_VRAM_BUDGET", "200K")], &[], &[&png], "of device memory");
    let (code, log) = run_env(&fwd, &[("WGDIT_VRAM_BUDGET", "1G"), ("WGDIT_RAM_BUDGET", "1G")]);
    assert_eq!(code, 0, "a budget that fits runs: {log}");
}

/// The tiny model's config, for writing datasets.
fn tiny_cfg(sc: &Scratch) -> wgdit::models::qwen_image::DitConfig {
    wgdit::models::qwen_image::DitConfig::from_file(&sc.p("model/config.json")).unwrap()
}

fn train<'a>(model: &'a str, data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec!["train", "--model", model, "--data", data, "--output", out, "--steps", steps, "--rank", "4"]
}

#[test]
fn train_refuses_bad_hyper_parameters_and_bad_samples_before_writing() {
    let sc = Scratch::new("train");
    let (model, data, out) = (sc.model(), sc.p("data"), sc.p("out"));
    wgdit::train::data::write_synthetic(&data, &tiny_cfg(&sc), 1, [8, 8], 5, 3).unwrap();
    for arg in [
        "--lr=nan",
        "--lr=-1",
        "--weight-decay=-0.5",
        "--max-grad-norm=inf",
        "--alpha=0",
        "--batch-size=0",
        "--grad-accum=0",
        "--adam-beta1=1",
        "--adam-beta2=-0.1",
        "--adam-eps=0",
    ] {
        let mut args = train(s(&model), s(&data), s(&out), "1");
        args.push(arg);
        let flag = arg.split('=').next().unwrap();
        refused(&args, &[&model, &data], &[&out], flag);
    }
    refused(&train(s(&model), s(&data), s(&out), "0"), &[&model, &data], &[&out], "--steps 0");
    refused(
        &train(s(&model), s(&data), s(&data), "1"),
        &[&model, &data],
        &[&data.join("lora.safetensors")],
        "is the input",
    );
    // A reference spelled `ref_latents.00` would parse as index 0 but name another tensor.
    let odd = sc.p("odd");
    std::fs::create_dir(&odd).unwrap();
    let mut t = read_tensors(&data.join(first_sample(&data)));
    let lat = t["latents"].clone();
    t.insert("ref_latents.00".into(), lat);
    write_tensors(&odd.join("a.safetensors"), &t);
    std::fs::write(odd.join("metadata.jsonl"), "{\"file\": \"a.safetensors\"}\n").unwrap();
    refused(
        &train(s(&model), s(&odd), s(&out), "1"),
        &[&model, &odd],
        &[&out.join("lora.safetensors")],
        "ref_latents.00",
    );
    // --sample-every: a prompt, and a pipeline folder (this model is a transformer folder).
    let with = |extra: &[&'static str]| [&train(s(&model), s(&data), s(&out), "1")[..], extra].concat();
    refused(&with(&["--sample-every", "1"]), &[&model, &data], &[&out], "--sample-prompt");
    refused(&with(&["--sample-every", "1", "--sample-prompt", "x"]), &[&model, &data], &[&out], "model_index.json");
    refused(&with(&["--sample-prompt", "x"]), &[&model, &data], &[&out], "need --sample-every");
}

fn first_sample(data: &Path) -> String {
    let meta = std::fs::read_to_string(data.join("metadata.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(meta.lines().next().unwrap()).unwrap();
    v["file"].as_str().unwrap().to_string()
}

#[test]
fn training_stops_at_a_non_finite_loss_and_a_busy_folder_is_refused() {
    let sc = Scratch::new("trainnan");
    let (model, data, out) = (sc.model(), sc.p("data"), sc.p("out"));
    wgdit::train::data::write_synthetic(&data, &tiny_cfg(&sc), 1, [8, 8], 5, 3).unwrap();
    let sample = data.join(first_sample(&data));
    let mut t = read_tensors(&sample);
    t.get_mut("latents").unwrap().2[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    write_tensors(&sample, &t);
    refused(
        &train(s(&model), s(&data), s(&out), "3"),
        &[&model, &data],
        &[&out.join("lora.safetensors")],
        "the loss is NaN",
    );
    // A folder whose lock names a running process (this test's) is busy.
    let busy = sc.p("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join(".wgdit-train.lock"), format!("{}\n", std::process::id())).unwrap();
    let needle = format!("pid {}", std::process::id());
    refused(&train(s(&model), s(&data), s(&busy), "1"), &[&model, &data], &[&busy.join("lora.safetensors")], &needle);
}

#[test]
fn a_resume_with_a_changed_lr_is_refused_overridden_on_purpose_or_has_nothing_left_to_do() {
    let sc = Scratch::new("resume");
    let (model, data, out) = (sc.model(), sc.p("data"), sc.p("out"));
    wgdit::train::data::write_synthetic(&data, &tiny_cfg(&sc), 1, [8, 8], 5, 3).unwrap();
    let mut args = train(s(&model), s(&data), s(&out), "2");
    args.extend(["--save-every", "2", "--checkpointing", "off"]);
    let (code, log) = run(&args);
    assert_eq!(code, 0, "{log}");
    let ckpt = out.join("checkpoint-2");
    let more = sc.p("more");
    let mut args = train(s(&model), s(&data), s(&more), "3");
    args.extend(["--checkpointing", "off", "--resume", s(&ckpt), "--lr", "0.001"]);
    refused(&args, &[&model, &data, &ckpt], &[&more], "lr: saved 0.0001, given 0.001");
    args.extend(["--resume-override", "lr"]);
    let (code, log) = run(&args);
    assert!(code == 0 && more.join("lora.safetensors").exists(), "{log}");
    let done = sc.p("done");
    let mut args = train(s(&model), s(&data), s(&done), "2");
    args.extend(["--checkpointing", "off", "--resume", s(&ckpt)]);
    let (code, log) = run(&args);
    assert!(code == 0 && log.contains("nothing left to do") && !done.exists(), "{log}");
}

#[test]
fn train_takes_schedules_adam_flags_an_init_lora_of_the_files_rank_and_preset_loras() {
    let sc = Scratch::new("trainflags");
    let (model, data, out) = (sc.model(), sc.p("data"), sc.p("out"));
    wgdit::train::data::write_synthetic(&data, &tiny_cfg(&sc), 1, [8, 8], 5, 3).unwrap();
    let mut args = train(s(&model), s(&data), s(&out), "3");
    args.extend(["--checkpointing", "off", "--lr-schedule", "cosine", "--warmup", "1", "--adam-beta2", "0.99"]);
    let (code, log) = run(&args);
    assert_eq!(code, 0, "{log}");
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("cosine"), "{svg:.300}");
    let x = out.join("lora.safetensors");
    let with_x = format!("{}:0.5", x.display());
    // --init-lora without --rank takes the file's rank (4, where the default is 32).
    let again = sc.p("again");
    let args = ["train", "--model", s(&model), "--data", s(&data), "--output", s(&again), "--steps", "1"];
    let mut init = args.to_vec();
    init.extend(["--checkpointing", "off", "--init-lora", s(&x), "--preset-lora", &with_x]);
    let (code, log) = run(&init);
    assert_eq!(code, 0, "{log}");
    let mut wrong = init.clone();
    wrong.extend(["--rank", "8"]);
    refused(&wrong, &[&model, &data, &x], &[&again.join("x")], "but --rank is 8");
    let mut bad = args.to_vec();
    bad.extend(["--lr-schedule", "step"]);
    let (code, log) = run(&bad);
    assert!(code == 2 && log.contains("constant, linear, cosine"), "clap refuses an unknown schedule: {log}");
    let (_, help) = run(&["train", "--help"]);
    for flag in
        ["--lr-schedule", "--adam-beta1", "--adam-beta2", "--adam-eps", "--init-lora", "--preset-lora", "loss.svg"]
    {
        assert!(help.contains(flag), "{flag} missing from train --help");
    }
}
