//! What `wgdit cache` will write for each dataset entry: the training size of the picture, the
//! sizes of its edit references (as `generate` sizes them), and the keys that tell whether a cached
//! sample still matches its inputs. Pictures are read here only as far as needed: bytes (hashed)
//! and the header (size); a full decode happens for the entries that are to be encoded.

use crate::image::pixels::{check_dimensions, decode_rgb, MAX_FILE_BYTES};
use crate::pipeline::dims::{self, Size, SizeRules};
use crate::pipeline::folder::{PipelineClass, PipelineFolder};
use crate::train::data::buckets::Buckets;
use crate::train::data::sources::{Bad, Entry};
use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Bumped when the sample layout changes, so that old caches are re-encoded.
pub const FORMAT: &str = "wgdit-cache-1";

/// One sample to cache.
#[derive(Clone, Debug)]
pub struct Planned {
    pub entry: Entry,
    /// The picture's own size.
    pub original: Size,
    /// Its training size (the bucket).
    pub target: Size,
    /// VAE sizes of the edit references used (Edit v1: the first only).
    pub refs: Vec<Size>,
    /// The text encoder's key: what its embeddings depend on (shared by equal captions).
    pub text_key: String,
    /// The sample's key: every input of the sample file.
    pub key: String,
}

/// A picture's size and the SHA-256 of its bytes.
#[derive(Clone, Copy, Debug)]
struct Picture {
    size: Size,
    hash: [u8; 32],
}

/// Reads a picture's bytes and header (not its pixels).
fn picture(path: &Path) -> std::result::Result<Picture, String> {
    let len = std::fs::metadata(path).map_err(|_| "file not found".to_string())?.len();
    if len > MAX_FILE_BYTES {
        return Err(format!("{len} bytes: too large for an image file"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    let reader = ::image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| format!("unreadable image: {e}"))?;
    if reader.format().is_none() {
        return Err("unreadable image: not a PNG, JPEG or WebP file".into());
    }
    let (w, h) = reader.into_dimensions().map_err(|e| format!("unreadable image: {e}"))?;
    check_dimensions(w, h, "image").map_err(|e| e.to_string())?;
    Ok(Picture { size: Size::new(w, h), hash: Sha256::digest(&bytes).into() })
}

/// Decodes a picture fully (what the VAE phase will do), for the entries to encode.
pub fn check_decodes(path: &Path) -> std::result::Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    decode_rgb(&bytes).map(|_| ()).map_err(|e| format!("unreadable image: {e}"))
}

/// The inputs that fix every number of a sample, besides the pictures and the caption.
pub struct PlanInputs<'a> {
    pub class: PipelineClass,
    pub buckets: &'a Buckets,
    pub rules: SizeRules,
    /// [`model_identity`] of the text encoder side and of the VAE.
    pub text_model: &'a str,
    pub vae_model: &'a str,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_of(parts: &serde_json::Value) -> String {
    hex(&Sha256::digest(parts.to_string().as_bytes()))
}

/// Plans every entry; the entries that cannot be used come back as [`Bad`], each naming its file.
pub fn plan(entries: &[Entry], p: &PlanInputs) -> (Vec<Planned>, Vec<Bad>) {
    let mut seen: HashMap<PathBuf, std::result::Result<Picture, String>> = HashMap::new();
    let mut look = |path: &Path| seen.entry(path.to_path_buf()).or_insert_with(|| picture(path)).clone();
    let (mut planned, mut bad) = (Vec::new(), Vec::new());
    for e in entries {
        match plan_one(e, p, &mut look) {
            Ok(s) => planned.push(s),
            Err((file, reason)) => bad.push(Bad { file, reason }),
        }
    }
    (planned, bad)
}

type Look<'a> = dyn FnMut(&Path) -> std::result::Result<Picture, String> + 'a;

fn plan_one(e: &Entry, p: &PlanInputs, look: &mut Look) -> std::result::Result<Planned, (String, String)> {
    let me = |reason: String| (e.name.clone(), reason);
    let pic = look(&e.image).map_err(me)?;
    let target = p.buckets.target(pic.size.width, pic.size.height, p.rules.multiple).map_err(me)?;
    let used = match p.class {
        PipelineClass::TextToImage if !e.edit_images.is_empty() => {
            return Err(me("has edit images, but the model is a text-to-image pipeline".into()))
        }
        PipelineClass::TextToImage => 0,
        _ if e.edit_images.is_empty() => return Err(me("no edit image (the `edit_image` cell is empty)".into())),
        PipelineClass::Edit if e.edit_images.len() > 1 => {
            return Err(me(format!(
                "{} edit images, but QwenImageEditPipeline takes one (use an Edit-2509/2511 pipeline for several)",
                e.edit_images.len()
            )))
        }
        _ => e.edit_images.len(),
    };
    let mut pics = Vec::with_capacity(used);
    for path in &e.edit_images[..used] {
        let shown = path.display().to_string();
        pics.push(look(path).map_err(|r| (shown, format!("edit image of {}: {r}", e.name)))?);
    }
    let sizes: Vec<Size> = pics.iter().map(|q| q.size).collect();
    let (refs, vision) = match p.class {
        PipelineClass::TextToImage => (vec![], vec![]),
        PipelineClass::Edit => {
            let r = dims::edit_sizes(&p.rules, sizes[0], None, None).map_err(|x| me(x.to_string()))?.reference;
            (vec![r], vec![r])
        }
        PipelineClass::EditPlus => {
            let s = dims::edit_plus_sizes(&p.rules, &sizes, None, None).map_err(|x| me(x.to_string()))?;
            (s.vae, s.condition)
        }
    };
    let wh = |s: &Size| [s.width, s.height];
    let pic_hashes: Vec<String> = pics.iter().map(|q| hex(&q.hash)).collect();
    let text_key = key_of(&serde_json::json!({
        "format": FORMAT, "model": p.text_model, "class": p.class.class_name(), "caption": e.caption,
        "max_sequence_length": crate::text::templates::DEFAULT_MAX_SEQUENCE_LENGTH,
        "vision": pic_hashes.iter().zip(&vision).map(|(h, s)| (h, wh(s))).collect::<Vec<_>>(),
    }));
    let key = key_of(&serde_json::json!({
        "format": FORMAT, "text": text_key, "vae": p.vae_model, "image": hex(&pic.hash), "target": wh(&target),
        "refs": pic_hashes.iter().zip(&refs).map(|(h, s)| (h, wh(s))).collect::<Vec<_>>(),
    }));
    Ok(Planned { entry: e.clone(), original: pic.size, target, refs, text_key, key })
}

/// What identifies the model side of the keys: the text encoder, tokenizer and processor (text), or
/// the VAE: each config's bytes and every file's name and length (weights are not hashed: a
/// changed weight file of the same length is not noticed).
pub fn model_identity(folder: &PipelineFolder, text_encoder: Option<&Path>) -> Result<(String, String)> {
    let mut text = Vec::new();
    let te = text_encoder.map(Path::to_path_buf).or_else(|| folder.text_encoder.clone());
    for dir in [te, folder.tokenizer.clone(), folder.processor.clone()].into_iter().flatten() {
        text.push(describe(&dir)?);
    }
    let vae = describe(&crate::models::qwen_image_vae::resolve_dir(&folder.vae)?)?;
    Ok((key_of(&serde_json::json!(text)), key_of(&vae)))
}

/// A folder (or file) as `{name: length}` plus the text of its small JSON configs.
fn describe(path: &Path) -> Result<serde_json::Value> {
    let mut files = serde_json::Map::new();
    let list: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    for f in list {
        let name = f.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let len = std::fs::metadata(&f).map_err(|e| Error::io(&f, e))?.len();
        let small_json = name.ends_with(".json") && len <= 1 << 20;
        let v = if small_json { std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))? } else { len.to_string() };
        files.insert(name, serde_json::Value::String(v));
    }
    Ok(serde_json::Value::Object(files))
}
