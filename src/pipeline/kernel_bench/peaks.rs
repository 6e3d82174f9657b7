//! Published peak throughputs of known devices, matched by adapter-name substring, for the
//! "% of peak" columns of `wgdit bench kernels`. Dense (no sparsity) numbers in TFLOP/s: the f16
//! matrix peak with f32 accumulation (the rate the tile programs can reach: f16 operands, f32
//! accumulators) and the FP32 SIMT peak (the ceiling of the portable f32 kernels).

/// One device's published peaks.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Peak {
    /// The entry's name (what matched).
    pub device: &'static str,
    /// Dense f16 matrix TFLOP/s with f32 accumulation (tensor cores, WMMA; on devices without
    /// matrix units the f16 ALU rate).
    pub f16_tensor: f64,
    /// FP32 SIMT TFLOP/s.
    pub fp32: f64,
    /// Where the numbers come from.
    pub source: &'static str,
}

const fn peak(device: &'static str, f16_tensor: f64, fp32: f64, source: &'static str) -> Peak {
    Peak { device, f16_tensor, fp32, source }
}

const H100: &str = "NVIDIA H100 datasheet (FP16 Tensor 1979/1513 TFLOPS with sparsity, halved)";
const H200: &str = "NVIDIA H200 datasheet (FP16 Tensor 1979/1671 TFLOPS with sparsity, halved)";
const ADA: &str = "NVIDIA Ada Lovelace architecture whitepaper, appendix A (FP16 Tensor with FP32 accumulate)";
const APPLE: &str = "Apple newsroom GPU TFLOPS; no matrix units: simdgroup matrices run on the ALUs at the f32 rate";

/// Ordered: a more specific name comes before the names it contains (`H100 PCIe` before `H100`).
const PEAKS: &[Peak] = &[
    peak("H100 PCIe", 756.0, 51.0, H100),
    peak("H100", 989.5, 67.0, H100), // SXM5
    peak("H200 NVL", 835.5, 60.0, H200),
    peak("H200", 989.5, 67.0, H200), // SXM
    peak("A100", 312.0, 19.5, "NVIDIA A100 datasheet (FP16 Tensor 312 TFLOPS dense, FP32 19.5)"),
    peak("L40S", 362.05, 91.6, "NVIDIA L40S datasheet (FP16 Tensor 362.05 TFLOPS dense, FP32 91.6)"),
    peak("RTX 4090", 165.2, 82.6, ADA),
    peak("RTX 4080", 97.5, 48.7, ADA),
    peak("RTX 3090", 71.0, 35.6, "NVIDIA Ampere GA102 whitepaper (FP16 Tensor with FP32 accumulate)"),
    peak("7900 XTX", 122.8, 61.4, "AMD Radeon RX 7900 XTX specifications (peak FP16 and FP32, dual issue)"),
    peak("Apple M1 Ultra", 21.0, 21.0, APPLE),
    peak("Apple M1 Max", 10.4, 10.4, APPLE),
    peak("Apple M1 Pro", 5.2, 5.2, APPLE),
    peak("Apple M1", 2.6, 2.6, APPLE),
    peak("Apple M2 Ultra", 27.2, 27.2, APPLE),
    peak("Apple M2 Max", 13.6, 13.6, APPLE),
    peak("Apple M2 Pro", 6.8, 6.8, APPLE),
    peak("Apple M2", 3.6, 3.6, APPLE),
];

/// The first entry whose name the adapter name contains (case-insensitive).
pub fn lookup(adapter: &str) -> Option<Peak> {
    let a = adapter.to_ascii_lowercase();
    PEAKS.iter().find(|p| a.contains(&p.device.to_ascii_lowercase())).copied()
}

/// Every entry (docs, `--help`).
pub fn all() -> &'static [Peak] {
    PEAKS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_names_match_the_most_specific_entry() {
        let name = |s: &str| lookup(s).map(|p| p.device);
        assert_eq!(name("NVIDIA H100 PCIe"), Some("H100 PCIe"));
        assert_eq!(name("NVIDIA H100 80GB HBM3"), Some("H100"));
        assert_eq!(name("NVIDIA H200"), Some("H200"));
        assert_eq!(name("NVIDIA GeForce RTX 4090"), Some("RTX 4090"));
        assert_eq!(name("AMD Radeon RX 7900 XTX (RADV NAVI31)"), Some("7900 XTX"));
        assert_eq!(name("Apple M1 Max"), Some("Apple M1 Max"));
        assert_eq!(name("Apple M2"), Some("Apple M2"));
        assert_eq!(name("llvmpipe (LLVM 15.0.7, 256 bits)"), None);
    }

    #[test]
    fn every_entry_is_reachable_by_its_own_name() {
        for p in all() {
            assert_eq!(lookup(p.device).map(|q| q.device), Some(p.device), "{} is shadowed", p.device);
            assert!(p.f16_tensor >= p.fp32 && p.fp32 > 0.0, "{p:?}");
        }
    }
}
