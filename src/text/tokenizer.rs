//! The Qwen2 tokenizer (transformers `Qwen2Tokenizer` / `Qwen2TokenizerFast`; spec
//! vae-and-text-encoder.md §2.9): byte-level BPE with no unk, NFC, the Qwen split regex (it needs
//! look-ahead, so the `tokenizers` crate's onig backend), ByteLevel without a prefix space, and the
//! added tokens 151643..=151664 matched atomically before normalisation.
//!
//! A folder's `tokenizer.json` is read as it is; a folder with only `vocab.json` + `merges.txt`
//! (transformers 4.x's slow files, as the Qwen-Image repos ship them) gets the identical pipeline
//! built here, with the added tokens of `tokenizer_config.json` (`added_tokens_decoder`) or, without
//! one, Qwen2's 22. Every file is size-bounded before it is read, and every failure names the file.

use crate::error::{Error, Result};
use crate::pipeline::folder::read_bounded_bytes;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// The Qwen pre-tokenizer regex (transformers `Qwen2Converter`).
pub const SPLIT_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Regular BPE tokens of Qwen2 (ids 0..151642); the added tokens follow.
pub const QWEN2_REGULAR_TOKENS: u32 = 151_643;

/// Qwen2's added tokens from id 151643 on, in id order (the real `tokenizer_config.json`).
pub const QWEN2_ADDED: [&str; 22] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
];

/// Largest tokenizer.json / vocab.json / merges.txt read (the real ones are 7 / 2.8 / 1.7 MB).
const MAX_FILE: u64 = 64 << 20;
/// Largest tokenizer_config.json read (the real one is ~5 KB plus a chat template).
const MAX_CONFIG: u64 = 4 << 20;
/// The most vocabulary entries / merges accepted (Qwen2: 151 643 / 151 387).
const MAX_VOCAB: usize = 1 << 21;

/// A loaded Qwen2 tokenizer and where it came from.
pub struct Qwen2Tokenizer {
    inner: Tokenizer,
    /// The file(s) it was read from, for messages.
    pub source: PathBuf,
}

impl std::fmt::Debug for Qwen2Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Qwen2Tokenizer({})", self.source.display())
    }
}

impl Qwen2Tokenizer {
    /// Reads a tokenizer folder: `tokenizer.json` if present, else `vocab.json` + `merges.txt`
    /// (+ `tokenizer_config.json`).
    pub fn from_folder(dir: &Path) -> Result<Qwen2Tokenizer> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let bytes = read_bounded_bytes(&json, MAX_FILE)?;
            return Qwen2Tokenizer::from_tokenizer_json(&bytes).map_err(|e| file_err(&json, e));
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if !vocab.is_file() || !merges.is_file() {
            return Err(Error::file(
                dir,
                "no tokenizer here: expected tokenizer.json, or vocab.json + merges.txt (a transformers tokenizer folder)",
            ));
        }
        let config = dir.join("tokenizer_config.json");
        let config_bytes = if config.is_file() { Some(read_bounded_bytes(&config, MAX_CONFIG)?) } else { None };
        let v = read_bounded_bytes(&vocab, MAX_FILE)?;
        let m = read_bounded_bytes(&merges, MAX_FILE)?;
        let mut t = Qwen2Tokenizer::from_slow_files(&v, &m, config_bytes.as_deref()).map_err(|e| file_err(dir, e))?;
        t.source = dir.to_path_buf();
        Ok(t)
    }

    /// A `tokenizer.json` held in memory. It is read here, not by the `tokenizers` crate's
    /// deserializer (which panics on some malformed files, found by fuzzing): its vocabulary,
    /// merges and added tokens are taken and its normalizer, pre-tokenizer and model must be
    /// Qwen2's, then the same pipeline as from the slow files is built.
    pub fn from_tokenizer_json(bytes: &[u8]) -> Result<Qwen2Tokenizer> {
        let t = Qwen2Tokenizer::from_tokenizer_json_any(bytes)?;
        t.check_specials()?;
        Ok(t)
    }

    /// [`Qwen2Tokenizer::from_tokenizer_json`] without the check that the added tokens sit at
    /// Qwen2's ids (for fuzzing the pipeline on small vocabularies).
    pub fn from_tokenizer_json_any(bytes: &[u8]) -> Result<Qwen2Tokenizer> {
        let parts = json_parts(bytes)?;
        build(parts, "tokenizer.json")
    }

    /// The pipeline built from `vocab.json` + `merges.txt` bytes and an optional
    /// `tokenizer_config.json`, as transformers' `Qwen2Converter` builds it.
    pub fn from_slow_files(vocab: &[u8], merges: &[u8], config: Option<&[u8]>) -> Result<Qwen2Tokenizer> {
        let t = Qwen2Tokenizer::from_slow_files_any(vocab, merges, config)?;
        t.check_specials()?;
        Ok(t)
    }

    /// [`Qwen2Tokenizer::from_slow_files`] without the Qwen2 special-token check (fuzzing).
    pub fn from_slow_files_any(vocab: &[u8], merges: &[u8], config: Option<&[u8]>) -> Result<Qwen2Tokenizer> {
        let added = match config {
            Some(c) => parse_added(c)?,
            None => default_added(),
        };
        let parts = Parts { vocab: parse_vocab(vocab)?, merges: parse_merges(merges)?, added };
        build(parts, "vocab.json + merges.txt")
    }

    /// The pipelines need the chat markers and the image pad; a tokenizer without them is not Qwen2's.
    fn check_specials(&self) -> Result<()> {
        for (tok, id) in [("<|im_start|>", 151_644), ("<|im_end|>", 151_645), ("<|image_pad|>", 151_655)] {
            match self.inner.token_to_id(tok) {
                Some(i) if i == id => {}
                got => {
                    return Err(Error::input(format!(
                        "token `{tok}` is {got:?}, Qwen2 has it at {id}: not a Qwen2 / Qwen2.5-VL tokenizer"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Token ids of `text` as `tokenizer(text).input_ids` gives them (Qwen2 adds no BOS/EOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::input(format!("tokenizing with {}: {e}", self.source.display())))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids` (byte-level decoded; special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::input(format!("decoding ids: {e}")))
    }

    /// The id of a token string (vocabulary or added).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including the added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// What a tokenizer is made of: the BPE vocabulary and merges, and the added tokens in id order.
struct Parts {
    vocab: HashMap<String, u32>,
    merges: Vec<(String, String)>,
    added: Vec<(u32, AddedToken)>,
}

/// The Qwen2 pipeline over `parts` (NFC, the split regex, byte-level, BPE, the added tokens at
/// their ids right after the vocabulary).
fn build(parts: Parts, source: &str) -> Result<Qwen2Tokenizer> {
    let model = BPE::builder()
        .vocab_and_merges(parts.vocab.into_iter().collect::<tokenizers::models::bpe::Vocab>(), parts.merges)
        .build()
        .map_err(|e| Error::input(format!("{source}: the vocabulary and merges do not form a BPE model: {e}")))?;
    let mut inner = Tokenizer::new(model);
    let split = Split::new(SplitPattern::Regex(SPLIT_REGEX.into()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| Error::input(format!("the Qwen split regex: {e}")))?;
    let byte_level = ByteLevel::new(false, false, false);
    inner
        .with_normalizer(Some(NFC))
        .with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])))
        .with_decoder(Some(byte_level));
    let base = inner.get_vocab_size(false) as u32;
    for (i, (id, tok)) in parts.added.iter().enumerate() {
        if *id != base + i as u32 {
            return Err(Error::input(format!(
                "{source}: added token `{}` has id {id}, but the vocabulary has {base} entries: added tokens must follow it in id order",
                tok.content
            )));
        }
        inner.add_tokens(std::slice::from_ref(tok));
        if inner.token_to_id(&tok.content) != Some(*id) {
            return Err(Error::input(format!("{source}: added token `{}` is also a vocabulary entry", tok.content)));
        }
    }
    Ok(Qwen2Tokenizer { inner, source: PathBuf::from(source) })
}

/// The parts of a `tokenizer.json`, whose pipeline must be Qwen2's.
fn json_parts(bytes: &[u8]) -> Result<Parts> {
    use serde_json::Value;
    let bad = |m: String| Error::input(format!("not a Qwen2 tokenizer.json: {m}"));
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON ({e})")))?;
    let model = v.get("model").filter(|m| m.is_object()).ok_or_else(|| bad("no `model` object".into()))?;
    if let Some(t) = model.get("type").filter(|t| t.as_str() != Some("BPE")) {
        return Err(bad(format!("model type {t}, expected \"BPE\"")));
    }
    for (key, want) in [("normalizer", "NFC"), ("decoder", "ByteLevel")] {
        let t = v.get(key).and_then(|n| n.get("type")).and_then(Value::as_str);
        if t != Some(want) {
            return Err(bad(format!("{key} is {t:?}, Qwen2's is {want}")));
        }
    }
    let pre = v.get("pre_tokenizer").ok_or_else(|| bad("no pre_tokenizer".into()))?;
    let regex = pre
        .get("pretokenizers")
        .and_then(Value::as_array)
        .and_then(|p| p.first())
        .and_then(|s| s.get("pattern"))
        .and_then(|p| p.get("Regex"))
        .and_then(Value::as_str);
    if regex != Some(SPLIT_REGEX) {
        return Err(bad("the pre-tokenizer is not the Qwen split regex + ByteLevel sequence".into()));
    }
    let vocab_v = model.get("vocab").ok_or_else(|| bad("no model.vocab".into()))?;
    let entries = vocab_v.as_object().ok_or_else(|| bad("model.vocab is not a token → id object".into()))?;
    let mut vocab = HashMap::with_capacity(entries.len().min(MAX_VOCAB));
    for (tok, id) in entries {
        let id =
            id.as_u64().filter(|&i| i < u32::MAX as u64).ok_or_else(|| bad(format!("vocab id of `{tok}` is {id}")))?;
        vocab.insert(tok.clone(), id as u32);
    }
    let vocab = check_vocab(vocab)?;
    let merges_v = model.get("merges").and_then(Value::as_array).ok_or_else(|| bad("no model.merges list".into()))?;
    if merges_v.len() > MAX_VOCAB {
        return Err(bad(format!("{} merges (at most {MAX_VOCAB})", merges_v.len())));
    }
    let mut merges = Vec::with_capacity(merges_v.len());
    for (i, m) in merges_v.iter().enumerate() {
        let pair = match m {
            Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                (Some(x), Some(y)) => Some((x.to_string(), y.to_string())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| bad(format!("merge {i} is neither \"a b\" nor [\"a\", \"b\"]")))?);
    }
    let mut added = Vec::new();
    for (i, t) in v.get("added_tokens").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let id = t.get("id").and_then(Value::as_u64).filter(|&id| id < u32::MAX as u64);
        let content = t.get("content").and_then(Value::as_str).filter(|c| !c.is_empty());
        let (Some(id), Some(content)) = (id, content) else {
            return Err(bad(format!("added token {i} lacks an `id` or a non-empty `content`")));
        };
        added.push((id as u32, added_token(content, t)));
    }
    added.sort_by_key(|(id, _)| *id);
    Ok(Parts { vocab, merges, added })
}

/// An added token with the flags of its JSON entry (transformers' defaults where absent).
fn added_token(content: &str, entry: &serde_json::Value) -> AddedToken {
    let flag = |k: &str, d: bool| entry.get(k).and_then(|x| x.as_bool()).unwrap_or(d);
    AddedToken::from(content.to_string(), flag("special", true))
        .single_word(flag("single_word", false))
        .lstrip(flag("lstrip", false))
        .rstrip(flag("rstrip", false))
        .normalized(flag("normalized", false))
}

fn file_err(path: &Path, e: Error) -> Error {
    match e {
        Error::Input(m) => Error::file(path, m),
        e => e,
    }
}

fn parse_vocab(bytes: &[u8]) -> Result<HashMap<String, u32>> {
    let v: HashMap<String, u32> =
        serde_json::from_slice(bytes).map_err(|e| Error::input(format!("vocab.json: not a token → id object: {e}")))?;
    check_vocab(v)
}

/// Ids must be exactly 0..n−1 (n within bounds).
fn check_vocab(v: HashMap<String, u32>) -> Result<HashMap<String, u32>> {
    if v.is_empty() || v.len() > MAX_VOCAB {
        return Err(Error::input(format!("vocab.json: {} entries (expected 1..={MAX_VOCAB})", v.len())));
    }
    let mut seen = vec![false; v.len()];
    for (tok, &id) in &v {
        match seen.get_mut(id as usize) {
            Some(s) if !*s => *s = true,
            _ => {
                return Err(Error::input(format!(
                "vocab.json: id {id} of `{tok}` is a duplicate or not below the entry count {} (ids must be 0..n-1)",
                v.len()
            )))
            }
        }
    }
    Ok(v)
}

/// `merges.txt`: an optional `#version` line, then `left right` per line (blank lines skipped).
fn parse_merges(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::input("merges.txt is not UTF-8"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => out.push((a.to_string(), b.to_string())),
            _ => {
                return Err(Error::input(format!(
                    "merges.txt line {}: `{}` is not two tokens separated by one space",
                    i + 1,
                    line.chars().take(60).collect::<String>()
                )))
            }
        }
        if out.len() > MAX_VOCAB {
            return Err(Error::input(format!("merges.txt: more than {MAX_VOCAB} merges")));
        }
    }
    Ok(out)
}

/// The added tokens of a `tokenizer_config.json` (`added_tokens_decoder`), in id order.
fn parse_added(bytes: &[u8]) -> Result<Vec<(u32, AddedToken)>> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::input(format!("tokenizer_config.json: not JSON: {e}")))?;
    let Some(map) = v.get("added_tokens_decoder") else { return Ok(default_added()) };
    let map =
        map.as_object().ok_or_else(|| Error::input("tokenizer_config.json: added_tokens_decoder is not an object"))?;
    let mut out = Vec::with_capacity(map.len());
    for (key, entry) in map {
        let id: u32 = key
            .parse()
            .map_err(|_| Error::input(format!("tokenizer_config.json: added token id `{key}` is not a number")))?;
        let content = entry.get("content").and_then(|c| c.as_str()).filter(|c| !c.is_empty()).ok_or_else(|| {
            Error::input(format!("tokenizer_config.json: added token {id} has no non-empty `content` string"))
        })?;
        out.push((id, added_token(content, entry)));
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

fn default_added() -> Vec<(u32, AddedToken)> {
    QWEN2_ADDED
        .iter()
        .enumerate()
        .map(|(i, t)| (QWEN2_REGULAR_TOKENS + i as u32, AddedToken::from(t.to_string(), i < 14).normalized(false)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::unpacked_fixture;

    /// (name, text, ids); a case recorded with `max_length` is compared after truncating to it.
    fn cases() -> Vec<(String, String, Vec<u32>, Option<usize>)> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text/tokenizer_cases.json");
        let v: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        v.iter()
            .map(|c| {
                let ids = c["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
                let max = c.get("max_length").map(|m| m.as_u64().unwrap() as usize);
                (c["name"].as_str().unwrap().into(), c["text"].as_str().unwrap().into(), ids, max)
            })
            .collect()
    }

    /// The fixture tokenizer folder without its tokenizer.json: the slow files alone.
    fn slow_only(dir: &Path, tag: &str) -> crate::testing::TempDir {
        let t = crate::testing::TempDir::new(tag);
        for f in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
            std::fs::copy(dir.join(f), t.path().join(f)).unwrap();
        }
        t
    }

    #[test]
    fn token_ids_equal_transformers_from_tokenizer_json_and_from_vocab_and_merges() {
        let dir = unpacked_fixture("text/tokenizer").unwrap();
        let fast = Qwen2Tokenizer::from_folder(&dir).unwrap();
        let slow_dir = slow_only(&dir, "tok-slow");
        let slow = Qwen2Tokenizer::from_folder(slow_dir.path()).unwrap();
        let cases = cases();
        assert!(cases.len() >= 40, "{} cases", cases.len());
        for (name, text, want, max) in &cases {
            for (which, t) in [("tokenizer.json", &fast), ("vocab.json + merges.txt", &slow)] {
                let mut got = t.encode(text).unwrap();
                got.truncate(max.unwrap_or(usize::MAX));
                assert_eq!(&got, want, "{name} ({which})");
            }
        }
        assert_eq!(fast.vocab_size(), 151_665);
        assert_eq!(slow.vocab_size(), 151_665);
        for (i, tok) in QWEN2_ADDED.iter().enumerate() {
            assert_eq!(slow.token_to_id(tok), Some(QWEN2_REGULAR_TOKENS + i as u32), "{tok}");
        }
    }

    #[test]
    fn without_tokenizer_config_the_qwen2_added_tokens_are_used() {
        let dir = unpacked_fixture("text/tokenizer").unwrap();
        let t = slow_only(&dir, "tok-noconfig");
        std::fs::remove_file(t.path().join("tokenizer_config.json")).unwrap();
        let tok = Qwen2Tokenizer::from_folder(t.path()).unwrap();
        let fast = Qwen2Tokenizer::from_folder(&dir).unwrap();
        for (name, text, _, _) in cases() {
            assert_eq!(tok.encode(&text).unwrap(), fast.encode(&text).unwrap(), "{name}");
        }
    }

    #[test]
    fn broken_tokenizer_files_are_named_errors() {
        let dir = unpacked_fixture("text/tokenizer").unwrap();
        let empty = crate::testing::TempDir::new("tok-empty");
        let e = Qwen2Tokenizer::from_folder(empty.path()).unwrap_err().to_string();
        assert!(e.contains("expected tokenizer.json, or vocab.json + merges.txt"), "{e}");
        let v = std::fs::read(dir.join("vocab.json")).unwrap();
        let m = std::fs::read(dir.join("merges.txt")).unwrap();
        let bad = |vocab: &[u8], merges: &[u8], config: Option<&[u8]>, needle: &str| {
            let e = Qwen2Tokenizer::from_slow_files(vocab, merges, config).unwrap_err().to_string();
            assert!(e.contains(needle), "`{needle}` not in: {e}");
        };
        bad(b"[1, 2]", &m, None, "vocab.json: not a token");
        bad(br#"{"a": 0, "b": 0}"#, b"a b\n", None, "is a duplicate");
        bad(br#"{"a": 0, "b": 7}"#, b"a b\n", None, "not below the entry count");
        bad(&v, b"#version: 0.2\nonlyone\n", None, "merges.txt line 2");
        bad(&v, b"x y z\n", None, "merges.txt line 1");
        bad(&v, &m, Some(b"{"), "tokenizer_config.json: not JSON");
        bad(&v, &m, Some(br#"{"added_tokens_decoder": {"9": {"content": "<x>"}}}"#), "must follow it in id order");
        bad(&v, &m, Some(br#"{"added_tokens_decoder": {"q": {}}}"#), "is not a number");
        bad(
            br#"{"a": 0, "b": 1, "ab": 2}"#,
            b"a b\n",
            Some(br#"{"added_tokens_decoder": {}}"#),
            "not a Qwen2 / Qwen2.5-VL tokenizer",
        );
        for (json, needle) in [
            (&b"{\"model\": 3}"[..], "no `model` object"),
            (b"[", "not JSON"),
            (br#"{"model": {"type": "Unigram"}}"#, "model type"),
            (br#"{"model": {}, "normalizer": {"type": "NFKC"}}"#, "normalizer is Some(\"NFKC\")"),
        ] {
            let e = Qwen2Tokenizer::from_tokenizer_json(json).unwrap_err().to_string();
            assert!(e.contains(needle), "`{needle}` not in: {e}");
        }
    }

    #[test]
    fn decoding_gives_back_the_text() {
        let tok = Qwen2Tokenizer::from_folder(&unpacked_fixture("text/tokenizer").unwrap()).unwrap();
        let text = "<|im_start|>user\n一只猫 🐈 'LL 12345<|im_end|>";
        assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
    }
}
