//! Entry points for fuzzing every parser of untrusted bytes: each takes raw bytes, runs the
//! parser (and what a caller then does with a successful parse), and must never panic, hang or
//! allocate without bound. Nothing here touches the disk: safetensors inputs are parsed in memory
//! ([`SafeFile::from_bytes`]). The cargo-fuzz targets in `fuzz/` call these (docs/fuzzing.md);
//! the tests below run a deterministic mutation sweep of real fixture files through each one, and
//! replay every reproducer committed under `tests/fixtures/fuzz/<target>/`, on stable Rust, so
//! CI exercises them too.

use crate::models::qwen_image::DitConfig;
use crate::models::qwen_image_vae::VaeConfig;
use crate::weights::safetensors::SafeFile;
use std::path::Path;
use std::sync::OnceLock;

/// The tiny DiT of the fixtures (`tests/fixtures/dit/tiny/config.json`): 2 blocks, D = 32, text
/// width 24, 16 packed channels; what the LoRA, checkpoint and training fixtures are made for.
fn fixture_config() -> &'static DitConfig {
    static CFG: OnceLock<DitConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        let v = serde_json::from_str(include_str!("../tests/fixtures/dit/tiny/config.json"));
        DitConfig::from_json(&v.expect("cannot fail: a fixture")).expect("cannot fail: a fixture")
    })
}

/// An in-memory safetensors file named `name` (for messages), or None when it does not parse.
fn safe_file(name: &str, data: &[u8]) -> Option<SafeFile> {
    SafeFile::from_bytes(Path::new(name), data.to_vec()).ok()
}

/// `model_index.json` of a pipeline folder.
pub fn model_index(data: &[u8]) {
    let _ = crate::pipeline::folder::parse_index(&String::from_utf8_lossy(data));
}

/// `scheduler/scheduler_config.json`; a parsed config must build a schedule.
pub fn scheduler_config(data: &[u8]) {
    use crate::pipeline::scheduler::{Schedule, SchedulerConfig};
    if let Ok(c) = SchedulerConfig::from_json_str(&String::from_utf8_lossy(data)) {
        let _ = Schedule::for_pipeline(&c, 4, 4096);
    }
}

/// `vae/config.json`; a parsed config must give its names table and spatial factor.
pub fn vae_config(data: &[u8]) {
    if let Ok(c) = VaeConfig::from_json_str(&String::from_utf8_lossy(data)) {
        let _ = (crate::models::qwen_image_vae::names::expected_tensors(&c), c.spatial_factor());
    }
}

/// A prompt embeddings file (`--prompt-embeds`), for a transformer of text width 24.
pub fn prompt_embeds(data: &[u8]) {
    if let Ok(st) = safetensors::SafeTensors::deserialize(data) {
        for negative in [false, true] {
            if let Ok(mut p) = crate::pipeline::embeds::PromptEmbeds::from_safetensors(&st, 24, negative) {
                p.truncate(3);
            }
        }
    }
}

/// A `--noise` file, for a 4-channel 8×12 latent.
pub fn noise(data: &[u8]) {
    let _ = crate::pipeline::generate::noise_from_bytes(data, [4, 8, 12]);
}

/// A latents file (`wgdit vae decode --latents`), for a VAE of z_dim 4.
pub fn vae_latents(data: &[u8]) {
    if let Ok((v, h, w)) = crate::pipeline::vae::latents_from_bytes(data, 4) {
        assert_eq!(v.len(), 4 * h * w, "a parsed latents tensor matches its shape");
    }
}

/// An image file (`--image`, `wgdit vae encode --image`): PNG, JPEG or WebP.
pub fn image(data: &[u8]) {
    if let Ok(img) = crate::image::pixels::decode_rgb(data) {
        let _ = crate::image::pixels::vae_input(&img);
    }
}

/// A `wgdit forward --inputs` file, for the tiny DiT (text width 24, 16 channels).
pub fn dit_inputs(data: &[u8]) {
    if let Ok(st) = safetensors::SafeTensors::deserialize(data) {
        let _ = crate::pipeline::inputs::ForwardInputs::from_safetensors(&st, &DitConfig::tiny());
    }
}

/// Any safetensors file (model, LoRA, inputs, samples): the 8-byte length, the JSON header and the
/// layout checks; every tensor of a decodable dtype is then decoded.
pub fn safetensors(data: &[u8]) {
    if let Some(f) = safe_file("fuzz.safetensors", data) {
        for t in &f.tensors {
            if let Ok(v) = f.view(t) {
                assert_eq!(v.to_f32().len(), v.numel(), "a validated tensor decodes to its shape");
            }
        }
        f.release_range(0, f.data_len());
    }
}

/// A GGUF file (`--model x.gguf`, `wgdit quantize --input`): magic, version, counts, KVs (strings,
/// nested arrays), tensor infos (types, shapes, offsets, alignment, `orig_shape`); every tensor
/// decoded; then the checkpoint it makes, checked against the fixture model as a loader does.
pub fn gguf(data: &[u8]) {
    use crate::weights::checkpoint::Checkpoint;
    let Ok(f) = SafeFile::from_bytes(Path::new("fuzz.gguf"), data.to_vec()) else { return };
    for t in &f.tensors {
        if let Ok(v) = f.view(t) {
            assert_eq!(v.to_f32().len(), v.numel(), "a validated GGUF tensor decodes to its shape");
        }
    }
    let _ = (f.architecture(), f.metadata.len());
    let Ok(ck) = Checkpoint::from_files(Path::new("fuzz.gguf"), false, vec![f], None) else { return };
    let _ = crate::models::qwen_image::load::validate(fixture_config(), &ck);
    // The bytes a model reads, scaled fp8 blocks included.
    for e in ck.entries.iter().take(64) {
        if let Some((dtype, _)) = ck.model_meta(&e.name) {
            if let Ok(b) = ck.model_bytes(&e.name) {
                assert_eq!(b.len() % dtype.block_bytes(), 0, "{}: bytes are not whole {} blocks", e.name, dtype.name());
            }
        }
    }
}

/// The JSON header of a safetensors file alone (no length prefix, no data buffer), with the layout
/// checked against a buffer as long as its last tensor claims.
pub fn safetensors_header(data: &[u8]) {
    use crate::weights::safetensors::{parse_header, validate_layout};
    if let Ok((tensors, _)) = parse_header(data) {
        let end = tensors.last().map_or(0, |t| t.end);
        let _ = validate_layout(&tensors, end);
    }
}

/// A DiT weights file as `wgdit forward`/`convert` open it: the checkpoint (ComfyUI prefixes,
/// duplicates), its q/k/v layout and the check against the fixture model's tensor list.
pub fn dit_checkpoint(data: &[u8]) {
    use crate::weights::checkpoint::{looks_like_lora, Checkpoint};
    let Some(f) = safe_file("fuzz.safetensors", data) else { return };
    let Ok(ck) = Checkpoint::from_files(Path::new("fuzz.safetensors"), false, vec![f], None) else { return };
    let _ = looks_like_lora(ck.entries.iter().map(|e| e.key.as_str()));
    let _ = crate::models::qwen_image::names::checkpoint_layout(&ck);
    let _ = crate::models::qwen_image::load::validate(fixture_config(), &ck);
    // The bytes a model reads, scaled fp8 blocks included.
    for e in ck.entries.iter().take(64) {
        if let Some((dtype, _)) = ck.model_meta(&e.name) {
            if let Ok(b) = ck.model_bytes(&e.name) {
                assert_eq!(b.len() % dtype.block_bytes(), 0, "{}: bytes are not whole {} blocks", e.name, dtype.name());
            }
        }
    }
}

/// The shard files named by the tiny sharded fixture's index, each with the tensors (empty, F32)
/// that index puts in it: what a fuzzed index is checked against.
fn fixture_shards() -> &'static [(String, Vec<u8>)] {
    static SHARDS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    SHARDS.get_or_init(|| {
        let text = include_str!("../tests/fixtures/dit/tiny-sharded/diffusion_pytorch_model.safetensors.index.json");
        let (map, names) =
            crate::weights::checkpoint::parse_weight_map(Path::new("index"), text).expect("cannot fail: a fixture");
        let entry = serde_json::json!({"dtype": "F32", "shape": [0], "data_offsets": [0, 0]});
        let shard = |n: &String| {
            let h: serde_json::Map<String, serde_json::Value> =
                map.iter().filter(|(_, s)| *s == n).map(|(k, _)| (k.clone(), entry.clone())).collect();
            let h = serde_json::to_vec(&h).expect("cannot fail: plain data");
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend(h);
            (n.clone(), b)
        };
        names.iter().map(shard).collect()
    })
}

/// `diffusion_pytorch_model.safetensors.index.json` of a sharded model folder, checked against the
/// tiny sharded fixture's shards (a shard the fixture lacks stands for a missing file), then
/// opened as a checkpoint.
pub fn sharded_index(data: &[u8]) {
    use crate::weights::checkpoint::{check_weight_map, parse_weight_map, Checkpoint};
    let index = Path::new("index.json");
    let Ok((map, names)) = parse_weight_map(index, &String::from_utf8_lossy(data)) else { return };
    let files: Option<Vec<SafeFile>> = names
        .iter()
        .map(|n| fixture_shards().iter().find(|(s, _)| s == n).and_then(|(s, b)| safe_file(s, b)))
        .collect();
    let Some(files) = files else { return };
    let shards: Vec<(&Path, &[_])> = files.iter().map(|f| (f.path.as_path(), &f.tensors[..])).collect();
    if check_weight_map(index, &map, &names, &shards).is_ok() {
        if let Ok(ck) = Checkpoint::from_files(Path::new("model"), true, files, None) {
            let _ = crate::models::qwen_image::names::checkpoint_layout(&ck);
        }
    }
}

/// The DiT `config.json` (`--config`, `<model>/config.json`); a parsed config must give its
/// tensor list, hidden size and output width.
pub fn dit_config(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(c) = DitConfig::from_json(&v) {
        let _ = (crate::models::qwen_image::names::expected_tensors(&c), c.hidden(), c.out_features());
    }
}

/// A LoRA file (`--lora`, `wgdit lora`), read in any format against the Qwen-Image module names and
/// resolved onto the fixture model's Linears as `wgdit forward --lora` does.
pub fn lora(data: &[u8]) {
    use crate::models::qwen_image::{lora, names::QwenImageNames};
    static SHAPES: OnceLock<std::collections::BTreeMap<String, Vec<usize>>> = OnceLock::new();
    let Some(f) = safe_file("fuzz-lora.safetensors", data) else { return };
    if let Ok(l) = crate::weights::lora::read_lora_file(&f, &QwenImageNames) {
        let shapes = SHAPES.get_or_init(|| lora::linear_shapes(fixture_config()));
        let _ = lora::LoraSet::default().add(&f.path, &l, 0.5, shapes);
    }
}

/// LoRA key mapping alone: one tensor key per line, through format detection (all four formats,
/// kohya's flattened names resolved against the Qwen-Image module list).
pub fn lora_keys(data: &[u8]) {
    use crate::models::qwen_image::names::QwenImageNames;
    let text = String::from_utf8_lossy(data);
    let _ = crate::weights::lora::detect_format(Path::new("keys"), text.lines(), &QwenImageNames);
}

/// `metadata.jsonl` of a training dataset: every non-blank line's `file` entry, and the reference
/// areas `wgdit cache` records (`train::data::areas_of`).
pub fn train_metadata(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let _ = crate::train::data::dataset::file_entry(line);
    }
    let _ = crate::train::data::dataset::areas_of(&text);
}

/// A DiffSynth `metadata.csv` of `wgdit cache --data`: the CSV reader, the `image` / `prompt`
/// columns and every `edit_image` cell as a path list; the same bytes as `metadata.json` and
/// `metadata.jsonl`.
pub fn dataset_csv(data: &[u8]) {
    use crate::train::data::sources::{csv_rows, json_rows};
    let text = String::from_utf8_lossy(data);
    if let Ok(rows) = csv_rows(&text) {
        for r in rows {
            let _ = (r.image.len(), r.prompt.map(|p| p.len()), r.edit.map(|e| e.len()));
        }
    }
    let _ = (json_rows(&text, false), json_rows(&text, true));
}

/// One training sample file, validated against the fixture model as `Dataset::open` does, then
/// decoded and packed as a batch of it would be.
pub fn train_sample(data: &[u8]) {
    use crate::models::qwen_image::latents::pack;
    use crate::train::data::dataset::{decode, inspect_file};
    let cfg = fixture_config();
    let Some(f) = safe_file("sample.safetensors", data) else { return };
    let Ok(info) = inspect_file(&f, "sample.safetensors", cfg) else { return };
    let _ = info.img_shapes(cfg.patch_size);
    if let Ok(s) = decode(&f, &info) {
        let _ = pack(&s.latents, info.latents, cfg.patch_size);
        for (r, shape) in s.refs.iter().zip(&info.refs) {
            let _ = pack(r, *shape, cfg.patch_size);
        }
    }
}

/// The rank-2 LoRA of the training fixtures (to_q and to_k of the fixture model), which fuzzed
/// training states and optimizer files are checked against.
fn fixture_lora() -> &'static crate::train::lora::LoraParams {
    use crate::train::lora::{LoraConfig, LoraParams};
    static LORA: OnceLock<LoraParams> = OnceLock::new();
    LORA.get_or_init(|| {
        let conf = LoraConfig { rank: 2, alpha: 2.0, targets: vec!["to_q".into(), "to_k".into()] };
        LoraParams::init(fixture_config(), &conf, &mut crate::rng::Rng::new(0)).expect("cannot fail: valid targets")
    })
}

/// `loss.csv` as `--resume` reads it back (its rows feed `loss.svg`): parsed up to a step taken
/// from the first byte, the kept points plotted.
pub fn train_loss_log(data: &[u8]) {
    let step = data.first().map_or(0, |&b| b as u64);
    let text = String::from_utf8_lossy(data.get(1..).unwrap_or(&[]));
    if let Ok((_, points)) = crate::train::checkpoint::LossLog::kept_rows(Path::new("loss.csv"), &text, step) {
        let _ = crate::train::plot::loss_svg(&points, "fuzz");
    }
}

/// A training checkpoint's `state.json` as `--resume` reads it: parsed, its LoRA settings checked
/// against the fixture LoRA, its data position resumed on a small batcher, its hyper-parameters
/// compared.
pub fn train_state(data: &[u8]) {
    use crate::train::checkpoint::{hyper_differences, TrainState};
    use crate::train::lora::LoraParams;
    let Ok(mut state) = TrainState::from_json_str(Path::new("state.json"), &String::from_utf8_lossy(data)) else {
        return;
    };
    let lora = fixture_lora().to_lora(crate::dtype::DType::F32);
    let _ = LoraParams::from_lora(fixture_config(), &state.lora, &lora);
    let mut batcher = crate::train::data::Batcher::from_groups(vec![vec![0, 1, 2], vec![3]], 2, 7);
    if batcher.resume(state.data).is_ok() {
        let _ = batcher.nth(3);
    }
    let _ = (state.rng.next_u64(), state.rng.normal());
    let _ = hyper_differences(&state.hyper, &serde_json::json!({"lr": 1e-4, "seed": 0}));
}

/// A training checkpoint's `optimizer.safetensors` (AdamW moments), checked against the fixture LoRA.
pub fn train_moments(data: &[u8]) {
    if let Some(f) = safe_file("optimizer.safetensors", data) {
        let _ = crate::train::checkpoint::read_moments_file(&f, fixture_lora());
    }
}

/// Text every tokenizer entry point encodes: templates, specials, CJK, emoji, digits.
const SAMPLE_TEXT: &str =
    "<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>一只猫 🐈‍⬛ 'LL 2024<|im_end|>\n";

/// A `tokenizer/tokenizer.json` (without the check that the specials sit at Qwen2's ids, so that
/// small seeds reach the pipeline); a parsed one encodes and decodes sample text.
pub fn tokenizer_json(data: &[u8]) {
    if let Ok(t) = crate::text::Qwen2Tokenizer::from_tokenizer_json_any(data) {
        if let Ok(ids) = t.encode(SAMPLE_TEXT) {
            let _ = t.decode(&ids);
        }
    }
}

/// A tokenizer folder without tokenizer.json: `vocab.json`, `merges.txt` and (optionally)
/// `tokenizer_config.json`, joined by `\n\0\n` in that order.
pub fn tokenizer_slow(data: &[u8]) {
    let parts = split_parts(data);
    let (Some(vocab), Some(merges)) = (parts.first(), parts.get(1)) else { return };
    if let Ok(t) = crate::text::Qwen2Tokenizer::from_slow_files_any(vocab, merges, parts.get(2).copied()) {
        if let Ok(ids) = t.encode(SAMPLE_TEXT) {
            let _ = t.decode(&ids);
        }
    }
}

/// `data` split at each `\n\0\n`.
fn split_parts(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(3).position(|w| w == b"\n\0\n") {
        out.push(&rest[..i]);
        rest = &rest[i + 3..];
    }
    out.push(rest);
    out
}

/// The fixture Qwen2 tokenizer (tests/fixtures/text/tokenizer, unpacked once).
fn fixture_tokenizer() -> &'static crate::text::Qwen2Tokenizer {
    static TOK: OnceLock<crate::text::Qwen2Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = crate::testing::unpacked_fixture("text/tokenizer").expect("cannot fail: a fixture");
        crate::text::Qwen2Tokenizer::from_folder(&dir).expect("cannot fail: a fixture")
    })
}

/// A prompt (`--prompt`, `--negative-prompt`: any text a user types) through each pipeline's
/// template and the real tokenizer; the ids must decode back to the template's text.
pub fn prompt(data: &[u8]) {
    use crate::text::Template;
    let text = String::from_utf8_lossy(data);
    let tok = fixture_tokenizer();
    for (t, images) in [(Template::TextToImage, 0), (Template::Edit, 1), (Template::EditPlus, 2)] {
        let filled = t.fill(&text, images);
        if let Ok(ids) = tok.encode(&filled) {
            assert!(ids.len() > t.drop(), "a template is longer than its drop");
        }
    }
}

/// `text_encoder/config.json`; a parsed config gives its tensor list.
pub fn text_encoder_config(data: &[u8]) {
    use crate::models::qwen2_5_vl::{names, EncoderConfig};
    if let Ok(c) = EncoderConfig::from_json_str(&String::from_utf8_lossy(data)) {
        let t = names::text_tensors(&c);
        assert_eq!(t.len(), 2 + 12 * c.text.num_hidden_layers, "one entry per tensor");
    }
}

/// The tiny text encoder's config (tests/fixtures/text/text_encoder/config.json).
fn fixture_encoder_config() -> &'static crate::models::qwen2_5_vl::EncoderConfig {
    static CFG: OnceLock<crate::models::qwen2_5_vl::EncoderConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        let text = include_str!("../tests/fixtures/text/text_encoder/config.json");
        crate::models::qwen2_5_vl::EncoderConfig::from_json_str(text).expect("cannot fail: a fixture")
    })
}

/// A `text_encoder/model.safetensors`, checked against the tiny encoder's config (both key
/// layouts, shapes, dtypes); a valid one gives embedding rows.
pub fn text_encoder_checkpoint(data: &[u8]) {
    use crate::models::qwen2_5_vl::weights::EncoderWeights;
    let Some(f) = safe_file("model.safetensors", data) else { return };
    let Ok(ck) = crate::weights::checkpoint::Checkpoint::from_files(Path::new("te"), false, vec![f], None) else {
        return;
    };
    if let Ok(w) = EncoderWeights::from_checkpoint(ck, fixture_encoder_config()) {
        let _ = w.embed_rows(&[0, 151_655, 152_063, 152_064], fixture_encoder_config());
    }
}

/// `processor/preprocessor_config.json`; a parsed config sizes and flattens a small image.
pub fn processor_config(data: &[u8]) {
    use crate::models::qwen2_5_vl::processor::{preprocess, ProcessorConfig};
    if let Ok(c) = ProcessorConfig::from_json_str(&String::from_utf8_lossy(data)) {
        // Only configs whose resized image stays small are run through (the bounds allow 2^32 pixels).
        if matches!(c.smart_resize(30, 50), Ok((h, w)) if h * w <= 1 << 16) {
            let img = ::image::RgbImage::from_fn(50, 30, |x, y| ::image::Rgb([x as u8, y as u8, (x ^ y) as u8]));
            let _ = preprocess(&img, &c);
        }
    }
}

/// A byte-level entry point.
pub type EntryPoint = fn(&[u8]);

/// Every entry point by its cargo-fuzz target name (`fuzz/fuzz_targets/<name>.rs`), and the folder
/// name of its committed reproducers (`tests/fixtures/fuzz/<name>/`).
pub const TARGETS: &[(&str, EntryPoint)] = &[
    ("model_index", model_index),
    ("scheduler_config", scheduler_config),
    ("vae_config", vae_config),
    ("prompt_embeds", prompt_embeds),
    ("noise", noise),
    ("vae_latents", vae_latents),
    ("image", image),
    ("dit_inputs", dit_inputs),
    ("safetensors", safetensors),
    ("safetensors_header", safetensors_header),
    ("gguf", gguf),
    ("dit_checkpoint", dit_checkpoint),
    ("sharded_index", sharded_index),
    ("dit_config", dit_config),
    ("lora", lora),
    ("lora_keys", lora_keys),
    ("train_metadata", train_metadata),
    ("dataset_csv", dataset_csv),
    ("train_sample", train_sample),
    ("train_state", train_state),
    ("train_loss_log", train_loss_log),
    ("train_moments", train_moments),
    ("tokenizer_json", tokenizer_json),
    ("tokenizer_slow", tokenizer_slow),
    ("prompt", prompt),
    ("text_encoder_config", text_encoder_config),
    ("text_encoder_checkpoint", text_encoder_checkpoint),
    ("processor_config", processor_config),
];

#[cfg(test)]
mod tests {
    use crate::rng::Rng;
    use std::path::Path;

    /// Mutates `seed` at a few random bytes (sometimes truncating it first), `n` times.
    fn mutations(seed: &[u8], n: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| {
                let mut b = seed.to_vec();
                if rng.below(8) == 0 {
                    b.truncate(rng.below(b.len() as u64 + 1) as usize);
                }
                for _ in 0..1 + rng.below(4) {
                    if !b.is_empty() {
                        let i = rng.below(b.len() as u64) as usize;
                        b[i] = rng.next_u64() as u8;
                    }
                }
                b
            })
            .collect()
    }

    fn fixture(p: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Every target on its real seed and on `n` mutations of it (headers only for big files).
    fn sweep(target: fn(&[u8]), seed: &[u8], n: usize, tag: u64) {
        target(seed);
        target(&[]);
        for m in mutations(&seed[..seed.len().min(4096)], n, &mut Rng::new(tag)) {
            target(&m);
        }
    }

    #[test]
    fn every_parser_survives_mutated_real_files() {
        sweep(super::model_index, &fixture("pipeline/edit-plus/model_index.json"), 2000, 1);
        sweep(super::scheduler_config, &fixture("pipeline/t2i/scheduler/scheduler_config.json"), 2000, 2);
        sweep(super::vae_config, &fixture("pipeline/t2i/vae/config.json"), 3000, 3);
        sweep(super::prompt_embeds, &fixture("pipeline/cases/t2i_cfg.safetensors"), 2000, 4);
        sweep(super::noise, &fixture("pipeline/cases/t2i_cfg.safetensors"), 2000, 5);
        sweep(super::vae_latents, &fixture("pipeline/cases/vae_decode.safetensors"), 3000, 6);
        sweep(super::image, &fixture("pipeline/inputs/ref_a.png"), 1000, 7);
        sweep(super::image, &fixture("pipeline_math/images/photo.jpg"), 300, 8);
        sweep(super::image, &fixture("pipeline_math/images/lossless.webp"), 300, 9);
        sweep(super::dit_inputs, &fixture("dit/cases/odd_grid.inputs.safetensors"), 2000, 10);
    }

    #[test]
    fn every_weights_and_training_parser_survives_mutated_real_files() {
        let header = |f: &str| {
            let b = fixture(f);
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            b[8..8 + n].to_vec()
        };
        sweep(super::safetensors, &fixture("lora/peft.safetensors"), 1500, 11);
        sweep(super::safetensors, &fixture("fuzz/seeds/train_sample.safetensors"), 1500, 12);
        sweep(super::safetensors_header, &header("lora/kohya.safetensors"), 1500, 13);
        sweep(super::dit_checkpoint, &fixture("dit/tiny-merged.safetensors"), 300, 14);
        sweep(
            super::sharded_index,
            &fixture("dit/tiny-sharded/diffusion_pytorch_model.safetensors.index.json"),
            1000,
            15,
        );
        sweep(super::dit_config, &fixture("dit/tiny/config.json"), 2000, 16);
        sweep(super::lora, &fixture("lora/kohya.safetensors"), 300, 17);
        sweep(super::lora, &fixture("lora/peft.safetensors"), 300, 18);
        sweep(super::lora_keys, &fixture("fuzz/seeds/lora_keys.txt"), 2000, 19);
        sweep(super::train_metadata, &fixture("fuzz/seeds/metadata.jsonl"), 2000, 20);
        sweep(super::dataset_csv, &fixture("fuzz/seeds/metadata.csv"), 3000, 34);
        sweep(super::train_sample, &fixture("fuzz/seeds/train_sample.safetensors"), 2000, 21);
        sweep(super::train_state, &fixture("fuzz/seeds/state.json"), 2000, 22);
        sweep(super::train_loss_log, &fixture("fuzz/seeds/loss.csv"), 2000, 35);
        sweep(super::train_moments, &fixture("fuzz/seeds/optimizer.safetensors"), 1000, 23);
        // the small seeds whole (the sweep mutates the first 4 KB), the gguf-py fixture's header
        sweep(super::gguf, &fixture("fuzz/gguf/q4k.gguf"), 1000, 30);
        sweep(super::gguf, &fixture("fuzz/gguf/mixed.gguf"), 1000, 31);
        sweep(super::gguf, &fixture("fuzz/gguf/small_k.gguf"), 500, 32);
        sweep(super::gguf, &fixture("gguf/tiny.gguf"), 1000, 33);
    }

    #[test]
    fn every_text_parser_survives_mutated_real_files() {
        sweep(super::tokenizer_json, &fixture("fuzz/seeds/tokenizer.json"), 300, 24);
        sweep(super::tokenizer_slow, &fixture("fuzz/seeds/tokenizer_slow.bin"), 300, 25);
        sweep(super::prompt, "A cat <|im_end|> 一只猫 🐈 12 'LL\r\n".as_bytes(), 300, 26);
        sweep(super::text_encoder_config, &fixture("text/text_encoder/config.json"), 2000, 27);
        sweep(super::processor_config, &fixture("text/processor/preprocessor_config.json"), 2000, 29);
        let te = crate::testing::unpacked_fixture("text/text_encoder").unwrap().join("model.safetensors");
        sweep(super::text_encoder_checkpoint, &std::fs::read(te).unwrap(), 300, 28);
    }

    /// Feeds every file under `tests/fixtures/fuzz/<dir><target>/` to its entry point; returns how many.
    fn replay(dir: &str) -> usize {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz").join(dir);
        let mut n = 0;
        for target in std::fs::read_dir(&root).into_iter().flatten().map(|e| e.unwrap().path()) {
            let name = target.file_name().unwrap().to_string_lossy().into_owned();
            if !target.is_dir() || name == "seeds" || name == "pending" {
                continue;
            }
            let (_, entry) = super::TARGETS
                .iter()
                .find(|(t, _)| *t == name)
                .unwrap_or_else(|| panic!("{}: no fuzz target of that name", target.display()));
            for f in std::fs::read_dir(&target).unwrap().map(|e| e.unwrap().path()) {
                eprintln!("replaying {}", f.display());
                entry(&std::fs::read(&f).unwrap());
                n += 1;
            }
        }
        n
    }

    /// Every crash, timeout or OOM the fuzzers found, minimised (docs/fuzzing.md), and the issue-9
    /// panic sites: none may panic (or over-allocate) again.
    #[test]
    fn committed_fuzz_reproducers_no_longer_crash() {
        assert!(replay("") >= 9, "the committed reproducers are found");
    }

    #[test]
    fn every_entry_point_has_a_cargo_fuzz_target() {
        let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml")).unwrap();
        for (name, _) in super::TARGETS {
            let bin = format!("name = \"{name}\"\npath = \"fuzz_targets/{name}.rs\"");
            assert!(manifest.contains(&bin), "fuzz/Cargo.toml lacks the [[bin]] {name}");
            let src = format!("fuzz/fuzz_targets/{name}.rs");
            let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(&src)).unwrap();
            assert!(text.contains(&format!("wgdit::fuzzing::{name}(data)")), "{src} does not call its entry point");
        }
    }

    #[test]
    fn the_real_seeds_parse() {
        use crate::pipeline::folder::{parse_index, PipelineClass};
        let csv = String::from_utf8(fixture("fuzz/seeds/metadata.csv")).unwrap();
        let rows = crate::train::data::sources::csv_rows(&csv).unwrap();
        assert_eq!(rows.iter().map(|r| r.edit.as_ref().map_or(9, Vec::len)).collect::<Vec<_>>(), [1, 2, 2, 0]);
        let text = String::from_utf8(fixture("pipeline/edit-plus/model_index.json")).unwrap();
        assert_eq!(parse_index(&text).unwrap().0, PipelineClass::EditPlus);
        assert!(crate::image::pixels::decode_rgb(&fixture("pipeline/inputs/ref_a.png")).is_ok());
        let noise =
            crate::pipeline::generate::noise_from_bytes(&fixture("pipeline/cases/t2i_cfg.safetensors"), [4, 8, 12]);
        assert_eq!(noise.unwrap().len(), 4 * 8 * 12);
        // The tokenizer seeds (300 tokens, the 22 added tokens after them) build the pipeline and
        // encode; the Qwen2 check (specials at 151643..) refuses them, so the entry points skip it.
        use crate::text::Qwen2Tokenizer;
        let json = fixture("fuzz/seeds/tokenizer.json");
        assert_eq!(Qwen2Tokenizer::from_tokenizer_json_any(&json).unwrap().encode("<|im_start|>").unwrap(), [301]);
        assert!(Qwen2Tokenizer::from_tokenizer_json(&json).unwrap_err().to_string().contains("not a Qwen2"));
        let slow = fixture("fuzz/seeds/tokenizer_slow.bin");
        let p = super::split_parts(&slow);
        let t = Qwen2Tokenizer::from_slow_files_any(p[0], p[1], Some(p[2])).unwrap();
        assert_eq!(t.encode("<|im_end|>a").unwrap(), [302, 64]);
    }

    /// The seeds of the weights and training targets reach the end of their entry points.
    #[test]
    fn the_weights_and_training_seeds_parse() {
        use crate::weights::checkpoint::{check_weight_map, parse_weight_map, Checkpoint};
        let file = |name: &str, p: &str| super::safe_file(name, &fixture(p)).unwrap();
        let cfg = super::fixture_config();
        let ck = Checkpoint::from_files(Path::new("m"), false, vec![file("m", "dit/tiny-merged.safetensors")], None);
        crate::models::qwen_image::load::validate(cfg, &ck.unwrap()).unwrap();
        let index = fixture("dit/tiny-sharded/diffusion_pytorch_model.safetensors.index.json");
        let (map, names) = parse_weight_map(Path::new("i"), std::str::from_utf8(&index).unwrap()).unwrap();
        let files: Vec<_> = super::fixture_shards().iter().map(|(n, b)| super::safe_file(n, b).unwrap()).collect();
        let shards: Vec<(&Path, &[_])> = files.iter().map(|f| (f.path.as_path(), &f.tensors[..])).collect();
        check_weight_map(Path::new("i"), &map, &names, &shards).unwrap();
        let names = crate::models::qwen_image::names::QwenImageNames;
        let l = crate::weights::lora::read_lora_file(&file("l", "lora/kohya.safetensors"), &names).unwrap();
        let shapes = crate::models::qwen_image::lora::linear_shapes(cfg);
        crate::models::qwen_image::lora::LoraSet::default().add(Path::new("l"), &l, 1.0, &shapes).unwrap();
        let f = file("s", "fuzz/seeds/train_sample.safetensors");
        let info = crate::train::data::dataset::inspect_file(&f, "s", cfg).unwrap();
        assert_eq!((info.refs.len(), info.has_mask), (1, true));
        crate::train::data::dataset::decode(&f, &info).unwrap();
        let text = String::from_utf8(fixture("fuzz/seeds/state.json")).unwrap();
        let state = crate::train::checkpoint::TrainState::from_json_str(Path::new("s"), &text).unwrap();
        let lora = super::fixture_lora().to_lora(crate::dtype::DType::F32);
        crate::train::lora::LoraParams::from_lora(cfg, &state.lora, &lora).unwrap();
        let moments = file("o", "fuzz/seeds/optimizer.safetensors");
        crate::train::checkpoint::read_moments_file(&moments, super::fixture_lora()).unwrap();
        for seed in ["fuzz/gguf/q4k.gguf", "fuzz/gguf/mixed.gguf", "fuzz/gguf/small_k.gguf", "gguf/tiny.gguf"] {
            let f = super::safe_file("s.gguf", &fixture(seed)).unwrap();
            assert!(f.tensors.iter().all(|t| f.view(t).is_ok()), "{seed}: every tensor has a view");
        }
    }
}
