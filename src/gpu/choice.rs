//! Which kernel family runs the GEMMs and attention on this device, and in which precision
//! (`--kernels auto|portable|f16|coop|coop-emulated`, `--precision auto|f32|mixed`; env
//! `WGDIT_KERNELS`, `WGDIT_PRECISION`). Resolved once when the device opens, from the adapter's
//! features, its cooperative-matrix configurations and its subgroup sizes; `wgdit devices` and
//! `wgdit bench kernels` print the result and the reason.
//!
//! Families (docs/kernels.md):
//! - `portable`: the f32 SIMT kernels (`gemm`/`gemm_tiled`, the one-row-per-invocation flash
//!   attention); run everywhere; the only family of `--precision f32`.
//! - `coop`: the tile programs (`shaders/gemm/gemm_coop.wgsl`, `shaders/attention/flash*.wgsl`) on
//!   real cooperative matrices, f16 operands and f32 accumulators; needs
//!   `EXPERIMENTAL_COOPERATIVE_MATRIX` with an f16 × f16 → f32 configuration of 16×16×16 (Vulkan) or
//!   8×8×8 (Metal), and a fixed subgroup size (the tile layout counts subgroups).
//! - `f16`: the same tile programs with the matrix operations done by SIMT lanes on f16 operands
//!   in workgroup memory (`SHADER_F16`, no cooperative matrices); `--precision mixed` picks it on
//!   such devices, `auto` keeps them on `portable` (see `resolve`).
//! - `coop-emulated`: the same tile programs with the matrix operations emulated on f32 values
//!   rounded to f16: runs on any adapter and computes what `coop` computes (up to summation order);
//!   CI runs every coop index computation, epilogue and edge case through it on lavapipe.

use crate::error::{Error, Result};

/// A kernel family (`--kernels`; `None` in a request is `auto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Portable,
    F16,
    Coop,
    CoopEmulated,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Portable, Family::F16, Family::Coop, Family::CoopEmulated];

    pub fn name(self) -> &'static str {
        match self {
            Family::Portable => "portable",
            Family::F16 => "f16",
            Family::Coop => "coop",
            Family::CoopEmulated => "coop-emulated",
        }
    }

    /// Whether the family's GEMM and attention take f16 operands (`--precision mixed`).
    pub fn is_mixed(self) -> bool {
        self != Family::Portable
    }
}

/// `--kernels` / `WGDIT_KERNELS`: `auto` or one family.
pub fn parse_kernels(s: &str) -> Result<Option<Family>> {
    match s.to_ascii_lowercase().as_str() {
        "auto" => Ok(None),
        "portable" => Ok(Some(Family::Portable)),
        "f16" => Ok(Some(Family::F16)),
        "coop" => Ok(Some(Family::Coop)),
        "coop-emulated" | "coop_emulated" => Ok(Some(Family::CoopEmulated)),
        other => {
            Err(Error::input(format!("unknown kernels `{other}`: use one of auto, portable, f16, coop, coop-emulated")))
        }
    }
}

/// Operand precision of the GEMMs and attention. Accumulation, the residual stream, norms and
/// every stored activation stay f32 in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    F32,
    /// f16 operands (activations scaled per row by a power of two before rounding, so no row
    /// overflows f16), f32 accumulation.
    Mixed,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Mixed => "mixed",
        }
    }
}

/// `--precision` / `WGDIT_PRECISION`: `auto` (`None`), `f32` or `mixed`.
pub fn parse_precision(s: &str) -> Result<Option<Precision>> {
    match s.to_ascii_lowercase().as_str() {
        "auto" => Ok(None),
        "f32" => Ok(Some(Precision::F32)),
        "mixed" => Ok(Some(Precision::Mixed)),
        other => Err(Error::input(format!("unknown precision `{other}`: use one of auto, f32, mixed"))),
    }
}

/// One cooperative-matrix configuration the adapter reports (`M×N×K`, operand → accumulator type).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CoopConfig {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub ab: String,
    pub c: String,
}

/// What the adapter offers the tile programs.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CoopSupport {
    /// The adapter has `EXPERIMENTAL_COOPERATIVE_MATRIX`.
    pub feature: bool,
    pub configs: Vec<CoopConfig>,
    /// Subgroup size range (`subgroup_min_size`, `subgroup_max_size`).
    pub subgroup_sizes: (u32, u32),
}

impl CoopSupport {
    /// The fragment size the real coop tile program uses here (16, else Metal's 8), or why none.
    pub fn frag(&self) -> std::result::Result<u32, String> {
        if !self.feature {
            return Err("the adapter has no cooperative matrices (EXPERIMENTAL_COOPERATIVE_MATRIX)".into());
        }
        let has =
            |s: u32| self.configs.iter().any(|c| c.m == s && c.n == s && c.k == s && c.ab == "f16" && c.c == "f32");
        let frag = if has(16) {
            16
        } else if has(8) {
            8
        } else {
            return Err(format!(
                "no f16 x f16 -> f32 configuration of 16x16x16 or 8x8x8 among {:?}",
                self.configs.iter().map(|c| format!("{}x{}x{} {}->{}", c.m, c.n, c.k, c.ab, c.c)).collect::<Vec<_>>()
            ));
        };
        let (lo, hi) = self.subgroup_sizes;
        if lo != hi || lo == 0 {
            return Err(format!("the subgroup size is not fixed ({lo}..{hi}); the coop tile layout counts subgroups"));
        }
        Ok(frag)
    }
}

/// The resolved choice for one device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KernelChoice {
    pub family: Family,
    pub precision: Precision,
    /// Fragment edge of the tile programs: 16, or 8 for real coop on Metal.
    pub frag: u32,
    /// Invocations per subgroup the tile programs are laid out for (32 when emulated).
    pub lanes: u32,
    /// Why this family (printed by `wgdit devices`).
    pub reason: String,
}

/// What the device offers the choice (from `Caps`, the adapter type and `CoopSupport`).
#[derive(Clone, Debug)]
pub struct Offer<'a> {
    pub shader_f16: bool,
    pub is_cpu: bool,
    pub coop: &'a CoopSupport,
}

/// Lanes of an emulated subgroup: the emulation owns 8 (16×16) or 2 (8×8) elements per lane.
pub const EMULATED_LANES: u32 = 32;

/// Resolves `--kernels` and `--precision` for a device; a forced family the device cannot run is
/// an error (except `coop-emulated`, which runs anywhere).
pub fn resolve(kernels: Option<Family>, precision: Option<Precision>, offer: &Offer) -> Result<KernelChoice> {
    let coop = offer.coop.frag();
    let pick = |family: Family, precision: Precision, reason: String| {
        let (frag, lanes) = match (family, &coop) {
            (Family::Coop, Ok(f)) => (*f, offer.coop.subgroup_sizes.0),
            _ => (16, EMULATED_LANES),
        };
        KernelChoice { family, precision, frag, lanes, reason }
    };
    let need_mixed = |f: Family| -> Result<()> {
        if precision == Some(Precision::F32) {
            return Err(Error::input(format!(
                "--kernels {} takes f16 operands; use --precision mixed (or auto), or --kernels portable for f32",
                f.name()
            )));
        }
        Ok(())
    };
    match kernels {
        Some(Family::Portable) => {
            if precision == Some(Precision::Mixed) {
                return Err(Error::input(
                    "--kernels portable computes in f32; use --precision f32 (or auto), or another family for mixed",
                ));
            }
            Ok(pick(Family::Portable, Precision::F32, "forced by --kernels portable".into()))
        }
        Some(Family::Coop) => {
            need_mixed(Family::Coop)?;
            match &coop {
                Ok(_) => Ok(pick(Family::Coop, Precision::Mixed, "forced by --kernels coop".into())),
                Err(why) => Err(Error::input(format!(
                    "--kernels coop: {why}; use --kernels f16 or coop-emulated (runs anywhere)"
                ))),
            }
        }
        Some(Family::F16) => {
            need_mixed(Family::F16)?;
            if !offer.shader_f16 {
                return Err(Error::input(
                    "--kernels f16: the adapter has no SHADER_F16; use --kernels coop-emulated or portable",
                ));
            }
            Ok(pick(Family::F16, Precision::Mixed, "forced by --kernels f16".into()))
        }
        Some(Family::CoopEmulated) => {
            need_mixed(Family::CoopEmulated)?;
            Ok(pick(Family::CoopEmulated, Precision::Mixed, "forced by --kernels coop-emulated".into()))
        }
        None => {
            let mixed = match precision {
                Some(p) => p == Precision::Mixed,
                // f16 buys nothing on a CPU adapter (lavapipe computes f16 through f32); without
                // cooperative matrices the f16 SIMT tile program reads workgroup memory once per
                // FMA where `gemm_tiled` reads once per 8 (docs/kernels.md): f32 stays the default
                // until a GPU measurement says otherwise.
                None => !offer.is_cpu && coop.is_ok(),
            };
            if !mixed {
                let why = match (&precision, &coop) {
                    (Some(_), _) => "--precision f32".to_string(),
                    (None, _) if offer.is_cpu => "a CPU adapter: f16 operands buy nothing there".to_string(),
                    (None, Err(why)) => format!("{why}; --precision mixed runs the f16 tile programs"),
                    (None, Ok(_)) => unreachable!("mixed above"),
                };
                return Ok(pick(Family::Portable, Precision::F32, format!("auto: {why}")));
            }
            Ok(match &coop {
                Ok(f) => {
                    pick(Family::Coop, Precision::Mixed, format!("auto: cooperative matrices {f}x{f}x{f} f16->f32"))
                }
                Err(why) if offer.shader_f16 => {
                    pick(Family::F16, Precision::Mixed, format!("--precision mixed: SHADER_F16 ({why})"))
                }
                Err(why) => pick(
                    Family::CoopEmulated,
                    Precision::Mixed,
                    format!("--precision mixed without f16 hardware ({why})"),
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coop16() -> CoopSupport {
        let c = CoopConfig { m: 16, n: 16, k: 16, ab: "f16".into(), c: "f32".into() };
        CoopSupport { feature: true, configs: vec![c], subgroup_sizes: (32, 32) }
    }

    #[test]
    fn auto_picks_coop_on_a_gpu_with_cooperative_matrices_and_portable_on_a_cpu_adapter() {
        let c = coop16();
        let gpu = Offer { shader_f16: true, is_cpu: false, coop: &c };
        let got = resolve(None, None, &gpu).unwrap();
        assert_eq!((got.family, got.precision, got.frag, got.lanes), (Family::Coop, Precision::Mixed, 16, 32));
        let none = CoopSupport::default();
        let cpu = Offer { shader_f16: true, is_cpu: true, coop: &none };
        assert_eq!(resolve(None, None, &cpu).unwrap().family, Family::Portable);
        assert_eq!(resolve(None, Some(Precision::Mixed), &cpu).unwrap().family, Family::F16);
        let bare = Offer { shader_f16: false, is_cpu: false, coop: &none };
        assert_eq!(resolve(None, None, &bare).unwrap().family, Family::Portable);
        let f16_only = Offer { shader_f16: true, is_cpu: false, coop: &none };
        assert_eq!(resolve(None, None, &f16_only).unwrap().family, Family::Portable);
        assert_eq!(resolve(None, Some(Precision::Mixed), &f16_only).unwrap().family, Family::F16);
        assert_eq!(resolve(None, Some(Precision::Mixed), &bare).unwrap().family, Family::CoopEmulated);
    }

    #[test]
    fn a_forced_family_the_device_cannot_run_is_an_error_except_coop_emulated() {
        let none = CoopSupport::default();
        let cpu = Offer { shader_f16: false, is_cpu: true, coop: &none };
        let e = resolve(Some(Family::Coop), None, &cpu).unwrap_err().to_string();
        assert!(e.contains("--kernels coop") && e.contains("coop-emulated"), "{e}");
        assert!(resolve(Some(Family::F16), None, &cpu).is_err());
        assert_eq!(resolve(Some(Family::CoopEmulated), None, &cpu).unwrap().precision, Precision::Mixed);
        let e = resolve(Some(Family::CoopEmulated), Some(Precision::F32), &cpu).unwrap_err().to_string();
        assert!(e.contains("--precision mixed"), "{e}");
        assert!(resolve(Some(Family::Portable), Some(Precision::Mixed), &cpu).is_err());
    }

    #[test]
    fn real_coop_needs_a_fixed_subgroup_size_and_metal_gets_8x8_fragments() {
        let mut c = coop16();
        c.subgroup_sizes = (32, 64);
        assert!(c.frag().unwrap_err().contains("not fixed"));
        let metal = CoopSupport {
            feature: true,
            configs: vec![CoopConfig { m: 8, n: 8, k: 8, ab: "f16".into(), c: "f32".into() }],
            subgroup_sizes: (32, 32),
        };
        assert_eq!(metal.frag(), Ok(8));
    }

    #[test]
    fn kernel_and_precision_names_parse() {
        assert_eq!(parse_kernels("coop-emulated").unwrap(), Some(Family::CoopEmulated));
        assert_eq!(parse_kernels("AUTO").unwrap(), None);
        assert!(parse_kernels("cuda").is_err());
        assert_eq!(parse_precision("mixed").unwrap(), Some(Precision::Mixed));
        assert!(parse_precision("bf16").is_err());
        for f in Family::ALL {
            assert_eq!(parse_kernels(f.name()).unwrap(), Some(f));
        }
    }
}
