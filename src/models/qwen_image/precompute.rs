//! Modulation precompute on the GPU ([`Dit::prepare_timesteps`]): for the timesteps of a whole
//! schedule, every piece of `modulation::ModLayout` runs once over all of them (its weights
//! uploaded, used, released), into a store that stays on the GPU; plans then read one step's rows
//! from it ([`ModulationStore::write_rows`], a GPU copy per piece and timestep row) instead of
//! running the time embedding and 121 modulation GEMMs per forward. The weights of those GEMMs
//! (a third of the model) are released before any block weight is uploaded.

use crate::error::{Error, Result};
use crate::exec::Plan;
use crate::gpu::{BufferCopy, Gpu};
use crate::models::qwen_image::dit::BuildOptions;
use crate::models::qwen_image::load::stored_dtype;
use crate::models::qwen_image::modulation::{build_piece, is_modulation_tensor, ModLayout, Modulation, PIECE_BYTES};
use crate::models::qwen_image::runtime::Dit;
use crate::tensor::{DType, Tensor};
use std::sync::Arc;

/// Every precomputed modulation row, per piece `[rows, piece.cols]` f32 on the GPU.
pub struct ModulationStore {
    gpu: Arc<Gpu>,
    /// The timestep of each row (distinct values, first-seen order; 0 added for zero_cond_t).
    pub timesteps: Vec<f32>,
    pub layout: ModLayout,
    pieces: Vec<Tensor>,
}

impl ModulationStore {
    /// Bytes of the store on the GPU.
    pub fn bytes(&self) -> u64 {
        self.pieces.iter().map(Tensor::bytes).sum()
    }

    /// The row of timestep `t` (the same f32 bits), if precomputed.
    pub fn row_of(&self, t: f32) -> Option<usize> {
        self.timesteps.iter().position(|&v| v.to_bits() == t.to_bits())
    }

    /// Fills `dst` [t_rows, cols]: row r with the precomputed row of `timesteps[r]` (queued on the
    /// GPU before the next plan run). Panics when a timestep was not precomputed (the caller
    /// prepares the schedule it runs).
    pub fn write_rows(&self, dst: &Tensor, timesteps: &[f32]) {
        let cols = self.layout.cols as u64;
        assert_eq!(dst.numel(), timesteps.len() * self.layout.cols, "modulation input shape");
        let mut copies = Vec::with_capacity(timesteps.len() * self.pieces.len());
        for (r, &t) in timesteps.iter().enumerate() {
            let k = self
                .row_of(t)
                .unwrap_or_else(|| panic!("timestep {t} was not precomputed (prepared: {:?})", self.timesteps))
                as u64;
            for (piece, store) in self.layout.pieces.iter().zip(&self.pieces) {
                let n = piece.cols as u64;
                copies.push(BufferCopy {
                    src: &store.buffer,
                    src_offset: 4 * k * n,
                    dst: &dst.buffer,
                    dst_offset: 4 * (r as u64 * cols + piece.col0 as u64),
                    bytes: 4 * n,
                });
            }
        }
        self.gpu.copy(&copies);
    }
}

/// What a precompute did.
#[derive(Clone, Debug, Default)]
pub struct PrecomputeReport {
    /// Timestep rows computed.
    pub rows: usize,
    /// GEMM pieces (one weight upload each) and their dispatches in all.
    pub pieces: usize,
    pub dispatches: usize,
    pub store_bytes: u64,
    /// Weight bytes released from the cache (the modulation and time-embedding weights).
    pub released_bytes: u64,
    pub ms: f64,
}

impl Dit {
    /// `inline` (the default: every forward computes its modulation) or `precompute` (plans
    /// made after [`prepare_timesteps`](Self::prepare_timesteps) read precomputed vectors).
    pub fn set_modulation(&mut self, m: Modulation) {
        self.modulation = m;
    }

    /// Before planning a run whose timesteps are all known: with `precompute`, computes the
    /// modulation vectors of `timesteps` (and of t = 0 for zero_cond_t) and releases the
    /// modulation weights; a no-op with `inline`.
    pub fn prepare_timesteps(&mut self, timesteps: &[f32]) -> Result<Option<PrecomputeReport>> {
        match self.modulation {
            Modulation::Inline => Ok(None),
            // Nothing will run: nothing to precompute.
            Modulation::Precompute if timesteps.is_empty() => Ok(None),
            Modulation::Precompute => self.precompute_modulation(timesteps).map(Some),
        }
    }

    /// Runs every piece of the modulation layout (`modulation::PIECE_BYTES` of weights each) over
    /// the distinct `timesteps` (the same GEMMs, LoRAs included, as this mode's forward), keeps
    /// the results on the GPU and drops the modulation weights from the cache. Plans made from
    /// now on read the store.
    pub fn precompute_modulation(&mut self, timesteps: &[f32]) -> Result<PrecomputeReport> {
        self.precompute_in_pieces(timesteps, PIECE_BYTES)
    }

    /// [`precompute_modulation`](Self::precompute_modulation) with pieces of at most
    /// `piece_bytes` of weights (one unit per piece when smaller than every unit).
    pub fn precompute_in_pieces(&mut self, timesteps: &[f32], piece_bytes: u64) -> Result<PrecomputeReport> {
        let t0 = std::time::Instant::now();
        let mut rows: Vec<f32> = Vec::new();
        for &t in timesteps.iter().chain(self.cfg.zero_cond_t.then_some(&0.0)) {
            if !t.is_finite() {
                return Err(Error::input(format!("timestep {t} is not a finite number")));
            }
            if !rows.iter().any(|v| v.to_bits() == t.to_bits()) {
                rows.push(t);
            }
        }
        let max_binding = self.gpu.limits().max_storage_binding;
        let src = self.source.as_ref();
        let wdtype = |n: &str| stored_dtype(src, n);
        let layout = ModLayout::new(&self.cfg, piece_bytes.min(max_binding), &wdtype);
        let mut pieces = Vec::with_capacity(layout.pieces.len());
        let (mut released, mut dispatches) = (0, 0);
        for piece in &layout.pieces {
            let opts = BuildOptions {
                train: None,
                lora: (!self.lora.is_empty()).then_some(&self.lora),
                mode: self.mode,
                max_binding,
                keep_block_outputs: false,
                modulation: Modulation::Inline,
            };
            let pg = build_piece(&self.cfg, &layout, piece, rows.len(), opts, &wdtype);
            let store = Tensor::zeros(&self.gpu, &[rows.len(), piece.cols], DType::F32, "modulation store")?;
            let mut params = self.cache.bind(&self.gpu, src, &pg.params, &pg.graph)?;
            for (t, data) in &pg.host_params {
                let info = pg.graph.info(*t);
                params.insert(*t, Tensor::from_f32(&self.gpu, data, &info.shape, DType::F32, &info.name)?);
            }
            params.insert(pg.store, store.clone());
            let plan = Plan::new(&self.gpu, &pg.graph, &params)?;
            dispatches += pg.graph.dispatch_count();
            plan.write_input(pg.timestep, &rows);
            plan.run()?;
            // Wait, so that the piece's weights are free before the next piece uploads its own.
            self.gpu.sync()?;
            drop((plan, params));
            released += self.cache.release(&|p| is_modulation_tensor(p) && !p.starts_with("time_text_embed."));
            pieces.push(store);
        }
        released += self.cache.release(&is_modulation_tensor);
        let store = ModulationStore { gpu: self.gpu.clone(), timesteps: rows, layout, pieces };
        let report = PrecomputeReport {
            rows: store.timesteps.len(),
            pieces: store.pieces.len(),
            dispatches,
            store_bytes: store.bytes(),
            released_bytes: released,
            ms: t0.elapsed().as_secs_f64() * 1e3,
        };
        self.premod = Some(Arc::new(store));
        Ok(report)
    }

    /// The precomputed modulation store, when prepared.
    pub fn modulation_store(&self) -> Option<&ModulationStore> {
        self.premod.as_deref()
    }
}
