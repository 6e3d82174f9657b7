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
