//! The modulation vectors as a function of the timestep alone (spec qwen-image-dit.md §3.3,
//! §3.4, §4): `SiLU(temb(σ))` through every block's `img_mod.1` / `txt_mod.1` and `norm_out.linear`.
//! Those Linears hold a third of the DiT's weights (6.8 B of 20.4 B parameters), yet for a known
//! schedule every step's vectors can be computed before the denoising loop; the weights are then
//! released and the block plan reads the vectors as an input ([`Modulation::Precompute`]).
//!
//! The vectors of one timestep row form one f32 row of `cols` values in unit order: per block
//! `[txt_mod (6·D) | img_mod (6·D)]` at column 12·D·i, then `norm_out` (2·D) at 12·D·L. Units are
//! packed into pieces of at most one storage binding of weights (the fused mode's chunks); a
//! piece is the unit of work of the precompute (its weights are uploaded, used on every row,
//! and dropped before the next piece's). Pure graph code: no GPU.

use crate::dtype::DType;
use crate::graph::{Graph, TensorId};
use crate::models::qwen_image::dit::{block_name, BuildOptions, Builder};
use crate::models::qwen_image::DitConfig;
use crate::nn::ParamSource;
use std::ops::Range;

/// Weights per precompute piece (capped by the binding limit): the precompute then holds little
/// more than its store (512 MiB is 2 blocks' modulations in bf16, 8 in Q4_K), while each piece's
/// GEMM still spans thousands of columns. Pieces change no value: every output element is its
/// own dot product, whatever is stacked next to it.
pub const PIECE_BYTES: u64 = 512 << 20;

/// Where the modulation vectors come from in a forward graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Modulation {
    /// Computed inside the graph from its `timestep` input (the time embedding and every
    /// modulation GEMM run in each forward).
    #[default]
    Inline,
    /// Read from a `[t_rows, cols]` f32 param rewritten before each step from vectors
    /// precomputed for the whole schedule; the graph has no timestep input and none of the
    /// timestep or modulation weights.
    Precompute,
}

impl Modulation {
    pub fn name(self) -> &'static str {
        match self {
            Modulation::Inline => "inline",
            Modulation::Precompute => "precompute",
        }
    }
}

/// Whether checkpoint tensor `name` feeds only the modulation vectors (the time embedding,
/// every `*_mod.1`, `norm_out.linear`): the weights precompute releases.
pub fn is_modulation_tensor(name: &str) -> bool {
    name.starts_with("time_text_embed.")
        || name.starts_with("norm_out.linear.")
        || (name.starts_with("transformer_blocks.") && (name.contains(".img_mod.1.") || name.contains(".txt_mod.1.")))
}

/// One unit of the layout: a block's `[txt_mod.1, img_mod.1]` or `norm_out.linear`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModUnit {
    pub modules: Vec<String>,
    /// Output columns (12·D for a block, 2·D for norm_out).
    pub cols: usize,
}

/// Consecutive units whose weights fit one storage binding.
#[derive(Clone, Debug, PartialEq)]
pub struct ModPiece {
    pub units: Range<usize>,
    /// First column of the piece in a modulation row.
    pub col0: usize,
    pub cols: usize,
    /// Bytes of the piece's weights in their stored dtype.
    pub weight_bytes: u64,
}

/// The column layout of a modulation row and its pieces.
#[derive(Clone, Debug, PartialEq)]
pub struct ModLayout {
    pub units: Vec<ModUnit>,
    pub pieces: Vec<ModPiece>,
    /// Columns of one row: 12·D·L + 2·D.
    pub cols: usize,
}

impl ModLayout {
    /// Units: per block `[txt_mod.1, img_mod.1]`, then `norm_out.linear`; pieces packed greedily
    /// in order, each at most `max_binding` bytes of weights (a unit larger than that alone).
    /// `max_binding` is capped at `gpu::MAX_BINDING` whatever the caller passes (a Mac reports
    /// its whole buffer length; a piece's stacked weight is one binding indexed with u32), and a
    /// piece holds fewer than 2^32 weight elements.
    pub fn new(cfg: &DitConfig, max_binding: u64, wdtype: &dyn Fn(&str) -> DType) -> ModLayout {
        let max_binding = max_binding.min(crate::gpu::MAX_BINDING);
        let d = cfg.hidden();
        let mut units: Vec<ModUnit> = (0..cfg.num_layers)
            .map(|i| ModUnit {
                modules: vec![format!("{}.txt_mod.1", block_name(i)), format!("{}.img_mod.1", block_name(i))],
                cols: 12 * d,
            })
            .collect();
        units.push(ModUnit { modules: vec!["norm_out.linear".into()], cols: 2 * d });
        // Bytes of a unit's weights (its modules may differ in dtype in GGUF files).
        let sizes: Vec<u64> = units
            .iter()
            .map(|u| {
                let per_module = u.cols / u.modules.len();
                u.modules.iter().map(|m| wdtype(&format!("{m}.weight")).bytes(per_module * d) as u64).sum()
            })
            .collect();
        // A piece's weight is also indexed per element with u32: at most 2^32 − 1 of them (the
        // 2-3 bit k-quants pack more than that into 2 GiB).
        let max_elems = u32::MAX as u64;
        let elems = |u: &ModUnit| (u.cols * d) as u64;
        let mut pieces = Vec::new();
        let (mut start, mut col0) = (0, 0);
        while start < units.len() {
            let mut end = start + 1;
            let (mut bytes, mut n) = (sizes[start], elems(&units[start]));
            while end < units.len() && bytes + sizes[end] <= max_binding && n + elems(&units[end]) <= max_elems {
                bytes += sizes[end];
                n += elems(&units[end]);
                end += 1;
            }
            let cols = units[start..end].iter().map(|u| u.cols).sum();
            pieces.push(ModPiece { units: start..end, col0, cols, weight_bytes: bytes });
            col0 += cols;
            start = end;
        }
        ModLayout { units, pieces, cols: col0 }
    }

    /// First column of unit `u`.
    pub fn unit_col(&self, u: usize) -> usize {
        self.units[..u].iter().map(|x| x.cols).sum()
    }

    /// f32 bytes of `rows` modulation rows.
    pub fn row_bytes(&self, rows: usize) -> u64 {
        4 * (rows * self.cols) as u64
    }
}

/// The precompute graph of one piece: `timestep` [rows] → the piece's columns of every row.
pub struct PieceGraph {
    pub graph: Graph,
    /// [rows] timesteps (σ, the model's `timestep`).
    pub timestep: TensorId,
    /// [rows, piece.cols] f32, an accumulator: bound from outside so that it outlives the plan.
    pub store: TensorId,
    pub params: Vec<(TensorId, ParamSource)>,
    /// Runtime LoRA factors, f32.
    pub host_params: Vec<(TensorId, Vec<f32>)>,
}

/// Builds the precompute of `piece` for `rows` timesteps: the time embedding (as the forward
/// computes it), then the piece's modulation GEMMs emitted exactly as the forward of `opts.mode`
/// emits them (the fused mode's stacked chunk; one GEMM per module otherwise), runtime LoRAs
/// included, each writing its columns of the store. Every output element is the same dot
/// product over the same inputs as in the forward, so the vectors are bit-identical to the
/// inline path's.
pub fn build_piece<'a>(
    cfg: &'a DitConfig,
    layout: &ModLayout,
    piece: &ModPiece,
    rows: usize,
    opts: BuildOptions<'a>,
    wdtype: &'a dyn Fn(&str) -> DType,
) -> PieceGraph {
    assert!(opts.train.is_none(), "modulation precompute is an inference graph");
    let mut b = Builder::new(cfg, None, opts, wdtype);
    let timestep = b.g.input("timestep", &[rows], DType::F32);
    let silu_temb = b.time_embedding(timestep);
    let store = b.g.accumulator("modulation_store", &[rows, piece.cols], DType::F32);
    b.emit_modulation_piece(silu_temb, store, layout, piece);
    b.g.mark_output(store);
    PieceGraph { graph: b.g, timestep, store, params: b.lin.params, host_params: b.lin.host_params }
}

/// Device bytes of a checkpoint tensor as the loader uploads it: 2-D weights in their stored
/// dtype, 1-D tensors (biases, norm weights) widened to f32.
pub fn device_bytes(shape: &[usize], stored: DType) -> u64 {
    let numel: usize = shape.iter().product();
    if shape.len() == 2 {
        stored.bytes(numel) as u64
    } else {
        4 * numel as u64
    }
}

/// What precomputing `rows` timestep rows needs, planned without weights or a GPU.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PrecomputePlan {
    pub rows: usize,
    pub pieces: usize,
    /// Dispatches of all pieces (each runs once).
    pub dispatches: usize,
    /// The f32 vectors of every row, kept on the GPU through the loop.
    pub store_bytes: u64,
    /// Device bytes of the largest piece's params (its modulation weights and the time
    /// embedding's): the most weight memory the precompute holds at once.
    pub weight_peak_bytes: u64,
    /// Planned activation peak of the largest piece graph.
    pub activation_peak_bytes: u64,
    /// Device bytes of every modulation and time-embedding tensor: what the loop no longer holds.
    pub released_bytes: u64,
}

impl PrecomputePlan {
    /// Device bytes while the precompute runs: the store, one piece's weights, its activations.
    pub fn peak_bytes(&self) -> u64 {
        self.store_bytes + self.weight_peak_bytes + self.activation_peak_bytes
    }
}

/// Plans the precompute of `rows` timesteps for `mode` (no GPU): every piece graph (pieces of
/// at most `piece_bytes` of weights) built and its memory planned.
pub fn plan_precompute(
    cfg: &DitConfig,
    mode: crate::models::qwen_image::QkvMode,
    max_binding: u64,
    piece_bytes: u64,
    rows: usize,
    wdtype: &dyn Fn(&str) -> DType,
) -> PrecomputePlan {
    let layout = ModLayout::new(cfg, piece_bytes.min(max_binding), wdtype);
    let opts = BuildOptions {
        lora: None,
        mode,
        max_binding,
        keep_block_outputs: false,
        train: None,
        modulation: Modulation::Inline,
    };
    let (mut dispatches, mut weight_peak, mut act_peak) = (0, 0, 0);
    for piece in &layout.pieces {
        let pg = build_piece(cfg, &layout, piece, rows, opts, wdtype);
        dispatches += pg.graph.dispatch_count();
        weight_peak = weight_peak.max(pg.params.iter().map(|(t, _)| pg.graph.info(*t).bytes()).sum());
        act_peak = act_peak.max(crate::exec::memory::plan(&pg.graph).peak_activation_bytes);
    }
    let released = crate::models::qwen_image::names::expected_tensors(cfg)
        .iter()
        .filter(|(n, _)| is_modulation_tensor(n))
        .map(|(n, s)| device_bytes(s, wdtype(n)))
        .sum();
    PrecomputePlan {
        rows,
        pieces: layout.pieces.len(),
        dispatches,
        store_bytes: layout.row_bytes(rows),
        weight_peak_bytes: weight_peak,
        activation_peak_bytes: act_peak,
        released_bytes: released,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_packs_blocks_then_norm_out_into_pieces_of_one_binding() {
        let cfg = DitConfig::preset("qwen-image").unwrap();
        let d = cfg.hidden();
        let bf16 = |_: &str| DType::BF16;
        let l = ModLayout::new(&cfg, i32::MAX as u64, &bf16);
        assert_eq!(l.cols, 60 * 12 * d + 2 * d);
        // A block's two modulations are 2·6·D·D bf16 = 216 MiB: 9 per 2 GiB binding, 7 pieces.
        assert_eq!(l.pieces.len(), 7);
        assert_eq!(l.pieces[0].units, 0..9);
        assert_eq!(l.pieces.iter().map(|p| p.cols).sum::<usize>(), l.cols);
        assert_eq!(l.pieces[6].col0 + l.pieces[6].cols, l.cols);
        assert_eq!(l.unit_col(60), 60 * 12 * d);
        let total: u64 = l.pieces.iter().map(|p| p.weight_bytes).sum();
        let want: u64 = crate::models::qwen_image::names::expected_tensors(&cfg)
            .iter()
            .filter(|(n, s)| is_modulation_tensor(n) && s.len() == 2 && !n.starts_with("time_text_embed."))
            .map(|(_, s)| 2 * s.iter().product::<usize>() as u64)
            .sum();
        assert_eq!(total, want);
        // 6.8 B parameters: a third of the model.
        assert_eq!(want / 2, 60 * 12 * (d * d) as u64 + 2 * (d * d) as u64);
    }

    #[test]
    fn a_16_gib_binding_limit_still_packs_pieces_under_2_gib_and_2_pow_32_elements() {
        // Metal reports maxBufferLength as the binding limit; each piece's stacked weight is one
        // binding, indexed with u32 in the GEMM.
        let cfg = DitConfig::preset("qwen-image").unwrap();
        let d = cfg.hidden();
        for dtype in [DType::F32, DType::BF16, DType::Q8_0, DType::Q4K, DType::Q2K] {
            let w = |_: &str| dtype;
            let l = ModLayout::new(&cfg, 16 << 30, &w);
            assert!(l.pieces.len() > 1, "{dtype:?}: 16 GiB packed everything into one piece");
            for p in &l.pieces {
                assert!(p.weight_bytes <= crate::gpu::MAX_BINDING, "{dtype:?}: piece of {} bytes", p.weight_bytes);
                assert!(((p.cols * d) as u64) < 1 << 32, "{dtype:?}: piece of {} elements", p.cols * d);
            }
            assert_eq!(l, ModLayout::new(&cfg, crate::gpu::MAX_BINDING, &w), "{dtype:?}");
        }
    }

    #[test]
    fn modulation_tensors_are_the_time_embedding_the_mods_and_norm_out_linear() {
        for n in [
            "time_text_embed.timestep_embedder.linear_1.weight",
            "norm_out.linear.bias",
            "transformer_blocks.12.img_mod.1.weight",
            "transformer_blocks.0.txt_mod.1.bias",
        ] {
            assert!(is_modulation_tensor(n), "{n}");
        }
        for n in ["proj_out.weight", "transformer_blocks.0.img_mlp.net.2.weight", "txt_in.weight", "img_in.bias"] {
            assert!(!is_modulation_tensor(n), "{n}");
        }
    }
}
