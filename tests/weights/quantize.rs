//! `wgdit quantize` on a small synthetic checkpoint (real Qwen-Image names, rows of 256 so that
//! k-quants apply, a few odd rows for the fallback): every tensor gets the type the rules plan, the
//! bytes `DType::encode` gives for its source values, and reads back through wgdit's GGUF reader;
//! fp8 files are read with the `safetensors` crate. Refusals leave nothing behind.

use crate::synthetic_checkpoint::{read_st, tmpdir, write_st, Raw};
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use wgdit::convert::quantize::{planned_dtype, quantize, KeepRule, QuantizeOptions, QuantizeReport};
use wgdit::rng::Rng;
use wgdit::tensor::DType;
use wgdit::weights::Checkpoint;

const PREFIX: &str = "model.diffusion_model.";

/// (name, shape) of the test model: every rule of `planned_dtype` is hit.
fn shapes() -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("img_in.weight", vec![256, 64]),
        ("img_in.bias", vec![256]),
        ("txt_in.weight", vec![256, 64]),
        ("time_text_embed.timestep_embedder.linear_1.weight", vec![256, 256]),
        ("norm_out.linear.weight", vec![512, 256]),
        ("proj_out.weight", vec![64, 256]),
        ("transformer_blocks.0.attn.to_q.weight", vec![256, 256]),
        ("transformer_blocks.0.attn.to_q.bias", vec![256]),
        ("transformer_blocks.0.attn.to_k.weight", vec![256, 256]),
        ("transformer_blocks.0.attn.to_v.weight", vec![256, 256]),
        ("transformer_blocks.0.attn.norm_q.weight", vec![128]),
        ("transformer_blocks.0.attn.to_out.0.weight", vec![32, 32]),
        ("transformer_blocks.0.img_mlp.net.0.proj.weight", vec![512, 256]),
        ("transformer_blocks.0.img_mlp.net.2.weight", vec![256, 512]),
        ("transformer_blocks.0.img_mod.1.weight", vec![96, 96]),
        ("transformer_blocks.0.txt_mlp.net.2.weight", vec![64, 100]),
    ]
}

/// The model in bf16 (as the real release), keys under the ComfyUI prefix, plus a VAE tensor
/// outside it; returns the source values by canonical name.
fn write_model(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut rng = Rng::new(7);
    let mut file = BTreeMap::new();
    let mut values = BTreeMap::new();
    for (name, shape) in shapes() {
        let v = DType::BF16.round(&rng.vec_normal(shape.iter().product(), 0.05));
        file.insert(
            format!("{PREFIX}{name}"),
            Raw { dtype: Dtype::BF16, shape: shape.clone(), bytes: DType::BF16.encode(&v) },
        );
        values.insert(name.to_string(), (shape, v));
    }
    file.insert(
        "first_stage_model.decoder.conv_in.weight".into(),
        Raw { dtype: Dtype::F32, shape: vec![2], bytes: vec![0; 8] },
    );
    write_st(path, &file, None);
    values
}

fn opts(input: &Path, output: &Path, target: DType) -> QuantizeOptions {
    QuantizeOptions {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        target,
        keep: vec![],
        scaled: false,
        threads: 3,
        progress: false,
    }
}

fn run(o: &QuantizeOptions) -> QuantizeReport {
    quantize(o).unwrap_or_else(|e| panic!("quantize {} -> {}: {e}", o.input.display(), o.output.display()))
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let e: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let r: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (e / r).sqrt()
}

/// Reads a wgdit GGUF back: every tensor planned, its bytes = `encode` of the source, metadata.
fn check_gguf(out: &Path, src: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, target: DType, keep: &[KeepRule]) {
    let ck = Checkpoint::open(out).unwrap();
    assert_eq!(ck.architecture(), Some("qwen_image"));
    assert_eq!(ck.metadata["general.quantization_version"], "2");
    let ft = wgdit::convert::quantize::file_type(target).unwrap().to_string();
    assert_eq!(ck.metadata["general.file_type"], ft);
    let names: Vec<&str> = ck.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(names.len(), src.len(), "{names:?}");
    for (name, (shape, v)) in src {
        let t = ck.view(name).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
        let want = planned_dtype(name, shape, target, keep);
        assert_eq!((t.dtype, t.shape), (want, &shape[..]), "{name} in {}", target.name());
        let enc = want.encode(v);
        assert!(t.bytes == &enc[..], "{name}: the {} bytes are not those of DType::encode", want.name());
    }
}

#[test]
fn quantize_to_float_and_legacy_block_types_writes_planned_types_and_encode_bytes() {
    let dir = tmpdir("quantize-gguf");
    let input = dir.join("qwen_image_bf16.safetensors");
    let src = write_model(&input);
    for target in [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1]
    {
        let out = dir.join(format!("q-{}.gguf", target.name()));
        let r = run(&opts(&input, &out, target));
        check_gguf(&out, &src, target, &[]);
        assert_eq!(r.rows.iter().map(|r| r.tensors).sum::<usize>(), src.len(), "{r}");
        assert_eq!(r.output_bytes, std::fs::metadata(&out).unwrap().len());
        assert!(r.notes.iter().any(|n| n.contains("1 tensor(s) outside")), "{r}");
        if target.is_blocked() {
            // rows of 100 fit no block; rows of 96 fit the 32-blocks
            assert_eq!(r.warnings.len(), 1, "{r}");
            assert!(r.warnings[0].contains("txt_mlp.net.2.weight [64, 100]: rows of 100"), "{r}");
            let q = r.row(target).unwrap();
            let bound = if target == DType::Q8_0 { 0.01 } else { 0.2 };
            assert!(q.rel_l2().unwrap() > 0.0 && q.rel_l2().unwrap() < bound, "{r}");
        } else {
            assert!(r.warnings.is_empty(), "{r}");
        }
        // the report's error is the error of what was written
        let ck = Checkpoint::open(&out).unwrap();
        if let Some(row) = r.row(target).filter(|row| row.converted > 0) {
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for (name, (shape, v)) in &src {
                if planned_dtype(name, shape, target, &[]) == target {
                    got.extend(ck.view(name).unwrap().to_f32());
                    want.extend_from_slice(v);
                }
            }
            let e = rel_l2(&got, &want);
            assert!((row.rel_l2().unwrap() - e).abs() <= 1e-9 + 1e-6 * e, "{}: {r} vs {e}", target.name());
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn quantize_to_k_quants_keeps_rows_that_are_not_whole_super_blocks_in_f16() {
    let dir = tmpdir("quantize-kquant");
    let input = dir.join("m.safetensors");
    let src = write_model(&input);
    let keep = vec![KeepRule::parse("to_v=q6_k").unwrap(), KeepRule::parse("img_mlp.net.2").unwrap()];
    for target in [DType::Q2K, DType::Q3K, DType::Q4K, DType::Q5K, DType::Q6K] {
        let out = dir.join(format!("q-{}.gguf", target.name()));
        let r = run(&QuantizeOptions { keep: keep.clone(), ..opts(&input, &out, target) });
        check_gguf(&out, &src, target, &keep);
        // img_mod.1 [96, 96] and txt_mlp.net.2 [64, 100] fall back
        assert_eq!(r.warnings.len(), 2, "{r}");
        let ck = Checkpoint::open(&out).unwrap();
        assert_eq!(ck.view("transformer_blocks.0.attn.to_v.weight").unwrap().dtype, DType::Q6K);
        assert_eq!(ck.view("transformer_blocks.0.img_mlp.net.2.weight").unwrap().dtype, DType::F16);
        assert!(r.row(target).unwrap().rel_l2().unwrap() < 0.5, "{r}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn fp8_bytes(raw: &Raw, d: DType) -> Vec<f32> {
    d.decode(&raw.bytes)
}

#[test]
fn quantize_to_scaled_fp8_writes_comfyui_scale_weights_and_the_marker() {
    let dir = tmpdir("quantize-fp8");
    let input = dir.join("m.safetensors");
    let src = write_model(&input);
    let out = dir.join("m_fp8_scaled.safetensors");
    let r = run(&QuantizeOptions { scaled: true, ..opts(&input, &out, DType::F8E4M3) });
    let t = read_st(&out);
    let marker = &t["scaled_fp8"];
    assert_eq!((marker.dtype, marker.shape.as_slice()), (Dtype::F8_E4M3, &[0usize][..]));
    for (name, (shape, v)) in &src {
        let want = planned_dtype(name, shape, DType::F8E4M3, &[]);
        let w = &t[name];
        assert_eq!(w.shape, *shape, "{name}");
        let module = name.strip_suffix(".weight").unwrap_or(name);
        let scale = t.get(&format!("{module}.scale_weight"));
        if want == DType::F8E4M3 {
            assert_eq!(w.dtype, Dtype::F8_E4M3, "{name}");
            let s = scale.unwrap_or_else(|| panic!("{module}.scale_weight missing"));
            assert_eq!((s.dtype, s.shape.as_slice()), (Dtype::F32, &[][..]));
            let s = f32::from_le_bytes(s.bytes[..4].try_into().unwrap());
            let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert_eq!(s, amax / 448.0, "{name}");
            let back: Vec<f32> = fp8_bytes(w, DType::F8E4M3).iter().map(|x| x * s).collect();
            assert!(rel_l2(&back, v) < 0.05, "{name}: {}", rel_l2(&back, v));
        } else {
            assert!(scale.is_none(), "{name} is {} and has a scale", want.name());
            assert_eq!(w.dtype, if want == DType::F32 { Dtype::F32 } else { Dtype::F16 }, "{name}");
        }
    }
    assert!(r.row(DType::F8E4M3).unwrap().rel_l2().unwrap() < 0.05, "{r}");
    // that scaled-fp8 file back to GGUF (q8_0) and to an e5m2 file: the scales are applied, not copied
    let back = dir.join("from_fp8.gguf");
    let r = run(&opts(&out, &back, DType::Q8_0));
    assert!(r.notes.iter().any(|n| n.contains("its 8 scale tensor(s) are applied")), "{r}");
    let ck = Checkpoint::open(&back).unwrap();
    assert_eq!(ck.entries.len(), src.len(), "scale tensors or the marker were written");
    for (name, (_, v)) in &src {
        let got = ck.view(name).unwrap().to_f32();
        assert!(rel_l2(&got, v) < 0.06, "{name}: {}", rel_l2(&got, v));
    }
    let e5 = dir.join("from_fp8_e5m2.safetensors");
    run(&opts(&out, &e5, DType::F8E5M2));
    let w = &read_st(&e5)["transformer_blocks.0.attn.to_q.weight"];
    let v = &src["transformer_blocks.0.attn.to_q.weight"].1;
    assert!(rel_l2(&fp8_bytes(w, DType::F8E5M2), v) < 0.15, "the e5m2 copy of a scaled weight lost its scale");
    // unscaled e5m2: plain casts, no scales, no marker
    let out = dir.join("m_fp8_e5m2.safetensors");
    run(&opts(&input, &out, DType::F8E5M2));
    let t = read_st(&out);
    assert!(!t.contains_key("scaled_fp8") && !t.keys().any(|k| k.ends_with(".scale_weight")));
    assert_eq!(t["transformer_blocks.0.attn.to_q.weight"].dtype, Dtype::F8_E5M2);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn quantize_refuses_loras_its_own_input_and_types_the_output_cannot_hold() {
    let dir = tmpdir("quantize-refuse");
    let input = dir.join("m.safetensors");
    write_model(&input);
    let lora = dir.join("lora.safetensors");
    let a = Raw { dtype: Dtype::F32, shape: vec![2, 2], bytes: vec![0; 16] };
    write_st(&lora, &BTreeMap::from([("transformer_blocks.0.attn.to_q.lora_A.weight".to_string(), a)]), None);
    let before: Vec<PathBuf> = listing(&dir);
    let out = |n: &str| dir.join(n);
    let cases: Vec<(QuantizeOptions, &str)> = vec![
        (opts(&lora, &out("l.gguf"), DType::Q8_0), "this is a LoRA file"),
        (opts(&input, &input, DType::F8E4M3), "is the input"),
        (opts(&input, &out("x.gguf"), DType::F8E4M3), "--type f8_e4m3 cannot be written to"),
        (opts(&input, &out("x.safetensors"), DType::Q4K), "--type q4_k cannot be written to"),
        (opts(&input, &out("x.bin"), DType::Q4K), "name it .gguf"),
        (QuantizeOptions { scaled: true, ..opts(&input, &out("x.gguf"), DType::Q8_0) }, "--scaled is for fp8"),
        (
            QuantizeOptions {
                keep: vec![KeepRule::parse("a=f8_e4m3").unwrap()],
                ..opts(&input, &out("x.gguf"), DType::Q8_0)
            },
            "--keep a=f8_e4m3",
        ),
        (opts(&dir.join("missing"), &out("x.gguf"), DType::Q8_0), "does not exist"),
    ];
    for (o, needle) in cases {
        let err = quantize(&o).err().unwrap_or_else(|| panic!("accepted; expected {needle:?}")).to_string();
        assert!(err.contains(needle), "{err:?} does not say {needle:?}");
    }
    assert_eq!(listing(&dir), before, "a refused quantize left files behind");
    let _ = std::fs::remove_dir_all(dir);
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn the_quantize_command_prints_its_summary_and_exits_1_on_a_bad_type() {
    let dir = tmpdir("quantize-cli");
    let input = dir.join("m.safetensors");
    write_model(&input);
    let out = dir.join("m-Q8_0.gguf");
    let wgdit = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wgdit")).arg("quantize").args(args).output().unwrap()
    };
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let r = wgdit(&["--input", i, "--output", o, "--type", "q8_0", "--keep", "to_v", "--threads", "2"]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{stdout}{}", String::from_utf8_lossy(&r.stderr));
    for needle in ["type     tensors", "q8_0 ", "f16 ", "warning: transformer_blocks.0.txt_mlp.net.2.weight", "wrote "]
    {
        assert!(stdout.contains(needle), "{stdout} lacks {needle:?}");
    }
    let r = wgdit(&["--input", i, "--output", o, "--type", "q4"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--type q4: unknown type"));
    let _ = std::fs::remove_dir_all(dir);
}
