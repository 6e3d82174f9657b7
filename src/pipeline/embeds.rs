//! Prompt embeddings files (`--prompt-embeds`, `--negative-prompt-embeds`): `prompt_embeds`
//! [1, S, D] f32 (f16/bf16 widened) and `prompt_embeds_mask` [1, S] i64 or i32 (nonzero = valid),
//! as diffusers' `pipeline.encode_prompt` returns them. A negative file may name them
//! `negative_prompt_embeds` / `negative_prompt_embeds_mask` instead (diffusers' argument names).

use super::inputs::{floats, ints};
use crate::error::{Error, Result};
use safetensors::SafeTensors;
use std::path::Path;

/// Largest embeddings file read (a 1024-token prompt of the real model is 14.7 MB).
const MAX_FILE_BYTES: u64 = 1 << 30;

/// One prompt's embeddings as the transformer takes them.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptEmbeds {
    /// [S, D] row-major.
    pub embeds: Vec<f32>,
    pub tokens: usize,
    pub dim: usize,
    /// Per token 1 (valid) or 0; `None` when every token is valid, as diffusers' `encode_prompt`
    /// passes no mask then.
    pub mask: Option<Vec<f32>>,
}

impl PromptEmbeds {
    /// Reads `path`; `negative` also accepts the `negative_prompt_embeds` names (preferred when
    /// both are present). `dim` is the transformer's joint_attention_dim.
    pub fn from_file(path: &Path, dim: usize, negative: bool) -> Result<PromptEmbeds> {
        let bytes = crate::pipeline::folder::read_bounded_bytes(path, MAX_FILE_BYTES)?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
        PromptEmbeds::from_safetensors(&st, dim, negative).map_err(|e| Error::file(path, e.to_string()))
    }

    pub fn from_safetensors(st: &SafeTensors, dim: usize, negative: bool) -> Result<PromptEmbeds> {
        let has = |n: &str| st.names().contains(&n);
        let (name, mask_name) = if negative && has("negative_prompt_embeds") {
            ("negative_prompt_embeds", "negative_prompt_embeds_mask")
        } else {
            ("prompt_embeds", "prompt_embeds_mask")
        };
        let (shape, embeds) = floats(st, name)?;
        if shape.len() != 3 || shape[0] != 1 || shape[1] == 0 {
            return Err(Error::input(format!(
                "{name} is {shape:?}; expected [1, S, {dim}] (one prompt, S ≥ 1 tokens)"
            )));
        }
        if shape[2] != dim {
            return Err(Error::input(format!(
                "{name} has width {} but the transformer's joint_attention_dim is {dim} (embeddings of another model?)",
                shape[2]
            )));
        }
        let tokens = shape[1];
        if embeds.iter().any(|x| !x.is_finite()) {
            return Err(Error::input(format!("{name} holds NaN or infinite values")));
        }
        let mask = if has(mask_name) {
            let (ms, m) = ints(st, mask_name)?;
            if ms != [1, tokens] {
                return Err(Error::input(format!("{mask_name} is {ms:?}; expected [1, {tokens}]")));
            }
            let m: Vec<f32> = m.iter().map(|&v| (v != 0) as u8 as f32).collect();
            if m.iter().all(|&v| v == 0.0) {
                return Err(Error::input(format!("{mask_name} marks no token as valid")));
            }
            Some(m)
        } else {
            None
        };
        Ok(PromptEmbeds { embeds, tokens, dim, mask: mask.filter(|m| m.contains(&0.0)) })
    }

    /// The first `max` tokens (QwenImagePipeline's `max_sequence_length` cut).
    pub fn truncate(&mut self, max: usize) {
        if self.tokens > max {
            self.embeds.truncate(max * self.dim);
            if let Some(m) = &mut self.mask {
                m.truncate(max);
            }
            self.tokens = max;
            self.mask = self.mask.take().filter(|m| m.contains(&0.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::{serialize, tensor::TensorView, Dtype};

    type Entry<'a> = (&'a str, Dtype, Vec<usize>, Vec<u8>);

    fn file(tensors: &[Entry]) -> Vec<u8> {
        let views: Vec<(String, TensorView)> =
            tensors.iter().map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
        serialize(views, None).unwrap()
    }
    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn i64s(v: &[i64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn embeds_with_a_partial_mask_keep_it_and_an_all_ones_mask_becomes_none() {
        let e = f32s(&[0.5; 3 * 4]);
        let b = file(&[
            ("prompt_embeds", Dtype::F32, vec![1, 3, 4], e.clone()),
            ("prompt_embeds_mask", Dtype::I64, vec![1, 3], i64s(&[1, 1, 0])),
        ]);
        let p = PromptEmbeds::from_safetensors(&SafeTensors::deserialize(&b).unwrap(), 4, false).unwrap();
        assert_eq!((p.tokens, p.dim, p.mask), (3, 4, Some(vec![1.0, 1.0, 0.0])));
        let b = file(&[
            ("prompt_embeds", Dtype::F32, vec![1, 3, 4], e.clone()),
            ("prompt_embeds_mask", Dtype::I32, vec![1, 3], [1i32, 1, 1].iter().flat_map(|x| x.to_le_bytes()).collect()),
        ]);
        let mut p = PromptEmbeds::from_safetensors(&SafeTensors::deserialize(&b).unwrap(), 4, false).unwrap();
        assert_eq!(p.mask, None);
        p.truncate(2);
        assert_eq!((p.tokens, p.embeds.len()), (2, 8));
    }

    #[test]
    fn a_negative_file_prefers_the_negative_names() {
        let b = file(&[
            ("prompt_embeds", Dtype::F32, vec![1, 2, 4], f32s(&[1.0; 8])),
            ("negative_prompt_embeds", Dtype::F32, vec![1, 1, 4], f32s(&[2.0; 4])),
        ]);
        let st = SafeTensors::deserialize(&b).unwrap();
        assert_eq!(PromptEmbeds::from_safetensors(&st, 4, true).unwrap().embeds, vec![2.0; 4]);
        assert_eq!(PromptEmbeds::from_safetensors(&st, 4, false).unwrap().tokens, 2);
    }

    #[test]
    fn wrong_width_rank_dtype_mask_and_values_are_errors_naming_the_tensor() {
        let ok_mask = ("prompt_embeds_mask", Dtype::I64, vec![1, 2], i64s(&[1, 1]));
        let cases: Vec<(Vec<Entry>, &str)> = vec![
            (vec![("prompt_embeds", Dtype::F32, vec![1, 2, 5], f32s(&[0.0; 10]))], "joint_attention_dim is 4"),
            (vec![("prompt_embeds", Dtype::F32, vec![2, 4], f32s(&[0.0; 8]))], "expected [1, S, 4]"),
            (vec![("prompt_embeds", Dtype::I32, vec![1, 2, 4], vec![0; 32])], "expected f32"),
            (vec![("other", Dtype::F32, vec![1], f32s(&[0.0]))], "`prompt_embeds` missing"),
            (vec![("prompt_embeds", Dtype::F32, vec![1, 2, 4], f32s(&[f32::NAN; 8])), ok_mask.clone()], "NaN"),
            (
                vec![
                    ("prompt_embeds", Dtype::F32, vec![1, 2, 4], f32s(&[0.0; 8])),
                    ("prompt_embeds_mask", Dtype::I64, vec![1, 3], i64s(&[1, 1, 1])),
                ],
                "expected [1, 2]",
            ),
            (
                vec![
                    ("prompt_embeds", Dtype::F32, vec![1, 2, 4], f32s(&[0.0; 8])),
                    ("prompt_embeds_mask", Dtype::I64, vec![1, 2], i64s(&[0, 0])),
                ],
                "no token as valid",
            ),
        ];
        for (tensors, want) in cases {
            let b = file(&tensors);
            let e = PromptEmbeds::from_safetensors(&SafeTensors::deserialize(&b).unwrap(), 4, false).unwrap_err();
            assert!(e.to_string().contains(want), "got `{e}`, want `{want}`");
        }
        let dir = crate::testing::TempDir::new("embeds");
        let p = dir.path().join("bad.safetensors");
        std::fs::write(&p, b"garbage").unwrap();
        assert!(PromptEmbeds::from_file(&p, 4, false).unwrap_err().to_string().contains("not a valid safetensors"));
    }
}
