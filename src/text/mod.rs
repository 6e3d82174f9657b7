//! Text for the encoder: the Qwen2 tokenizer ([`tokenizer`]) and the pipelines' prompt templates
//! ([`templates`]).

pub mod templates;
pub mod tokenizer;

pub use templates::Template;
pub use tokenizer::Qwen2Tokenizer;

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The tokenizer folder of `dir`: a pipeline folder's `tokenizer/` (T2I) or `processor/` (the
/// Edit pipelines tokenize through their processor; either is used when the other is missing),
/// or `dir` itself when it holds the tokenizer files.
pub fn tokenizer_dir(dir: &Path, template: Option<Template>) -> Result<PathBuf> {
    let has = |d: &Path| d.join("tokenizer.json").is_file() || d.join("vocab.json").is_file();
    if has(dir) {
        return Ok(dir.to_path_buf());
    }
    let order = match template {
        Some(Template::Edit | Template::EditPlus) => ["processor", "tokenizer"],
        _ => ["tokenizer", "processor"],
    };
    order.iter().map(|s| dir.join(s)).find(|d| has(d)).ok_or_else(|| {
        Error::file(
            dir,
            "no tokenizer: expected tokenizer/ or processor/ with tokenizer.json or vocab.json + merges.txt",
        )
    })
}

/// What `wgdit tokenize` prints.
#[derive(Debug, serde::Serialize)]
pub struct TokenizeReport {
    pub tokenizer: PathBuf,
    pub template: Option<Template>,
    /// The text that was tokenized (the prompt, or the filled template).
    pub text: String,
    pub ids: Vec<u32>,
    /// The byte-level token string of each id.
    pub tokens: Vec<String>,
    /// Tokens the pipeline drops from the encoder's output (0 without a template).
    pub drop: usize,
}

/// Tokenizes `prompt` (filled into `template` if given: one image placeholder per image for
/// Edit-Plus, `images` of them) with the tokenizer of `dir`.
pub fn tokenize(dir: &Path, prompt: &str, template: Option<Template>, images: usize) -> Result<TokenizeReport> {
    let tdir = tokenizer_dir(dir, template)?;
    let tok = Qwen2Tokenizer::from_folder(&tdir)?;
    let text = template.map_or_else(|| prompt.to_string(), |t| t.fill(prompt, images));
    let ids = tok.encode(&text)?;
    let tokens = ids.iter().map(|&i| tok.id_to_token(i).unwrap_or_default()).collect();
    Ok(TokenizeReport { tokenizer: tdir, template, text, ids, tokens, drop: template.map_or(0, |t| t.drop()) })
}
