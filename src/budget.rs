//! Memory budgets: how much host RAM and device memory a request may plan for, and the check that
//! refuses a plan that does not fit before anything is allocated.
//!
//! Device memory is what the adapter reports (`gpu::Gpu::device_memory`: Vulkan's device-local
//! heaps; other backends report nothing, and then only the driver's own out-of-memory error
//! remains) or `WGDIT_VRAM_BUDGET`; host memory is `MemAvailable` of /proc/meminfo (Linux) or
//! `WGDIT_RAM_BUDGET`. Sizes are written `123`, `64K`, `512M`, `16G`, `1.5GiB` (powers of 1024).

use crate::error::{Error, Result};

/// Environment override of the device memory wgdit may use.
pub const VRAM_ENV: &str = "WGDIT_VRAM_BUDGET";
/// Environment override of the host memory wgdit may use.
pub const RAM_ENV: &str = "WGDIT_RAM_BUDGET";

/// Parses a byte size: a number with an optional K/M/G/T suffix (binary units; `B`, `iB` allowed).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let bad = || Error::input(format!("`{s}` is not a size: write e.g. 800M, 16G or 1.5GiB"));
    let digits = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.trim_end_matches('b').trim_end_matches('i');
    let scale = match unit {
        "" => 1u64,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// `bytes` as a short human size (`1.5 GiB`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A budget read from the environment variable `var`, if set.
pub fn env_budget(var: &str) -> Result<Option<u64>> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => parse_size(&v).map(Some).map_err(|e| Error::input(format!("{var}: {e}"))),
        _ => Ok(None),
    }
}

/// The host memory a request may use now, and where that figure comes from.
pub fn host_available() -> Result<Option<(u64, &'static str)>> {
    if let Some(b) = env_budget(RAM_ENV)? {
        return Ok(Some((b, RAM_ENV)));
    }
    Ok(meminfo_available().map(|b| (b, "MemAvailable in /proc/meminfo")))
}

fn meminfo_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text)
}

/// `MemAvailable` of a /proc/meminfo text, in bytes.
fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses a plan of `need` host bytes for `what` when more than the available host memory;
/// `advice` says what to change.
pub fn check_host(need: u64, what: &str, advice: &str) -> Result<()> {
    let Some((have, source)) = host_available()? else { return Ok(()) };
    if need > have {
        return Err(Error::OverBudget(format!(
            "{what} needs {} of host memory but only {} is available ({source}); {advice}",
            human(need),
            human(have)
        )));
    }
    Ok(())
}

/// The error for a device plan that does not fit (see `gpu::Gpu::check_device_fits`).
pub fn device_error(what: &str, need: u64, held: u64, total: u64, source: &str, advice: &str) -> Error {
    Error::OverBudget(format!(
        "{what} needs {} of device memory, but the adapter has {} ({source}) and wgdit already \
         holds {} of it, leaving {}; {advice}",
        human(need),
        human(total),
        human(held),
        human(total.saturating_sub(held))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units_and_bad_sizes_are_refused() {
        assert_eq!(parse_size("123").unwrap(), 123);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("16G").unwrap(), 16 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size(" 2 gb ").unwrap(), 2 << 30);
        for bad in ["", "G", "-1G", "1X", "nanG", "1e400", "1..2M"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn meminfo_available_is_read_in_kib() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_meminfo(text), Some(2048 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn human_sizes_use_binary_units() {
        assert_eq!(human(12), "12 B");
        assert_eq!(human(3 << 29), "1.5 GiB");
    }
}
