//! The inputs of one forward call, as `wgdit forward --inputs` reads them (issue 3 §4):
//! `hidden_states` [B, S_img, in_channels], `encoder_hidden_states` [B, S_txt, joint_attention_dim],
//! optional `encoder_hidden_states_mask` [B, S_txt] (nonzero = valid), `timestep` [B] (σ in [0, 1]),
//! `img_shapes` [N_images, 3] (frames, h, w in patch units; target first).

use crate::error::{Error, Result};
use crate::models::qwen_image::dit::ForwardShape;
use crate::models::qwen_image::DitConfig;
use crate::outputs::check_finite;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct ForwardInputs {
    pub batch: usize,
    pub hidden: Vec<f32>,
    pub text: Vec<f32>,
    pub s_txt: usize,
    pub mask: Option<Vec<f32>>,
    pub timestep: Vec<f32>,
    pub img_shapes: Vec<[usize; 3]>,
}

impl ForwardInputs {
    /// The graph shape these inputs need.
    pub fn shape(&self) -> ForwardShape {
        ForwardShape {
            batch: self.batch,
            s_txt: self.s_txt,
            img_shapes: self.img_shapes.clone(),
            masked: self.mask.is_some(),
        }
    }

    /// Reads and validates an inputs file against `cfg`.
    pub fn from_file(path: &Path, cfg: &DitConfig) -> Result<ForwardInputs> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
        ForwardInputs::from_safetensors(&st, cfg).map_err(|e| Error::file(path, e.to_string()))
    }

    pub fn from_safetensors(st: &SafeTensors, cfg: &DitConfig) -> Result<ForwardInputs> {
        let (hs_shape, hidden) = floats(st, "hidden_states")?;
        let (eh_shape, text) = floats(st, "encoder_hidden_states")?;
        let (t_shape, timestep) = floats(st, "timestep")?;
        let (is_shape, shapes) = ints(st, "img_shapes")?;
        expect_rank("hidden_states", &hs_shape, 3)?;
        expect_rank("encoder_hidden_states", &eh_shape, 3)?;
        let (b, s_img, c) = (hs_shape[0], hs_shape[1], hs_shape[2]);
        let s_txt = eh_shape[1];
        if c != cfg.in_channels {
            return Err(Error::input(format!(
                "hidden_states has {c} channels but the model's in_channels is {}",
                cfg.in_channels
            )));
        }
        if eh_shape[0] != b || eh_shape[2] != cfg.joint_attention_dim {
            return Err(Error::input(format!(
                "encoder_hidden_states is {eh_shape:?}; expected [{b}, S_txt, {}] (batch of hidden_states, joint_attention_dim)",
                cfg.joint_attention_dim
            )));
        }
        if t_shape != [b] {
            return Err(Error::input(format!("timestep is {t_shape:?}; expected [{b}] (one σ per sample)")));
        }
        if is_shape.len() != 2 || is_shape[1] != 3 || is_shape[0] == 0 {
            return Err(Error::input(format!(
                "img_shapes is {is_shape:?}; expected [N_images, 3] (frames, h, w per image)"
            )));
        }
        let img_shapes: Vec<[usize; 3]> = shapes
            .chunks(3)
            .map(|c| {
                let side = |v: i64| usize::try_from(v).ok().filter(|&v| v > 0);
                match (side(c[0]), side(c[1]), side(c[2])) {
                    (Some(f), Some(h), Some(w)) => Ok([f, h, w]),
                    _ => Err(Error::input(format!("img_shapes entry {c:?} has a non-positive size"))),
                }
            })
            .collect::<Result<_>>()?;
        let shape = ForwardShape { batch: b, s_txt, img_shapes: img_shapes.clone(), masked: false };
        shape.check()?;
        let tokens = shape.s_img();
        if tokens != s_img {
            return Err(Error::input(format!(
                "img_shapes {img_shapes:?} describe {tokens} image tokens but hidden_states has {s_img}"
            )));
        }
        check_finite("hidden_states", &hidden, &hs_shape, "")?;
        check_finite("encoder_hidden_states", &text, &eh_shape, "")?;
        check_finite("timestep", &timestep, &t_shape, "")?;
        let mask = mask(st, b, s_txt)?;
        Ok(ForwardInputs { batch: b, hidden, text, s_txt, mask, timestep, img_shapes })
    }
}

fn expect_rank(name: &str, shape: &[usize], rank: usize) -> Result<()> {
    if shape.len() != rank {
        return Err(Error::input(format!("{name} has shape {shape:?}; expected {rank} dimensions")));
    }
    Ok(())
}

pub(crate) fn get<'a>(st: &'a SafeTensors, name: &str) -> Result<safetensors::tensor::TensorView<'a>> {
    st.tensor(name).map_err(|_| {
        let have: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        Error::input(format!("tensor `{name}` missing (the file has: {})", have.join(", ")))
    })
}

/// A float tensor (f32, f16 or bf16) as f32.
pub(crate) fn floats(st: &SafeTensors, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let t = get(st, name)?;
    let dt = match t.dtype() {
        Dtype::F32 => crate::tensor::DType::F32,
        Dtype::F16 => crate::tensor::DType::F16,
        Dtype::BF16 => crate::tensor::DType::BF16,
        other => return Err(Error::input(format!("tensor `{name}` is {other:?}; expected f32 (or f16/bf16)"))),
    };
    Ok((t.shape().to_vec(), dt.decode(t.data())))
}

/// An integer tensor (i64, i32, u8) or a float tensor of integral values, as i64.
pub(crate) fn ints(st: &SafeTensors, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
    let t = get(st, name)?;
    let d = t.data();
    let v: Vec<i64> = match t.dtype() {
        Dtype::I64 => {
            d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("cannot fail: 8 bytes"))).collect()
        }
        Dtype::I32 => {
            d.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("cannot fail: 4 bytes")) as i64).collect()
        }
        Dtype::U8 | Dtype::BOOL => d.iter().map(|&b| b as i64).collect(),
        Dtype::F32 => floats(st, name)?.1.iter().map(|&f| f as i64).collect(),
        other => return Err(Error::input(format!("tensor `{name}` is {other:?}; expected i64, i32, u8 or f32"))),
    };
    Ok((t.shape().to_vec(), v))
}

/// The optional key mask as f32 1/0 (nonzero = valid).
fn mask(st: &SafeTensors, b: usize, s_txt: usize) -> Result<Option<Vec<f32>>> {
    const NAME: &str = "encoder_hidden_states_mask";
    if st.tensor(NAME).is_err() {
        return Ok(None);
    }
    let t = get(st, NAME)?;
    if t.shape() != [b, s_txt] {
        return Err(Error::input(format!("{NAME} is {:?}; expected [{b}, {s_txt}] (batch, text tokens)", t.shape())));
    }
    let v: Vec<f32> = match t.dtype() {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => floats(st, NAME)?.1.iter().map(|&x| (x != 0.0) as u8 as f32).collect(),
        _ => ints(st, NAME)?.1.iter().map(|&x| (x != 0) as u8 as f32).collect(),
    };
    Ok(Some(v))
}
