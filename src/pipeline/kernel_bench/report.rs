//! The rows of `wgdit bench kernels` as JSON lines and as a table, and its header.
//!
//! JSON contract (outside tests read these keys; keep the names): `kernel`, `variant`, `shape`,
//! `ms`, `tflops`, `pct_peak` (null when the peak is unknown), plus the details.

use super::cases::Case;
use super::peaks;
use crate::gpu::{Family, Gpu};

/// The peaks a run divides by, TFLOP/s.
#[derive(Clone, Debug, PartialEq)]
pub struct Peaks {
    /// The f16 matrix peak with f32 accumulation (the `pct_peak` column), from `--peak` or the table.
    pub f16_tensor: Option<f64>,
    /// The FP32 SIMT peak (`pct_fp32_peak`), from the table.
    pub fp32: Option<f64>,
    /// Where they come from, for the header.
    pub source: String,
}

impl Peaks {
    pub fn resolve(adapter: &str, peak: Option<f64>) -> Peaks {
        let known = peaks::lookup(adapter);
        let fp32 = known.map(|p| p.fp32);
        match (peak, known) {
            (Some(t), _) => Peaks { f16_tensor: Some(t), fp32, source: "--peak".into() },
            (None, Some(p)) => {
                Peaks { f16_tensor: Some(p.f16_tensor), fp32, source: format!("{}: {}", p.device, p.source) }
            }
            (None, None) => {
                Peaks { f16_tensor: None, fp32: None, source: "unknown device (pass --peak TFLOPS)".into() }
            }
        }
    }
}

/// One measured row and variant (one JSON line).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// `gemm`, `attention_forward` or `attention_backward`.
    pub kernel: &'static str,
    /// The layers it stands for (`dit.img_qkv`).
    pub name: String,
    /// The kernel family (`portable`, `f16`, `coop`, `coop-emulated`).
    pub variant: &'static str,
    pub shape: String,
    pub m: Option<usize>,
    pub n: Option<usize>,
    pub k: Option<usize>,
    pub gelu: Option<bool>,
    /// Joint tokens S of an attention row.
    pub tokens: Option<usize>,
    pub heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub flop: f64,
    pub iters: usize,
    /// Median milliseconds per run.
    pub ms: f64,
    pub tflops: f64,
    /// % of the f16 matrix peak; null when unknown.
    pub pct_peak: Option<f64>,
    /// % of the FP32 SIMT peak; null when unknown.
    pub pct_fp32_peak: Option<f64>,
    /// portable ms / this ms (> 1: faster than portable); null without a portable row.
    pub speedup_vs_portable: Option<f64>,
    /// `gpu-timestamps` or `wall-clock`.
    pub timing: &'static str,
    pub adapter: String,
    pub cpu_adapter: bool,
}

impl Row {
    pub fn new(
        gpu: &Gpu,
        case: &Case,
        variant: Family,
        iters: usize,
        ms: f64,
        timing: &'static str,
        peaks: &Peaks,
    ) -> Row {
        let tflops = case.flop() / (ms * 1e-3) / 1e12;
        let pct = |p: Option<f64>| p.map(|p| 100.0 * tflops / p);
        let (mut m, mut n, mut k, mut gelu, mut tokens, mut heads, mut head_dim) = Default::default();
        match case {
            Case::Gemm(g) => (m, n, k, gelu) = (Some(g.m), Some(g.n), Some(g.k), Some(g.gelu)),
            Case::Attention(a) => {
                (tokens, heads, head_dim) = (Some(a.shape.seq()), Some(a.shape.heads), Some(a.shape.head_dim))
            }
        }
        Row {
            kernel: case.kernel(),
            name: case.name().to_string(),
            variant: variant.name(),
            shape: case.shape(),
            m,
            n,
            k,
            gelu,
            tokens,
            heads,
            head_dim,
            flop: case.flop(),
            iters,
            ms,
            tflops,
            pct_peak: pct(peaks.f16_tensor),
            pct_fp32_peak: pct(peaks.fp32),
            speedup_vs_portable: None,
            timing,
            adapter: gpu.info().name.clone(),
            cpu_adapter: gpu.is_cpu(),
        }
    }
}

/// Sets each row's speed-up against the portable row of the same case (rows of one case).
pub fn fill_ratios(rows: &mut [Row]) {
    let Some(base) = rows.iter().find(|r| r.variant == Family::Portable.name()).map(|r| r.ms) else { return };
    for r in rows {
        r.speedup_vs_portable = Some(base / r.ms);
    }
}

/// Adapter, kernel choice, peaks and, on a CPU adapter, the label that these are not GPU numbers.
pub fn header(gpu: &Gpu, quick: bool, iters: usize, peaks: &Peaks) -> String {
    let info = gpu.info();
    let c = gpu.kernel_choice();
    let timing = if gpu.caps().timestamp_query { "GPU timestamps" } else { "wall clock (no TIMESTAMP_QUERY)" };
    let tf = |p: Option<f64>| p.map_or("-".to_string(), |v| format!("{v} TFLOP/s"));
    let mut s = format!(
        "wgdit bench kernels on {} ({}, {}): {} rows, median of {iters} runs, {timing}\n",
        info.name,
        info.backend,
        info.device_type,
        if quick { "--quick" } else { "full-size" }
    );
    s += &format!("kernel choice: {} / {} ({})\n", c.family.name(), c.precision.name(), c.reason);
    s += &format!("peak: f16 matrix {}, FP32 {} ({})\n", tf(peaks.f16_tensor), tf(peaks.fp32), peaks.source);
    if gpu.is_cpu() {
        s += "CPU ADAPTER: these are CPU-emulated numbers (a software Vulkan driver), not GPU performance.\n";
    }
    s
}

/// The table's column titles.
pub fn table_head() -> String {
    format!(
        "{:<18} {:<22} {:<20} {:<13} {:>9} {:>9} {:>7} {:>7} {:>10}",
        "kernel", "layers", "shape", "variant", "ms", "TFLOP/s", "% peak", "% fp32", "x portable"
    )
}

/// One table line.
pub fn table_line(r: &Row) -> String {
    let opt = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| format!("{v:.d$}"));
    format!(
        "{:<18} {:<22} {:<20} {:<13} {:>9} {:>9} {:>7} {:>7} {:>10}",
        r.kernel,
        r.name,
        r.shape,
        r.variant,
        sig3(r.ms),
        sig3(r.tflops),
        opt(r.pct_peak, 1),
        opt(r.pct_fp32_peak, 1),
        opt(r.speedup_vs_portable, 2),
    )
}

/// Three significant digits (lavapipe's TFLOP/s are around 0.001).
fn sig3(v: f64) -> String {
    if v <= 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (2 - v.log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_device_has_no_peak_unless_given_one() {
        let p = Peaks::resolve("llvmpipe (LLVM 15.0.7, 256 bits)", None);
        assert_eq!((p.f16_tensor, p.fp32), (None, None));
        let p = Peaks::resolve("llvmpipe", Some(1.0));
        assert_eq!((p.f16_tensor, p.fp32), (Some(1.0), None));
        let p = Peaks::resolve("NVIDIA H200", Some(500.0));
        assert_eq!((p.f16_tensor, p.fp32), (Some(500.0), Some(67.0)));
    }

    #[test]
    fn small_numbers_keep_three_significant_digits() {
        assert_eq!(sig3(0.001234), "0.00123");
        assert_eq!(sig3(12.345), "12.3");
        assert_eq!(sig3(1234.4), "1234");
    }
}
