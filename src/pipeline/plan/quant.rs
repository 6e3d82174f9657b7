//! The dtype of each tensor in a file quantized to a `--weights` type, for `wgdit plan`.

use crate::dtype::DType;
use crate::error::{Error, Result};

/// The `--weights` types.
pub const WEIGHT_TYPES: [DType; 15] = [
    DType::F32,
    DType::BF16,
    DType::F16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q2K,
    DType::Q3K,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
    DType::F8E4M3,
    DType::F8E5M2,
];

/// The `--weights` type of a name (`q4_k`, `bf16`, …).
pub fn weights_type(s: &str) -> Result<DType> {
    DType::from_name(s).filter(|d| WEIGHT_TYPES.contains(d)).ok_or_else(|| {
        let names: Vec<&str> = WEIGHT_TYPES.iter().map(|d| d.name()).collect();
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
    use crate::convert::quantize::KeepRule;

    #[test]
    fn planned_dtypes_follow_the_comfyui_gguf_rules() {
        let t = DType::Q4K;
        assert_eq!(planned_dtype("transformer_blocks.0.attn.to_q.weight", &[3072, 3072], t, &[]), DType::Q4K);
        assert_eq!(planned_dtype("transformer_blocks.0.attn.to_q.bias", &[3072], t, &[]), DType::F32);
        assert_eq!(planned_dtype("small.weight", &[32, 32], t, &[]), DType::F32);
        assert_eq!(planned_dtype("img_in.weight", &[3072, 64], t, &[]), DType::F32);
        assert_eq!(planned_dtype("proj_out.weight", &[64, 3072], t, &[]), DType::F32);
        assert_eq!(planned_dtype("txt_in.weight", &[3072, 3584], t, &[]), DType::F16);
        assert_eq!(planned_dtype("norm_out.linear.weight", &[6144, 3072], t, &[]), DType::F16);
        assert_eq!(
            planned_dtype("time_text_embed.timestep_embedder.linear_1.weight", &[3072, 256], t, &[]),
            DType::F16
        );
        // 256 does not tile 3584·… rows of 100 columns: F16.
        assert_eq!(planned_dtype("x.weight", &[3072, 100], t, &[]), DType::F16);
        assert_eq!(planned_dtype("x.weight", &[3072, 96], DType::Q8_0, &[]), DType::Q8_0);
        // A float target keeps txt_in in that type.
        assert_eq!(planned_dtype("txt_in.weight", &[3072, 3584], DType::BF16, &[]), DType::BF16);
        let keep = [KeepRule::parse("to_v=q6_k").unwrap()];
        assert_eq!(planned_dtype("transformer_blocks.0.attn.to_v.weight", &[3072, 3072], t, &keep), DType::Q6K);
        assert_eq!(weights_type("Q4_K").unwrap(), DType::Q4K);
        assert!(weights_type("f8_e4m3_scaled").is_err());
    }
}
