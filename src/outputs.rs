//! Output safety shared by every command (docs/reliability.md):
//! - [`check_outputs`]: an output never replaces an input — same file by device + inode (so the
//!   same path, `..`, symlinks and hard links all count), and for folder inputs (diffusers and
//!   pipeline folders, datasets, checkpoints) no output may replace a file inside them;
//! - [`remove_stale_temps`]: `<name>.tmp-<pid>` temporaries left by processes that no longer run
//!   are removed before a new `<name>` is written;
//! - [`RunLock`]: a training output folder belongs to one run at a time (`.wgdit-train.lock`).

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Folder inputs are walked this deep (a pipeline folder is 2 levels) and up to this many entries.
const WALK_DEPTH: usize = 6;
const WALK_ENTRIES: usize = 200_000;

/// Refuses, before anything is read, an output that is one of the inputs or would replace a file
/// inside a folder input. An output folder inside an input folder is allowed (its own files are
/// not inputs); an output folder that is an input folder is not. Outputs that do not exist yet
/// replace nothing.
pub fn check_outputs(inputs: &[&Path], outputs: &[&Path]) -> Result<()> {
    let out_dirs: Vec<FileId> = outputs.iter().filter(|o| o.is_dir()).filter_map(|o| file_id(o)).collect();
    for out in outputs {
        let Some(oid) = file_id(out) else { continue };
        for input in inputs {
            let Some(iid) = file_id(input) else { continue };
            if oid == iid {
                return Err(Error::input(format!(
                    "output {} is the input {} (inputs are never overwritten; choose another output)",
                    out.display(),
                    input.display()
                )));
            }
            if input.is_dir() && out.is_file() {
                if let Some(hit) = find_in_folder(input, oid, &out_dirs) {
                    let what =
                        if hit == **out { String::new() } else { format!(" (the same file as {})", hit.display()) };
                    return Err(Error::input(format!(
                        "output {}{what} is a file of the input folder {} (inputs are never overwritten; choose another output)",
                        out.display(),
                        input.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(unix)]
type FileId = (u64, u64);
#[cfg(not(unix))]
type FileId = PathBuf;

/// Device and inode (following symlinks); elsewhere the canonical path.
#[cfg(unix)]
fn file_id(p: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}
#[cfg(not(unix))]
fn file_id(p: &Path) -> Option<FileId> {
    std::fs::canonicalize(p).ok()
}

/// The path of a file with id `target` inside `dir` (not descending into output folders).
fn find_in_folder(dir: &Path, target: FileId, skip: &[FileId]) -> Option<PathBuf> {
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    let mut seen = 0usize;
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.filter_map(|e| e.ok()) {
            seen += 1;
            if seen > WALK_ENTRIES {
                return None;
            }
            let p = e.path();
            let Some(id) = file_id(&p) else { continue };
            if p.is_dir() {
                if depth + 1 < WALK_DEPTH && !skip.contains(&id) {
                    stack.push((p, depth + 1));
                }
            } else if id == target {
                return Some(p);
            }
        }
    }
    None
}

/// Whether process `pid` still runs (`/proc/<pid>` on Linux). Elsewhere every process counts as
/// running, so nothing is ever taken over or removed.
pub fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Removes the temporaries of `dest` whose writer no longer runs: `<name>.tmp-<pid>` (files and
/// folders of `TempOutput`) and `.<name>.<pid>-<n>.tmp` (images); each removal is said on stderr.
pub fn remove_stale_temps(dest: &Path) {
    let (Some(name), Some(dir)) = (dest.file_name().and_then(|n| n.to_str()), dest.parent()) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.filter_map(|e| e.ok()) {
        let entry = e.file_name();
        let Some(pid) = entry.to_str().and_then(|n| temp_pid(n, name)) else { continue };
        if pid_alive(pid) {
            continue;
        }
        let p = e.path();
        let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        if removed.is_ok() {
            eprintln!("note: removed {}, a temporary left by process {pid} (no longer running)", p.display());
        }
    }
}

/// The writer's pid when `entry` is a temporary of `name`.
fn temp_pid(entry: &str, name: &str) -> Option<u32> {
    if let Some(pid) = entry.strip_prefix(name).and_then(|r| r.strip_prefix(".tmp-")) {
        return pid.parse().ok();
    }
    let mid = entry.strip_prefix('.')?.strip_prefix(name)?.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (pid, n) = mid.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Refuses values with NaN or ±Inf: how many, and where the first is (index and coordinates in
/// `shape`, row-major). `what` names the tensor; `hint` says what to do.
pub fn check_finite(what: &str, values: &[f32], shape: &[usize], hint: &str) -> Result<()> {
    let Some(first) = values.iter().position(|v| !v.is_finite()) else { return Ok(()) };
    let n = values[first..].iter().filter(|v| !v.is_finite()).count();
    let mut at = Vec::with_capacity(shape.len());
    let mut rest = first;
    for &d in shape.iter().rev() {
        at.push(rest % d.max(1));
        rest /= d.max(1);
    }
    at.reverse();
    Err(Error::input(format!(
        "{what} has {n} non-finite value(s) (NaN or Inf) of {}; the first is {} at index {first} {at:?}{hint}",
        values.len(),
        values[first]
    )))
}

/// The hint of an output refused for non-finite values.
pub const NONFINITE_OUTPUT_HINT: &str = "; nothing was written (pass --allow-nonfinite to write it anyway)";

/// The lock file of a training output folder.
pub const LOCK_FILE: &str = ".wgdit-train.lock";

/// Ownership of a run folder: `<dir>/.wgdit-train.lock` holds the owner's pid; it is created at
/// start, removed on drop, and taken over when its process no longer runs.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of `dir` (which must exist); refuses a folder owned by a running process.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        use std::io::Write;
        let path = dir.join(LOCK_FILE);
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(|e| Error::io(&path, e))?;
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    match text.trim().parse::<u32>() {
                        Ok(pid) if pid_alive(pid) => {
                            return Err(Error::input(format!(
                                "output folder {} is in use by another training run (pid {pid}, lock {}); wait for it or choose another --output (if that run is gone, delete the lock file)",
                                dir.display(),
                                path.display()
                            )))
                        }
                        _ => {
                            eprintln!("note: taking over {} (its process no longer runs)", path.display());
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::input(format!("could not take the lock {} (another run raced for it)", path.display())))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wgdit-outputs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn outputs_that_resolve_to_an_input_are_refused_by_path_dotdot_symlink_and_hard_link() {
        let d = dir("clobber");
        let input = d.join("model.safetensors");
        std::fs::write(&input, b"weights").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        let dotdot = d.join("sub/../model.safetensors");
        std::fs::hard_link(&input, d.join("hard")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&input, d.join("soft")).unwrap();
        for out in [input.clone(), dotdot, d.join("hard"), d.join("soft")] {
            let e = check_outputs(&[&input], &[&out]).unwrap_err().to_string();
            assert!(e.contains("is the input") && e.contains("model.safetensors"), "{e}");
        }
        assert!(check_outputs(&[&input], &[&d.join("new.safetensors")]).is_ok());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn outputs_replacing_a_file_of_a_folder_input_are_refused_but_new_files_and_subfolders_are_not() {
        let d = dir("folder");
        std::fs::create_dir_all(d.join("model/transformer")).unwrap();
        let w = d.join("model/transformer/w.safetensors");
        std::fs::write(&w, b"w").unwrap();
        let model = d.join("model");
        let e = check_outputs(&[&model], &[&w]).unwrap_err().to_string();
        assert!(e.contains("a file of the input folder"), "{e}");
        std::fs::hard_link(&w, d.join("outside")).unwrap();
        assert!(check_outputs(&[&model], &[&d.join("outside")]).is_err(), "a hard link into the folder");
        assert!(check_outputs(&[&model], &[&model]).is_err(), "the folder itself");
        assert!(check_outputs(&[&model], &[&model.join("new.safetensors")]).is_ok());
        // An output folder inside the input: its own files are outputs, not inputs.
        let run = model.join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join("lora.safetensors"), b"old").unwrap();
        assert!(check_outputs(&[&model], &[&run, &run.join("lora.safetensors")]).is_ok());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn non_finite_values_are_counted_and_the_first_located() {
        let mut v = vec![0f32; 24];
        (v[7], v[20]) = (f32::NAN, f32::INFINITY);
        let e = check_finite("output", &v, &[2, 3, 4], "").unwrap_err().to_string();
        assert!(e.contains("2 non-finite") && e.contains("index 7 [0, 1, 3]") && e.contains("NaN"), "{e}");
        assert!(check_finite("output", &[1.0, -2.0], &[2], "").is_ok());
    }

    #[test]
    fn stale_temporaries_are_removed_and_live_ones_kept() {
        let d = dir("stale");
        let dest = d.join("out.safetensors");
        // pid 0x7fff_fff0 is above Linux's pid_max: never running.
        let dead = d.join(format!("out.safetensors.tmp-{}", 0x7fff_fff0u32));
        let dead_dir = d.join(format!("ckpt.tmp-{}", 0x7fff_fff0u32));
        let live = d.join(format!("out.safetensors.tmp-{}", std::process::id()));
        let img = d.join(format!(".out.safetensors.{}-3.tmp", 0x7fff_fff0u32));
        let other = d.join("out.safetensors.tmp-notapid");
        for p in [&dead, &live, &img, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        std::fs::create_dir(&dead_dir).unwrap();
        remove_stale_temps(&dest);
        remove_stale_temps(&d.join("ckpt"));
        if cfg!(target_os = "linux") {
            assert!(!dead.exists() && !img.exists() && !dead_dir.exists());
        }
        assert!(live.exists() && other.exists());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_run_lock_refuses_a_live_owner_takes_over_a_dead_one_and_is_released_on_drop() {
        let d = dir("lock");
        let lock = RunLock::acquire(&d).unwrap();
        let e = RunLock::acquire(&d).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(lock);
        assert!(!d.join(LOCK_FILE).exists());
        if cfg!(target_os = "linux") {
            std::fs::write(d.join(LOCK_FILE), format!("{}\n", 0x7fff_fff0u32)).unwrap();
            let taken = RunLock::acquire(&d).unwrap();
            let pid: u32 = std::fs::read_to_string(d.join(LOCK_FILE)).unwrap().trim().parse().unwrap();
            assert_eq!(pid, std::process::id());
            drop(taken);
        }
        std::fs::remove_dir_all(&d).ok();
    }
}
