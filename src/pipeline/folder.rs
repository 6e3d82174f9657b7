//! A diffusers pipeline folder, read as diffusers lays it out: `model_index.json` (its `_class_name`
//! picks the pipeline), and one sub-folder per component (`transformer/`, `vae/`, `scheduler/`,
//! `text_encoder/`, `tokenizer/`, `processor/`). The folder names come from `model_index.json`'s
//! keys, as `DiffusionPipeline.from_pretrained` reads them.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The pipeline classes wgdit runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelineClass {
    /// `QwenImagePipeline`: text to image.
    TextToImage,
    /// `QwenImageEditPipeline` (Qwen-Image-Edit): one reference image.
    Edit,
    /// `QwenImageEditPlusPipeline` (Edit-2509, Edit-2511): one or more reference images.
    EditPlus,
}

impl PipelineClass {
    pub fn class_name(self) -> &'static str {
        match self {
            PipelineClass::TextToImage => "QwenImagePipeline",
            PipelineClass::Edit => "QwenImageEditPipeline",
            PipelineClass::EditPlus => "QwenImageEditPlusPipeline",
        }
    }

    /// Whether the pipeline takes reference images.
    pub fn is_edit(self) -> bool {
        self != PipelineClass::TextToImage
    }

    fn from_name(name: &str) -> Option<PipelineClass> {
        [PipelineClass::TextToImage, PipelineClass::Edit, PipelineClass::EditPlus]
            .into_iter()
            .find(|c| c.class_name() == name)
    }
}

/// The component classes each pipeline class expects: (folder key, library, class, required).
/// The text encoder, tokenizer and processor are optional on disk: embeddings can replace them.
fn expected(class: PipelineClass) -> Vec<(&'static str, &'static str, &'static str, bool)> {
    let mut v = vec![
        ("scheduler", "diffusers", "FlowMatchEulerDiscreteScheduler", true),
        ("transformer", "diffusers", "QwenImageTransformer2DModel", true),
        ("vae", "diffusers", "AutoencoderKLQwenImage", true),
        ("text_encoder", "transformers", "Qwen2_5_VLForConditionalGeneration", false),
        ("tokenizer", "transformers", "Qwen2Tokenizer", false),
    ];
    if class.is_edit() {
        v.push(("processor", "transformers", "Qwen2VLProcessor", false));
    }
    v
}

/// An opened pipeline folder: its class and the component folders found on disk.
#[derive(Clone, Debug)]
pub struct PipelineFolder {
    pub root: PathBuf,
    pub class: PipelineClass,
    /// `transformer/` (a diffusers model folder: `config.json` + weights, sharded or not).
    pub transformer: PathBuf,
    /// `vae/` (`config.json` + `diffusion_pytorch_model.safetensors`).
    pub vae: PathBuf,
    /// `scheduler/scheduler_config.json`.
    pub scheduler_config: PathBuf,
    /// Present on disk only when the folder holds them (the next issue reads them).
    pub text_encoder: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub processor: Option<PathBuf>,
}

/// Largest `model_index.json` read (real ones are under 1 KB).
const MAX_INDEX_BYTES: u64 = 1 << 20;

impl PipelineFolder {
    /// Opens `dir`: reads `model_index.json`, checks the class and every component entry, and
    /// finds the component folders. Errors name the file, the component and what to do.
    pub fn open(dir: &Path) -> Result<PipelineFolder> {
        let index = dir.join("model_index.json");
        if !dir.is_dir() {
            return Err(Error::file(dir, "not a folder: pass a diffusers pipeline folder (with model_index.json)"));
        }
        if !index.is_file() {
            return Err(Error::file(
                dir,
                "no model_index.json: this is not a diffusers pipeline folder (for a transformer alone use `wgdit forward`)",
            ));
        }
        let text = read_bounded(&index, MAX_INDEX_BYTES)?;
        let (class, components) = parse_index(&text).map_err(|e| Error::file(&index, e.to_string()))?;
        let mut found: Vec<(&str, Option<PathBuf>)> = Vec::new();
        for (key, required) in components {
            let sub = dir.join(key);
            if required && !sub.is_dir() {
                return Err(Error::file(&sub, format!("the pipeline's `{key}` folder is missing")));
            }
            found.push((key, sub.is_dir().then_some(sub)));
        }
        let take = |k: &str| found.iter().find(|(key, _)| *key == k).and_then(|(_, p)| p.clone());
        let scheduler_config = dir.join("scheduler").join("scheduler_config.json");
        if !scheduler_config.is_file() {
            return Err(Error::file(&scheduler_config, "missing: the scheduler folder has no scheduler_config.json"));
        }
        Ok(PipelineFolder {
            root: dir.to_path_buf(),
            class,
            transformer: take("transformer").expect("cannot fail: required"),
            vae: take("vae").expect("cannot fail: required"),
            scheduler_config,
            text_encoder: take("text_encoder"),
            tokenizer: take("tokenizer"),
            processor: take("processor"),
        })
    }
}

/// Checks the text of a `model_index.json`: the pipeline class and every component entry it
/// needs (the fuzz entry point: no file access). Returns the class and the component folder
/// names with whether each is required on disk.
pub fn parse_index(text: &str) -> Result<(PipelineClass, Vec<(&'static str, bool)>)> {
    let v: Value = serde_json::from_str(text).map_err(|e| Error::input(format!("not valid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| Error::input("expected a JSON object"))?;
    let name = obj
        .get("_class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::input("no `_class_name` string: cannot tell which pipeline this is"))?;
    let class = PipelineClass::from_name(name).ok_or_else(|| {
        Error::input(format!(
            "pipeline class `{name}` is not supported: wgdit runs QwenImagePipeline, QwenImageEditPipeline and QwenImageEditPlusPipeline"
        ))
    })?;
    let mut components = Vec::new();
    for (key, lib, cls, required) in expected(class) {
        let entry = obj.get(key);
        let pair = entry.and_then(Value::as_array).filter(|a| a.len() == 2);
        let got = pair.map(|a| (a[0].as_str(), a[1].as_str()));
        match got {
            Some((Some(l), Some(c))) if l == lib && c == cls => {}
            // save_pretrained writes [null, null] for a component saved as None.
            _ if !required && pair.is_some_and(|a| a.iter().all(Value::is_null)) => {}
            None if !required && entry.is_none() => {}
            Some((Some(l), Some(c))) => {
                return Err(Error::input(format!("component `{key}` is {l}.{c}; a {name} needs {lib}.{cls}")))
            }
            _ => {
                return Err(Error::input(format!(
                    "component `{key}` is missing or malformed (expected [\"{lib}\", \"{cls}\"])"
                )))
            }
        }
        components.push((key, required));
    }
    Ok((class, components))
}

/// Reads a small text file, refusing one larger than `max` bytes before reading it.
pub fn read_bounded(path: &Path, max: u64) -> Result<String> {
    String::from_utf8(read_bounded_bytes(path, max)?).map_err(|_| Error::file(path, "not UTF-8 text"))
}

/// Reads a file whole, refusing one larger than `max` bytes before allocating for it.
pub fn read_bounded_bytes(path: &Path, max: u64) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if len > max {
        return Err(Error::file(path, format!("{len} bytes: too large for this file (at most {max})")));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline").join(name)
    }

    #[test]
    fn the_four_fixture_folders_open_with_their_classes() {
        for (dir, class) in [
            ("t2i", PipelineClass::TextToImage),
            ("edit", PipelineClass::Edit),
            ("edit-plus", PipelineClass::EditPlus),
            ("edit-2511", PipelineClass::EditPlus),
        ] {
            let f = PipelineFolder::open(&fixture(dir)).unwrap();
            assert_eq!(f.class, class, "{dir}");
            assert!(f.transformer.ends_with("transformer") && f.vae.ends_with("vae"));
            assert!(f.text_encoder.is_none() && f.tokenizer.is_none() && f.processor.is_none());
        }
    }

    fn write_folder(index: &str, dirs: &[&str]) -> crate::testing::TempDir {
        let d = crate::testing::TempDir::new("folder");
        std::fs::write(d.path().join("model_index.json"), index).unwrap();
        for s in dirs {
            std::fs::create_dir_all(d.path().join(s)).unwrap();
        }
        if dirs.contains(&"scheduler") {
            std::fs::write(d.path().join("scheduler/scheduler_config.json"), "{}").unwrap();
        }
        d
    }

    const T2I: &str = r#"{"_class_name": "QwenImagePipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"],
        "text_encoder": [null, null], "tokenizer": [null, null]}"#;

    #[test]
    fn bad_folders_are_errors_that_name_the_problem() {
        let all = ["scheduler", "transformer", "vae"];
        let cases: Vec<(String, Vec<&str>, &str)> = vec![
            ("not json".into(), all.to_vec(), "not valid JSON"),
            ("[1, 2]".into(), all.to_vec(), "expected a JSON object"),
            (r#"{"vae": 1}"#.into(), all.to_vec(), "_class_name"),
            (T2I.replace("QwenImagePipeline", "FluxPipeline"), all.to_vec(), "`FluxPipeline` is not supported"),
            (
                T2I.replace("AutoencoderKLQwenImage", "AutoencoderKLWan"),
                all.to_vec(),
                "component `vae` is diffusers.AutoencoderKLWan",
            ),
            (
                T2I.replace(r#""vae": ["diffusers", "AutoencoderKLQwenImage"],"#, ""),
                all.to_vec(),
                "component `vae` is missing",
            ),
            (T2I.into(), vec!["scheduler", "vae"], "`transformer` folder is missing"),
        ];
        for (index, dirs, want) in cases {
            let d = write_folder(&index, &dirs);
            let e = PipelineFolder::open(d.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{index:?}: got `{e}`, want `{want}`");
        }
        let d = write_folder(T2I, &all);
        PipelineFolder::open(d.path()).unwrap();
        std::fs::remove_file(d.path().join("scheduler/scheduler_config.json")).unwrap();
        assert!(PipelineFolder::open(d.path()).unwrap_err().to_string().contains("scheduler_config.json"));
        let e = PipelineFolder::open(&d.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("not a folder"), "{e}");
    }
}
