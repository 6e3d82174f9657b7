//! Comparison with named, scale-aware tolerances, shared by the unit, integration and parity
//! tests: an element passes when `|got − want| ≤ abs + rel·|want|`, and the whole tensor when its
//! relative L2 error is at most `rel_l2`. NaN anywhere in `got` fails (outputs are poisoned with
//! NaN before a run, so this also proves every element was written).

use crate::gpu::Gpu;
use std::sync::Arc;

#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub abs: f64,
    pub rel: f64,
    pub rel_l2: f64,
}

impl Tol {
    /// f32 accumulation over `k` terms of O(1) values: the rounding error grows like sqrt(k)·eps.
    pub fn f32_dot(k: usize) -> Tol {
        let s = (k.max(1) as f64).sqrt();
        Tol { abs: 2e-6 * s, rel: 1e-5, rel_l2: 1e-5 }
    }
    /// Element-wise f32 math with transcendental functions (exp, tanh, sin/cos), whose GPU
    /// implementations may differ from libm by a few ulp.
    pub const F32_ELEMENTWISE: Tol = Tol { abs: 1e-5, rel: 1e-5, rel_l2: 1e-5 };
}

/// Error statistics of one comparison.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub max_abs: f64,
    pub rel_l2: f64,
    pub worst: usize,
}

/// Relative L2 error and max-abs error of `got` against `want`.
pub fn stats(got: &[f32], want: &[f32]) -> Stats {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let (mut num, mut den, mut max_abs, mut worst) = (0f64, 0f64, 0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w as f64).abs();
        num += d * d;
        den += (w as f64) * (w as f64);
        if d > max_abs || d.is_nan() {
            max_abs = d;
            worst = i;
        }
    }
    Stats { max_abs, rel_l2: (num / den.max(1e-30)).sqrt(), worst }
}

/// Compares and returns the statistics, or a message naming the worst index and the first
/// mismatches.
pub fn compare(name: &str, got: &[f32], want: &[f32], tol: Tol) -> Result<Stats, String> {
    if got.len() != want.len() {
        return Err(format!("{name}: length {} vs expected {}", got.len(), want.len()));
    }
    let s = stats(got, want);
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| {
            let d = (got[i] as f64 - want[i] as f64).abs();
            // NaN fails: a NaN difference is not "within" any tolerance.
            d.is_nan() || d > tol.abs + tol.rel * (want[i] as f64).abs()
        })
        .collect();
    if bad.is_empty() && s.rel_l2 <= tol.rel_l2 {
        return Ok(s);
    }
    let first: Vec<String> = bad.iter().take(8).map(|&i| format!("[{i}] got {} want {}", got[i], want[i])).collect();
    Err(format!(
        "{name}: {} of {} elements outside tolerance {tol:?}; rel_l2 {:.3e}, max_abs {:.3e} at [{}] (got {} want {}); first: {}",
        bad.len(),
        got.len(),
        s.rel_l2,
        s.max_abs,
        s.worst,
        got[s.worst],
        want[s.worst],
        first.join(", ")
    ))
}

/// Panicking form of [`compare`] for tests.
#[track_caller]
pub fn assert_close(name: &str, got: &[f32], want: &[f32], tol: Tol) -> Stats {
    match compare(name, got, want, tol) {
        Ok(s) => s,
        Err(m) => panic!("{m}"),
    }
}

/// The default adapter for tests. Panics (fails the test) when there is none: a CI machine that
/// forgot the Vulkan driver must not look green.
pub fn test_gpu() -> Arc<Gpu> {
    match Gpu::default_adapter() {
        Ok(g) => g,
        Err(e) => {
            panic!("tests need a GPU adapter (lavapipe is enough: apt-get install mesa-vulkan-drivers libvulkan1): {e}")
        }
    }
}

/// A second device on the default adapter whose pipelines are built without wgpu's runtime
/// checks (`GpuOptions::trusted_shaders`), for tests that compare it with [`test_gpu`].
pub fn trusted_test_gpu() -> Arc<Gpu> {
    let opts = crate::gpu::GpuOptions { trusted_shaders: true, ..Default::default() };
    match Gpu::new(&opts) {
        Ok(g) => {
            assert!(g.trusted_shaders(), "GpuOptions::trusted_shaders was not applied");
            g
        }
        Err(e) => panic!("tests need a GPU adapter: {e}"),
    }
}

/// A fresh folder under the system temp dir, removed on drop (tests that write files).
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// `tag` names the test in the folder name; every call gets its own folder.
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("wgdit-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("cannot create a temp folder");
        TempDir(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A committed fixture folder (`tests/fixtures/<rel>`, recursively) with every `<name>.gz`
/// decompressed to `<name>` and the other files copied, in a cache folder under the system temp
/// dir keyed by the files' names and bytes (shared by all tests; built in a temporary folder and
/// renamed, so concurrent tests never see half a folder). The tokenizer and the tiny text encoder
/// are committed compressed (tests/fixtures/text/README.md).
pub fn unpacked_fixture(rel: &str) -> crate::Result<std::path::PathBuf> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel);
    let files = list_files(&src)?;
    let root = std::env::temp_dir().join("wgdit-fixtures");
    let dest = root.join(format!("{}-{:016x}", rel.replace('/', "_"), content_key(&src, &files)?));
    if dest.is_dir() {
        return Ok(dest);
    }
    let tmp = root.join(format!(".{}.{}.tmp", rel.replace('/', "_"), unique_suffix()));
    let _ = std::fs::remove_dir_all(&tmp);
    for f in &files {
        let from = src.join(f);
        let bytes = std::fs::read(&from).map_err(|e| crate::Error::io(&from, e))?;
        let (name, data) = match f.strip_suffix(".gz") {
            Some(stem) => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
                    .map_err(|e| crate::Error::io(&from, e))?;
                (stem.to_string(), out)
            }
            None => (f.clone(), bytes),
        };
        let to = tmp.join(name);
        std::fs::create_dir_all(to.parent().expect("cannot fail: a file under tmp"))
            .map_err(|e| crate::Error::io(&to, e))?;
        std::fs::write(&to, data).map_err(|e| crate::Error::io(&to, e))?;
    }
    // Another test may have won the race: its folder is identical.
    if std::fs::rename(&tmp, &dest).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(dest)
}

/// `<pid>-<n>`, unique per call: concurrent tests (threads of one process too) build their own
/// temporary folder, and the first rename wins.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A hash of `files` (relative to `dir`): names and bytes, so a regenerated fixture gets a new
/// cache folder.
fn content_key(dir: &std::path::Path, files: &[String]) -> crate::Result<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        std::fs::read(dir.join(f)).map_err(|e| crate::Error::io(dir.join(f), e))?.hash(&mut h);
    }
    Ok(h.finish())
}

/// Files under `dir`, as sorted relative paths with `/` separators.
fn list_files(dir: &std::path::Path) -> crate::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| crate::Error::io(&d, e))? {
            let p = e.map_err(|e| crate::Error::io(&d, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("cannot fail: under dir");
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Copies the folder `from` (recursively) to `to`, leaving out the files whose relative path
/// (with `/` separators) starts with `skip`.
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path, skip: Option<&str>) -> crate::Result<()> {
    for f in list_files(from)? {
        if skip.is_some_and(|s| f.starts_with(s)) {
            continue;
        }
        let dest = to.join(&f);
        std::fs::create_dir_all(dest.parent().expect("cannot fail: under `to`"))
            .map_err(|e| crate::Error::io(&dest, e))?;
        std::fs::copy(from.join(&f), &dest).map_err(|e| crate::Error::io(from.join(&f), e))?;
    }
    Ok(())
}

/// A tiny pipeline folder with its text encoder: `tests/fixtures/pipeline/<name>/` plus the
/// unpacked `text/text_encoder/`, `text/tokenizer/` and `processor/` (the tokenizer files + the
/// image processor config), assembled once into the fixture cache (tests/fixtures/text/README.md).
pub fn text_pipeline(name: &str) -> crate::Result<std::path::PathBuf> {
    assemble_pipeline(name, None)
}

/// `text_pipeline(name)` with the VAE of the training proof in place of its random one:
/// `tests/fixtures/train/learn/vae/`, a VAE of the real architecture whose constructed weights make
/// it a colour-faithful 4×4 box filter (tools/gen_learn_fixture.py), so that a picture's colour
/// can be measured after decoding.
pub fn learn_pipeline(name: &str) -> crate::Result<std::path::PathBuf> {
    let vae = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/learn/vae");
    assemble_pipeline(name, Some(&vae))
}

fn assemble_pipeline(name: &str, vae: Option<&std::path::Path>) -> crate::Result<std::path::PathBuf> {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let te = unpacked_fixture("text/text_encoder")?;
    let tok = unpacked_fixture("text/tokenizer")?;
    let src = fixtures.join("pipeline").join(name);
    let processor = fixtures.join("text/processor");
    // Keyed by every source: the pipeline folder, the processor config and the VAE by content,
    // the unpacked encoder and tokenizer by their folder names (which carry their content keys).
    let mut key =
        content_key(&src, &list_files(&src)?)? ^ content_key(&processor, &list_files(&processor)?)?.rotate_left(1);
    if let Some(v) = vae {
        key ^= content_key(v, &list_files(v)?)?.rotate_left(2);
    }
    let name_of = |d: &std::path::Path| d.file_name().expect("cannot fail: a folder").to_string_lossy().into_owned();
    let label = if vae.is_some() { format!("{name}+vae") } else { name.to_string() };
    let dest = te.parent().expect("cannot fail: under the cache").join(format!(
        "pipeline-{label}-{key:016x}-{}-{}",
        name_of(&te),
        name_of(&tok)
    ));
    if dest.is_dir() {
        return Ok(dest);
    }
    let tmp = dest.with_extension(format!("{}.tmp", unique_suffix()));
    let _ = std::fs::remove_dir_all(&tmp);
    copy_tree(&src, &tmp, vae.map(|_| "vae/"))?;
    if let Some(v) = vae {
        copy_tree(v, &tmp.join("vae"), None)?;
    }
    copy_tree(&te, &tmp.join("text_encoder"), None)?;
    copy_tree(&tok, &tmp.join("tokenizer"), None)?;
    copy_tree(&tok, &tmp.join("processor"), None)?;
    let config = processor.join("preprocessor_config.json");
    std::fs::copy(&config, tmp.join("processor/preprocessor_config.json")).map_err(|e| crate::Error::io(&config, e))?;
    if std::fs::rename(&tmp, &dest).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(dest)
}
