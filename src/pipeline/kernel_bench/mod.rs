//! `wgdit bench kernels` (docs/kernels.md, "Kernel bench"): the GEMM and attention kernels of
//! every kernel family side by side, at the real models' shapes ([`cases`]), as median GPU
//! time, TFLOP/s and % of the device's published peak ([`peaks`]).
//!
//! Variants are kernel families ([`Family`]): `portable` is what `Variant::Auto` runs for the
//! portable family (`Registers` on CPU adapters, `Workgroup` elsewhere), `f16`, `coop` and
//! `coop-emulated` the tile program on that fragment backend ([`tiles_for`]), for the GEMMs and
//! attention ([`attention_launcher`]); a layout that does not fit the adapter is noted and skipped.

pub mod cases;
pub mod peaks;
pub mod report;

pub use cases::{cases, AttnCase, Case, GemmCase};
pub use report::{Peaks, Row};

use crate::gpu::{Bound, Family, Gpu, Launch};
use crate::kernels::attention::{self, Args, BackwardArgs};
use crate::kernels::gemm::{self, Epilogue, GemmArgs, GemmProblem, Variant};
use crate::kernels::Tiles;
use crate::layout::{AttnOptions, JointShape};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::Result;
use std::time::Instant;

/// What to run.
#[derive(Clone, Debug)]
pub struct KernelBench {
    /// The small `--quick` rows instead of the full-size ones.
    pub quick: bool,
    /// Timed iterations per row and variant (after one warm-up).
    pub iters: usize,
    /// `--peak`: the f16 matrix peak in TFLOP/s, instead of the device table.
    pub peak: Option<f64>,
    /// The variants, in column order (`portable` first gives every row its ratio).
    pub variants: Vec<Family>,
}

impl KernelBench {
    pub fn new(quick: bool) -> KernelBench {
        KernelBench { quick, iters: if quick { 3 } else { 20 }, peak: None, variants: Family::ALL.to_vec() }
    }
}

/// What a run reports as it goes: notes (skipped variants, warnings) and each row when measured.
pub enum Event<'a> {
    Note(String),
    Row(&'a Row),
}

/// The fragment backend of `family` on this adapter (`None`: the portable f32 kernels), or why
/// the adapter cannot run it.
pub fn tiles_for(gpu: &Gpu, family: Family) -> std::result::Result<Option<Tiles>, String> {
    match family {
        Family::Portable => Ok(None),
        Family::F16 if gpu.caps().shader_f16 => Ok(Some(Tiles::F16)),
        Family::F16 => Err("the adapter has no SHADER_F16".into()),
        Family::Coop => {
            let frag = gpu.info().coop.frag()?;
            if !gpu.caps().cooperative_matrix {
                return Err("cooperative matrices are not enabled on this device".into());
            }
            Ok(Some(if frag == 8 { Tiles::Coop8 } else { Tiles::Coop16 }))
        }
        Family::CoopEmulated => Ok(Some(Tiles::Emulated16)),
    }
}

/// The GEMM entry point of a variant: what `Auto` picks for the portable family, else the tile
/// program on `tiles` with its default configuration.
pub fn gemm_variant(gpu: &Gpu, tiles: Option<Tiles>) -> Variant {
    match tiles {
        Some(t) => Variant::Tile(t),
        None if gpu.is_cpu() => Variant::Registers,
        None => Variant::Workgroup,
    }
}

/// Builds the launches of one attention row (forward: 1, backward: 2).
pub type AttnLauncher = Box<dyn Fn(&Gpu, &AttnTensors) -> Result<Vec<Launch>>>;

/// The attention kernels of a variant: the portable kernels, or the flash tile programs on a
/// fragment backend (`attention::Variant::Tile`; a layout that does not fit is `TooLarge`,
/// which the bench notes and skips).
pub fn attention_launcher(tiles: Option<Tiles>) -> AttnLauncher {
    let variant = match tiles {
        None => attention::Variant::Portable,
        Some(t) => attention::Variant::Tile(t),
    };
    Box::new(move |gpu, t| t.launches(gpu, variant))
}

/// The operands of one GEMM row: uniform random x and bf16 W in [-1, 1], bias, y.
pub struct GemmTensors {
    pub case: GemmCase,
    x: Tensor,
    w: Tensor,
    bias: Tensor,
    y: Tensor,
}

impl GemmTensors {
    pub fn new(gpu: &Gpu, case: &GemmCase) -> Result<GemmTensors> {
        let mut rng = Rng::new(7);
        let (m, n, k) = (case.m, case.n, case.k);
        let mut t = |shape: &[usize], dt: DType, name: &str| {
            let len = shape.iter().product();
            Tensor::from_f32(gpu, &rng.vec_uniform(len, -1.0, 1.0), shape, dt, name)
        };
        Ok(GemmTensors {
            case: case.clone(),
            x: t(&[m, k], DType::F32, "bench.x")?,
            w: t(&[n, k], DType::BF16, "bench.w")?,
            bias: t(&[n], DType::F32, "bench.bias")?,
            y: Tensor::zeros(gpu, &[m, n], DType::F32, "bench.y")?,
        })
    }

    pub fn launch(&self, gpu: &Gpu, variant: Variant) -> Result<Launch> {
        let c = &self.case;
        let epilogue = Epilogue { bias: c.bias.then_some(&self.bias), gelu: c.gelu, ..Default::default() };
        let problems = [GemmProblem::rows(0, c.m)];
        let a = GemmArgs { x: &self.x, weight: &self.w, n: c.n, problems: &problems, epilogue, y: &self.y, y_col0: 0 };
        gemm::launch_variant(gpu, &a, variant)
    }
}

/// The operands of one attention row (head-major q, k, v; o and lse from a real forward, so the
/// backward sees consistent statistics).
pub struct AttnTensors {
    pub shape: JointShape,
    pub backward: bool,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    d_o: Tensor,
    delta: Tensor,
    grads: [Tensor; 3],
}

impl AttnTensors {
    pub fn new(gpu: &Gpu, case: &AttnCase) -> Result<AttnTensors> {
        let sh = case.shape;
        let mut rng = Rng::new(7);
        let n = sh.head_major_len();
        let mut t =
            |n: usize, name: &str| Tensor::from_f32(gpu, &rng.vec_uniform(n, -1.0, 1.0), &[n], DType::F32, name);
        let [q, k, v, d_o] = [t(n, "bench.q")?, t(n, "bench.k")?, t(n, "bench.v")?, t(n, "bench.do")?];
        let zeros = |n: usize, name: &str| Tensor::zeros(gpu, &[n], DType::F32, name);
        let grads = [zeros(n, "bench.dq")?, zeros(n, "bench.dk")?, zeros(n, "bench.dv")?];
        let (o, lse, delta) =
            (zeros(n, "bench.o")?, zeros(sh.lse_len(), "bench.lse")?, zeros(sh.lse_len(), "bench.delta")?);
        let a = AttnTensors { shape: sh, backward: false, q, k, v, o, lse, d_o, delta, grads };
        if case.backward {
            gpu.run(&a.launches(gpu, attention::Variant::Portable)?)?;
        }
        Ok(AttnTensors { backward: case.backward, ..a })
    }

    /// The launches of one variant (`Error::TooLarge` when its layout does not fit the adapter).
    fn launches(&self, gpu: &Gpu, variant: attention::Variant) -> Result<Vec<Launch>> {
        let sh = &self.shape;
        if !self.backward {
            let opts = AttnOptions::full(sh.heads);
            let (q, k, v, o, lse) = (&self.q, &self.k, &self.v, &self.o, &self.lse);
            let a = Args { q, k, v, mask: None, segments: None, opts, o, lse };
            return Ok(vec![attention::launch_forward_variant(gpu, sh, &a, variant)?]);
        }
        let [dq, dk, dv] = &self.grads;
        let a = BackwardArgs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            mask: None,
            o: &self.o,
            lse: &self.lse,
            d_o: &self.d_o,
            delta: &self.delta,
            dq,
            dk,
            dv,
        };
        attention::launch_backward_variant(gpu, sh, &a, variant)
    }
}

/// The operands of one row, shared by its variants.
enum Operands {
    Gemm(Box<GemmTensors>),
    Attention(Box<AttnTensors>),
}

impl Operands {
    fn new(gpu: &Gpu, case: &Case) -> Result<Operands> {
        Ok(match case {
            Case::Gemm(g) => Operands::Gemm(Box::new(GemmTensors::new(gpu, g)?)),
            Case::Attention(a) => Operands::Attention(Box::new(AttnTensors::new(gpu, a)?)),
        })
    }

    /// The variant's launches.
    fn launches(&self, gpu: &Gpu, tiles: Option<Tiles>) -> Result<Vec<Launch>> {
        match self {
            Operands::Gemm(g) => g.launch(gpu, gemm_variant(gpu, tiles)).map(|l| vec![l]),
            Operands::Attention(a) => attention_launcher(tiles)(gpu, a),
        }
    }
}

/// Median milliseconds of `iters` runs of the dispatches (after one warm-up), from GPU
/// timestamps (summed over the dispatches) when the adapter has them, else wall clock around a
/// submit and a queue wait; and which of the two it was.
pub fn measure(gpu: &Gpu, bound: &[Bound], iters: usize) -> Result<(f64, &'static str)> {
    let refs: Vec<&Bound> = bound.iter().collect();
    gpu.submit(&refs)?;
    gpu.sync()?;
    let mut ms = Vec::with_capacity(iters);
    let mut source = "gpu-timestamps";
    for _ in 0..iters.max(1) {
        if let Some(ns) = gpu.submit_timed(&refs)? {
            ms.push(ns.iter().sum::<f64>() / 1e6);
            continue;
        }
        source = "wall-clock";
        let t = Instant::now();
        gpu.submit(&refs)?;
        gpu.sync()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], source))
}

/// The variants that run here, each with its backend; a note for every one that cannot.
fn plan_variants(gpu: &Gpu, b: &KernelBench, sink: &mut dyn FnMut(Event)) -> Vec<(Family, Option<Tiles>)> {
    let mut v = Vec::new();
    for &f in &b.variants {
        match tiles_for(gpu, f) {
            Ok(t) => v.push((f, t)),
            Err(why) => sink(Event::Note(format!("variant {} skipped: {why}", f.name()))),
        }
    }
    v
}

/// Runs every row of `b` for every variant the adapter can run, reporting each row to `sink`
/// when measured; returns all rows.
pub fn run(gpu: &Gpu, b: &KernelBench, sink: &mut dyn FnMut(Event)) -> Result<Vec<Row>> {
    if gpu.is_cpu() && !b.quick {
        sink(Event::Note("warning: full-size rows on a CPU adapter take hours; pass --quick".into()));
    }
    let peaks = Peaks::resolve(&gpu.info().name, b.peak);
    let variants = plan_variants(gpu, b, sink);
    let limit = gpu.limits().max_storage_binding;
    let mut all = Vec::new();
    for case in cases(b.quick) {
        if case.largest_binding() > limit {
            let mib = |v: u64| v as f64 / 1048576.0;
            let (need, have) = (mib(case.largest_binding()), mib(limit));
            sink(Event::Note(format!(
                "{} {}: skipped, it binds {need:.0} MiB and the adapter allows {have:.0} MiB per binding",
                case.name(),
                case.shape()
            )));
            continue;
        }
        let operands = Operands::new(gpu, &case)?;
        let mut rows = Vec::new();
        for &(family, tiles) in &variants {
            let launches = match operands.launches(gpu, tiles) {
                Ok(l) => l,
                Err(e @ crate::Error::TooLarge(_)) => {
                    sink(Event::Note(format!("{} {} {}: skipped: {e}", case.name(), case.shape(), family.name())));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let bound = launches.iter().map(|l| gpu.bind(l)).collect::<Result<Vec<_>>>()?;
            let (ms, timing) = measure(gpu, &bound, b.iters)?;
            rows.push(Row::new(gpu, &case, family, b.iters.max(1), ms, timing, &peaks));
        }
        report::fill_ratios(&mut rows);
        for r in &rows {
            sink(Event::Row(r));
        }
        all.extend(rows);
    }
    Ok(all)
}
