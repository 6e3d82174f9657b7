//! The picture datasets `wgdit cache` reads, turned into one list of entries (image, caption,
//! edit images, repeats):
//!
//! - **DiffSynth-Studio**: a folder with `metadata.csv` (columns `image`, `prompt`, and for edit
//!   training `edit_image`: one path or a list, see [`csv::image_list`]), or `metadata.json` (a
//!   list of such objects) or `metadata.jsonl` (one per line), paths relative to the folder, as
//!   DiffSynth's `UnifiedDataset` / `ImageDataset` read them (`--dataset_base_path` +
//!   `--dataset_metadata_path`; `os.path.join(base_path, p)`, so absolute paths work too). `--data`
//!   may also name the metadata file itself.
//! - **kohya** (sd-scripts' DreamBooth layout): a folder of images (png, jpg, jpeg, webp) with
//!   same-name `.txt` captions, and sub-folders `N_name` whose images repeat N times per epoch
//!   (`train_util.py`, `DreamBoothDataset`: `n_repeats = int(tokens[0])`); a sub-folder without the
//!   prefix counts once. The caption is the file's first line, stripped (`read_caption`:
//!   `lines[0].strip()`). One folder level, as sd-scripts globs each sub-folder.
//!
//! A problem with one entry (no caption file, an empty caption, a malformed cell) is a [`Bad`]
//! naming the file; the caller reports them all at once or skips them (`--skip-bad`). Problems
//! with the dataset as a whole (no metadata columns, an unreadable CSV) are errors.

use super::csv;
use crate::pipeline::folder::read_bounded;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Image file extensions read, as DiffSynth's `image_file_extension` and sd-scripts' `IMAGE_EXTENSIONS`
/// (less bmp and avif, which the image decoder does not read).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];
/// Largest metadata file read.
const MAX_METADATA_BYTES: u64 = 256 << 20;
/// Largest caption file read.
const MAX_CAPTION_BYTES: u64 = 1 << 20;

/// One training picture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// How reports name it: the image path as the dataset writes it (relative to the root).
    pub name: String,
    pub image: PathBuf,
    pub caption: String,
    /// The edit pair's reference pictures, in order (empty for text-to-image data).
    pub edit_images: Vec<PathBuf>,
    /// Times per epoch (kohya's `N_` prefix; 1 otherwise).
    pub repeats: u32,
}

/// An entry that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bad {
    pub file: String,
    pub reason: String,
}

/// Which layout a dataset folder has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// DiffSynth-Studio's, with this metadata file.
    DiffSynth(PathBuf),
    /// A kohya-style folder tree of images and `.txt` captions.
    Kohya,
}

/// A dataset read from disk (images not opened yet).
#[derive(Clone, Debug)]
pub struct Source {
    pub root: PathBuf,
    pub layout: Layout,
    pub entries: Vec<Entry>,
    pub bad: Vec<Bad>,
    /// What was read differently from a plain folder (for the log).
    pub notes: Vec<String>,
}

/// Reads `data` (a DiffSynth folder or metadata file, or a kohya folder tree). `exclude` are
/// folders never scanned (the cache output when it sits inside the dataset).
pub fn read(data: &Path, exclude: &[&Path]) -> Result<Source> {
    if data.is_file() {
        let root = data.parent().map(Path::to_path_buf).unwrap_or_default();
        return read_metadata(&root, data);
    }
    if !data.is_dir() {
        return Err(Error::file(data, "not found: --data takes a folder of pictures (or a metadata.csv)"));
    }
    let found: Vec<PathBuf> = ["metadata.csv", "metadata.json", "metadata.jsonl"]
        .iter()
        .map(|f| data.join(f))
        .filter(|p| p.is_file())
        .collect();
    match found.as_slice() {
        [] => read_kohya(data, exclude),
        [one] => read_metadata(data, one),
        many => Err(Error::file(
            data,
            format!(
                "holds {}: pass the one to read as --data",
                many.iter()
                    .map(|p| p.file_name().unwrap_or_default().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        )),
    }
}

fn read_metadata(root: &Path, meta: &Path) -> Result<Source> {
    let text = read_bounded(meta, MAX_METADATA_BYTES)?;
    let ext = meta.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let rows = match ext.as_str() {
        "json" | "jsonl" => json_rows(&text, ext == "jsonl").map_err(|m| Error::file(meta, m))?,
        _ => csv_rows(&text).map_err(|m| Error::file(meta, m))?,
    };
    let mut s = Source { root: root.to_path_buf(), layout: Layout::DiffSynth(meta.to_path_buf()), ..empty() };
    let label = meta.file_name().unwrap_or_default().to_string_lossy().into_owned();
    for row in rows {
        match row_entry(root, &row) {
            Ok(e) => s.entries.push(e),
            Err(reason) => {
                let file = if row.image.trim().is_empty() { format!("{label} {}", row.at) } else { row.image.clone() };
                s.bad.push(Bad { file, reason });
            }
        }
    }
    if s.entries.is_empty() && s.bad.is_empty() {
        return Err(Error::file(meta, "no rows: add one line per picture"));
    }
    Ok(s)
}

fn empty() -> Source {
    Source { root: PathBuf::new(), layout: Layout::Kohya, entries: Vec::new(), bad: Vec::new(), notes: Vec::new() }
}

/// One metadata row as text: where it is (for messages), and its cells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub at: String,
    pub image: String,
    pub prompt: Option<String>,
    /// The parsed `edit_image` list, or why it does not parse.
    pub edit: std::result::Result<Vec<String>, String>,
}

/// The rows of a metadata.csv (the fuzz entry point: no file access).
pub fn csv_rows(text: &str) -> std::result::Result<Vec<Row>, String> {
    let t = csv::parse(text)?;
    let col = |name: &str| {
        t.column(name).ok_or_else(|| {
            format!(
                "no `{name}` column (the header has: {}); DiffSynth's metadata.csv has image,prompt[,edit_image]",
                t.header.join(", ")
            )
        })
    };
    let (image, prompt) = (col("image")?, col("prompt")?);
    let edit = t.column("edit_image");
    Ok(t.rows
        .iter()
        .map(|r| Row {
            at: format!("line {}", r.line),
            image: r.fields[image].clone(),
            prompt: Some(r.fields[prompt].clone()).filter(|p| !p.is_empty()),
            edit: edit.map_or(Ok(Vec::new()), |c| csv::image_list(&r.fields[c])),
        })
        .collect())
}

/// The rows of a DiffSynth metadata.json (a list of objects) or .jsonl (one object per line).
pub fn json_rows(text: &str, lines: bool) -> std::result::Result<Vec<Row>, String> {
    let objects: Vec<(String, serde_json::Value)> = if lines {
        let mut v = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let o = serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
            v.push((format!("line {}", i + 1), o));
        }
        v
    } else {
        let all: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let list = all.as_array().ok_or("expected a JSON list of {\"image\": …, \"prompt\": …} objects")?;
        list.iter().enumerate().map(|(i, o)| (format!("item {i}"), o.clone())).collect()
    };
    if let Some((_, o)) = objects.first() {
        if o.get("file").is_some() && o.get("image").is_none() {
            return Err("this is a cached dataset (\"file\" entries): give it to `wgdit train --data`".into());
        }
    }
    Ok(objects.into_iter().map(|(at, o)| json_row(at, &o)).collect())
}

fn json_row(at: String, o: &serde_json::Value) -> Row {
    let s = |k: &str| o.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let edit = match o.get("edit_image") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::String(p)) => csv::image_list(p),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| "edit_image holds a non-string".to_string()))
            .collect(),
        Some(_) => Err("edit_image is neither a path nor a list of paths".to_string()),
    };
    Row { at, image: s("image").unwrap_or_default(), prompt: s("prompt").filter(|p| !p.is_empty()), edit }
}

fn row_entry(root: &Path, row: &Row) -> std::result::Result<Entry, String> {
    let image = row.image.trim();
    if image.is_empty() {
        return Err("no image (the `image` cell is empty)".into());
    }
    let caption = row.prompt.clone().ok_or("missing caption (the `prompt` cell is empty)")?;
    let edit = row.edit.clone().map_err(|m| format!("edit_image: {m}"))?;
    Ok(Entry {
        name: image.to_string(),
        image: root.join(image),
        caption,
        edit_images: edit.iter().map(|p| root.join(p.trim())).collect(),
        repeats: 1,
    })
}

fn is_image(p: &Path) -> bool {
    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    IMAGE_EXTENSIONS.contains(&ext.as_str())
}

/// `N_name` → N (sd-scripts: the text before the first `_`, an integer).
pub fn repeat_prefix(folder: &str) -> Option<&str> {
    let (n, rest) = folder.split_once('_')?;
    (!n.is_empty() && !rest.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(n)
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

fn read_kohya(root: &Path, exclude: &[&Path]) -> Result<Source> {
    let mut s = Source { root: root.to_path_buf(), layout: Layout::Kohya, ..empty() };
    let same = |a: &Path, b: &Path| a.canonicalize().ok().is_some_and(|a| Some(a) == b.canonicalize().ok());
    let mut folders = vec![(root.to_path_buf(), 1u32)];
    for p in sorted_dir(root)?.into_iter().filter(|p| p.is_dir()) {
        let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if name.starts_with('.') || exclude.iter().any(|x| same(x, &p)) {
            continue;
        }
        match repeat_prefix(&name).map(str::parse::<u32>) {
            Some(Ok(n)) if n >= 1 => folders.push((p, n)),
            Some(_) => {
                s.bad.push(Bad { file: format!("{name}/"), reason: "the repeat count must be 1 or more".into() })
            }
            None => {
                s.notes.push(format!("{name}/ has no N_ prefix: its pictures count once"));
                folders.push((p, 1));
            }
        }
    }
    let mut other = 0usize;
    for (dir, repeats) in folders {
        let nested = dir != root;
        for p in sorted_dir(&dir)? {
            if p.is_dir() {
                if nested {
                    s.notes.push(format!("{} is not read (one folder level)", rel(root, &p)));
                }
            } else if is_image(&p) {
                match kohya_caption(&p) {
                    Ok(caption) => {
                        s.entries.push(Entry { name: rel(root, &p), image: p, caption, edit_images: vec![], repeats })
                    }
                    Err(reason) => s.bad.push(Bad { file: rel(root, &p), reason }),
                }
            } else if !p.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt")) {
                other += 1;
            }
        }
    }
    if other > 0 {
        s.notes.push(format!(
            "{other} file(s) that are neither pictures ({}) nor captions were not read",
            IMAGE_EXTENSIONS.join(", ")
        ));
    }
    if s.entries.is_empty() && s.bad.is_empty() {
        return Err(Error::file(
            root,
            "no pictures: expected metadata.csv (DiffSynth) or images with same-name .txt captions (kohya)",
        ));
    }
    Ok(s)
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).to_string_lossy().into_owned()
}

/// The caption of a kohya image: `<stem>.txt`'s first line, stripped.
fn kohya_caption(image: &Path) -> std::result::Result<String, String> {
    let txt = image.with_extension("txt");
    let name = txt.file_name().unwrap_or_default().to_string_lossy().into_owned();
    if !txt.is_file() {
        return Err(format!("missing caption file {name}"));
    }
    let text = read_bounded(&txt, MAX_CAPTION_BYTES).map_err(|e| format!("caption file {name}: {e}"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return Err(format!("empty caption ({name} has no text on its first line)"));
    }
    Ok(first.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kohya_repeat_prefixes_are_a_number_and_an_underscore() {
        assert_eq!(repeat_prefix("10_sks dog"), Some("10"));
        assert_eq!(repeat_prefix("3_a_b"), Some("3"));
        assert_eq!(repeat_prefix("dog"), None);
        assert_eq!(repeat_prefix("_dog"), None);
        assert_eq!(repeat_prefix("5_"), None);
        assert_eq!(repeat_prefix("x5_dog"), None);
    }

    #[test]
    fn csv_rows_need_image_and_prompt_columns_and_read_edit_lists() {
        let rows = csv_rows("image,prompt,edit_image\na.png,cat,\"['e1.png', 'e2.png']\"\nb.png,,e.png\n").unwrap();
        assert_eq!(rows[0].edit, Ok(vec!["e1.png".to_string(), "e2.png".to_string()]));
        assert_eq!(rows[1].prompt, None);
        assert_eq!(rows[1].at, "line 3");
        assert!(csv_rows("file,caption\na,b\n").unwrap_err().contains("no `image` column"));
    }

    #[test]
    fn json_metadata_takes_lists_and_refuses_a_cached_dataset() {
        let rows =
            json_rows(r#"[{"image": "t.jpg", "prompt": "p", "edit_image": ["a.jpg", "b.jpg"]}]"#, false).unwrap();
        assert_eq!(rows[0].edit, Ok(vec!["a.jpg".to_string(), "b.jpg".to_string()]));
        let e = json_rows("{\"file\": \"samples/0.safetensors\"}\n", true).unwrap_err();
        assert!(e.contains("cached dataset"), "{e}");
    }
}
