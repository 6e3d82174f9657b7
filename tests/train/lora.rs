//! The trainable LoRA set: PEFT target matching on the real and a tiny model, merged q/k/v
//! names, PEFT init, and export read back by wgdit's own LoRA reader and by the safetensors crate.

use crate::synthetic_checkpoint::{read_meta, read_st, tmpdir};
use wgdit::models::qwen_image::lora::read_lora;
use wgdit::models::qwen_image::DitConfig;
use wgdit::rng::Rng;
use wgdit::tensor::DType;
use wgdit::train::lora::{linear_modules, matches, parse_targets, select, LoraConfig, LoraParams, DIFFSYNTH_TARGETS};
use wgdit::weights::LoraFormat;

/// D = 32 (2 × 16), 2 blocks, text dim 24.
fn tiny() -> DitConfig {
    DitConfig::tiny()
}

#[test]
fn diffsynth_targets_select_720_linears_and_236m_parameters_at_rank_32() {
    let cfg = DitConfig::qwen_image();
    let chosen = select(&cfg, &parse_targets(DIFFSYNTH_TARGETS)).unwrap();
    assert_eq!(chosen.len(), 720);
    let params: usize = chosen.iter().map(|m| 32 * (m.in_features + m.out_features)).sum();
    assert_eq!(params, 235_929_600, "spec §7.1");
    assert!(!chosen.iter().any(|m| m.path.ends_with("net.0.proj")), "net.0.proj is not targeted");
    let mod1 = chosen.iter().find(|m| m.path == "transformer_blocks.59.txt_mod.1").unwrap();
    assert_eq!((mod1.in_features, mod1.out_features), (3072, 18432));
}

#[test]
fn peft_rule_matches_whole_names_and_dotted_suffixes_only() {
    assert!(matches("transformer_blocks.0.attn.to_q", "to_q"));
    assert!(matches("transformer_blocks.0.attn.to_q", "attn.to_q"));
    assert!(matches("proj_out", "proj_out"));
    assert!(matches("transformer_blocks.0.img_mlp.net.2", "net.2"));
    assert!(!matches("transformer_blocks.0.img_mlp.net.2", "mlp.net.2"), "suffix must start at a dot");
    assert!(!matches("transformer_blocks.0.attn.to_q", "q"));
    assert!(!matches("transformer_blocks.0.attn.to_qkv", "to_q"));
}

#[test]
fn merged_qkv_names_are_targetable_and_cannot_mix_with_their_parts() {
    let cfg = tiny();
    let all = linear_modules(&cfg);
    let qkv = all.iter().find(|m| m.path == "transformer_blocks.1.attn.add_qkv_proj").unwrap();
    assert_eq!((qkv.in_features, qkv.out_features), (32, 96));
    let chosen = select(&cfg, &parse_targets("to_qkv,add_qkv_proj,to_out.0")).unwrap();
    assert_eq!(chosen.len(), 6);
    let err = select(&cfg, &parse_targets("to_k,to_qkv")).unwrap_err().to_string();
    assert!(err.contains("transformer_blocks.0.attn.to_k") && err.contains("merged"), "{err}");
}

#[test]
fn unknown_target_patterns_are_an_error_naming_them() {
    let err = select(&tiny(), &parse_targets("to_q, ffn.0 ,q_proj")).unwrap_err().to_string();
    assert!(err.contains("\"ffn.0\"") && err.contains("\"q_proj\"") && !err.contains("\"to_q\""), "{err}");
    assert!(select(&tiny(), &[]).is_err());
}

#[test]
fn peft_init_draws_a_from_kaiming_uniform_and_zeroes_b() {
    let cfg = tiny();
    let conf = LoraConfig::diffsynth(4);
    let p = LoraParams::init(&cfg, &conf, &mut Rng::new(5)).unwrap();
    assert_eq!(p.params.len(), 12 * 2);
    for m in &p.params {
        let bound = 1.0 / (m.module.in_features as f32).sqrt();
        assert!(m.a.iter().all(|x| x.abs() <= bound) && m.b.iter().all(|&x| x == 0.0), "{}", m.module.path);
    }
    // variance of U(−b, b) is b²/3 (img_mlp.net.2 has in = 128: bound² = 1/128)
    let all_a: Vec<f64> = p
        .params
        .iter()
        .flat_map(|m| m.a.iter().map(move |&x| x as f64 * (m.module.in_features as f64).sqrt()))
        .collect();
    let var = all_a.iter().map(|x| x * x).sum::<f64>() / all_a.len() as f64;
    assert!((var - 1.0 / 3.0).abs() < 0.02, "normalised variance {var}");
    assert_eq!(p, LoraParams::init(&cfg, &conf, &mut Rng::new(5)).unwrap(), "seeded");
    assert!(LoraParams::init(&cfg, &LoraConfig { rank: 0, ..conf }, &mut Rng::new(5)).is_err());
}

/// A trained-looking LoRA: B nonzero.
fn trained(alpha: f64) -> LoraParams {
    let conf = LoraConfig { rank: 3, alpha, targets: parse_targets("to_q,img_mod.1,proj_out") };
    let mut p = LoraParams::init(&tiny(), &conf, &mut Rng::new(8)).unwrap();
    let mut rng = Rng::new(9);
    for m in &mut p.params {
        m.b = rng.vec_normal(m.b.len(), 0.1);
    }
    p
}

#[test]
fn peft_export_has_transformer_keys_and_adapter_metadata() {
    let dir = tmpdir("train-lora-peft");
    let p = trained(6.0);
    let path = dir.join("lora.safetensors");
    p.save(&path, LoraFormat::Diffusers, DType::BF16).unwrap();
    let st = read_st(&path);
    let a = &st["transformer.transformer_blocks.1.img_mod.1.lora_A.weight"];
    assert_eq!((a.dtype, a.shape.clone()), (safetensors::Dtype::BF16, vec![3, 32]));
    assert_eq!(st["transformer.proj_out.lora_B.weight"].shape, vec![16, 3]);
    assert_eq!(st.len(), 2 * (2 + 2 + 1));
    let meta: serde_json::Value = serde_json::from_str(&read_meta(&path)["lora_adapter_metadata"]).unwrap();
    assert_eq!(meta["transformer.r"], 3);
    assert_eq!(meta["transformer.lora_alpha"], 6);
    assert_eq!(meta["transformer.target_modules"].as_array().unwrap().len(), 5);
    // wgdit's reader: scale 2, values bf16-rounded
    let back = read_lora(&path).unwrap();
    let m = &back.modules["transformer_blocks.0.attn.to_q"];
    assert_eq!(m.scale(), 2.0);
    assert_eq!(
        m.b.data,
        DType::BF16.round(&p.params.iter().find(|x| x.module.path.ends_with("0.attn.to_q")).unwrap().b)
    );
}

#[test]
fn every_format_round_trips_the_parameters() {
    let dir = tmpdir("train-lora-formats");
    let p = trained(3.0);
    for (i, f) in
        [LoraFormat::Diffusers, LoraFormat::DiffSynth, LoraFormat::Kohya, LoraFormat::ComfyUI].into_iter().enumerate()
    {
        let path = dir.join(format!("l{i}.safetensors"));
        p.save(&path, f, DType::F32).unwrap();
        let back = read_lora(&path).unwrap();
        assert_eq!(back.format, f);
        assert_eq!(LoraParams::from_lora(&tiny(), &p.config, &back).unwrap(), p, "{f:?}");
    }
    let keys = read_st(&dir.join("l1.safetensors"));
    assert!(keys.contains_key("transformer_blocks.0.attn.to_q.lora_A.default.weight"));
    // a checkpoint LoRA that does not match the run's config is refused
    let other = LoraConfig { rank: 3, alpha: 3.0, targets: parse_targets("to_q") };
    assert!(LoraParams::from_lora(&tiny(), &other, &read_lora(&dir.join("l0.safetensors")).unwrap()).is_err());
}
