//! Streaming the transformer blocks' weights under a VRAM budget (docs/streaming.md).
//!
//! [`residency`](super::residency) decides from the plan's numbers ([`StreamInputs`]) how many
//! blocks stay resident; every later block is written, before the nodes that read it run, into
//! one of the ring's slots (block i → slot (i − resident) mod slots). A slot is one device
//! buffer holding a block's params at aligned offsets ([`SlotLayout`]); the graph binds them as
//! views, so the plan's kernels, bind groups and dispatch order are those of the resident plan
//! and the output is bit-identical. A run is cut into segments at the uploads: each segment's
//! write is queued after the previous segment's submission, and wgpu's one queue runs writes and
//! submissions in that order, so a slot is never overwritten while an earlier segment still
//! reads it. The host assembles the next block's bytes from the memory map on a worker thread
//! while the GPU computes.

use super::dit::ForwardGraph;
use super::load::{stacked_into, TensorSource};
use super::residency::Residency;
use crate::error::{Error, Result};
use crate::exec::Plan;
use crate::gpu::{Buffer, Gpu, Submission};
use crate::graph::TensorId;
use crate::tensor::{DType, Tensor};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The weights a source gives to the streaming runtime (shared with its upload worker).
pub type SharedSource = Arc<dyn TensorSource>;

/// The block whose weights a param is made of: `Some(i)` when every part is a tensor of
/// `transformer_blocks.{i}`.
pub fn block_of_parts(parts: &[String]) -> Option<usize> {
    let of = |p: &String| p.strip_prefix("transformer_blocks.")?.split('.').next()?.parse::<usize>().ok();
    let first = of(parts.first()?)?;
    parts.iter().all(|p| of(p) == Some(first)).then_some(first)
}

/// Which graph params are a block's own: all parts of block i and read only by nodes labelled
/// block i (the forward's and, in training graphs, the backward's and recompute's). The rest —
/// embeddings, norm_out, proj_out, the fused modulation chunks stacking several blocks — stays
/// resident as "other" weights.
pub struct BlockParams {
    /// Per block, indices into `ForwardGraph::params`, in graph order.
    pub per_block: Vec<Vec<usize>>,
    /// The block of every block param.
    pub block_of: HashMap<TensorId, usize>,
}

impl BlockParams {
    pub fn of(fg: &ForwardGraph, layers: usize) -> BlockParams {
        let mut readers: HashMap<TensorId, Vec<Option<usize>>> = HashMap::new();
        for n in &fg.graph.nodes {
            for t in n.op.inputs() {
                readers.entry(t).or_default().push(n.label.layer);
            }
        }
        let mut per_block = vec![Vec::new(); layers];
        let mut block_of = HashMap::new();
        for (k, (t, ps)) in fg.params.iter().enumerate() {
            let Some(i) = block_of_parts(&ps.parts).filter(|&i| i < layers) else { continue };
            if readers.get(t).is_some_and(|r| r.iter().all(|&l| l == Some(i))) {
                per_block[i].push(k);
                block_of.insert(*t, i);
            }
        }
        BlockParams { per_block, block_of }
    }
}

/// What the residency decision of one plan is made from.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StreamInputs {
    /// Per block, the bytes of its params as laid out in a ring slot (aligned offsets).
    pub block_bytes: Vec<u64>,
    /// Params that stay resident whatever the budget (embeddings, norm_out, proj_out, fused
    /// modulation chunks, runtime-LoRA factors).
    pub other_bytes: u64,
    /// The plan's activation and input buffers (`exec::MemoryPlan::slot_bytes`).
    pub activation_peak: u64,
}

/// One param in a ring slot.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotEntry {
    pub parts: Vec<String>,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub offset: u64,
    /// The param's bytes (`dtype.bytes(numel)`); the view binds them rounded up to 4.
    pub bytes: u64,
}

/// Where a block's params sit in a ring slot: in graph order, each at an offset aligned to the
/// adapter's `min_storage_buffer_offset_alignment`.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotLayout {
    pub entries: Vec<SlotEntry>,
    /// Bytes of the laid-out block (up to the end of its last param, rounded to 4).
    pub bytes: u64,
}

impl SlotLayout {
    pub fn new(fg: &ForwardGraph, params: &[usize], align: u64) -> SlotLayout {
        let align = align.max(4);
        let (mut entries, mut end) = (Vec::with_capacity(params.len()), 0u64);
        for &k in params {
            let (t, ps) = &fg.params[k];
            let info = fg.graph.info(*t);
            let offset = end.div_ceil(align) * align;
            let bytes = info.bytes();
            end = offset + bytes.max(4).div_ceil(4) * 4;
            entries.push(SlotEntry {
                parts: ps.parts.clone(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                offset,
                bytes,
            });
        }
        SlotLayout { entries, bytes: end }
    }

    /// The block's bytes as the slot holds them, assembled from the (memory-mapped) source in
    /// each param's dtype; padding is zero.
    pub fn assemble(&self, src: &dyn TensorSource) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.bytes as usize];
        for e in &self.entries {
            let (at, n) = (e.offset as usize, e.bytes as usize);
            let wrote = stacked_into(src, &e.parts, e.dtype, &mut out[at..at + n])?;
            if wrote != n {
                return Err(Error::input(format!("param {} has {wrote} bytes, expected {n}", e.parts.join(" + "))));
            }
        }
        Ok(out)
    }
}

/// The device buffers streamed blocks take turns in, shared by every plan of one model (plans
/// for other shapes stream the same blocks): what each slot holds now and the last submission
/// that read it.
pub struct Ring {
    slots: Vec<Buffer>,
    pub slot_bytes: u64,
    state: Mutex<RingState>,
}

#[derive(Default)]
struct RingState {
    /// The block (and its layout) each slot holds.
    held: Vec<Option<(usize, Arc<SlotLayout>)>>,
    /// The last submission that read each slot.
    last_reader: Vec<Option<Submission>>,
}

impl Ring {
    pub fn new(gpu: &Gpu, slots: usize, slot_bytes: u64) -> Result<Ring> {
        let bufs = (0..slots)
            .map(|s| gpu.arena(slot_bytes, &format!("ring slot {s}")))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| match e {
                Error::TooLarge(m) => Error::TooLarge(format!(
                    "{m}: one streamed transformer block must fit one buffer; store the weights in a narrower dtype (bf16, or a quantized GGUF file)"
                )),
                e => e,
            })?;
        let state = RingState { held: vec![None; slots], last_reader: vec![None; slots] };
        Ok(Ring { slots: bufs, slot_bytes, state: Mutex::new(state) })
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Device bytes of the ring.
    pub fn bytes(&self) -> u64 {
        self.slots.iter().map(Buffer::size).sum()
    }

    /// The views of a block's params in slot `s`.
    fn views(&self, s: usize, layout: &SlotLayout) -> Vec<Tensor> {
        layout.entries.iter().map(|e| Tensor::view(&self.slots[s], e.offset, &e.shape, e.dtype)).collect()
    }
}

/// What streaming did over one or more runs (a forward; a training step's forward and backward).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StreamReport {
    /// Blocks kept resident (0..resident_blocks) and blocks in all.
    pub resident_blocks: usize,
    pub blocks: usize,
    pub ring_slots: usize,
    /// Device bytes the decision planned: resident weights + ring + activations.
    pub planned_peak_bytes: u64,
    /// Runs counted (forwards, or training forward/backward halves).
    pub runs: usize,
    /// Block uploads and their bytes (a block already in its slot is not uploaded again).
    pub uploads: usize,
    pub uploaded_bytes: u64,
    /// Host time assembling blocks from the source (worker thread) and writing them to the queue.
    pub assembly_ms: f64,
    pub write_ms: f64,
    /// Host time the main thread waited for the worker (assembly not hidden) and for the GPU to
    /// finish with a slot before rewriting it.
    pub wait_assembly_ms: f64,
    pub wait_gpu_ms: f64,
    /// Host upload time (waiting for assembly, writing) of the segments whose previous segment
    /// had already finished on the GPU when they were submitted: the upload work not hidden
    /// behind compute (an upper bound).
    pub exposed_ms: f64,
    /// GPU time in the segments' passes and between them (the device-side copies of the uploads,
    /// serialised with compute on wgpu's one queue, and any wait for the host), from timestamps;
    /// `None` without TIMESTAMP_QUERY.
    pub gpu_compute_ms: Option<f64>,
    pub gpu_gap_ms: Option<f64>,
    /// Wall time of the runs (host, until their submissions were made and, for a forward, read).
    pub wall_ms: f64,
}

impl StreamReport {
    /// Host upload work: assembly + writes.
    pub fn upload_ms(&self) -> f64 {
        self.assembly_ms + self.write_ms
    }

    /// The fraction of the host upload work done while the GPU still had work queued:
    /// 1 − exposed / (assembly + write), in [0, 1] (a lower bound); `None` without uploads.
    pub fn hidden_fraction(&self) -> Option<f64> {
        (self.upload_ms() > 0.0).then(|| (1.0 - self.exposed_ms / self.upload_ms()).clamp(0.0, 1.0))
    }

    /// One line for summaries.
    pub fn line(&self) -> String {
        let mib = |b: u64| b as f64 / 1048576.0;
        if self.resident_blocks == self.blocks {
            return format!(
                "weight streaming: all {} blocks resident (planned peak {:.1} MiB)",
                self.blocks,
                mib(self.planned_peak_bytes)
            );
        }
        let hidden = self.hidden_fraction().map_or("-".into(), |h| format!("{:.0}%", h * 100.0));
        let gap =
            self.gpu_gap_ms.map_or(String::new(), |g| format!("; GPU time between segments (copies, waits) {g:.1} ms"));
        format!(
            "weight streaming: {}/{} blocks resident, {} ring slots, planned peak {:.1} MiB; {} uploads ({:.2} MiB) over {} run(s): upload {:.1} ms on the host (assembly {:.1}, write {:.1}), {hidden} of it hidden behind compute{gap}",
            self.resident_blocks,
            self.blocks,
            self.ring_slots,
            mib(self.planned_peak_bytes),
            self.uploads,
            mib(self.uploaded_bytes),
            self.runs,
            self.upload_ms(),
            self.assembly_ms,
            self.write_ms,
        )
    }
}

/// The streaming half of a plan whose residency streams some blocks.
pub struct Streamed {
    pub residency: Residency,
    blocks: usize,
    ring: Arc<Ring>,
    /// Per block: its layout when it streams.
    layouts: Vec<Option<Arc<SlotLayout>>>,
    /// Per graph node: the streamed block whose params it reads.
    need: Vec<Option<usize>>,
    source: SharedSource,
    report: Mutex<StreamReport>,
}

/// Where the blocks to upload come from, in order.
enum Feed {
    /// Assembled ahead on a worker thread (at most one waiting).
    Worker(std::sync::mpsc::Receiver<Result<(Vec<u8>, Duration)>>),
    /// Assembled on the calling thread when needed.
    Inline(std::vec::IntoIter<usize>),
}

/// One submission: the uploads queued before it (block, slot) and its nodes.
struct Segment {
    loads: Vec<(usize, usize)>,
    nodes: Range<usize>,
    reads: Vec<usize>,
}

impl Streamed {
    /// Binds the streamed blocks' params as views into the ring (into `params`) and records which
    /// node needs which block. `layouts` holds every block's layout.
    pub fn bind(
        fg: &ForwardGraph,
        bp: &BlockParams,
        residency: Residency,
        layouts: Vec<SlotLayout>,
        ring: Arc<Ring>,
        source: SharedSource,
        params: &mut HashMap<TensorId, Tensor>,
    ) -> Result<Streamed> {
        let (first, slots) = (residency.resident_blocks, ring.slots());
        let mut kept = Vec::with_capacity(layouts.len());
        for (i, layout) in layouts.into_iter().enumerate() {
            if i < first {
                kept.push(None);
                continue;
            }
            let views = ring.views((i - first) % slots, &layout);
            for (&k, v) in bp.per_block[i].iter().zip(views) {
                params.insert(fg.params[k].0, v);
            }
            kept.push(Some(Arc::new(layout)));
        }
        let mut need = Vec::with_capacity(fg.graph.nodes.len());
        for n in &fg.graph.nodes {
            let mut blocks: Vec<usize> =
                n.op.inputs().iter().filter_map(|t| bp.block_of.get(t).copied()).filter(|&b| b >= first).collect();
            blocks.sort_unstable();
            blocks.dedup();
            if blocks.len() > 1 {
                return Err(Error::input(format!(
                    "node {} reads the weights of blocks {blocks:?}: a streamed plan needs one block per node",
                    n.label.op
                )));
            }
            need.push(blocks.first().copied());
        }
        let report = StreamReport {
            resident_blocks: first,
            blocks: kept.len(),
            ring_slots: slots,
            planned_peak_bytes: residency.peak_bytes,
            ..Default::default()
        };
        Ok(Streamed { residency, blocks: kept.len(), ring, layouts: kept, need, source, report: Mutex::new(report) })
    }

    fn slot_of(&self, block: usize) -> usize {
        (block - self.residency.resident_blocks) % self.ring.slots()
    }

    /// Cuts `nodes` at every upload the ring's current contents require.
    fn segments(&self, nodes: Range<usize>, held: &mut [Option<(usize, Arc<SlotLayout>)>]) -> Vec<Segment> {
        let mut segs: Vec<Segment> = Vec::new();
        let mut cur = Segment { loads: Vec::new(), nodes: nodes.start..nodes.start, reads: Vec::new() };
        for n in nodes {
            if let Some(b) = self.need[n] {
                let (s, layout) = (self.slot_of(b), self.layouts[b].as_ref().expect("cannot fail: streamed"));
                let loaded =
                    held[s].as_ref().is_some_and(|(hb, hl)| *hb == b && (Arc::ptr_eq(hl, layout) || hl == layout));
                if !loaded {
                    if !cur.nodes.is_empty() {
                        let start = cur.nodes.end;
                        segs.push(std::mem::replace(
                            &mut cur,
                            Segment { loads: Vec::new(), nodes: start..start, reads: Vec::new() },
                        ));
                    }
                    cur.loads.push((b, s));
                    held[s] = Some((b, layout.clone()));
                }
                if !cur.reads.contains(&s) {
                    cur.reads.push(s);
                }
            }
            cur.nodes.end = n + 1;
        }
        if !cur.nodes.is_empty() || !cur.loads.is_empty() {
            segs.push(cur);
        }
        segs
    }

    /// Runs graph nodes `nodes` of `plan`: per segment, its blocks' uploads (assembled in order
    /// on a worker thread, or here when `worker` is off), then its submission. Returns when the
    /// GPU has finished (the segments' timestamps are read back).
    pub fn run(&self, gpu: &Gpu, plan: &Plan, nodes: Range<usize>, worker: bool) -> Result<()> {
        let t0 = Instant::now();
        let mut state = self.ring.state.lock().unwrap_or_else(|p| p.into_inner());
        let segs = self.segments(nodes, &mut state.held);
        let loads: Vec<usize> = segs.iter().flat_map(|s| s.loads.iter().map(|l| l.0)).collect();
        let stamps = gpu.stamps(segs.len());
        let mut r = StreamReport::default();
        let (layouts, src) = (&self.layouts, self.source.as_ref());
        let assemble = move |b: usize| -> Result<(Vec<u8>, Duration)> {
            let t = Instant::now();
            let bytes = layouts[b].as_ref().expect("cannot fail: streamed").assemble(src)?;
            Ok((bytes, t.elapsed()))
        };
        let done = std::thread::scope(|scope| -> Result<()> {
            let mut feed = if worker {
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                scope.spawn(move || {
                    for b in loads {
                        if tx.send(assemble(b)).is_err() {
                            break;
                        }
                    }
                });
                Feed::Worker(rx)
            } else {
                Feed::Inline(loads.into_iter())
            };
            let mut next = || -> Result<(Vec<u8>, Duration)> {
                match &mut feed {
                    Feed::Worker(rx) => {
                        rx.recv().map_err(|_| Error::input("the weight upload worker stopped early"))?
                    }
                    Feed::Inline(it) => assemble(it.next().expect("cannot fail: one per load")),
                }
            };
            for (k, seg) in segs.iter().enumerate() {
                let on_host = r.wait_assembly_ms + r.write_ms;
                for &(_, s) in &seg.loads {
                    self.upload(gpu, &mut state, s, &mut next, &mut r)?;
                }
                // The GPU finished the previous segment before these uploads were done: count the
                // host's upload time since then as exposed (an upper bound).
                if k > 0 && !seg.loads.is_empty() && gpu.queue_idle()? {
                    r.exposed_ms += r.wait_assembly_ms + r.write_ms - on_host;
                }
                let sub = plan.submit_nodes(seg.nodes.clone(), stamps.as_ref().map(|st| (st, k as u32)))?;
                for &s in &seg.reads {
                    state.last_reader[s] = Some(sub.clone());
                }
            }
            Ok(())
        });
        if done.is_err() {
            // The simulated contents are ahead of the writes made: forget them.
            state.held.iter_mut().for_each(|h| *h = None);
        }
        done?;
        drop(state);
        match &stamps {
            Some(st) => {
                let pairs = gpu.read_stamps(st)?;
                let compute: f64 = pairs.iter().map(|p| p.1 - p.0).sum();
                let span = pairs.last().map_or(0.0, |l| l.1) - pairs.first().map_or(0.0, |f| f.0);
                r.gpu_compute_ms = Some(compute / 1e6);
                r.gpu_gap_ms = Some((span - compute).max(0.0) / 1e6);
            }
            None => gpu.sync()?,
        }
        r.wall_ms = ms(t0.elapsed());
        r.runs = 1;
        self.report.lock().unwrap_or_else(|p| p.into_inner()).add(&r);
        Ok(())
    }

    /// One upload into slot `s`: the next assembled block, written once the GPU is done with the
    /// slot's previous block. Under wgpu's one queue the write would be ordered after that
    /// block's submission anyway; waiting bounds the host's staging copies to the ring's blocks.
    fn upload(
        &self,
        gpu: &Gpu,
        state: &mut RingState,
        s: usize,
        next: &mut dyn FnMut() -> Result<(Vec<u8>, Duration)>,
        r: &mut StreamReport,
    ) -> Result<()> {
        let t = Instant::now();
        let (bytes, took) = next()?;
        r.wait_assembly_ms += ms(t.elapsed());
        r.assembly_ms += ms(took);
        if let Some(sub) = state.last_reader[s].take() {
            let t = Instant::now();
            gpu.wait_for(&sub)?;
            r.wait_gpu_ms += ms(t.elapsed());
        }
        let t = Instant::now();
        gpu.write(&self.ring.slots[s], 0, &bytes);
        r.write_ms += ms(t.elapsed());
        r.uploads += 1;
        r.uploaded_bytes += bytes.len() as u64;
        Ok(())
    }

    /// The report of the runs since the last call (which resets it).
    pub fn take_report(&self) -> StreamReport {
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = StreamReport {
            resident_blocks: r.resident_blocks,
            blocks: r.blocks,
            ring_slots: r.ring_slots,
            planned_peak_bytes: r.planned_peak_bytes,
            ..Default::default()
        };
        std::mem::replace(&mut *r, fresh)
    }

    /// Blocks in the model.
    pub fn blocks(&self) -> usize {
        self.blocks
    }
}

impl StreamReport {
    fn add(&mut self, o: &StreamReport) {
        let fresh = self.runs == 0;
        let sum = |a: Option<f64>, b: Option<f64>| match (a, b) {
            _ if fresh => b,
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.gpu_compute_ms = sum(self.gpu_compute_ms, o.gpu_compute_ms);
        self.gpu_gap_ms = sum(self.gpu_gap_ms, o.gpu_gap_ms);
        self.runs += o.runs;
        self.uploads += o.uploads;
        self.uploaded_bytes += o.uploaded_bytes;
        self.assembly_ms += o.assembly_ms;
        self.write_ms += o.write_ms;
        self.wait_assembly_ms += o.wait_assembly_ms;
        self.wait_gpu_ms += o.wait_gpu_ms;
        self.exposed_ms += o.exposed_ms;
        self.wall_ms += o.wall_ms;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_param_belongs_to_a_block_only_when_every_part_does() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(block_of_parts(&p(&["transformer_blocks.3.attn.to_q.weight"])), Some(3));
        assert_eq!(
            block_of_parts(&p(&["transformer_blocks.12.txt_mod.1.weight", "transformer_blocks.12.img_mod.1.weight"])),
            Some(12)
        );
        assert_eq!(block_of_parts(&p(&["transformer_blocks.0.txt_mod.1", "transformer_blocks.1.txt_mod.1"])), None);
        assert_eq!(block_of_parts(&p(&["proj_out.weight"])), None);
        assert_eq!(block_of_parts(&p(&["transformer_blocks.x.a"])), None);
        assert_eq!(block_of_parts(&[]), None);
    }
}
