//! `wgdit tokenize`, `wgdit encode-prompt` and `generate --prompt` on the tiny pipeline with its
//! text encoder (tests/fixtures/text): the ids are transformers', the embeddings file is the one
//! `generate --prompt-embeds` reads, and bad requests are refused with nothing written.

use crate::{assert_refused, fixture, tmp, wgdit};
use wgdit::testing::text_pipeline;

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn tokenize_prints_transformers_ids_of_the_filled_template() {
    let folder = text_pipeline("t2i").unwrap();
    let (ok, log) = wgdit(&["tokenize", "--model", s(&folder), "--prompt", "A cat", "--template", "t2i", "--json"]);
    assert!(ok, "{log}");
    let json: serde_json::Value = serde_json::from_str(&log[..log.rfind('}').unwrap() + 1]).unwrap();
    let ids: Vec<u64> = json["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    // spec Appendix B: the T2I template with "A cat"
    assert_eq!(ids.len(), 41);
    assert_eq!(&ids[..4], [151_644, 8948, 198, 74785]);
    assert_eq!(&ids[34..], [32, 8251, 151_645, 198, 151_644, 77091, 198]);
    assert_eq!(json["drop"], 34);
    let (ok, log) = wgdit(&["tokenize", "--model", &fixture("pipeline/t2i/vae"), "--prompt", "x"]);
    assert!(!ok && log.contains("no tokenizer"), "{log}");
}

#[test]
fn encode_prompt_writes_what_generate_reads_and_gives_the_same_picture() {
    let folder = text_pipeline("t2i").unwrap();
    let (embeds, a, b) = (tmp("e.safetensors"), tmp("a.safetensors"), tmp("b.safetensors"));
    let (ok, log) = wgdit(&["encode-prompt", "--model", s(&folder), "--prompt", "A cat", "--output", s(&embeds)]);
    assert!(ok && log.contains("prompt_embeds [1, 7, 24]"), "{log}");
    let gen = ["generate", "--model", s(&folder), "--steps", "2", "--width", "16", "--height", "16", "--seed", "3"];
    let (ok, log) = wgdit(&[&gen[..], &["--prompt", "A cat", "--output", s(&a)]].concat());
    assert!(ok && log.contains("text encoder"), "{log}");
    let (ok, log) = wgdit(&[&gen[..], &["--prompt-embeds", s(&embeds), "--output", s(&b)]].concat());
    assert!(ok, "{log}");
    let read = |p: &std::path::Path| {
        let bytes = std::fs::read(p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensor("image").unwrap().data().to_vec()
    };
    assert_eq!(read(&a), read(&b), "--prompt and --prompt-embeds of encode-prompt give the same image");
    for p in [embeds, a, b] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn encode_prompt_with_two_pictures_writes_edit_plus_embeddings_as_diffusers() {
    let folder = text_pipeline("edit-plus").unwrap();
    let out = tmp("plus.safetensors");
    let (a, b) = (fixture("pipeline/inputs/ref_a.png"), fixture("pipeline/inputs/ref_b.png"));
    let prompt = "Put the hat from picture 2 on the cat in picture 1.";
    let args = [
        "encode-prompt",
        "--model",
        s(&folder),
        "--prompt",
        prompt,
        "--image",
        &a,
        "--image",
        &b,
        "--condition-area",
        "1600",
        "--output",
        s(&out),
    ];
    let (ok, log) = wgdit(&args);
    assert!(ok, "{log}");
    let read = |p: &std::path::Path, name: &str| -> Vec<f32> {
        let bytes = std::fs::read(p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        bytemuck::pod_collect_to_vec(st.tensor(name).unwrap().data())
    };
    let want =
        read(&wgdit::testing::unpacked_fixture("text/cases").unwrap().join("edit_plus.safetensors"), "prompt_embeds");
    let got = read(&out, "prompt_embeds");
    let s = wgdit::testing::stats(&got, &want);
    assert!(s.rel_l2 <= 1e-4, "edit_plus prompt_embeds rel_l2 {:.2e}", s.rel_l2);
    let _ = std::fs::remove_file(out);
}

#[test]
fn encode_prompt_refuses_what_it_cannot_do_and_writes_nothing() {
    let folder = text_pipeline("t2i").unwrap();
    let out = tmp("refused.safetensors");
    let no_te = fixture("pipeline/t2i");
    let _ = std::fs::remove_file(&out);
    // the committed fixture folder has no text_encoder/ files (only the assembled one does)
    assert_refused(&["encode-prompt", "--model", &no_te, "--prompt", "x", "--output", s(&out)], &out, "text_encoder");
    let img = fixture("pipeline/inputs/ref_a.png");
    let args = ["encode-prompt", "--model", s(&folder), "--prompt", "x", "--image", &img, "--output", s(&out)];
    assert_refused(&args, &out, "takes no --image");
    let plus = text_pipeline("edit-plus").unwrap();
    assert_refused(&["encode-prompt", "--model", s(&plus), "--prompt", "x", "--output", s(&out)], &out, "give --image");
    let inside = folder.join("tokenizer/vocab.json");
    let args = ["encode-prompt", "--model", s(&folder), "--prompt", "x", "--output", s(&inside)];
    let (ok, log) = wgdit(&args);
    assert!(!ok && log.contains("input"), "{log}");
}

#[test]
fn a_single_file_text_encoder_replaces_the_folders_and_without_a_config_is_checked_as_the_7b() {
    let folder = text_pipeline("t2i").unwrap();
    let dir = tmp("single-te");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("qwen_tiny.safetensors");
    std::fs::copy(folder.join("text_encoder/model.safetensors"), &file).unwrap();
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    let base = ["encode-prompt", "--model", s(&folder), "--prompt", "A cat"];
    let (ok, log) = wgdit(&[&base[..], &["--output", s(&a)]].concat());
    assert!(ok, "{log}");
    // No config.json beside the file: it is taken as Qwen2.5-VL-7B, and the tiny weights do not fit.
    let single = [&base[..], &["--text-encoder", s(&file), "--output", s(&b)]].concat();
    assert_refused(&single, &b, "not the text encoder this config describes");
    std::fs::copy(folder.join("text_encoder/config.json"), dir.join("config.json")).unwrap();
    let (ok, log) = wgdit(&single);
    assert!(ok, "{log}");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "the same embeddings file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn train_with_sample_every_draws_pictures_of_the_requested_size_at_each_due_step() {
    let folder = text_pipeline("t2i").unwrap();
    let (data, out) = (tmp("sample-data"), tmp("sample-out"));
    let cfg = wgdit::models::qwen_image::DitConfig::from_file(&folder.join("transformer/config.json")).unwrap();
    wgdit::train::data::write_synthetic(&data, &cfg, 1, [8, 8], 5, 3).unwrap();
    let args = ["train", "--model", s(&folder), "--data", s(&data), "--output", s(&out), "--steps", "1"];
    let samples = ["--rank", "4", "--sample-every", "1", "--sample-prompt", "A cat", "--sample-steps", "2"];
    let (ok, log) = wgdit(&[&args[..], &samples[..], &["--sample-size", "24x16", "--sample-seed", "5"]].concat());
    assert!(ok && log.contains("samples in"), "{log}");
    for step in ["000000", "000001"] {
        let p = out.join(format!("samples/step-{step}-0.png"));
        let img = image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!((img.width(), img.height()), (24, 16), "--sample-size is WxH");
    }
    for p in [data, out] {
        let _ = std::fs::remove_dir_all(p);
    }
}
