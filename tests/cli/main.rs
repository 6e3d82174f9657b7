//! The `wgdit` command line: contracts (outputs equal to the references) and clear errors on bad
//! input (non-zero exit, a message naming the problem, no output file).

mod bad_inputs;
mod bench_kernels;
mod fine_tune;
mod forward;
mod generate;
mod plan;
mod text;
mod vae;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the binary; (success, stdout + stderr).
pub fn wgdit(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wgdit")).args(args).env("NODEVICE_SELECT", "1").output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A path under tests/fixtures.
pub fn fixture(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p).display().to_string()
}

/// A per-process temp path.
pub fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wgdit-cli-{}-{name}", std::process::id()))
}

/// The command fails, says `needle`, and leaves no `out`.
#[track_caller]
pub fn assert_refused(args: &[&str], out: &Path, needle: &str) {
    let (ok, log) = wgdit(args);
    assert!(!ok, "expected a failure: {log}");
    assert!(log.contains(needle), "error should mention `{needle}`: {log}");
    assert!(!out.exists(), "no output may be written on failure: {}", out.display());
}
