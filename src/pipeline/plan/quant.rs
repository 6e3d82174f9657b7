//! The dtype of each tensor in a file quantized to a `--weights` type, for `wgdit plan`.

use crate::dtype::DType;
use crate::error::{Error, Result};

/// The `--weights` types: every dtype a model file holds.
pub fn weight_types() -> impl Iterator<Item = DType> {
    crate::dtype::ALL.into_iter().filter(|d| d.in_files())
}

/// The `--weights` type of a name (`q4_k`, `bf16`, …).
pub fn weights_type(s: &str) -> Result<DType> {
    DType::from_name(s).filter(|d| d.in_files()).ok_or_else(|| {
        let names: Vec<&str> = weight_types().map(|d| d.name()).collect();
        Error::input(format!("--weights {s}: use one of {}", names.join(", ")))
    })
}

/// The dtype tensor `name` of `shape` has in a file that `wgdit quantize` writes for a target
/// type and `--keep` rules (city96's ComfyUI-GGUF rules): 1-D tensors and tensors of at most
/// 1024 elements F32; `img_in.` and `proj_out.` F32; when quantizing `txt_in.`,
/// `time_text_embed.` and `norm_out.` F16; a block type whose blocks do not tile the innermost
/// dimension F16; else the target. The plan uses the quantizer's own rule.
pub use crate::convert::quantize::planned_dtype;

#[cfg(test)]
mod tests {
    use super::*;

    // planned_dtype's rules are tested where they live (convert::quantize).
    #[test]
    fn weights_types_are_the_file_dtypes_by_any_case() {
        assert_eq!(weights_type("Q4_K").unwrap(), DType::Q4K);
        assert!(weights_type("f8_e4m3_scaled").unwrap_err().to_string().contains("f8_e5m2"));
        assert_eq!(weight_types().count(), 15);
    }
}
