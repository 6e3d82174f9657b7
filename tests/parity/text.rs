//! The text path against transformers / diffusers (tests/fixtures/text, float32): the tiny
//! Qwen2.5-VL language model layer by layer, `encode_prompt` of QwenImagePipeline (default and a
//! small max_sequence_length, and a batch of two prompts of different lengths), streamed ==
//! resident, and whole `generate --prompt` runs.

use std::path::PathBuf;
use wgdit::models::qwen2_5_vl::runtime::{Residency, TextEncoder};
use wgdit::pipeline::folder::PipelineFolder;
use wgdit::pipeline::generate::{generate, GenerateOptions, Noise, Prompt};
use wgdit::pipeline::prompt::PromptEncoder;
use wgdit::testing::{stats, test_gpu, text_pipeline, unpacked_fixture, TempDir};

/// Components (hidden states, prompt_embeds): tests/fixtures/text/README.md.
const COMPONENT_REL_L2: f64 = 1e-4;
/// Whole pipelines.
const IMAGE_REL_L2: f64 = 1e-3;

fn case_file(case: &str) -> PathBuf {
    unpacked_fixture("text/cases").unwrap().join(format!("{case}.safetensors"))
}

/// A tensor of a case as f32 (f32, or i64 ids and masks).
fn tensor(case: &str, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(case_file(case)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{case}: {name}: {e}"));
    match t.dtype() {
        safetensors::Dtype::I64 => {
            t.data().chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect()
        }
        _ => crate::diffusers_fixtures::Fixture::read(&case_file(case)).get(name),
    }
}

fn ids(case: &str, name: &str) -> Vec<u32> {
    tensor(case, name).iter().map(|&x| x as u32).collect()
}

#[track_caller]
fn close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let s = stats(got, want);
    println!("{what}: rel_l2 {:.2e} max_abs {:.2e}", s.rel_l2, s.max_abs);
    assert!(s.rel_l2 <= tol, "{what}: rel_l2 {:.3e} > {tol:e}", s.rel_l2);
}

fn encoder(residency: Residency) -> TextEncoder {
    let dir = text_pipeline("t2i").unwrap().join("text_encoder");
    TextEncoder::open(&test_gpu(), &dir, Some(residency)).unwrap()
}

#[test]
fn the_language_model_matches_transformers_layer_by_layer() {
    let mut enc = encoder(Residency::Streamed);
    let states = enc.encode_layers(&ids("t2i", "input_ids")).unwrap();
    let names = ["lm.inputs_embeds", "lm.layer0", "lm.layer1", "lm.norm"];
    assert_eq!(states.len(), names.len());
    for (got, name) in states.iter().zip(names) {
        close(name, got, &tensor("t2i", name), COMPONENT_REL_L2);
    }
}

#[test]
fn streamed_layers_give_the_resident_numbers_bit_for_bit() {
    let input = ids("t2i", "input_ids");
    let a = encoder(Residency::Resident).encode(&input).unwrap();
    let b = encoder(Residency::Streamed).encode(&input).unwrap();
    assert_eq!(a, b);
}

fn prompt_encoder() -> PromptEncoder {
    let folder = PipelineFolder::open(&text_pipeline("t2i").unwrap()).unwrap();
    PromptEncoder::open(&test_gpu(), &folder, None).unwrap()
}

#[test]
fn t2i_prompt_embeddings_match_diffusers_encode_prompt() {
    let mut enc = prompt_encoder();
    assert_eq!(enc.token_ids("dance monkey").unwrap(), ids("t2i", "input_ids"));
    let p = enc.encode("dance monkey", 512).unwrap();
    close("t2i prompt_embeds", &p.embeds, &tensor("t2i", "prompt_embeds"), COMPONENT_REL_L2);
    assert!(p.mask.is_none(), "all tokens valid: no mask, as diffusers");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(unpacked_fixture("text/cases").unwrap().join("t2i_maxlen.json")).unwrap(),
    )
    .unwrap();
    // max_sequence_length=8 (json["call"]): the reference keeps that many tokens.
    let (prompt, max) = (json["prompt"].as_str().unwrap(), tensor("t2i_maxlen", "prompt_embeds_mask").len());
    assert_eq!(max, 8);
    let p = enc.encode(prompt, max).unwrap();
    assert_eq!(p.tokens, max);
    close("t2i_maxlen prompt_embeds", &p.embeds, &tensor("t2i_maxlen", "prompt_embeds"), COMPONENT_REL_L2);
}

#[test]
fn a_batch_of_two_prompts_gives_diffusers_padded_embeddings_and_mask() {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(unpacked_fixture("text/cases").unwrap().join("t2i_batch.json")).unwrap(),
    )
    .unwrap();
    let prompts: Vec<&str> = json["prompt"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    let mut enc = prompt_encoder();
    let each: Vec<_> = prompts.iter().map(|p| enc.encode(p, 512).unwrap()).collect();
    let (want, mask) = (tensor("t2i_batch", "prompt_embeds"), tensor("t2i_batch", "prompt_embeds_mask"));
    let s = mask.len() / each.len();
    let d = each[0].dim;
    let mut got = vec![0.0f32; each.len() * s * d];
    let mut got_mask = vec![0.0f32; each.len() * s];
    for (b, p) in each.iter().enumerate() {
        got[b * s * d..b * s * d + p.tokens * d].copy_from_slice(&p.embeds);
        got_mask[b * s..b * s + p.tokens].iter_mut().for_each(|m| *m = 1.0);
    }
    assert_eq!(got_mask, mask, "masks");
    close("t2i_batch prompt_embeds", &got, &want, COMPONENT_REL_L2);
}

#[test]
fn generate_with_a_prompt_makes_the_picture_diffusers_makes() {
    let dir = TempDir::new("gen-text");
    for (case, cfg) in [("gen_t2i_cfg", true), ("gen_t2i", false)] {
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(unpacked_fixture("text/cases").unwrap().join(format!("{case}.json"))).unwrap(),
        )
        .unwrap();
        let out = dir.path().join(format!("{case}.safetensors"));
        let prompt = Prompt::Text(json["prompt"].as_str().unwrap().to_string());
        let mut o = GenerateOptions::new(text_pipeline("t2i").unwrap(), prompt, out.clone());
        o.negative = json["negative_prompt"].as_str().map(|n| Prompt::Text(n.to_string()));
        o.steps = json["num_inference_steps"].as_u64().unwrap() as usize;
        o.noise = Noise::Seed(json["seed"].as_u64().unwrap());
        let wh = json["output_size_wh"].as_array().unwrap();
        (o.width, o.height) = (wh[0].as_u64().map(|v| v as u32), wh[1].as_u64().map(|v| v as u32));
        let r = generate(&test_gpu(), &o, &mut |_| {}).unwrap();
        assert_eq!(r.cfg, cfg, "{case}: CFG");
        assert!(r.text_encode_ms > 0.0, "{case}: the text encoder ran");
        let got = crate::diffusers_fixtures::Fixture::read(&out).get("image");
        close(&format!("{case} image"), &got, &tensor(case, "image"), IMAGE_REL_L2);
    }
}

/// Case images (the processor's input, u8) through the processor.
fn case_images(case: &str, n: usize) -> Vec<wgdit::models::qwen2_5_vl::processor::VisionInput> {
    use wgdit::models::qwen2_5_vl::processor::{preprocess, ProcessorConfig};
    let cfg = ProcessorConfig::from_json_str(
        &std::fs::read_to_string(crate::diffusers_fixtures::fixtures().join("text/processor/preprocessor_config.json"))
            .unwrap(),
    )
    .unwrap();
    let bytes = std::fs::read(case_file(case)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    (0..n)
        .map(|i| {
            let t = st.tensor(&format!("image{i}.u8")).unwrap();
            let img = image::RgbImage::from_raw(t.shape()[1] as u32, t.shape()[0] as u32, t.data().to_vec()).unwrap();
            preprocess(&img, &cfg).unwrap()
        })
        .collect()
}

#[test]
fn the_vision_tower_and_the_edit_prompt_embeddings_match_transformers() {
    let mut enc = encoder(Residency::Resident);
    for (case, n) in [("edit", 1), ("edit_plus", 2)] {
        let images = case_images(case, n);
        let features = enc.vision(&images).unwrap();
        if case == "edit" {
            close("edit vision.merger", &features, &tensor(case, "vision.merger"), COMPONENT_REL_L2);
        }
        let grids: Vec<[usize; 3]> = images.iter().map(|i| i.grid).collect();
        let hidden = enc.encode_with_images(&ids(case, "input_ids"), &features, &grids).unwrap();
        close(&format!("{case} lm.norm"), &hidden, &tensor(case, "lm.norm"), COMPONENT_REL_L2);
        let want = tensor(case, "prompt_embeds");
        close(&format!("{case} prompt_embeds"), &hidden[64 * 24..], &want, COMPONENT_REL_L2);
    }
}

#[test]
fn edit_pipelines_with_prompts_and_pictures_make_the_pictures_diffusers_makes() {
    let dir = TempDir::new("gen-edit-text");
    // (case, folder, images, ref_area, condition_area): the areas the fixture patched (json["areas"]).
    let cases: [(&str, &str, &[&str], u64, u64); 3] = [
        ("gen_edit", "edit", &["ref_a"], 19_600, 384 * 384),
        ("gen_edit_plus", "edit-plus", &["ref_a", "ref_b"], 2304, 1600),
        ("gen_edit_2511", "edit-2511", &["ref_b", "ref_a"], 2304, 1600),
    ];
    for (case, folder, images, ref_area, condition_area) in cases {
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(unpacked_fixture("text/cases").unwrap().join(format!("{case}.json"))).unwrap(),
        )
        .unwrap();
        let out = dir.path().join(format!("{case}.safetensors"));
        let prompt = Prompt::Text(json["prompt"].as_str().unwrap().to_string());
        let mut o = GenerateOptions::new(text_pipeline(folder).unwrap(), prompt, out.clone());
        o.negative = json["negative_prompt"].as_str().map(|n| Prompt::Text(n.to_string()));
        o.images = images
            .iter()
            .map(|n| crate::diffusers_fixtures::fixtures().join(format!("pipeline/inputs/{n}.png")))
            .collect();
        (o.ref_area, o.condition_area) = (ref_area, condition_area);
        o.steps = json["num_inference_steps"].as_u64().unwrap() as usize;
        o.noise = Noise::Seed(json["seed"].as_u64().unwrap());
        let wh = json["output_size_wh"].as_array().unwrap();
        (o.width, o.height) = (wh[0].as_u64().map(|v| v as u32), wh[1].as_u64().map(|v| v as u32));
        let r = generate(&test_gpu(), &o, &mut |_| {}).unwrap();
        assert!(r.cfg, "{case}: CFG");
        let got = crate::diffusers_fixtures::Fixture::read(&out).get("image");
        close(&format!("{case} image"), &got, &tensor(case, "image"), IMAGE_REL_L2);
    }
}

#[test]
fn a_processor_config_that_disagrees_with_the_vision_tower_is_an_error() {
    use wgdit::models::qwen2_5_vl::processor::{preprocess, ProcessorConfig};
    let mut enc = encoder(Residency::Resident);
    let cfg = ProcessorConfig::from_json_str(r#"{"patch_size": 16}"#).unwrap();
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([9, 99, 199]));
    let e = enc.vision(&[preprocess(&img, &cfg).unwrap()]).unwrap_err().to_string();
    assert!(e.contains("disagree"), "{e}");
    assert!(enc.vision(&[]).unwrap_err().to_string().contains("at least one picture"));
}
