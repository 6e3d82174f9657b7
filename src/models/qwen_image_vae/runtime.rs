//! The VAE on the engine: [`Vae::open`] validates and uploads the weights once; `encode` and
//! `decode` build (and cache) one plan per image size, planned like the DiT's (liveness-reused
//! buffers, one submission), and convert between the public channel-major layout (`[C, H, W]`,
//! what `[1, C, 1, H, W]` holds) and the graphs' pixels-major one.

use super::config::VaeConfig;
use super::load;
use super::tiling::{self, TileImage, TileSpec};
use super::vae::{self, GraphOptions, VaeGraph};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::exec::{memory, Plan};
use crate::gpu::Gpu;
use crate::graph::TensorId;
use crate::tensor::Tensor;
use crate::weights::checkpoint::{Checkpoint, SINGLE_NAME};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Decode tiling (`--vae-tiling`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tiling {
    /// Untiled (matches diffusers' default decode, clamped to [-1, 1]).
    Off,
    /// diffusers' `enable_tiling(...)` with these tiles (unclamped, as diffusers' tiled path).
    On(TileSpec),
    /// Tiled with these tiles only when the untiled plan does not fit: one activation larger
    /// than a storage binding, or a planned peak above `budget` bytes.
    Auto { spec: TileSpec, budget: u64 },
}

/// How an encode or decode ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunInfo {
    /// Tiles run (0: untiled).
    pub tiles: usize,
    /// Dispatches over all tiles.
    pub dispatches: usize,
}

/// Which graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    Encode,
    Decode { clamp: bool },
}

/// Planned memory of one VAE graph, without weights or a GPU.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlannedMemory {
    /// Activation slots the plan allocates (the input included).
    pub peak_bytes: u64,
    /// The largest single activation (must fit one storage binding).
    pub largest_activation_bytes: u64,
    /// Dispatches per run.
    pub dispatches: usize,
    /// Dispatches per accounting label (conv, norm, attention, clamp), sorted by label.
    pub by_op: Vec<(String, usize)>,
}

/// The plan of an `h × w` (pixels for encode, latents for decode) pass.
pub fn planned_memory(cfg: &VaeConfig, pass: Pass, h: usize, w: usize, scores_budget: u64) -> PlannedMemory {
    let g = build(cfg, pass, h, w, &|_| DType::F32, scores_budget);
    let m = memory::plan(&g.graph);
    let largest = g.graph.tensors.iter().filter(|t| t.kind != crate::graph::TensorKind::Param).map(|t| t.bytes()).max();
    let mut by_op = std::collections::BTreeMap::new();
    for n in &g.graph.nodes {
        *by_op.entry(n.label.op.clone()).or_insert(0) += n.op.dispatches();
    }
    PlannedMemory {
        peak_bytes: m.peak_activation_bytes + m.input_bytes,
        largest_activation_bytes: largest.unwrap_or(0),
        dispatches: g.graph.dispatch_count(),
        by_op: by_op.into_iter().collect(),
    }
}

/// `--vae-tiling auto`'s rule: tile when one activation of the untiled plan exceeds a storage
/// binding, or its planned peak exceeds `budget` bytes.
pub fn needs_tiling(m: &PlannedMemory, max_binding: u64, budget: u64) -> bool {
    m.largest_activation_bytes > max_binding || m.peak_bytes > budget
}

fn build(cfg: &VaeConfig, pass: Pass, h: usize, w: usize, dt: &dyn Fn(&str) -> DType, scores: u64) -> VaeGraph {
    match pass {
        Pass::Encode => vae::encoder(cfg, h, w, dt, GraphOptions { scores_budget: scores, clamp: false }),
        Pass::Decode { clamp } => vae::decoder(cfg, h, w, dt, GraphOptions { scores_budget: scores, clamp }),
    }
}

/// A VAE folder: `<dir>` with `config.json` + weights, or a pipeline folder with `vae/`.
pub fn resolve_dir(path: &Path) -> Result<PathBuf> {
    for d in [path.to_path_buf(), path.join("vae")] {
        if d.join("config.json").is_file()
            && (d.join(SINGLE_NAME).is_file() || d.join(format!("{SINGLE_NAME}.index.json")).is_file())
        {
            return Ok(d);
        }
    }
    Err(Error::input(format!(
        "{}: not a VAE folder (config.json + {SINGLE_NAME}) nor a pipeline folder with vae/",
        path.display()
    )))
}

struct VaePlan {
    plan: Plan,
    graph: VaeGraph,
}

/// The VAE with its weights on the GPU.
pub struct Vae {
    gpu: Arc<Gpu>,
    pub config: VaeConfig,
    ckpt: Checkpoint,
    /// Uploaded params by graph param name (shared by every plan).
    weights: HashMap<String, Tensor>,
    plans: HashMap<(Pass, usize, usize), VaePlan>,
    /// Bytes of one attention score chunk.
    scores_budget: u64,
    /// Fill every activation with NaN before each run (tests: proves outputs are fully written).
    pub poison_activations: bool,
}

impl Vae {
    /// Opens `path` (a VAE folder or a pipeline folder with `vae/`), validates every tensor.
    pub fn open(gpu: &Arc<Gpu>, path: &Path) -> Result<Vae> {
        let dir = resolve_dir(path)?;
        let config = VaeConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(&dir)?;
        load::validate(&config, &ckpt)?;
        let scores_budget = gpu.limits().max_storage_binding.min(256 << 20);
        Ok(Vae {
            gpu: gpu.clone(),
            config,
            ckpt,
            weights: HashMap::new(),
            plans: HashMap::new(),
            scores_budget,
            poison_activations: false,
        })
    }

    pub fn spatial_factor(&self) -> usize {
        self.config.spatial_factor()
    }

    /// The planned memory of a pass at this size on this GPU's binding limit.
    pub fn planned_memory(&self, pass: Pass, h: usize, w: usize) -> PlannedMemory {
        planned_memory(&self.config, pass, h, w, self.scores_budget)
    }

    /// Sets the most bytes of one attention score chunk (default: min(binding limit, 256 MiB));
    /// plans built later use it (tests force several chunks with it).
    pub fn set_scores_budget(&mut self, bytes: u64) {
        self.scores_budget = bytes.min(self.gpu.limits().max_storage_binding);
        self.plans.clear();
    }

    /// Dispatches per run of a pass at this size.
    pub fn dispatches(&self, pass: Pass, h: usize, w: usize) -> usize {
        self.planned_memory(pass, h, w).dispatches
    }

    /// Bytes of the weights uploaded so far (they upload with the first plan).
    pub fn weight_bytes(&self) -> u64 {
        self.weights.values().map(|t| t.bytes()).sum()
    }

    /// `vae.encode(x).latent_dist.mode()`: x `[C_in, H, W]` in [-1, 1] (H, W multiples of the
    /// spatial factor) → latents `[z_dim, H/f, W/f]`, untiled.
    pub fn encode(&mut self, x: &[f32], h: usize, w: usize) -> Result<Vec<f32>> {
        Ok(self.encode_with(x, h, w, Tiling::Off)?.0)
    }

    /// [`encode`](Self::encode) with tiling: `On` is diffusers' `tiled_encode` (pixel tiles of
    /// `spec.min` every `spec.stride`, blended in latent space); tile sizes and strides must be
    /// multiples of the spatial factor.
    pub fn encode_with(&mut self, x: &[f32], h: usize, w: usize, tiling: Tiling) -> Result<(Vec<f32>, RunInfo)> {
        let f = self.spatial_factor();
        if h == 0 || w == 0 || h % f != 0 || w % f != 0 {
            return Err(Error::input(format!(
                "image is {w}×{h}: width and height must be positive multiples of {f} (the VAE's spatial factor)"
            )));
        }
        let c = self.config.input_channels;
        if x.len() != c * h * w {
            return Err(Error::input(format!("image has {} values, expected {c}×{h}×{w}", x.len())));
        }
        let spec = match tiling {
            Tiling::Off => None,
            Tiling::On(s) => Some(s),
            Tiling::Auto { spec, budget } => {
                let m = self.planned_memory(Pass::Encode, h, w);
                needs_tiling(&m, self.gpu.limits().max_storage_binding, budget).then_some(spec)
            }
        };
        match spec {
            // diffusers' _encode: tiled when width > tile_sample_min_width or height > tile_sample_min_height.
            Some(s) if w > s.min_w || h > s.min_h => self.encode_tiled(x, h, w, &s),
            _ => self.run_counted(Pass::Encode, h, w, x),
        }
    }

    fn encode_tiled(&mut self, x: &[f32], h: usize, w: usize, spec: &TileSpec) -> Result<(Vec<f32>, RunInfo)> {
        let f = self.spatial_factor();
        if [spec.min_h, spec.min_w, spec.stride_h, spec.stride_w].iter().any(|v| v % f != 0 || *v == 0) {
            return Err(Error::input(format!(
                "tiled encode: tile sizes and strides {spec:?} must be multiples of {f}"
            )));
        }
        let c = self.config.input_channels;
        let mut info = RunInfo { tiles: 0, dispatches: 0 };
        let mut rows = Vec::new();
        for row in spec.grid(h, w, 1) {
            let mut out = Vec::new();
            for t in row {
                let (data, i) = self.run_counted(Pass::Encode, t.h, t.w, &crop(x, c, h, w, &t))?;
                (info.tiles, info.dispatches) = (info.tiles + 1, info.dispatches + i.dispatches);
                out.push(TileImage { c: self.config.z_dim, h: t.h / f, w: t.w / f, data });
            }
            rows.push(out);
        }
        // Blending and cropping in latent units (diffusers: tile_latent_min − tile_latent_stride).
        let lat = TileSpec {
            min_h: spec.min_h / f,
            min_w: spec.min_w / f,
            stride_h: spec.stride_h / f,
            stride_w: spec.stride_w / f,
        };
        Ok((tiling::blend(&lat, rows, h / f, w / f), info))
    }

    /// `vae.decode(z).sample[:, :, 0]`: latents `[z_dim, h, w]` → image `[C_in, f·h, f·w]`
    /// (clamped to [-1, 1] untiled; unclamped when tiled, as diffusers).
    pub fn decode(&mut self, z: &[f32], h: usize, w: usize, tiling: Tiling) -> Result<(Vec<f32>, RunInfo)> {
        let zc = self.config.z_dim;
        if h == 0 || w == 0 || z.len() != zc * h * w {
            return Err(Error::input(format!(
                "latents have {} values, expected {zc}×{h}×{w} (positive sizes)",
                z.len()
            )));
        }
        let f = self.spatial_factor();
        let spec = match tiling {
            Tiling::Off => None,
            Tiling::On(s) => Some(s),
            Tiling::Auto { spec, budget } => {
                let m = self.planned_memory(Pass::Decode { clamp: true }, h, w);
                needs_tiling(&m, self.gpu.limits().max_storage_binding, budget).then_some(spec)
            }
        };
        match spec {
            Some(s) if s.tiles(h, w, f) => self.decode_tiled(z, h, w, &s),
            _ => self.run_counted(Pass::Decode { clamp: true }, h, w, z),
        }
    }

    fn decode_tiled(&mut self, z: &[f32], h: usize, w: usize, spec: &TileSpec) -> Result<(Vec<f32>, RunInfo)> {
        let (f, zc) = (self.spatial_factor(), self.config.z_dim);
        let mut info = RunInfo { tiles: 0, dispatches: 0 };
        let mut rows = Vec::new();
        for row in spec.grid(h, w, f) {
            let mut out = Vec::new();
            for t in row {
                let (data, i) = self.run_counted(Pass::Decode { clamp: false }, t.h, t.w, &crop(z, zc, h, w, &t))?;
                (info.tiles, info.dispatches) = (info.tiles + 1, info.dispatches + i.dispatches);
                out.push(TileImage { c: self.config.input_channels, h: t.h * f, w: t.w * f, data });
            }
            rows.push(out);
        }
        Ok((tiling::blend(spec, rows, h * f, w * f), info))
    }

    /// [`run`](Self::run), with its dispatch count (an untiled run).
    fn run_counted(&mut self, pass: Pass, h: usize, w: usize, input: &[f32]) -> Result<(Vec<f32>, RunInfo)> {
        let out = self.run(pass, h, w, input)?;
        Ok((out, RunInfo { tiles: 0, dispatches: self.plans[&(pass, h, w)].plan.labels().len() }))
    }

    /// Runs a pass on channel-major input `[C, h, w]`, returns channel-major output.
    fn run(&mut self, pass: Pass, h: usize, w: usize, input: &[f32]) -> Result<Vec<f32>> {
        self.ensure_plan(pass, h, w)?;
        let p = &self.plans[&(pass, h, w)];
        let c_in = p.graph.graph.shape(p.graph.input)[1];
        if self.poison_activations {
            p.plan.poison_activations();
        }
        p.plan.write_input(p.graph.input, &transpose(input, c_in, h * w));
        p.plan.run()?;
        let out = p.plan.read(p.graph.output)?;
        let (oh, ow) = p.graph.output_hw;
        let c_out = out.len() / (oh * ow);
        Ok(transpose(&out, oh * ow, c_out))
    }

    fn ensure_plan(&mut self, pass: Pass, h: usize, w: usize) -> Result<()> {
        if self.plans.contains_key(&(pass, h, w)) {
            return Ok(());
        }
        let ckpt = &self.ckpt;
        let dtype = |name: &str| ckpt.view(name).map_or(DType::F32, |v| v.dtype);
        let graph = build(&self.config, pass, h, w, &dtype, self.scores_budget);
        let params = self.bind(&graph.params, &graph)?;
        let plan = Plan::new(&self.gpu, &graph.graph, &params)?;
        self.plans.insert((pass, h, w), VaePlan { plan, graph });
        Ok(())
    }

    /// Uploads (once) and binds the graph's params.
    fn bind(&mut self, params: &[(TensorId, vae::ParamSrc)], g: &VaeGraph) -> Result<HashMap<TensorId, Tensor>> {
        let missing = params.iter().map(|(t, _)| g.graph.info(*t)).filter(|i| !self.weights.contains_key(&i.name));
        let (count, need) = missing.fold((0, 0), |(n, b), i| (n + 1, b + i.bytes()));
        self.gpu.check_device_fits(
            need,
            &format!("the upload of {count} VAE weight tensors"),
            "use a GPU with more memory",
        )?;
        let mut out = HashMap::new();
        for (t, src) in params {
            let info = g.graph.info(*t);
            if !self.weights.contains_key(&info.name) {
                let (dtype, bytes) = load::param_bytes(&self.ckpt, src)?;
                let tensor = Tensor::from_bytes(&self.gpu, &bytes, &info.shape, dtype, &info.name)?;
                self.weights.insert(info.name.clone(), tensor);
            }
            out.insert(*t, self.weights[&info.name].clone());
        }
        Ok(out)
    }
}

/// The `tile` window of a channel-major `[c, h, w]` image.
fn crop(v: &[f32], c: usize, h: usize, w: usize, t: &tiling::Tile) -> Vec<f32> {
    let mut part = Vec::with_capacity(c * t.h * t.w);
    for ch in 0..c {
        for y in t.y0..t.y0 + t.h {
            part.extend_from_slice(&v[(ch * h + y) * w + t.x0..][..t.w]);
        }
    }
    part
}

/// `[a, b]` → `[b, a]` (channel-major ↔ pixels-major).
fn transpose(v: &[f32], a: usize, b: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for i in 0..a {
        for j in 0..b {
            out[j * a + i] = v[i * b + j];
        }
    }
    out
}
