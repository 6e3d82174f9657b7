//! `wgdit cache`: pictures and captions → the cached-sample dataset `wgdit train --data` reads
//! (docs/training.md, "From pictures: wgdit cache").
//!
//! 1. Read the dataset (`data::sources`: DiffSynth's metadata.csv/json/jsonl or a kohya folder tree)
//!    and plan each entry (`plan`): its bucket (`data::buckets`), its edit references sized as
//!    `generate` sizes them (`pipeline::dims`, `--ref-area`, `--condition-area`), its keys. Every
//!    bad entry is reported in one error unless `--skip-bad`; nothing is written before.
//! 2. Text phase: the pipeline's text encoder (streamed when it does not fit, as in `generate`)
//!    encodes each caption not cached yet, as `generate --prompt` does (T2I: `encode_prompt`;
//!    Edit: with the vision images of its references); the embeddings are staged on disk and the
//!    encoder is dropped.
//! 3. VAE phase: each picture resized and centre-cropped to its bucket (DiffSynth's crop), each
//!    reference LANCZOS-resized from its original (as `generate`), through the VAE
//!    (`latent_dist.mode()`, then `(z − mean)/std`), written with the staged embeddings as
//!    `samples/<n>.safetensors`, atomically.
//! 4. `metadata.jsonl` is rewritten atomically (one line per sample and repeat).
//!
//! Resumable: a sample file carries its key (the picture's and references' bytes, caption, sizes,
//! model files, format), so a rerun skips what matches and re-encodes what changed.

mod plan;
mod store;

pub use plan::{Planned, FORMAT};

use crate::gpu::Gpu;
use crate::image::pixels::{load_rgb, vae_input};
use crate::image::resize::resize_lanczos;
use crate::models::qwen2_5_vl::runtime::Residency;
use crate::models::qwen_image::DitConfig;
use crate::models::qwen_image_vae::{normalize_latents, Tiling, Vae, VaeConfig};
use crate::outputs::{check_finite, check_outputs, RunLock};
use crate::pipeline::dims::{Size, SizeRules};
use crate::pipeline::folder::{PipelineClass, PipelineFolder};
use crate::pipeline::prompt::{vision_images, PromptEncoder};
use crate::train::data::buckets::{self, crop_and_resize, Buckets};
use crate::train::data::sources::{self, Bad};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What `wgdit cache` is asked to do.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// A diffusers pipeline folder (its class decides T2I or edit samples).
    pub model: PathBuf,
    /// A DiffSynth folder (or its metadata file) or a kohya folder tree.
    pub data: PathBuf,
    pub output: PathBuf,
    /// The bucket target area in pixels (`--resolution`).
    pub resolution: u64,
    /// `--buckets WxH,…` or `dynamic`; None: the default set at `resolution`.
    pub buckets: Option<String>,
    pub ref_area: u64,
    pub condition_area: u64,
    pub skip_bad: bool,
    pub residency: Option<Residency>,
    /// A text encoder other than the folder's (as `generate --text-encoder`).
    pub text_encoder: Option<PathBuf>,
    pub tiling: Tiling,
    /// Progress bars and the bucket table on stderr.
    pub progress: bool,
}

impl CacheOptions {
    /// `generate`'s defaults: 1024² buckets, reference areas 1024² and 384², VAE tiling when needed.
    pub fn new(model: PathBuf, data: PathBuf, output: PathBuf) -> CacheOptions {
        use crate::pipeline::dims::{CONDITION_IMAGE_AREA, VAE_IMAGE_AREA};
        CacheOptions {
            model,
            data,
            output,
            resolution: 1024 * 1024,
            buckets: None,
            ref_area: VAE_IMAGE_AREA,
            condition_area: CONDITION_IMAGE_AREA,
            skip_bad: false,
            residency: None,
            text_encoder: None,
            tiling: Tiling::Auto { spec: Default::default(), budget: 8 << 30 },
            progress: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct CacheReport {
    pub class: PipelineClass,
    /// Distinct samples in metadata.jsonl, and its lines (with repeats).
    pub samples: usize,
    pub lines: usize,
    /// Samples encoded now, and found already cached.
    pub encoded: usize,
    pub reused: usize,
    /// Bad entries skipped (`--skip-bad`).
    pub skipped: Vec<Bad>,
    /// Each bucket used and how many samples it holds.
    pub buckets: Vec<(Size, usize)>,
    /// Sample files no entry uses any more (left in place).
    pub stale: usize,
    pub text_seconds: f64,
    pub vae_seconds: f64,
    pub seconds: f64,
}

/// Runs `wgdit cache`.
pub fn cache(gpu: &Arc<Gpu>, o: &CacheOptions) -> Result<CacheReport> {
    let t0 = Instant::now();
    let mut inputs: Vec<&Path> = vec![&o.model, &o.data];
    inputs.extend(o.text_encoder.as_deref());
    check_outputs(&inputs, &[&o.output])?;
    if o.output.is_file() {
        return Err(Error::file(&o.output, "is a file: --output is the cache folder"));
    }
    // Only a new, empty or earlier cache folder: its metadata.jsonl is rewritten.
    let non_empty = std::fs::read_dir(&o.output).map(|mut d| d.next().is_some()).unwrap_or(false);
    if non_empty && !o.output.join(store::SAMPLES).is_dir() {
        return Err(Error::file(
            &o.output,
            "exists and is not a wgdit cache (no samples/ folder): choose a new or empty --output folder",
        ));
    }
    let folder = PipelineFolder::open(&o.model)?;
    let vae_cfg = VaeConfig::from_file(&crate::models::qwen_image_vae::resolve_dir(&folder.vae)?.join("config.json"))?;
    let dit = DitConfig::from_file(&folder.transformer.join("config.json"))?;
    let p = dit.patch_size;
    if dit.in_channels != vae_cfg.z_dim * p * p {
        return Err(Error::input(format!(
            "the transformer takes {} channels but the VAE's z_dim {} packs to {}: mismatched components",
            dit.in_channels,
            vae_cfg.z_dim,
            vae_cfg.z_dim * p * p
        )));
    }
    let mut rules = SizeRules::for_vae(vae_cfg.spatial_factor() as u32);
    (rules.ref_area, rules.condition_area) = (o.ref_area, o.condition_area);
    let bucket_rule = match &o.buckets {
        Some(s) => buckets::parse(s, rules.multiple, o.resolution)?,
        None => Buckets::Set(buckets::default_set(o.resolution, rules.multiple)),
    };
    let source = sources::read(&o.data, &[&o.output])?;
    check_class(&folder, &source)?;
    let (text_model, vae_model) = plan::model_identity(&folder, o.text_encoder.as_deref())?;
    let pin = plan::PlanInputs {
        class: folder.class,
        buckets: &bucket_rule,
        rules,
        text_model: &text_model,
        vae_model: &vae_model,
    };
    let (planned, mut bad) = plan::plan(&source.entries, &pin);
    bad.splice(0..0, source.bad.iter().cloned());
    let existing = store::scan(&o.output)?;
    let (planned, more) = decode_new(planned, &existing);
    bad.extend(more);
    report_bad(&o.data, &bad, o.skip_bad)?;
    if planned.is_empty() {
        return Err(Error::file(&o.data, "no usable pictures"));
    }
    if o.progress {
        for n in &source.notes {
            eprintln!("note: {n}");
        }
        eprint!("{}", bucket_table(&bucket_rule, &planned, o.resolution, rules.multiple));
    }
    std::fs::create_dir_all(o.output.join(store::SAMPLES)).map_err(|e| Error::io(&o.output, e))?;
    let _lock = RunLock::acquire(&o.output)?;
    let run = Run { gpu, o, folder: &folder, dit: &dit, rules };
    run.finish(planned, existing, bad, t0)
}

/// The model and the dataset must agree: edit samples need an Edit pipeline and the reverse.
fn check_class(folder: &PipelineFolder, s: &sources::Source) -> Result<()> {
    let with_edit = s.entries.iter().filter(|e| !e.edit_images.is_empty()).count();
    let name = folder.class.class_name();
    if folder.class.is_edit() && with_edit == 0 && !s.entries.is_empty() {
        return Err(Error::input(format!(
            "{name} trains on edit pairs, but no entry of {} has an edit image (DiffSynth's `edit_image` column): give a text-to-image pipeline folder, or add the references",
            s.root.display()
        )));
    }
    if !folder.class.is_edit() && with_edit > 0 {
        return Err(Error::input(format!(
            "{with_edit} entries of {} have edit images, but {name} is text to image: give an Edit pipeline folder (Qwen-Image-Edit, -2509, -2511)",
            s.root.display()
        )));
    }
    Ok(())
}

/// Fully decodes the pictures of the samples not cached yet (those cached decoded before, with the
/// same bytes); the ones that fail become bad entries.
fn decode_new(planned: Vec<Planned>, existing: &store::Existing) -> (Vec<Planned>, Vec<Bad>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    let mut checked: std::collections::HashMap<PathBuf, std::result::Result<(), String>> = Default::default();
    'entries: for s in planned {
        if !existing.by_key.contains_key(&s.key) {
            for (i, path) in std::iter::once(&s.entry.image).chain(&s.entry.edit_images[..s.refs.len()]).enumerate() {
                let r = checked.entry(path.clone()).or_insert_with(|| plan::check_decodes(path)).clone();
                if let Err(reason) = r {
                    let file = if i == 0 { s.entry.name.clone() } else { path.display().to_string() };
                    bad.push(Bad { file, reason });
                    continue 'entries;
                }
            }
        }
        ok.push(s);
    }
    (ok, bad)
}

/// One error listing every bad entry, or (with `--skip-bad`) one warning each.
fn report_bad(data: &Path, bad: &[Bad], skip: bool) -> Result<()> {
    if bad.is_empty() {
        return Ok(());
    }
    if skip {
        for b in bad {
            eprintln!("warning: skipped {}: {}", b.file, b.reason);
        }
        return Ok(());
    }
    let list: Vec<String> = bad.iter().map(|b| format!("{}: {}", b.file, b.reason)).collect();
    Err(Error::file(
        data,
        format!(
            "{} bad entr{} (fix them, or pass --skip-bad to leave them out):\n  {}",
            bad.len(),
            if bad.len() == 1 { "y" } else { "ies" },
            list.join("\n  ")
        ),
    ))
}

/// Each bucket used and its sample count, in bucket order.
fn bucket_counts(planned: &[Planned]) -> Vec<(Size, usize)> {
    let mut m: BTreeMap<(u64, u32, u32), usize> = BTreeMap::new();
    let mut seen = HashSet::new();
    for s in planned.iter().filter(|s| seen.insert(s.key.clone())) {
        let t = s.target;
        *m.entry((t.width as u64 * 1_000_000 / t.height as u64, t.width, t.height)).or_default() += 1;
    }
    m.into_iter().map(|((_, w, h), n)| (Size::new(w, h), n)).collect()
}

fn bucket_table(rule: &Buckets, planned: &[Planned], area: u64, m: u32) -> String {
    let used = bucket_counts(planned);
    let mut out = match rule {
        Buckets::Set(set) => {
            let all: Vec<String> = set.iter().map(|s| format!("{}x{}", s.width, s.height)).collect();
            format!("buckets ({} at {area} pixels, sides multiples of {m}): {}\n", set.len(), all.join(" "))
        }
        Buckets::Dynamic { max_pixels } => {
            format!("buckets: dynamic (each picture at most {max_pixels} pixels, sides floored to {m})\n")
        }
    };
    for (s, n) in used {
        out += &format!("  {:>5}x{:<5} {n} sample(s)\n", s.width, s.height);
    }
    if area < 256 * 256 && matches!(rule, Buckets::Set(_)) {
        out += "note: --resolution is an area in pixels (1024x1024 is 1048576), not a side\n";
    }
    out
}

/// The encoding phases.
struct Run<'a> {
    gpu: &'a Arc<Gpu>,
    o: &'a CacheOptions,
    folder: &'a PipelineFolder,
    dit: &'a DitConfig,
    rules: SizeRules,
}

impl Run<'_> {
    fn finish(
        &self,
        planned: Vec<Planned>,
        mut existing: store::Existing,
        bad: Vec<Bad>,
        t0: Instant,
    ) -> Result<CacheReport> {
        let mut seen = HashSet::new();
        let todo: Vec<&Planned> =
            planned.iter().filter(|s| !existing.by_key.contains_key(&s.key) && seen.insert(s.key.clone())).collect();
        let t_text = Instant::now();
        let staged = self.text_phase(&todo)?;
        let text_seconds = t_text.elapsed().as_secs_f64();
        let t_vae = Instant::now();
        let mut next = 0;
        self.vae_phase(&todo, &mut existing, &mut next)?;
        let vae_seconds = t_vae.elapsed().as_secs_f64();
        let lines: Vec<store::Line> = planned
            .iter()
            .map(|s| store::Line {
                file: &existing.by_key[&s.key],
                caption: &s.entry.caption,
                image: &s.entry.name,
                bucket: [s.target.width, s.target.height],
                repeats: s.entry.repeats,
                areas: self.folder.class.is_edit().then_some((self.rules.ref_area, self.rules.condition_area)),
            })
            .collect();
        store::write_metadata(&self.o.output, &lines)?;
        for p in staged {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir(self.o.output.join(store::STAGING));
        let used: HashSet<&String> = planned.iter().map(|s| &s.key).collect();
        let samples = used.len();
        Ok(CacheReport {
            class: self.folder.class,
            samples,
            lines: planned.iter().map(|s| s.entry.repeats as usize).sum(),
            encoded: todo.len(),
            reused: samples - todo.len(),
            skipped: bad,
            buckets: bucket_counts(&planned),
            stale: existing.by_key.keys().filter(|k| !used.contains(k)).count(),
            text_seconds,
            vae_seconds,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    fn bar(&self, n: usize, what: &str) -> indicatif::ProgressBar {
        if !self.o.progress || n == 0 {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(n as u64);
        let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(what.to_string());
        bar
    }

    fn staged_path(&self, text_key: &str) -> PathBuf {
        self.o.output.join(store::STAGING).join(format!("{text_key}.safetensors"))
    }

    /// Encodes every caption not staged yet; returns the staged files of `todo`.
    fn text_phase(&self, todo: &[&Planned]) -> Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = Vec::new();
        let mut need: Vec<&Planned> = Vec::new();
        for s in todo {
            let path = self.staged_path(&s.text_key);
            if !files.contains(&path) {
                if !path.is_file() {
                    need.push(s);
                }
                files.push(path);
            }
        }
        if need.is_empty() {
            return Ok(files);
        }
        std::fs::create_dir_all(self.o.output.join(store::STAGING)).map_err(|e| Error::io(&self.o.output, e))?;
        let mut enc =
            PromptEncoder::open_with(self.gpu, self.folder, self.o.residency, self.o.text_encoder.as_deref())?;
        let bar = self.bar(need.len(), "captions (text encoder)");
        for s in need {
            let e = self.encode_caption(&mut enc, s).map_err(|e| Error::input(format!("{}: {e}", s.entry.name)))?;
            let meta = BTreeMap::from([("caption".to_string(), s.entry.caption.clone())]);
            let t = store::Tensor { name: "prompt_embeds".into(), shape: vec![e.tokens, e.dim], data: e.embeds };
            store::write(&self.staged_path(&s.text_key), &[t], &meta)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(files)
    }

    /// The embeddings `generate --prompt` computes for this caption (and references).
    fn encode_caption(&self, enc: &mut PromptEncoder, s: &Planned) -> Result<crate::pipeline::embeds::PromptEmbeds> {
        let e = if self.folder.class == PipelineClass::TextToImage {
            enc.encode(&s.entry.caption, crate::text::templates::DEFAULT_MAX_SEQUENCE_LENGTH)?
        } else {
            let used = &s.entry.edit_images[..s.refs.len()];
            let originals = used.iter().map(|p| load_rgb(p)).collect::<Result<Vec<_>>>()?;
            let (ra, ca) = (self.rules.ref_area, self.rules.condition_area);
            let vl = vision_images(self.folder.class, &originals, ra, ca)?;
            let processor =
                self.folder.processor.clone().ok_or_else(|| Error::file(&self.folder.root, "no processor/ folder"))?;
            let features = enc.image_features(&processor, &vl)?;
            enc.encode_with_images(&s.entry.caption, &features)?
        };
        if e.dim != self.dit.joint_attention_dim {
            return Err(Error::input(format!(
                "the text encoder's hidden size {} differs from the transformer's joint_attention_dim {}: mismatched components",
                e.dim, self.dit.joint_attention_dim
            )));
        }
        Ok(e)
    }

    /// Encodes the pictures of `todo` and writes their sample files.
    fn vae_phase(&self, todo: &[&Planned], existing: &mut store::Existing, next: &mut usize) -> Result<()> {
        if todo.is_empty() {
            return Ok(());
        }
        let mut vae = Vae::open(self.gpu, &self.folder.vae)?;
        let bar = self.bar(todo.len(), "pictures (VAE)");
        for s in todo {
            let tensors =
                self.encode_pictures(&mut vae, s).map_err(|e| Error::input(format!("{}: {e}", s.entry.name)))?;
            let name = existing.fresh_name(next);
            let meta = BTreeMap::from([
                (store::KEY.to_string(), s.key.clone()),
                ("format".to_string(), FORMAT.to_string()),
                ("image".to_string(), s.entry.name.clone()),
                ("caption".to_string(), s.entry.caption.clone()),
                ("bucket".to_string(), format!("{}x{}", s.target.width, s.target.height)),
            ]);
            store::write(&self.o.output.join(store::SAMPLES).join(&name), &tensors, &meta)?;
            existing.by_key.insert(s.key.clone(), name);
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// `latents`, `prompt_embeds` (staged) and `ref_latents.N` of one sample.
    fn encode_pictures(&self, vae: &mut Vae, s: &Planned) -> Result<Vec<store::Tensor>> {
        let img = load_rgb(&s.entry.image)?;
        let px = crop_and_resize(&img, s.target)?;
        let mut out = vec![self.latents(vae, "latents", &px)?];
        let staged = self.staged_path(&s.text_key);
        let (embeds, shape) = store::read_staged(&staged)?
            .ok_or_else(|| Error::file(&staged, "the staged embeddings disappeared; run again"))?;
        out.push(store::Tensor { name: "prompt_embeds".into(), shape: shape.to_vec(), data: embeds });
        for (k, (path, size)) in s.entry.edit_images.iter().zip(&s.refs).enumerate() {
            let resized = resize_lanczos(&load_rgb(path)?, size.width, size.height)?;
            out.push(self.latents(vae, &format!("ref_latents.{k}"), &resized)?);
        }
        Ok(out)
    }

    /// `(vae.encode(2·px/255 − 1).latent_dist.mode() − mean) / std` as [z, h/f, w/f].
    fn latents(&self, vae: &mut Vae, name: &str, px: &::image::RgbImage) -> Result<store::Tensor> {
        let (h, w) = (px.height() as usize, px.width() as usize);
        let (mut z, _) = vae.encode_with(&vae_input(px), h, w, self.o.tiling)?;
        normalize_latents(&vae.config, &mut z);
        let f = vae.spatial_factor();
        let shape = vec![vae.config.z_dim, h / f, w / f];
        check_finite(name, &z, &shape, "; nothing was written for this sample")?;
        Ok(store::Tensor { name: name.to_string(), shape, data: z })
    }
}
