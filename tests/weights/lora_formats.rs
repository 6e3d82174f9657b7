//! LoRA files in the diffusers/PEFT, DiffSynth, kohya/musubi and ComfyUI formats (spec §8): all
//! parse to the same canonical LoRA; merged and standard conversions reproduce ΔW = s·B·A for every
//! module; merge → split restores the original bit for bit; errors leave nothing behind.

use crate::synthetic_checkpoint::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use wgdit::convert::{convert, Format, Target};
use wgdit::models::qwen_image::lora::read_lora;
use wgdit::rng::Rng;
use wgdit::tensor::DType;
use wgdit::weights::{write_lora, Lora, LoraFormat, LoraModule};

/// Module path → (A [r, in], B [out, r], alpha), in the synthetic LoRA.
type Synth = BTreeMap<String, (Vec<f32>, Vec<f32>, usize, f32)>;

const R: usize = 4;
const QKV: [&str; 6] = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"];

/// A LoRA on q/k/v (both streams), to_out.0 and img_mlp.net.2 of each block, and proj_out.
fn synth(seed: u64, alpha: impl Fn(&str) -> f32) -> Synth {
    let mut rng = Rng::new(seed);
    let mut mods: Vec<(String, usize, usize)> = vec![("proj_out".into(), D, 16)];
    for b in 0..BLOCKS {
        for m in QKV.iter().chain(&["attn.to_out.0"]) {
            mods.push((format!("transformer_blocks.{b}.{m}"), D, D));
        }
        mods.push((format!("transformer_blocks.{b}.img_mlp.net.2"), 4 * D, D));
    }
    mods.into_iter()
        .map(|(p, din, dout)| {
            let a = rng.vec_normal(R * din, 1.0);
            let b = rng.vec_normal(dout * R, 1.0);
            let al = alpha(&p);
            (p, (a, b, din, al))
        })
        .collect()
}

fn raw(v: &[f32], shape: Vec<usize>, d: DType) -> Raw {
    Raw { dtype: st_dtype(d), shape, bytes: d.encode(v) }
}

/// Writes the synthetic LoRA with the test's own key rules (spec §8), independent of wgdit.
fn write_format(path: &Path, s: &Synth, f: LoraFormat, d: DType) {
    let mut t = BTreeMap::new();
    for (p, (a, b, din, alpha)) in s {
        let (stem, an, bn) = match f {
            LoraFormat::Diffusers => (format!("transformer.{p}"), "lora_A.weight", "lora_B.weight"),
            LoraFormat::DiffSynth => (p.clone(), "lora_A.default.weight", "lora_B.default.weight"),
            LoraFormat::Kohya => (format!("lora_unet_{}", p.replace('.', "_")), "lora_down.weight", "lora_up.weight"),
            LoraFormat::ComfyUI => (format!("diffusion_model.{p}"), "lora_down.weight", "lora_up.weight"),
        };
        t.insert(format!("{stem}.{an}"), raw(a, vec![R, *din], d));
        t.insert(format!("{stem}.{bn}"), raw(b, vec![b.len() / R, R], d));
        if f != LoraFormat::Diffusers {
            t.insert(format!("{stem}.alpha"), raw(&[*alpha], vec![], DType::F32));
        }
    }
    let meta = (f == LoraFormat::Diffusers).then(|| {
        let alphas: BTreeMap<&String, f32> = s.iter().map(|(p, v)| (p, v.3)).collect();
        let m = serde_json::json!({"transformer.r": R, "transformer.lora_alpha": 8, "transformer.alpha_pattern": alphas,
            "transformer.target_modules": s.keys().collect::<Vec<_>>()});
        HashMap::from([("lora_adapter_metadata".to_string(), m.to_string())])
    });
    write_st(path, &t, meta);
}

/// ΔW = (alpha / r) · B · A in f64.
fn delta(m: &LoraModule) -> Vec<f64> {
    m.delta()
}

fn synth_delta(a: &[f32], b: &[f32], din: usize, alpha: f32) -> Vec<f64> {
    let r = a.len() / din;
    let dout = b.len() / r;
    let s = alpha as f64 / r as f64;
    let mut w = vec![0f64; dout * din];
    for o in 0..dout {
        for i in 0..din {
            w[o * din + i] = (0..r).map(|k| b[o * r + k] as f64 * a[k * din + i] as f64).sum::<f64>() * s;
        }
    }
    w
}

fn assert_close(got: &[f64], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: size");
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rel * scale, "{what}[{i}]: {g} vs {w}");
    }
}

const FORMATS: [LoraFormat; 4] = [LoraFormat::Diffusers, LoraFormat::DiffSynth, LoraFormat::Kohya, LoraFormat::ComfyUI];

fn alpha_varied(p: &str) -> f32 {
    if p.contains("img_mlp") {
        2.0
    } else {
        8.0
    }
}

#[test]
fn all_four_formats_parse_to_the_same_canonical_lora_and_delta() {
    let dir = tmpdir("lora-parse");
    let s = synth(11, alpha_varied);
    for f in FORMATS {
        let path = dir.join(format!("{}.safetensors", f.name().replace('/', "-")));
        write_format(&path, &s, f, DType::BF16);
        let l = read_lora(&path).unwrap();
        assert_eq!(l.format, f);
        assert_eq!(l.modules.keys().collect::<Vec<_>>(), s.keys().collect::<Vec<_>>(), "{}", f.name());
        for (p, (a, b, din, alpha)) in &s {
            let m = &l.modules[p];
            assert_eq!(m.alpha, *alpha as f64, "{} {p} alpha", f.name());
            let (a, b) = (DType::BF16.round(a), DType::BF16.round(b));
            assert_eq!(delta(m), synth_delta(&a, &b, *din, *alpha), "{} {p} delta", f.name());
        }
    }
}

/// ΔW of every merged module equals the rows [ΔW_q; ΔW_k; ΔW_v] of its parts.
fn check_merged_deltas(merged: &Lora, std: &Lora, rank: usize, rel: f64) {
    let mut n = 0;
    for (path, m) in merged.modules.iter().filter(|(p, _)| p.ends_with("qkv") || p.ends_with("qkv_proj")) {
        let (block, fused) = path.rsplit_once(".attn.").unwrap();
        let parts = if fused == "to_qkv" { &QKV[..3] } else { &QKV[3..] };
        let want: Vec<f64> = parts.iter().flat_map(|p| delta(&std.modules[&format!("{block}.{p}")])).collect();
        assert_eq!(m.rank(), rank);
        assert_close(&delta(m), &want, rel, path);
        n += 1;
    }
    assert!(n > 0 && !merged.modules.keys().any(|k| k.ends_with("to_q") || k.ends_with("add_k_proj")));
}

#[test]
fn merge_and_split_reproduce_every_delta_and_round_trip_bit_for_bit_in_every_format() {
    let dir = tmpdir("lora-merge");
    let s = synth(12, alpha_varied);
    for (f, out) in FORMATS.into_iter().zip([Format::Diffusers, Format::DiffSynth, Format::Kohya, Format::ComfyUI]) {
        let tag = f.name().replace('/', "-");
        let [src, merged, back] = ["src", "merged", "back"].map(|n| dir.join(format!("{tag}-{n}.safetensors")));
        write_format(&src, &s, f, DType::F32);
        let orig = read_lora(&src).unwrap();
        let r = run(&opts(&src, &merged, Target::Merged));
        assert_eq!(r.count().0, 2 * BLOCKS, "{r}");
        let m = read_lora(&merged).unwrap();
        assert_eq!(m.format, LoraFormat::Diffusers, "merged output defaults to diffusers/PEFT");
        // Same scale on q, k, v: the values are untouched, so ΔW agrees to f64 rounding.
        check_merged_deltas(&m, &orig, 3 * R, 1e-12);
        let mut o = opts(&merged, &back, Target::Standard);
        o.format = Some(out);
        run(&o);
        let b = read_lora(&back).unwrap();
        assert_eq!(b.format, f);
        assert_eq!(b.modules, orig.modules, "{tag}: merge -> split is not bit-identical");
    }
}

#[test]
fn different_q_k_v_scales_are_folded_into_b_exactly() {
    let dir = tmpdir("lora-scales");
    let s = synth(13, |p| {
        if p.ends_with("to_k") {
            3.0
        } else if p.ends_with("to_v") {
            16.0
        } else {
            4.0
        }
    });
    let (src, merged, back) = (dir.join("k.safetensors"), dir.join("m.safetensors"), dir.join("b.safetensors"));
    write_format(&src, &s, LoraFormat::Kohya, DType::BF16);
    let orig = read_lora(&src).unwrap();
    run(&opts(&src, &merged, Target::Merged));
    let m = read_lora(&merged).unwrap();
    // to_k's ratio 3/4 is not a power of two: B is promoted to f32 and rounded once (2^-24).
    assert_eq!(m.modules["transformer_blocks.0.attn.to_qkv"].b.dtype, DType::F32);
    assert_eq!(m.modules["transformer_blocks.0.attn.add_qkv_proj"].b.dtype, DType::BF16);
    check_merged_deltas(&m, &orig, 3 * R, 1e-6);
    run(&opts(&merged, &back, Target::Standard));
    let b = read_lora(&back).unwrap();
    for (p, mo) in &orig.modules {
        assert_close(&delta(&b.modules[p]), &delta(mo), 1e-6, p);
    }
}

#[test]
fn a_dense_merged_lora_splits_into_three_loras_sharing_a() {
    let dir = tmpdir("lora-dense");
    let mut rng = Rng::new(14);
    let mut t = BTreeMap::new();
    for m in ["to_qkv", "add_qkv_proj"] {
        t.insert(
            format!("transformer.transformer_blocks.0.attn.{m}.lora_A.weight"),
            raw(&rng.vec_normal(R * D, 1.0), vec![R, D], DType::F32),
        );
        t.insert(
            format!("transformer.transformer_blocks.0.attn.{m}.lora_B.weight"),
            raw(&rng.vec_normal(3 * D * R, 1.0), vec![3 * D, R], DType::F32),
        );
    }
    let meta = HashMap::from([(
        "lora_adapter_metadata".to_string(),
        r#"{"transformer.r": 4, "transformer.lora_alpha": 2}"#.to_string(),
    )]);
    let (src, out) = (dir.join("merged.safetensors"), dir.join("std.safetensors"));
    write_st(&src, &t, Some(meta));
    let merged = read_lora(&src).unwrap();
    assert_eq!(merged.modules["transformer_blocks.0.attn.to_qkv"].scale(), 0.5);
    run(&opts(&src, &out, Target::Standard));
    let std = read_lora(&out).unwrap();
    assert_eq!(std.modules.len(), 6);
    let q = &std.modules["transformer_blocks.0.attn.to_q"];
    assert_eq!(q.a, std.modules["transformer_blocks.0.attn.to_v"].a, "A is shared");
    assert_eq!((q.rank(), q.scale()), (R, 0.5));
    check_merged_deltas(&merged, &std, R, 1e-12);
}

#[test]
fn every_writer_round_trips_through_the_reader() {
    let dir = tmpdir("lora-writers");
    let s = synth(15, alpha_varied);
    let src = dir.join("src.safetensors");
    write_format(&src, &s, LoraFormat::Diffusers, DType::F16);
    let orig = read_lora(&src).unwrap();
    for f in FORMATS {
        let p = dir.join(format!("{}.safetensors", f.name().replace('/', "-")));
        write_lora(&p, &orig, f, None).unwrap();
        let back = read_lora(&p).unwrap();
        assert_eq!((back.format, &back.modules), (f, &orig.modules), "{}", f.name());
    }
}

#[test]
fn peft_header_with_rank_and_alpha_patterns_is_written_and_honoured() {
    let dir = tmpdir("lora-meta");
    let s = synth(16, |_| 8.0);
    let (src, merged) = (dir.join("p.safetensors"), dir.join("m.safetensors"));
    write_format(&src, &s, LoraFormat::Diffusers, DType::F32);
    run(&opts(&src, &merged, Target::Merged));
    let meta: serde_json::Value = serde_json::from_str(&read_meta(&merged)["lora_adapter_metadata"]).unwrap();
    // 5 modules of rank 4 (alpha 8) and 4 merged modules of rank 12 (alpha 24).
    assert_eq!(meta["transformer.r"], 4);
    assert_eq!(meta["transformer.lora_alpha"], 8);
    assert_eq!(meta["transformer.rank_pattern"]["transformer_blocks.1.attn.to_qkv"], 12);
    assert_eq!(meta["transformer.alpha_pattern"]["transformer_blocks.0.attn.add_qkv_proj"], 24);
    assert_eq!(meta["transformer.target_modules"].as_array().unwrap().len(), 9);
    // Without any header a diffusers LoRA has scale 1 (diffusers assumes alpha = r).
    let mut t = BTreeMap::new();
    t.insert("transformer.proj_out.lora_A.weight".to_string(), raw(&[1.0; 2 * D], vec![2, D], DType::F32));
    t.insert("transformer.proj_out.lora_B.weight".to_string(), raw(&[1.0; 32], vec![16, 2], DType::F32));
    write_st(&dir.join("bare.safetensors"), &t, None);
    assert_eq!(read_lora(&dir.join("bare.safetensors")).unwrap().modules["proj_out"].scale(), 1.0);
}

#[test]
fn missing_partners_unknown_keys_and_missing_factors_are_errors_that_leave_nothing_behind() {
    let dir = tmpdir("lora-errors");
    let mut s = synth(17, |_| 8.0);
    s.remove("transformer_blocks.1.attn.add_k_proj");
    write_format(&dir.join("nok.safetensors"), &s, LoraFormat::Kohya, DType::F32);
    let e = convert(&opts(&dir.join("nok.safetensors"), &dir.join("o.safetensors"), Target::Merged))
        .unwrap_err()
        .to_string();
    assert!(e.contains("transformer_blocks.1.attn.add_k_proj is missing"), "{e}");

    let mut t = read_st(&dir.join("nok.safetensors"));
    t.insert("lora_unet_transformer_blocks_0_attn_to_q.dora_scale".into(), raw(&[1.0], vec![1], DType::F32));
    t.insert("lora_unet_transformer_blocks_0_attn_to_zz.lora_up.weight".into(), raw(&[1.0], vec![1, 1], DType::F32));
    write_st(&dir.join("unknown.safetensors"), &t, None);
    let e = convert(&opts(&dir.join("unknown.safetensors"), &dir.join("o.safetensors"), Target::Merged))
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 keys") && e.contains("dora_scale") && e.contains("to_zz"), "{e}");

    let mut t = read_st(&dir.join("nok.safetensors"));
    t.remove("lora_unet_proj_out.lora_up.weight");
    write_st(&dir.join("noup.safetensors"), &t, None);
    let e = convert(&opts(&dir.join("noup.safetensors"), &dir.join("o.safetensors"), Target::Standard))
        .unwrap_err()
        .to_string();
    assert!(e.contains("proj_out") && e.contains("no up (B)"), "{e}");
    assert_eq!(listing(&dir), ["nok.safetensors", "noup.safetensors", "unknown.safetensors"]);
}

/// LoRA fixtures written by diffusers/peft (tests/fixtures/README.md): rank 4, scale 2.
fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora").join(name)
}

#[test]
fn the_four_fixture_formats_written_by_diffusers_and_peft_give_the_same_delta() {
    let peft = read_lora(&fixture("peft.safetensors")).unwrap();
    assert_eq!((peft.format, peft.modules.len()), (LoraFormat::Diffusers, 24));
    assert!(peft.modules.values().all(|m| m.rank() == 4 && m.scale() == 2.0), "peft header: r 4, lora_alpha 8");
    for (f, name) in
        [(LoraFormat::DiffSynth, "diffsynth"), (LoraFormat::Kohya, "kohya"), (LoraFormat::ComfyUI, "comfy")]
    {
        let l = read_lora(&fixture(&format!("{name}.safetensors"))).unwrap();
        assert_eq!(l.format, f);
        assert_eq!(l.modules.keys().collect::<Vec<_>>(), peft.modules.keys().collect::<Vec<_>>(), "{name}");
        for (p, m) in &peft.modules {
            // DiffSynth stores 2·B with scale 1: the same ΔW exactly (a power of two).
            assert_eq!(delta(&l.modules[p]), delta(m), "{name} {p}");
        }
    }
}

#[test]
fn the_peft_fixture_converted_to_merged_and_back_is_bit_identical() {
    let dir = tmpdir("lora-fixture");
    let (merged, back) = (dir.join("merged.safetensors"), dir.join("back.safetensors"));
    let orig = read_lora(&fixture("peft.safetensors")).unwrap();
    run(&opts(&fixture("peft.safetensors"), &merged, Target::Merged));
    let m = read_lora(&merged).unwrap();
    check_merged_deltas(&m, &orig, 3 * R, 1e-12);
    run(&opts(&merged, &back, Target::Standard));
    let b = read_lora(&back).unwrap();
    assert_eq!(b.modules, orig.modules);
    // The tensors are bit-identical to the ones peft saved.
    let (got, want) = (read_st(&back), read_st(&fixture("peft.safetensors")));
    assert_eq!(got, want);
}

#[test]
fn the_synthesised_merged_qkv_fixture_splits_into_shared_a_loras_with_the_same_delta() {
    let dir = tmpdir("lora-fixture-split");
    let out = dir.join("std.safetensors");
    let merged = read_lora(&fixture("peft-merged-qkv.safetensors")).unwrap();
    run(&opts(&fixture("peft-merged-qkv.safetensors"), &out, Target::Standard));
    let std = read_lora(&out).unwrap();
    check_merged_deltas(&merged, &std, R, 1e-12);
    let peft = read_lora(&fixture("peft.safetensors")).unwrap();
    for (p, m) in peft.modules.iter().filter(|(p, _)| !QKV.iter().any(|q| p.ends_with(q))) {
        assert_eq!(&std.modules[p], m, "{p} is not a q/k/v module and must be unchanged");
    }
}

#[test]
fn unprefixed_keys_take_the_format_of_the_rest_of_the_file() {
    let dir = tmpdir("lora-bare");
    let a = raw(&[0.5; 2 * D], vec![2, D], DType::F32);
    let b = raw(&[0.25; 32], vec![16, 2], DType::F32);
    let alpha = raw(&[6.0], vec![], DType::F32);
    let file = |name: &str, keys: &[(&str, &Raw)]| {
        let t: BTreeMap<String, Raw> = keys.iter().map(|(k, r)| (k.to_string(), (*r).clone())).collect();
        write_st(&dir.join(name), &t, None);
        read_lora(&dir.join(name))
    };
    let bare = file(
        "bare.safetensors",
        &[("proj_out.lora_A.weight", &a), ("proj_out.lora_B.weight", &b), ("proj_out.alpha", &alpha)],
    );
    let bare = bare.unwrap();
    assert_eq!((bare.format, bare.modules["proj_out"].scale()), (LoraFormat::Diffusers, 3.0));
    let ds = file(
        "ds.safetensors",
        &[
            ("img_in.lora_A.default.weight", &a),
            ("img_in.lora_B.default.weight", &raw(&[1.0; 64], vec![32, 2], DType::F32)),
            ("img_in.alpha", &alpha),
        ],
    );
    assert_eq!(ds.unwrap().format, LoraFormat::DiffSynth);
    let mixed = file(
        "mixed.safetensors",
        &[
            ("lora_unet_proj_out.lora_down.weight", &a),
            ("lora_unet_proj_out.lora_up.weight", &b),
            ("img_in.alpha", &alpha),
        ],
    );
    let e = mixed.unwrap_err().to_string();
    assert!(e.contains("mixed LoRA formats") && e.contains("img_in.alpha"), "{e}");
}

#[test]
fn q_k_v_loras_of_different_shapes_are_refused_by_the_merge() {
    let dir = tmpdir("lora-shapes");
    let mut s = synth(18, |_| 8.0);
    let k = s.get_mut("transformer_blocks.0.attn.to_k").unwrap();
    k.0.truncate(R * D / 2); // A [4, 16]: a k LoRA for a 16-wide input
    k.2 = D / 2;
    write_format(&dir.join("bad.safetensors"), &s, LoraFormat::Diffusers, DType::F32);
    let e = convert(&opts(&dir.join("bad.safetensors"), &dir.join("o.safetensors"), Target::Merged)).unwrap_err();
    assert!(e.to_string().contains("transformer_blocks.0.attn.to_qkv") && e.to_string().contains("must agree"), "{e}");
    assert_eq!(listing(&dir), ["bad.safetensors"]);
}
