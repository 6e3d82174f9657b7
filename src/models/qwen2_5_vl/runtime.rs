//! Running the language model: the residual stream starts as the embedding rows (gathered on the
//! host), the M-RoPE table is computed on the host, and the decoder layers run either resident
//! (one plan over all layers, every weight uploaded once) or streamed (a plan over one layer;
//! each layer's weights are written into that plan's weight buffers before it runs, so only one
//! layer's weights are on the GPU). Both run the same kernels on the same shapes: the outputs are
//! bit-identical.

use super::config::EncoderConfig;
use super::lm::{self, LmGraph};
use super::rope::{self, Pos3};
use super::weights::EncoderWeights;
use crate::dtype::DType;
use crate::error::Result;
use crate::exec::Plan;
use crate::gpu::Gpu;
use crate::models::qwen_image::load::{stacked_bytes, stored_dtype, TensorSource, WeightCache};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Where the layers' weights live while the encoder runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Residency {
    /// Every layer uploaded once (fastest; needs all weights on the device).
    Resident,
    /// One layer's weights on the device at a time, rewritten from the memory-mapped file.
    Streamed,
}

/// The text encoder, opened on a device.
pub struct TextEncoder {
    gpu: Arc<Gpu>,
    pub config: EncoderConfig,
    pub weights: EncoderWeights,
    cache: WeightCache,
    pub residency: Residency,
}

impl TextEncoder {
    /// Opens `text_encoder/` (config.json + weights), checking every tensor. `residency` `None`
    /// keeps the layers resident when their weights take at most half of the device memory left
    /// (the rest is for activations and, later, the DiT), else streams them.
    pub fn open(gpu: &Arc<Gpu>, dir: &Path, residency: Option<Residency>) -> Result<TextEncoder> {
        // A folder holds config.json; a single file may have one beside it, else it is taken to be
        // Qwen2.5-VL-7B (ComfyUI's text_encoders files come without a config).
        let cfg_path = if dir.is_dir() { dir.join("config.json") } else { dir.with_file_name("config.json") };
        let config = if dir.is_dir() || cfg_path.is_file() {
            let text = crate::pipeline::folder::read_bounded(&cfg_path, 1 << 20)?;
            EncoderConfig::from_json_str(&text).map_err(|e| crate::Error::file(&cfg_path, e.to_string()))?
        } else {
            EncoderConfig::qwen2_5_vl_7b()
        };
        let weights = EncoderWeights::open(dir, &config)?;
        let residency = residency.unwrap_or_else(|| {
            let need = layer_weight_bytes(&weights);
            match gpu.device_memory().total {
                Some(total) if need > total.saturating_sub(gpu.held_bytes()) / 2 => Residency::Streamed,
                _ => Residency::Resident,
            }
        });
        Ok(TextEncoder { gpu: gpu.clone(), config, weights, cache: WeightCache::default(), residency })
    }

    /// Bytes of the decoder layers' weights as stored (the embedding table stays on the host).
    pub fn layer_weight_bytes(&self) -> u64 {
        layer_weight_bytes(&self.weights)
    }

    /// `hidden_states[-1]` [L, D] of token `ids` (text only: positions 0..L−1).
    pub fn encode(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let x0 = self.weights.embed_rows(ids, &self.config)?;
        self.encode_embeds(x0, &rope::text_positions(&vec![true; ids.len()]))
    }

    /// The decoder over input embeddings `x0` [L, D] at M-RoPE `positions`.
    pub fn encode_embeds(&mut self, x0: Vec<f32>, positions: &[Pos3]) -> Result<Vec<f32>> {
        let (l, t) = (positions.len(), &self.config.text);
        assert_eq!(x0.len(), l * t.hidden_size, "text encoder: embeddings and positions disagree");
        let x = Tensor::from_f32(&self.gpu, &x0, &[l, t.hidden_size], DType::F32, "lm.x")?;
        let table = rope::cos_sin_table(t, positions);
        let rope_t = Tensor::from_f32(&self.gpu, &table, &[l, t.head_dim / 2, 2], DType::F32, "lm.rope")?;
        let layers = t.num_hidden_layers;
        match self.residency {
            Residency::Resident => {
                let g = self.graph(l, 0..layers, true);
                let plan = self.plan(&g, &x, &rope_t, &mut None)?;
                plan.run()?;
                plan.read(g.out.expect("cannot fail: built with the final norm"))
            }
            Residency::Streamed => self.streamed(l, &x, &rope_t, None),
        }
    }

    /// Layer-by-layer states of token `ids` (text positions), for finding where a mismatch
    /// starts: the embeddings, the residual stream after each decoder layer, the final norm
    /// (transformers' `hidden_states`, except that its last entry is the normed one).
    pub fn encode_layers(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        let t = &self.config.text;
        let (l, d, hd) = (ids.len(), t.hidden_size, t.head_dim);
        let x0 = self.weights.embed_rows(ids, &self.config)?;
        let table = rope::cos_sin_table(t, &rope::text_positions(&vec![true; l]));
        let x = Tensor::from_f32(&self.gpu, &x0, &[l, d], DType::F32, "lm.x")?;
        let rope_t = Tensor::from_f32(&self.gpu, &table, &[l, hd / 2, 2], DType::F32, "lm.rope")?;
        let mut states = vec![x0];
        let out = self.streamed(l, &x, &rope_t, Some(&mut states))?;
        states.push(out);
        Ok(states)
    }

    /// The vision tower over `images` (processed): their merged-token features, concatenated in
    /// raster order per image, [Σ tokens, out_hidden].
    pub fn vision(&mut self, images: &[super::processor::VisionInput]) -> Result<Vec<f32>> {
        use super::positions::{patch_positions, window_index};
        let v = self.config.vision.clone();
        if !self.weights.vision_missing.is_empty() {
            return Err(crate::Error::file(
                &self.weights.ckpt.path,
                format!(
                    "the vision tower's weights are missing ({} tensors, e.g. {}): this text encoder cannot read images",
                    self.weights.vision_missing.len(),
                    self.weights.vision_missing[0]
                ),
            ));
        }
        let (m, unit) = (v.spatial_merge_size, v.spatial_merge_size * v.spatial_merge_size);
        let cols = v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size;
        // The processor's config must describe the tower's patches (a hand-edited
        // preprocessor_config.json could disagree with text_encoder/config.json).
        for i in images {
            let [_, gh, gw] = i.grid;
            if i.pixel_values.len() != i.grid.iter().product::<usize>() * cols || gh % m != 0 || gw % m != 0 {
                return Err(crate::Error::input(format!(
                    "the image processor made {} values for a {gh}×{gw} patch grid, but the vision tower takes {cols} per patch in {m}×{m} merge groups: preprocessor_config.json and text_encoder/config.json disagree (patch_size, temporal_patch_size, merge_size)",
                    i.pixel_values.len()
                )));
            }
        }
        if images.is_empty() {
            return Err(crate::Error::input("the vision tower needs at least one picture"));
        }
        let grids: Vec<[usize; 3]> = images.iter().map(|i| i.grid).collect();
        let window = v.window_size / v.patch_size / m;
        let (index, cu) = window_index(&grids, m, window);
        let pixels: Vec<f32> = images.iter().flat_map(|i| i.pixel_values.iter().copied()).collect();
        let pos: Vec<[u32; 2]> = grids.iter().flat_map(|&g| patch_positions(g, m)).collect();
        let n = pos.len();
        // Window order, in units of one merge group (4 consecutive patches).
        let mut px = Vec::with_capacity(pixels.len());
        let mut ppos = Vec::with_capacity(n);
        for &j in &index {
            px.extend_from_slice(&pixels[j * unit * cols..(j + 1) * unit * cols]);
            ppos.extend_from_slice(&pos[j * unit..(j + 1) * unit]);
        }
        let hd = v.hidden_size / v.num_heads;
        let table = super::vision::rope_table(hd, &ppos);
        let rope_t = Tensor::from_f32(&self.gpu, &table, &[n, hd / 2, 2], DType::F32, "vision.rope")?;
        let mut image_cu = vec![0usize];
        for g in &grids {
            image_cu.push(image_cu.last().expect("cannot fail: starts with 0") + g.iter().product::<usize>());
        }
        let w = &self.weights;
        let g = super::vision::build(&v, n, cu.len() - 1, images.len(), &|name: &str| stored_dtype(w, name));
        let mut params = self.cache.bind(&self.gpu, &self.weights, &g.params, &g.graph)?;
        params.insert(g.rope, rope_t);
        let plan = Plan::new(&self.gpu, &g.graph, &params)?;
        plan.write_input(g.pixels, &px);
        plan.write_input(g.windows, &cu.iter().map(|&c| c as f32).collect::<Vec<_>>());
        plan.write_input(g.images, &image_cu.iter().map(|&c| c as f32).collect::<Vec<_>>());
        plan.run()?;
        let out = plan.read(g.out)?;
        let d = v.out_hidden_size;
        let mut raster = vec![0.0f32; out.len()];
        for (row, &j) in index.iter().enumerate() {
            raster[j * d..(j + 1) * d].copy_from_slice(&out[row * d..(row + 1) * d]);
        }
        Ok(raster)
    }

    /// `hidden_states[-1]` of token `ids` whose `<|image_pad|>` runs are replaced by `features`
    /// (the vision tower's rows, in order), at the 3-D M-RoPE positions of `grids`.
    pub fn encode_with_images(&mut self, ids: &[u32], features: &[f32], grids: &[[usize; 3]]) -> Result<Vec<f32>> {
        let (d, image) = (self.config.text.hidden_size, self.config.tokens.image);
        let mut x0 = self.weights.embed_rows(ids, &self.config)?;
        let pads: Vec<usize> = ids.iter().enumerate().filter(|(_, &t)| t == image).map(|(i, _)| i).collect();
        if pads.len() * d != features.len() {
            return Err(crate::Error::input(format!(
                "{} <|image_pad|> tokens but the images give {} features",
                pads.len(),
                features.len() / d
            )));
        }
        for (k, &i) in pads.iter().enumerate() {
            x0[i * d..(i + 1) * d].copy_from_slice(&features[k * d..(k + 1) * d]);
        }
        let positions = super::positions::rope_index(ids, image, grids, self.config.vision.spatial_merge_size)?;
        self.encode_embeds(x0, &positions)
    }

    fn graph(&self, l: usize, layers: std::ops::Range<usize>, final_norm: bool) -> LmGraph {
        let w = &self.weights;
        lm::build(&self.config.text, l, layers, final_norm, &|name: &str| stored_dtype(w, name))
    }

    /// Binds `g`: weights from the cache (resident) or into `own` fresh buffers (streamed), the
    /// residual stream and the table from outside.
    fn plan(&mut self, g: &LmGraph, x: &Tensor, rope_t: &Tensor, own: &mut Option<WeightCache>) -> Result<Plan> {
        let cache = own.as_mut().unwrap_or(&mut self.cache);
        let mut params = cache.bind(&self.gpu, &self.weights, &g.params, &g.graph)?;
        params.insert(g.x, x.clone());
        params.insert(g.rope, rope_t.clone());
        Plan::new(&self.gpu, &g.graph, &params)
    }

    /// One plan over layer 0's shapes; before each layer its weights are written into that plan's
    /// weight buffers (queued writes run before the next submission, after the previous one).
    fn streamed(
        &mut self,
        l: usize,
        x: &Tensor,
        rope_t: &Tensor,
        mut states: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<Vec<f32>> {
        let layers = self.config.text.num_hidden_layers;
        let g = self.graph(l, 0..1, false);
        let mut own = Some(WeightCache::default());
        let bound = {
            let cache = own.as_mut().expect("cannot fail: just set");
            cache.bind(&self.gpu, &self.weights, &g.params, &g.graph)?
        };
        let mut params: HashMap<_, _> = bound.clone();
        params.insert(g.x, x.clone());
        params.insert(g.rope, rope_t.clone());
        let plan = Plan::new(&self.gpu, &g.graph, &params)?;
        for i in 0..layers {
            if i > 0 {
                for (t, src) in &g.params {
                    let name = layer_name(&src.parts, i);
                    let dtype = g.graph.info(*t).dtype;
                    let bytes = stacked_bytes(&self.weights, &name, dtype)?;
                    self.gpu.write(&bound[t].buffer, 0, &bytes);
                }
            }
            plan.run()?;
            if let Some(s) = states.as_mut() {
                s.push(x.to_f32(&self.gpu)?);
            }
        }
        let tail = self.graph(l, 0..0, true);
        let plan = self.plan(&tail, x, rope_t, &mut None)?;
        plan.run()?;
        plan.read(tail.out.expect("cannot fail: built with the final norm"))
    }
}

fn layer_weight_bytes(w: &EncoderWeights) -> u64 {
    w.names()
        .iter()
        .filter(|n| n.starts_with("model.layers.") || n.as_str() == "model.norm.weight")
        .filter_map(|n| w.meta(n))
        .map(|(dt, shape)| dt.bytes(shape.iter().product()) as u64)
        .sum()
}

/// Layer 0's parameter names moved to layer `i`.
fn layer_name(parts: &[String], i: usize) -> Vec<String> {
    parts.iter().map(|p| p.replacen("model.layers.0.", &format!("model.layers.{i}."), 1)).collect()
}
