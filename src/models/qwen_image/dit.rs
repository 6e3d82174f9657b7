//! The forward graph of `QwenImageTransformer2DModel` (diffusers transformer_qwenimage.py; spec
//! qwen-image-dit.md §3), in three execution modes:
//!
//! - `standard`: the eager layout: six Q/K/V projections per block, every op per stream;
//! - `merged`: the stacked `to_qkv` / `add_qkv_proj` projections (two per block), the rest eager;
//! - `fused`: both streams grouped into one dispatch per op, QK-norm + RoPE + head-major layout
//!   in one epilogue dispatch, GELU and gated residuals in GEMM epilogues, and the modulation
//!   vectors of all blocks computed once per step before the block stack.
//!
//! Activations use the stream-major joint layout: one buffer of R = B·S_txt + B·S_img rows, the
//! text rows of every sample first, then the image rows (`graph::ops::GemmProblem`).

use crate::dtype::DType;
use crate::graph::ops::*;
use crate::graph::{Graph, TensorId};
use crate::models::qwen_image::lora::LoraSet;
use crate::models::qwen_image::modulation::{ModLayout, ModPiece, Modulation};
use crate::models::qwen_image::DitConfig;
use crate::nn::{Emit, Linears, LoraParts, ParamSource, TrainLora};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum QkvMode {
    Standard,
    Merged,
    Fused,
}

impl QkvMode {
    pub const ALL: [QkvMode; 3] = [QkvMode::Standard, QkvMode::Merged, QkvMode::Fused];
    pub fn name(self) -> &'static str {
        match self {
            QkvMode::Standard => "standard",
            QkvMode::Merged => "merged",
            QkvMode::Fused => "fused",
        }
    }
}

/// The shapes one forward graph is built for.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardShape {
    pub batch: usize,
    pub s_txt: usize,
    /// (frames, h, w) in patch units: the target first, then the reference images.
    pub img_shapes: Vec<[usize; 3]>,
    /// Whether a text key mask is given.
    pub masked: bool,
}

/// Bounds of one forward (file- and flag-supplied sizes are checked against them before anything
/// is allocated): image tokens per sample (a 1024² picture is 4096; this is 256× that), text
/// tokens per sample, samples, and joint rows in all.
pub const MAX_IMAGE_TOKENS: usize = 1 << 20;
pub const MAX_TEXT_TOKENS: usize = 1 << 16;
pub const MAX_BATCH: usize = 1 << 10;
pub const MAX_ROWS: usize = 1 << 24;

impl ForwardShape {
    /// Checks the shape with checked arithmetic against the bounds above: one or more samples,
    /// text tokens and images, every image side positive.
    pub fn check(&self) -> crate::Result<()> {
        let err = |m: String| Err(crate::Error::input(m));
        if self.batch == 0 || self.batch > MAX_BATCH {
            return err(format!("batch {}: must be 1..={MAX_BATCH}", self.batch));
        }
        if self.s_txt == 0 || self.s_txt > MAX_TEXT_TOKENS {
            return err(format!(
                "{} text tokens: must be 1..={MAX_TEXT_TOKENS} (an empty prompt still has tokens)",
                self.s_txt
            ));
        }
        if self.img_shapes.is_empty() {
            return err("img_shapes is empty: the target image comes first".into());
        }
        let mut s_img = 0usize;
        for s in &self.img_shapes {
            let n = s[0].checked_mul(s[1]).and_then(|n| n.checked_mul(s[2])).filter(|&n| n > 0);
            match n.and_then(|n| s_img.checked_add(n)).filter(|&t| t <= MAX_IMAGE_TOKENS) {
                Some(t) => s_img = t,
                None => {
                    return err(format!(
                        "img_shapes {:?}: image {s:?} gives a zero or too large token count (at most {MAX_IMAGE_TOKENS} image tokens per sample)",
                        self.img_shapes
                    ))
                }
            }
        }
        let rows = (self.s_txt + s_img).checked_mul(self.batch).filter(|&r| r <= MAX_ROWS);
        if rows.is_none() {
            return err(format!(
                "batch {} × ({} text + {s_img} image tokens) exceeds {MAX_ROWS} rows",
                self.batch, self.s_txt
            ));
        }
        Ok(())
    }

    pub fn s_img(&self) -> usize {
        self.img_shapes.iter().map(|s| s[0] * s[1] * s[2]).sum()
    }
    /// Tokens of the target image (the first entry of `img_shapes`).
    pub fn s_target(&self) -> usize {
        let s = self.img_shapes[0];
        s[0] * s[1] * s[2]
    }
}

/// The graph and the handles its caller needs.
pub struct ForwardGraph {
    pub graph: Graph,
    /// [R, in_channels] packed latents (target then references) in the image rows of the joint
    /// layout (rows B·S_txt ..); the text rows are unused, so that img_in writes x0 row for row.
    pub hidden: TensorId,
    /// [B·S_txt, joint_attention_dim] text embeddings, f32.
    pub text: TensorId,
    /// [B, S_txt] key mask (nonzero = valid), f32, when `shape.masked`.
    pub mask: Option<TensorId>,
    /// [B] σ, or [2B] = [σ, 0] with zero_cond_t; `None` with [`Modulation::Precompute`].
    pub timestep: Option<TensorId>,
    /// With [`Modulation::Precompute`]: the [t_rows, cols] f32 modulation rows of this step
    /// (`modulation::ModLayout`; t_rows as `timestep`), a param the caller rewrites per step.
    pub modulation: Option<TensorId>,
    /// RoPE cos/sin table of every joint position (`models::qwen_image::rope`).
    pub rope: TensorId,
    /// [R, patch²·out_channels]: the image rows (B·S_txt ..) hold the model output.
    pub output: TensorId,
    /// Every param of the graph and how to build it.
    pub params: Vec<(TensorId, ParamSource)>,
    /// Params made on the host (LoRA factors), f32.
    pub host_params: Vec<(TensorId, Vec<f32>)>,
    /// Per block: the joint residual after the block ([R, D], text rows then image rows).
    pub block_outputs: Vec<TensorId>,
    /// Training graphs: (module, A [rank, in], B [out, rank]) of every trainable LoRA.
    pub trainable: Vec<(String, TensorId, TensorId)>,
    /// The shape this graph was built for.
    pub shape: ForwardShape,
}

/// Row ranges and modulation geometry shared by the block builders.
#[derive(Clone, Copy)]
struct Rows {
    b: usize,
    s_txt: usize,
    s_img: usize,
    /// Image tokens ≥ split take their modulation from rows b + alt (zero_cond_t).
    img_split: usize,
    alt: usize,
}

impl Rows {
    fn r_txt(&self) -> usize {
        self.b * self.s_txt
    }
    fn r_img(&self) -> usize {
        self.b * self.s_img
    }
    fn total(&self) -> usize {
        self.r_txt() + self.r_img()
    }
}

/// Which stream a problem belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stream {
    Txt,
    Img,
}

pub(super) struct Builder<'a> {
    pub(super) g: Graph,
    cfg: &'a DitConfig,
    rows: Rows,
    mode: QkvMode,
    modulation: Modulation,
    max_binding: u64,
    pub(super) lin: Linears<'a>,
}

/// The location of one stream's 6·D modulation vector [shift1, scale1, gate1, shift2, scale2, gate2].
#[derive(Clone, Copy)]
struct ModLoc {
    tensor: TensorId,
    offset: usize,
    stride: usize,
}

/// Options of [`build_forward`].
#[derive(Clone, Copy, Debug)]
pub struct BuildOptions<'l> {
    /// Runtime LoRAs applied through the GEMMs' side paths (base weights untouched).
    pub lora: Option<&'l LoraSet>,
    pub mode: QkvMode,
    /// The largest buffer one param may take (the adapter's storage binding limit).
    pub max_binding: u64,
    /// Keep every block's output alive to the end (block-by-block parity checks).
    pub keep_block_outputs: bool,
    /// A training graph: trainable LoRAs on these modules, and no fused epilogues whose
    /// intermediates a backward needs (GELU input, gated branch).
    pub train: Option<&'l TrainLora>,
    /// Modulation vectors computed in the graph, or read from a precomputed input.
    pub modulation: Modulation,
}

/// The modulation vectors of every block (and of `norm_out`), computed before the block stack.
struct AllMods {
    blocks: Vec<[ModLoc; 2]>,
    norm_out: ModLoc,
}

/// Builds the forward graph. `wdtype` gives the stored dtype of a checkpoint weight (by its
/// standard diffusers name).
pub fn build_forward<'a>(
    cfg: &'a DitConfig,
    shape: &ForwardShape,
    opts: BuildOptions<'a>,
    wdtype: &'a dyn Fn(&str) -> DType,
) -> ForwardGraph {
    assert!(
        opts.train.is_none() || opts.modulation == Modulation::Inline,
        "training graphs compute their modulation (random timesteps)"
    );
    Builder::new(cfg, Some(shape), opts, wdtype).forward(shape, opts.keep_block_outputs)
}

fn problem(
    row0: usize,
    rows: usize,
    rows_per_sample: usize,
    w_offset: usize,
    b_offset: usize,
    gate: Option<PerSampleRef>,
) -> GemmProblem {
    GemmProblem { row0, rows, rows_per_sample, w_offset, b_offset, gate, lora_b_offset: 0 }
}

pub(super) fn block_name(i: usize) -> String {
    format!("transformer_blocks.{i}")
}

impl<'a> Builder<'a> {
    /// A builder for the rows of `shape` (`None`: a graph without joint rows, the modulation
    /// precompute).
    pub(super) fn new(
        cfg: &'a DitConfig,
        shape: Option<&ForwardShape>,
        opts: BuildOptions<'a>,
        wdtype: &'a dyn Fn(&str) -> DType,
    ) -> Builder<'a> {
        let rows = shape.map_or(Rows { b: 0, s_txt: 0, s_img: 0, img_split: 0, alt: 0 }, |shape| Rows {
            b: shape.batch,
            s_txt: shape.s_txt,
            s_img: shape.s_img(),
            img_split: if cfg.zero_cond_t { shape.s_target() } else { shape.s_img() },
            alt: if cfg.zero_cond_t { shape.batch } else { 0 },
        });
        let out_rows = crate::models::qwen_image::names::expected_tensors(cfg)
            .into_iter()
            .filter_map(|(n, s)| n.strip_suffix(".weight").filter(|_| s.len() == 2).map(|m| (m.to_string(), s[0])))
            .collect();
        Builder {
            g: Graph::new(),
            cfg,
            rows,
            mode: opts.mode,
            modulation: opts.modulation,
            max_binding: opts.max_binding,
            lin: Linears::new(wdtype, opts.lora.map(|l| l as &dyn LoraParts), opts.train, out_rows, merged_module),
        }
    }

    fn d(&self) -> usize {
        self.cfg.hidden()
    }
    /// Rows of temb: B, or 2B with zero_cond_t (real t, then t = 0).
    fn t_rows(&self) -> usize {
        self.rows.b * if self.cfg.zero_cond_t { 2 } else { 1 }
    }

    fn act(&mut self, name: &str, shape: &[usize]) -> TensorId {
        self.g.activation(name, shape, DType::F32)
    }

    /// A one-problem GEMM `y = act(x·Wᵀ + b)` over all rows of x.
    fn linear(&mut self, x: TensorId, module: &str, n: usize, act: Activation, label: &str) -> TensorId {
        self.lin.linear(&mut self.g, x, module, n, act, label)
    }
    /// A param assembled from checkpoint tensors (`dtype` None: the stored dtype).
    fn param(&mut self, shape: &[usize], parts: Vec<String>, dtype: Option<DType>) -> TensorId {
        self.lin.param(&mut self.g, shape, parts, dtype)
    }
    fn emit_gemm(&mut self, e: Emit) {
        self.lin.emit(&mut self.g, e)
    }

    fn unary(&mut self, op: Ew, x: TensorId, label: &str) -> TensorId {
        let y = self.act(label, self.g.shape(x).to_vec().as_slice());
        self.g.push(Op::Elementwise { f: op, a: x, b: None, y }, label);
        y
    }

    fn forward(mut self, shape: &ForwardShape, keep_blocks: bool) -> ForwardGraph {
        let (cfg, r) = (self.cfg, self.rows);
        let hidden = self.g.input("hidden_states", &[r.total(), cfg.in_channels], DType::F32);
        let text = self.g.input("encoder_hidden_states", &[r.r_txt(), cfg.joint_attention_dim], DType::F32);
        let mask = shape.masked.then(|| self.g.input("encoder_hidden_states_mask", &[r.b, r.s_txt], DType::F32));
        let rope = self.g.input("rope", &[r.s_txt + r.s_img, cfg.attention_head_dim / 2, 2], DType::F32);
        let (timestep, modulation, silu_temb) = match self.modulation {
            Modulation::Inline => {
                let timestep = self.g.input("timestep", &[self.t_rows()], DType::F32);
                (Some(timestep), None, Some(self.time_embedding(timestep)))
            }
            Modulation::Precompute => {
                let cols = ModLayout::new(cfg, self.max_binding, &|n| self.lin.stored_dtype(n)).cols;
                (None, Some(self.g.param("modulation", &[self.t_rows(), cols], DType::F32)), None)
            }
        };
        let mut x = self.embed_inputs(hidden, text);
        let all = match (silu_temb, modulation) {
            (Some(_), _) if self.mode != QkvMode::Fused => None,
            (Some(s), _) => Some(self.all_modulations(s)),
            (None, Some(m)) => Some(self.input_modulations(m)),
            (None, None) => unreachable!("one of the two is built above"),
        };
        let mut block_outputs = Vec::new();
        for i in 0..cfg.num_layers {
            self.g.set_layer(Some(i));
            let m = match (&all, silu_temb) {
                (Some(a), _) => a.blocks[i],
                (None, Some(s)) => self.block_modulation(s, i),
                (None, None) => unreachable!("inline modulation has its time embedding"),
            };
            let segment = self.lin.training().is_some_and(|t| t.checkpointing);
            if segment {
                self.g.begin_segment(&block_name(i));
            }
            x = self.block(i, x, m, mask, rope);
            if segment {
                self.g.end_segment();
            }
            block_outputs.push(x);
        }
        self.g.set_layer(None);
        let out_mod = match (&all, silu_temb) {
            (Some(a), _) => a.norm_out,
            (None, Some(s)) => {
                let d = self.d();
                let t = self.linear(s, "norm_out.linear", 2 * d, Activation::None, "modulation");
                ModLoc { tensor: t, offset: 0, stride: 2 * d }
            }
            (None, None) => unreachable!("inline modulation has its time embedding"),
        };
        let output = self.final_layer(x, out_mod);
        self.g.mark_output(output);
        if keep_blocks {
            for &t in &block_outputs {
                self.g.mark_output(t);
            }
        }
        ForwardGraph {
            graph: self.g,
            hidden,
            text,
            mask,
            timestep,
            modulation,
            rope,
            output,
            params: self.lin.params,
            host_params: self.lin.host_params,
            block_outputs,
            trainable: self.lin.trainable,
            shape: shape.clone(),
        }
    }

    /// temb = linear_2(SiLU(linear_1(sinusoid(σ)))); returns SiLU(temb), the input of every
    /// modulation Linear (spec §3.4, §4).
    pub(super) fn time_embedding(&mut self, timestep: TensorId) -> TensorId {
        let d = self.d();
        let emb = self.act("t_sinusoid", &[self.g.shape(timestep)[0], 256]);
        self.g.push(Op::TimestepEmbed { t: timestep, emb }, "timestep");
        let h = self.linear(emb, "time_text_embed.timestep_embedder.linear_1", d, Activation::None, "timestep");
        let h = self.unary(Ew::Silu, h, "timestep");
        let temb = self.linear(h, "time_text_embed.timestep_embedder.linear_2", d, Activation::None, "timestep");
        self.unary(Ew::Silu, temb, "timestep")
    }

    /// x0 = [txt_in(txt_norm(text)) ; img_in(hidden)] in the joint layout.
    fn embed_inputs(&mut self, hidden: TensorId, text: TensorId) -> TensorId {
        let (cfg, r, d) = (self.cfg, self.rows, self.d());
        let j = cfg.joint_attention_dim;
        let w = self.param(&[j], vec!["txt_norm.weight".into()], Some(DType::F32));
        let tn = self.act("txt_norm", &[r.r_txt(), j]);
        let rstd = self.act("txt_norm_rstd", &[r.r_txt()]);
        self.g.push(Op::RmsNorm { cols: j, eps: 1e-6, x: text, weight: w, y: tn, rstd }, "embed");
        let x0 = self.act("x0", &[r.total(), d]);
        for (x, module, k, row0, rows) in
            [(tn, "txt_in", j, 0, r.r_txt()), (hidden, "img_in", cfg.in_channels, r.r_txt(), r.r_img())]
        {
            let problems = vec![problem(row0, rows, rows, 0, 0, None)];
            let modules = vec![vec![module.to_string()]];
            self.emit_gemm(Emit {
                x,
                y: x0,
                n: d,
                k,
                problems,
                modules,
                act: Activation::None,
                gated: None,
                label: "embed",
                y_col0: 0,
            });
        }
        x0
    }

    /// Eager modulation of block `i`: img_mod and txt_mod, one GEMM each.
    fn block_modulation(&mut self, silu_temb: TensorId, i: usize) -> [ModLoc; 2] {
        let d = self.d();
        let mut locs = [ModLoc { tensor: 0, offset: 0, stride: 6 * d }; 2];
        for (s, m) in ["txt_mod.1", "img_mod.1"].iter().enumerate() {
            let t = self.linear(silu_temb, &format!("{}.{m}", block_name(i)), 6 * d, Activation::None, "modulation");
            locs[s] = ModLoc { tensor: t, offset: 0, stride: 6 * d };
        }
        locs
    }

    /// Fused mode: the modulation of every block and of norm_out, as few GEMMs over SiLU(temb)
    /// as the binding limit allows (each block's txt_mod and img_mod weights stacked along N,
    /// blocks packed into chunks of at most `max_binding` bytes: the pieces of `ModLayout`).
    fn all_modulations(&mut self, silu_temb: TensorId) -> AllMods {
        let layout = ModLayout::new(self.cfg, self.max_binding, &|n| self.lin.stored_dtype(n));
        let mut locs = Vec::with_capacity(layout.units.len());
        for piece in &layout.pieces {
            let y = self.act("modulation", &[self.t_rows(), piece.cols]);
            self.emit_modulation_piece(silu_temb, y, &layout, piece);
            for u in piece.units.clone() {
                locs.push(ModLoc { tensor: y, offset: layout.unit_col(u) - piece.col0, stride: piece.cols });
            }
        }
        self.unit_locs(&locs)
    }

    /// Precomputed modulation: every unit's vectors at its columns of the `[t_rows, cols]` input.
    fn input_modulations(&mut self, modulation: TensorId) -> AllMods {
        let layout = ModLayout::new(self.cfg, self.max_binding, &|n| self.lin.stored_dtype(n));
        let locs: Vec<ModLoc> = (0..layout.units.len())
            .map(|u| ModLoc { tensor: modulation, offset: layout.unit_col(u), stride: layout.cols })
            .collect();
        self.unit_locs(&locs)
    }

    /// Per-block [txt, img] and norm_out locations from each unit's location.
    fn unit_locs(&self, units: &[ModLoc]) -> AllMods {
        let (layers, d) = (self.cfg.num_layers, self.d());
        let blocks = units[..layers].iter().map(|&txt| [txt, ModLoc { offset: txt.offset + 6 * d, ..txt }]).collect();
        AllMods { blocks, norm_out: units[layers] }
    }

    /// The modulation GEMMs of one piece over SiLU(temb) `x` (all rows of x) into columns
    /// `0..piece.cols` of y, as the forward of this mode emits them: fused, one GEMM stacking the
    /// piece's modules (LoRAs on the accumulate path); otherwise one GEMM per module, as
    /// `block_modulation` and the final layer run them (LoRAs on the GEMM side path).
    pub(super) fn emit_modulation_piece(&mut self, x: TensorId, y: TensorId, layout: &ModLayout, piece: &ModPiece) {
        let (d, rows) = (self.d(), self.g.shape(x)[0]);
        let units = &layout.units[piece.units.clone()];
        let emit = |modules: Vec<String>, n: usize, y_col0: usize| Emit {
            x,
            y,
            n,
            k: d,
            problems: vec![problem(0, rows, rows, 0, 0, None)],
            modules: vec![modules],
            act: Activation::None,
            gated: None,
            label: "modulation",
            y_col0,
        };
        if self.mode == QkvMode::Fused {
            let e = emit(units.iter().flat_map(|u| u.modules.clone()).collect(), piece.cols, 0);
            return self.emit_gemm(e);
        }
        let mut col = 0;
        for u in units {
            let n = u.cols / u.modules.len();
            for m in &u.modules {
                self.emit_gemm(emit(vec![m.clone()], n, col));
                col += n;
            }
        }
    }

    /// The modulation reference of chunk `c` (0 shift1, 1 scale1, 2 gate1, 3 shift2, 4 scale2,
    /// 5 gate2) for one stream.
    fn mod_ref(&self, loc: ModLoc, stream: Stream, c: usize) -> PerSampleRef {
        let r = self.rows;
        let (split, alt_shift) = match stream {
            Stream::Txt => (r.s_txt, 0),
            Stream::Img => (r.img_split, r.alt),
        };
        PerSampleRef { offset: loc.offset + c * self.d(), sample_stride: loc.stride, split, alt_shift }
    }

    /// (row0, rows, rows_per_sample) of a stream in the joint layout.
    fn stream_rows(&self, s: Stream) -> (usize, usize, usize) {
        let r = self.rows;
        match s {
            Stream::Txt => (0, r.r_txt(), r.s_txt),
            Stream::Img => (r.r_txt(), r.r_img(), r.s_img),
        }
    }
}

impl<'a> Builder<'a> {
    /// Streams grouped per dispatch: fused mode runs both streams in one grouped op; the eager
    /// layouts run one op per stream (image first, as diffusers does).
    fn groups(&self, streams: &[Stream]) -> Vec<Vec<Stream>> {
        match self.mode {
            QkvMode::Fused => vec![streams.to_vec()],
            _ => [Stream::Img, Stream::Txt].into_iter().filter(|s| streams.contains(s)).map(|s| vec![s]).collect(),
        }
    }

    /// The modulation tensor shared by a group's streams.
    fn group_mod(&self, m: &[ModLoc; 2], group: &[Stream]) -> TensorId {
        let t = m[stream_index(group[0])].tensor;
        assert!(
            group.iter().all(|&s| m[stream_index(s)].tensor == t),
            "grouped streams must share a modulation tensor"
        );
        t
    }

    /// LayerNorm + modulation (chunks `shift_c`, `shift_c + 1`) of `streams`, into a new joint tensor.
    fn norm_mod(&mut self, x: TensorId, m: &[ModLoc; 2], streams: &[Stream], shift_c: usize, label: &str) -> TensorId {
        let d = self.d();
        let rows = self.rows.total();
        let (y, mean, rstd) = (self.act(label, &[rows, d]), self.act("ln_mean", &[rows]), self.act("ln_rstd", &[rows]));
        for group in self.groups(streams) {
            let problems = group
                .iter()
                .map(|&s| {
                    let (row0, rows, rps) = self.stream_rows(s);
                    let loc = m[stream_index(s)];
                    NormProblem {
                        row0,
                        rows,
                        rows_per_sample: rps,
                        shift: self.mod_ref(loc, s, shift_c),
                        scale: self.mod_ref(loc, s, shift_c + 1),
                    }
                })
                .collect();
            let mt = self.group_mod(m, &group);
            let norm = LayerNormModOp { cols: d, problems };
            self.g.push_partial(Op::LayerNormMod { norm, x, modulation: mt, y, mean, rstd }, "norm");
        }
        y
    }

    /// A grouped projection: for each group one GEMM whose weight stacks the group's modules
    /// (`module(stream)` gives each stream's module names, stacked along N within the stream).
    #[allow(clippy::too_many_arguments)]
    fn project(
        &mut self,
        x: TensorId,
        y: TensorId,
        streams: &[Stream],
        modules: &dyn Fn(Stream) -> Vec<String>,
        n: usize,
        k: usize,
        act: Activation,
        gated: Option<(TensorId, &[ModLoc; 2], usize)>,
        label: &str,
    ) {
        if self.lin.training().is_some() && (act != Activation::None || gated.is_some()) {
            return self.project_unfused(x, y, streams, modules, n, k, act, gated, label);
        }
        for group in self.groups(streams) {
            let problems = group
                .iter()
                .map(|&s| {
                    let (row0, rows, rps) = self.stream_rows(s);
                    let gate = gated.map(|(_, m, c)| self.mod_ref(m[stream_index(s)], s, c));
                    problem(row0, rows, rps, 0, 0, gate)
                })
                .collect();
            let gated_inputs = gated.map(|(res, m, _)| (res, self.group_mod(m, &group)));
            let modules = group.iter().map(|&s| modules(s)).collect();
            self.emit_gemm(Emit { x, y, n, k, problems, modules, act, gated: gated_inputs, label, y_col0: 0 });
        }
    }

    /// Training form of [`project`](Self::project): the GEMM writes the pre-activation (or the
    /// branch), then GELU and the gated residual run as their own ops, so that the backward has
    /// the tensors it needs.
    #[allow(clippy::too_many_arguments)]
    fn project_unfused(
        &mut self,
        x: TensorId,
        y: TensorId,
        streams: &[Stream],
        modules: &dyn Fn(Stream) -> Vec<String>,
        n: usize,
        k: usize,
        act: Activation,
        gated: Option<(TensorId, &[ModLoc; 2], usize)>,
        label: &str,
    ) {
        let rows = self.rows.total();
        let z = self.act(if gated.is_some() { "branch" } else { "pre_activation" }, &[rows, n]);
        let covered: usize = streams.iter().map(|&s| self.stream_rows(s).1).sum();
        if act != Activation::None && covered < rows {
            // GELU runs over the whole tensor: give rows no stream writes a defined value.
            self.g.push(Op::Fill { value: 0.0, y: z }, label);
        }
        self.project(x, z, streams, modules, n, k, Activation::None, None, label);
        if act == Activation::GeluTanh {
            self.g.push(Op::Elementwise { f: Ew::GeluTanh, a: z, b: None, y }, label);
        }
        if let Some((res, m, c)) = gated {
            for group in self.groups(streams) {
                let problems = group
                    .iter()
                    .map(|&s| {
                        let (row0, rows, rps) = self.stream_rows(s);
                        GateProblem { row0, rows, rows_per_sample: rps, gate: self.mod_ref(m[stream_index(s)], s, c) }
                    })
                    .collect();
                let mt = self.group_mod(m, &group);
                let op = Op::GatedResidual { cols: n, problems, res, branch: z, modulation: mt, out: y };
                self.g.push_partial(op, label);
            }
        }
    }

    /// One dual-stream block (spec §3.4). `m` = [txt, img] modulation locations.
    fn block(&mut self, i: usize, x: TensorId, m: [ModLoc; 2], mask: Option<TensorId>, rope: TensorId) -> TensorId {
        let (cfg, r, d) = (self.cfg, self.rows, self.d());
        let both = [Stream::Txt, Stream::Img];
        let p = block_name(i);
        let xa = self.norm_mod(x, &m, &both, 0, "norm");
        let (q, k, v) = self.qkv(i, xa, rope);
        let js = JointShape {
            batch: r.b,
            heads: cfg.num_attention_heads,
            head_dim: cfg.attention_head_dim,
            s_txt: r.s_txt,
            s_img: r.s_img,
        };
        let o = self.act("attn_out", &[r.total(), d]);
        let lse = self.act("lse", &[r.b, js.heads, r.s_txt + r.s_img]);
        let opts = AttnOptions::full(js.heads);
        self.g.push(Op::Attention { shape: js, opts, q, k, v, mask, segments: None, o, lse }, "attention");
        let x1 = self.act("x_attn", &[r.total(), d]);
        let out = |s: Stream| vec![format!("{p}.attn.{}", if s == Stream::Txt { "to_add_out" } else { "to_out.0" })];
        self.project(o, x1, &both, &out, d, d, Activation::None, Some((x, &m, 2)), "out_proj");
        // The last block's text FFN feeds nothing (only the image stream reaches the output).
        let ffn_streams: &[Stream] = if i + 1 == cfg.num_layers { &[Stream::Img] } else { &both };
        let xm = self.norm_mod(x1, &m, ffn_streams, 3, "norm");
        let h = self.act("ffn_hidden", &[r.total(), 4 * d]);
        let up = |s: Stream| vec![format!("{p}.{}_mlp.net.0.proj", stream_prefix(s))];
        self.project(xm, h, ffn_streams, &up, 4 * d, d, Activation::GeluTanh, None, "ffn");
        let x2 = self.act("x_out", &[r.total(), d]);
        let down = |s: Stream| vec![format!("{p}.{}_mlp.net.2", stream_prefix(s))];
        self.project(h, x2, ffn_streams, &down, d, 4 * d, Activation::None, Some((x1, &m, 5)), "ffn");
        x2
    }

    /// The Q/K/V projections of the mode, then QK-norm + RoPE into head-major q, k, v.
    fn qkv(&mut self, i: usize, xa: TensorId, rope: TensorId) -> (TensorId, TensorId, TensorId) {
        let (cfg, r, d) = (self.cfg, self.rows, self.d());
        let p = block_name(i);
        let both = [Stream::Txt, Stream::Img];
        let names = |s: Stream, which: &str| match (s, which) {
            (Stream::Img, w) => format!("{p}.attn.to_{w}"),
            (Stream::Txt, w) => format!("{p}.attn.add_{w}_proj"),
        };
        let (inputs, layout) = match self.mode {
            QkvMode::Standard => {
                let mut outs = Vec::new();
                for which in ["q", "k", "v"] {
                    let y = self.act(which, &[r.total(), d]);
                    self.project(xa, y, &both, &|s| vec![names(s, which)], d, d, Activation::None, None, "qkv");
                    outs.push(y);
                }
                (outs, QkvLayout::Standard)
            }
            QkvMode::Merged | QkvMode::Fused => {
                let y = self.act("qkv", &[r.total(), 3 * d]);
                let stacked = |s: Stream| ["q", "k", "v"].iter().map(|w| names(s, w)).collect();
                self.project(xa, y, &both, &stacked, 3 * d, d, Activation::None, None, "qkv");
                (vec![y], QkvLayout::Merged)
            }
        };
        let dh = cfg.attention_head_dim;
        let norms = ["norm_q", "norm_k", "norm_added_q", "norm_added_k"]
            .iter()
            .map(|n| format!("{p}.attn.{n}.weight"))
            .collect();
        let nw = self.param(&[4, dh], norms, Some(DType::F32));
        let js =
            JointShape { batch: r.b, heads: cfg.num_attention_heads, head_dim: dh, s_txt: r.s_txt, s_img: r.s_img };
        let hm = [r.b, js.heads, r.s_txt + r.s_img, dh];
        let (q, k, v) = (self.act("q_heads", &hm), self.act("k_heads", &hm), self.act("v_heads", &hm));
        let saved = self.act("qk_rstd", &[2, r.total(), js.heads]);
        let op = Op::QkvPost { shape: js, layout, qkv: inputs, norm_weights: nw, rope, q, k, v, saved };
        self.g.push(op, "qkv_post");
        (q, k, v)
    }

    /// norm_out (LayerNorm + (scale, shift) modulation, spec §3.3) on the image rows, then
    /// proj_out; the output keeps the joint row layout (image rows hold the result).
    fn final_layer(&mut self, x: TensorId, out_mod: ModLoc) -> TensorId {
        let (r, d) = (self.rows, self.d());
        // norm_out uses temb[:B] for every image token, also with zero_cond_t (spec §5.4).
        let at = |c: usize| PerSampleRef {
            offset: out_mod.offset + c * d,
            sample_stride: out_mod.stride,
            split: r.s_img,
            alt_shift: 0,
        };
        let problem_n =
            NormProblem { row0: r.r_txt(), rows: r.r_img(), rows_per_sample: r.s_img, shift: at(1), scale: at(0) };
        let rows = r.total();
        let (xo, mean, rstd) =
            (self.act("norm_out", &[rows, d]), self.act("ln_mean", &[rows]), self.act("ln_rstd", &[rows]));
        let norm = LayerNormModOp { cols: d, problems: vec![problem_n] };
        self.g.push(Op::LayerNormMod { norm, x, modulation: out_mod.tensor, y: xo, mean, rstd }, "final");
        let n = self.cfg.out_features();
        let y = self.act("proj_out", &[rows, n]);
        let problems = vec![problem(r.r_txt(), r.r_img(), r.s_img, 0, 0, None)];
        let modules = vec![vec!["proj_out".to_string()]];
        self.emit_gemm(Emit {
            x: xo,
            y,
            n,
            k: d,
            problems,
            modules,
            act: Activation::None,
            gated: None,
            label: "final",
            y_col0: 0,
        });
        y
    }
}

fn stream_index(s: Stream) -> usize {
    match s {
        Stream::Txt => 0,
        Stream::Img => 1,
    }
}

fn stream_prefix(s: Stream) -> &'static str {
    match s {
        Stream::Txt => "txt",
        Stream::Img => "img",
    }
}

/// The merged module of a stacked [q, k, v] module list (`…attn.to_qkv`, `…attn.add_qkv_proj`).
fn merged_module(ms: &[String]) -> Option<String> {
    use crate::models::qwen_image::names::{QKV_MERGED, QKV_STANDARD};
    let (prefix, first) = ms.first()?.rsplit_once('.')?;
    let stream = QKV_STANDARD.iter().position(|q| q[0] == first)?;
    let want: Vec<String> = QKV_STANDARD[stream].iter().map(|m| format!("{prefix}.{m}")).collect();
    (ms == want.as_slice()).then(|| format!("{prefix}.{}", QKV_MERGED[stream]))
}
