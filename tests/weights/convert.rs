//! `wgdit convert` on base checkpoints: exact standard ↔ merged round trips (f32, bf16, f16;
//! single file and sharded folder), row stacking, prefixes, dtype conversion, and error cases that
//! must leave nothing behind. Synthetic tiny checkpoints with the real names (tests/common).

use crate::synthetic_checkpoint::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use wgdit::convert::{convert, parse_size, Action, DtypeChoice, Format, Target};
use wgdit::tensor::DType;

fn assert_same(got: &BTreeMap<String, Raw>, want: &BTreeMap<String, Raw>) {
    let gk: Vec<_> = got.keys().collect();
    let wk: Vec<_> = want.keys().collect();
    assert_eq!(gk, wk, "tensor names differ");
    for (k, w) in want {
        assert!(got[k] == *w, "tensor {k} differs after the round trip");
    }
}

/// Reads every tensor of a diffusers folder through its index (or single file).
fn read_folder(dir: &Path) -> BTreeMap<String, Raw> {
    let index = dir.join("diffusion_pytorch_model.safetensors.index.json");
    if !index.exists() {
        return read_st(&dir.join("diffusion_pytorch_model.safetensors"));
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    let mut all = BTreeMap::new();
    let mut files: Vec<&str> = json["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    files.dedup();
    for f in files {
        all.extend(read_st(&dir.join(f)));
    }
    all
}

#[test]
fn standard_to_merged_to_standard_is_bit_identical_in_f32_bf16_and_f16() {
    let dir = tmpdir("roundtrip");
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let src = dir.join(format!("std-{}.safetensors", dtype.name()));
        let merged = dir.join(format!("merged-{}.safetensors", dtype.name()));
        let back = dir.join(format!("back-{}.safetensors", dtype.name()));
        let model = tiny_model(dtype, "", 1);
        write_st(&src, &model, Some(HashMap::from([("format".into(), "pt".into())])));
        let r = run(&opts(&src, &merged, Target::Merged));
        assert_eq!(r.count(), (2 * BLOCKS * 2, 0, model.len() - 2 * BLOCKS * 6), "{r}");
        let m = read_st(&merged);
        assert!(
            m.keys().all(|k| !k.contains("attn.to_q.") && !k.contains("add_k_proj")),
            "standard names left in the merged file"
        );
        assert_eq!(m["transformer_blocks.1.attn.to_qkv.weight"].shape, vec![3 * D, D]);
        assert_eq!(m["transformer_blocks.0.attn.add_qkv_proj.bias"].shape, vec![3 * D]);
        assert_eq!(read_meta(&merged).get("format").map(String::as_str), Some("pt"), "__metadata__ not carried over");
        run(&opts(&merged, &back, Target::Standard));
        assert_same(&read_st(&back), &model);
    }
}

#[test]
fn merged_tensors_equal_row_stacking_of_q_k_v() {
    let dir = tmpdir("stacking");
    let (src, merged) = (dir.join("std.safetensors"), dir.join("merged.safetensors"));
    let model = tiny_model(DType::BF16, "", 2);
    write_st(&src, &model, None);
    run(&opts(&src, &merged, Target::Merged));
    let m = read_st(&merged);
    for b in 0..BLOCKS {
        for (parts, fused) in
            [(["to_q", "to_k", "to_v"], "to_qkv"), (["add_q_proj", "add_k_proj", "add_v_proj"], "add_qkv_proj")]
        {
            for s in ["weight", "bias"] {
                // torch.cat([q, k, v], dim=0), element by element through f32.
                let want: Vec<f32> =
                    parts.iter().flat_map(|p| model[&format!("transformer_blocks.{b}.attn.{p}.{s}")].f32s()).collect();
                let got = m[&format!("transformer_blocks.{b}.attn.{fused}.{s}")].f32s();
                assert_eq!(got, want, "block {b} {fused}.{s}");
            }
        }
    }
}

#[test]
fn sharded_folder_round_trip_is_bit_identical_with_a_correct_index() {
    let dir = tmpdir("sharded");
    let (src, merged, back) = (dir.join("in"), dir.join("merged"), dir.join("back"));
    std::fs::create_dir(&src).unwrap();
    let model = tiny_model(DType::BF16, "", 3);
    // Input: two shards with their index, as diffusers writes them.
    let (a, b): (BTreeMap<_, _>, BTreeMap<_, _>) =
        model.clone().into_iter().partition(|(k, _)| !k.starts_with("transformer_blocks.1"));
    let names =
        ["diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"];
    write_st(&src.join(names[0]), &a, None);
    write_st(&src.join(names[1]), &b, None);
    let wm: BTreeMap<_, _> =
        a.keys().map(|k| (k.clone(), names[0])).chain(b.keys().map(|k| (k.clone(), names[1]))).collect();
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": wm});
    std::fs::write(src.join("diffusion_pytorch_model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(src.join("config.json"), "{\"num_layers\": 2}").unwrap();

    let mut o = opts(&src, &merged, Target::Merged);
    o.shard_size = Some(parse_size("40KB").unwrap());
    run(&o);
    let files = listing(&merged);
    assert!(files.len() > 3, "expected several shards: {files:?}");
    assert_eq!(std::fs::read_to_string(merged.join("config.json")).unwrap(), "{\"num_layers\": 2}");
    check_index(&merged);
    assert!(read_folder(&merged).contains_key("transformer_blocks.1.attn.to_qkv.weight"));

    run(&opts(&merged, &back, Target::Standard));
    assert_same(&read_folder(&back), &model);
}

/// The index lists every tensor in the shard that holds it, and total_size is the tensor bytes.
fn check_index(dir: &Path) {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("diffusion_pytorch_model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let mut total = 0;
    let mut listed = 0;
    for f in listing(dir).iter().filter(|f| f.ends_with(".safetensors")) {
        assert!(f.starts_with("diffusion_pytorch_model-0000"), "{f}");
        for (k, r) in read_st(&dir.join(f)) {
            assert_eq!(json["weight_map"][&k], f.as_str(), "weight_map[{k}]");
            total += r.bytes.len() as u64;
            listed += 1;
        }
    }
    assert_eq!(json["weight_map"].as_object().unwrap().len(), listed);
    assert_eq!(json["metadata"]["total_size"], total);
}

#[test]
fn comfyui_prefixes_are_kept_unless_the_format_changes_them() {
    let dir = tmpdir("prefix");
    let src = dir.join("comfy.safetensors");
    let mut model = tiny_model(DType::F16, "model.diffusion_model.", 4);
    // A foreign tensor (e.g. a VAE key of a full checkpoint) is copied untouched.
    model.insert(
        "first_stage_model.x".into(),
        Raw { dtype: safetensors::Dtype::F32, shape: vec![2], bytes: vec![0; 8] },
    );
    write_st(&src, &model, None);
    let merged = dir.join("merged.safetensors");
    run(&opts(&src, &merged, Target::Merged));
    let m = read_st(&merged);
    assert!(m.contains_key("model.diffusion_model.transformer_blocks.0.attn.to_qkv.weight"));
    assert!(m.contains_key("first_stage_model.x"));
    assert!(m.keys().filter(|k| !k.starts_with("first_stage")).all(|k| k.starts_with("model.diffusion_model.")));

    let bare = dir.join("bare.safetensors");
    let mut o = opts(&merged, &bare, Target::Standard);
    o.format = Some(Format::Diffusers);
    run(&o);
    let mut want = tiny_model(DType::F16, "", 4);
    want.insert("first_stage_model.x".into(), model["first_stage_model.x"].clone());
    assert_same(&read_st(&bare), &want);

    let comfy = dir.join("comfy2.safetensors");
    let mut o = opts(&bare, &comfy, Target::Merged);
    o.format = Some(Format::ComfyUI);
    run(&o);
    assert!(read_st(&comfy).contains_key("diffusion_model.transformer_blocks.1.attn.add_qkv_proj.bias"));
}

/// bf16 round to nearest even, from the bits (independent of the `half` crate).
fn bf16_rne(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

#[test]
fn dtype_conversion_rounds_to_nearest_even_exactly() {
    let dir = tmpdir("dtype");
    let src = dir.join("f32.safetensors");
    let mut model = tiny_model(DType::F32, "", 5);
    // Ties and near-ties in to_q: 1 + 2^-8 (tie, to even: 1), 1 + 3·2^-8 (tie, up), 1 + 2^-8 + 2^-20.
    let specials =
        [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), 1.0 + 2f32.powi(-8) + 2f32.powi(-20), -2.5e-39, 3.0e38];
    let q = model.get_mut("transformer_blocks.0.attn.to_q.weight").unwrap();
    let mut v = q.f32s();
    v[..specials.len()].copy_from_slice(&specials);
    q.bytes = DType::F32.encode(&v);
    write_st(&src, &model, None);
    for (target, name) in [(DType::BF16, "bf16"), (DType::F16, "f16")] {
        let out = dir.join(format!("{name}.safetensors"));
        let mut o = opts(&src, &out, Target::Merged);
        o.dtype = DtypeChoice::To(target);
        run(&o);
        let m = read_st(&out);
        for (k, r) in &m {
            assert_eq!(r.dtype, st_dtype(target), "{k}");
        }
        let got = &m["transformer_blocks.0.attn.to_qkv.weight"].bytes;
        let want: Vec<f32> = ["to_q", "to_k", "to_v"]
            .iter()
            .flat_map(|p| model[&format!("transformer_blocks.0.attn.{p}.weight")].f32s())
            .collect();
        let want_bytes: Vec<u8> = match target {
            DType::BF16 => want.iter().flat_map(|x| bf16_rne(*x).to_le_bytes()).collect(),
            _ => want.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
        };
        assert!(*got == want_bytes, "{name} conversion is not round-to-nearest-even");
    }
    assert_eq!(bf16_rne(specials[0]), 0x3f80);
    assert_eq!(bf16_rne(specials[1]), 0x3f82);
}

/// The folder holds only what the test wrote: no output and no `.tmp-` leftovers.
fn assert_nothing_left(dir: &Path, expected: &[&str]) {
    assert_eq!(listing(dir), expected.iter().map(|s| s.to_string()).collect::<Vec<_>>());
}

#[test]
fn truncated_file_and_bad_header_are_clear_errors_that_leave_nothing_behind() {
    let dir = tmpdir("bad");
    let good = dir.join("good.safetensors");
    write_st(&good, &tiny_model(DType::BF16, "", 6), None);
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(dir.join("trunc.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    let mut bad = bytes.clone();
    bad[8] = b'#'; // the opening brace of the JSON header
    std::fs::write(dir.join("badhdr.safetensors"), &bad).unwrap();
    std::fs::write(dir.join("tiny.safetensors"), [1u8, 2, 3]).unwrap();
    for (input, needle) in [("trunc", "truncated"), ("badhdr", "bad safetensors header"), ("tiny", "truncated")] {
        let out = dir.join("out.safetensors");
        let e =
            convert(&opts(&dir.join(format!("{input}.safetensors")), &out, Target::Merged)).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains(input), "{input}: {e}");
    }
    assert_nothing_left(&dir, &["badhdr.safetensors", "good.safetensors", "tiny.safetensors", "trunc.safetensors"]);
}

#[test]
fn q_without_k_and_mismatched_shapes_are_errors_that_leave_nothing_behind() {
    let dir = tmpdir("partner");
    let mut model = tiny_model(DType::F32, "", 7);
    model.remove("transformer_blocks.1.attn.to_k.weight");
    write_st(&dir.join("nok.safetensors"), &model, None);
    let e = convert(&opts(&dir.join("nok.safetensors"), &dir.join("o.safetensors"), Target::Merged))
        .unwrap_err()
        .to_string();
    assert!(e.contains("transformer_blocks.1.attn.to_k.weight"), "{e}");

    let mut model = tiny_model(DType::F32, "", 7);
    model.get_mut("transformer_blocks.0.attn.add_v_proj.bias").unwrap().shape = vec![D / 2];
    model.get_mut("transformer_blocks.0.attn.add_v_proj.bias").unwrap().bytes.truncate(D / 2 * 4);
    write_st(&dir.join("shape.safetensors"), &model, None);
    let e = convert(&opts(&dir.join("shape.safetensors"), &dir.join("o.safetensors"), Target::Merged))
        .unwrap_err()
        .to_string();
    assert!(e.contains("add_v_proj.bias") && e.contains("must agree"), "{e}");
    assert_nothing_left(&dir, &["nok.safetensors", "shape.safetensors"]);
}

#[test]
fn output_equal_to_input_is_refused_through_any_path() {
    let dir = tmpdir("same");
    let src = dir.join("m.safetensors");
    write_st(&src, &tiny_model(DType::BF16, "", 8), None);
    let before = std::fs::read(&src).unwrap();
    std::os::unix::fs::symlink(&src, dir.join("link.safetensors")).unwrap();
    std::fs::hard_link(&src, dir.join("hard.safetensors")).unwrap();
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    for out in
        [src.clone(), dir.join("sub/../m.safetensors"), dir.join("link.safetensors"), dir.join("hard.safetensors")]
    {
        let e = convert(&opts(&src, &out, Target::Merged)).unwrap_err().to_string();
        assert!(e.contains("never overwritten"), "{}: {e}", out.display());
    }
    assert_eq!(std::fs::read(&src).unwrap(), before);
    assert_nothing_left(&dir, &["hard.safetensors", "link.safetensors", "m.safetensors", "sub"]);
}

#[test]
fn dry_run_lists_merges_and_copies_and_writes_nothing() {
    let dir = tmpdir("dry");
    let src = dir.join("m.safetensors");
    write_st(&src, &tiny_model(DType::BF16, "", 9), None);
    let mut o = opts(&src, &dir.join("out.safetensors"), Target::Merged);
    o.dry_run = true;
    let r = run(&o);
    assert!(r.actions.contains(&Action::Merge {
        from: ["attn.to_q", "attn.to_k", "attn.to_v"].map(|p| format!("transformer_blocks.1.{p}.weight")),
        to: "transformer_blocks.1.attn.to_qkv.weight".into(),
    }));
    let text = r.to_string();
    assert!(
        text.contains("merge  transformer_blocks.0.attn.add_q_proj.bias") && text.contains("copy   img_in.weight"),
        "{text}"
    );
    assert_nothing_left(&dir, &["m.safetensors"]);
}

#[test]
fn shard_sizes_parse_like_huggingface_hub() {
    assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
    assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
    assert_eq!(parse_size("512").unwrap(), 512);
    assert!(parse_size("5 parsecs").is_err());
}

/// Fixtures written by torch/diffusers (tests/fixtures/README.md).
fn fixture(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dit").join(p)
}

#[test]
fn the_diffusers_tiny_model_converts_to_exactly_the_torch_cat_merged_fixture() {
    let dir = tmpdir("fixture-merge");
    let want = read_st(&fixture("tiny-merged.safetensors"));
    for (i, input) in ["tiny", "tiny-sharded"].iter().enumerate() {
        let out = dir.join(format!("merged{i}"));
        run(&opts(&fixture(input), &out, Target::Merged));
        assert_same(&read_folder(&out), &want);
        assert_eq!(
            std::fs::read(out.join("config.json")).unwrap(),
            std::fs::read(fixture("tiny/config.json")).unwrap()
        );
    }
    // A file input gives a file output; the ComfyUI prefix is dropped on request.
    let out = dir.join("comfy-merged.safetensors");
    let mut o = opts(&fixture("tiny-comfy.safetensors"), &out, Target::Merged);
    o.format = Some(Format::Diffusers);
    run(&o);
    assert_same(&read_st(&out), &want);
}

#[test]
fn the_torch_merged_fixture_splits_back_to_the_diffusers_tiny_model_bit_for_bit() {
    let dir = tmpdir("fixture-split");
    let out = dir.join("std.safetensors");
    run(&opts(&fixture("tiny-merged.safetensors"), &out, Target::Standard));
    assert_same(&read_st(&out), &read_st(&fixture("tiny/diffusion_pytorch_model.safetensors")));
    // Sharding the tiny model like diffusers' max_shard_size="150KB" gives its 3 shards and index.
    let sharded = dir.join("sharded");
    let mut o = opts(&out, &sharded, Target::Standard);
    o.shard_size = Some(parse_size("150KB").unwrap());
    run(&o);
    check_index(&sharded);
    assert_same(&read_folder(&sharded), &read_folder(&fixture("tiny-sharded")));
}

#[test]
fn the_cli_follows_its_contract_and_fails_with_a_message_on_bad_input() {
    let dir = tmpdir("cli");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wgdit")).arg("convert").args(args).output().unwrap()
    };
    let (input, out) = (fixture("tiny"), dir.join("merged"));
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let dry = cli(&["--input", i, "--output", o, "--to", "merged", "--dry-run"]);
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success() && text.contains("8 merged, 0 split, 53 copied; would write"), "{text}");
    assert!(!out.exists());
    let args = [
        "--input",
        i,
        "--output",
        o,
        "--to",
        "merged",
        "--format",
        "diffusers",
        "--dtype",
        "bf16",
        "--shard-size",
        "100KB",
    ];
    let run = cli(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(listing(&out).len() == 4 && read_folder(&out).values().all(|r| r.dtype == safetensors::Dtype::BF16));
    let fail = cli(&["--input", i, "--output", i, "--to", "standard"]);
    assert!(!fail.status.success() && String::from_utf8_lossy(&fail.stderr).contains("never overwritten"));
}

#[test]
fn the_weights_api_hands_out_typed_views_of_the_map_under_canonical_names() {
    use wgdit::models::qwen_image::names::{checkpoint_layout, Layout};
    use wgdit::weights::Checkpoint;
    let comfy = Checkpoint::open(&fixture("tiny-comfy.safetensors")).unwrap();
    assert_eq!(
        (comfy.prefix.as_str(), checkpoint_layout(&comfy).unwrap()),
        ("model.diffusion_model.", Layout::Standard)
    );
    let v = comfy.view("img_in.weight").unwrap();
    assert_eq!(
        (v.name, v.dtype, v.shape, v.bytes.len()),
        ("img_in.weight", DType::F32, &[32usize, 16][..], 32 * 16 * 4)
    );
    assert_eq!(comfy.views().count(), 77);
    let plain = Checkpoint::open(&fixture("tiny")).unwrap();
    assert_eq!(v.bytes, plain.view("img_in.weight").unwrap().bytes, "the same bytes under the canonical name");
    assert_eq!(Checkpoint::open(&fixture("tiny-sharded")).unwrap().files.len(), 3);
    assert_eq!(
        checkpoint_layout(&Checkpoint::open(&fixture("tiny-merged.safetensors")).unwrap()).unwrap(),
        Layout::Merged
    );
    let e = plain.view("transformer_blocks.7.attn.to_q.weight").unwrap_err().to_string();
    assert!(e.contains("transformer_blocks.7.attn.to_q.weight missing"), "{e}");
    // Dtypes wgdit does not read (integers, F64, E8M0) are refused by name.
    let dir = tmpdir("api");
    let mut m = BTreeMap::new();
    m.insert("img_in.weight".to_string(), Raw { dtype: safetensors::Dtype::I8, shape: vec![4], bytes: vec![0; 4] });
    write_st(&dir.join("i8.safetensors"), &m, None);
    let e = Checkpoint::open(&dir.join("i8.safetensors")).unwrap().view("img_in.weight").unwrap_err().to_string();
    assert!(e.contains("img_in.weight has dtype I8"), "{e}");
}

#[test]
fn a_file_output_onto_a_folder_and_a_folder_output_onto_a_file_are_refused_before_writing() {
    let dir = tmpdir("kinds");
    std::fs::create_dir(dir.join("empty")).unwrap();
    std::fs::write(dir.join("file"), b"x").unwrap();
    let e = convert(&opts(&fixture("tiny-merged.safetensors"), &dir.join("empty"), Target::Standard)).unwrap_err();
    assert!(e.to_string().contains("is a folder"), "{e}");
    let e = convert(&opts(&fixture("tiny"), &dir.join("file"), Target::Merged)).unwrap_err();
    assert!(e.to_string().contains("is a file"), "{e}");
    assert_nothing_left(&dir, &["empty", "file"]);
    assert!(listing(&dir.join("empty")).is_empty());
}

#[test]
fn scaled_fp8_weights_read_as_scaled_blocks_and_bad_scales_are_errors_not_panics() {
    use wgdit::weights::checkpoint::Checkpoint;
    let dir = tmpdir("fp8-scales");
    let raw = |dtype, shape: Vec<usize>, bytes: Vec<u8>| Raw { dtype, shape, bytes };
    let mut m = BTreeMap::new();
    // 0x38 is 1.0 in E4M3; the scale 0.5 makes every value 0.5.
    m.insert("a.weight".to_string(), raw(safetensors::Dtype::F8_E4M3, vec![2, 32], vec![0x38; 64]));
    m.insert("a.scale_weight".to_string(), raw(safetensors::Dtype::F32, vec![], 0.5f32.to_le_bytes().to_vec()));
    m.insert("b.weight".to_string(), raw(safetensors::Dtype::BF16, vec![2, 32], vec![0; 128]));
    m.insert("b.scale_weight".to_string(), raw(safetensors::Dtype::F32, vec![], 2f32.to_le_bytes().to_vec()));
    m.insert("c.weight".to_string(), raw(safetensors::Dtype::F8_E4M3, vec![2, 32], vec![0x38; 64]));
    m.insert("c.scale_weight".to_string(), raw(safetensors::Dtype::F32, vec![2], vec![0; 8]));
    write_st(&dir.join("fp8.safetensors"), &m, None);
    let ck = Checkpoint::open(&dir.join("fp8.safetensors")).unwrap();
    let (dtype, shape) = ck.model_meta("a.weight").unwrap();
    assert_eq!((dtype, shape), (DType::F8E4M3Scaled, vec![2, 32]));
    assert_eq!(dtype.decode(&ck.model_bytes("a.weight").unwrap()), vec![0.5; 64]);
    let e = ck.model_bytes("b.weight").unwrap_err().to_string();
    assert!(e.contains("b.weight is bf16 but has a scale_weight"), "{e}");
    let e = ck.model_bytes("c.weight").unwrap_err().to_string();
    assert!(e.contains("c.scale_weight must be one finite number, got 2 values"), "{e}");
}
