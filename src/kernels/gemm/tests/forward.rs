//! GEMM forward (grouped problems, fused epilogues, LoRA side path) vs the f64 CPU reference,
//! outputs poisoned before every run. Backward kernels: tests/gemm_backward.rs.

use crate::gpu::Gpu;
use crate::kernels::gemm::{
    self, cpu, Epilogue, GemmArgs, GemmProblem, Lora, LoraProblem, PerSampleRef, Residual, TileConfig, Variant,
};
use crate::kernels::Tiles;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::testing::{assert_close, test_gpu, Tol};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
pub(super) const VARIANTS: [Variant; 2] = [Variant::Registers, Variant::Workgroup];

/// The tile program (f16 operands) in the layouts lavapipe can run: four 32x32 warp tiles and
/// one 64x64 warp tile on the f32 emulation, Metal's 8x8 fragments emulated, and the f16 SIMT
/// backend at its default tile.
pub(super) const TILE_VARIANTS: [Variant; 4] = [
    Variant::TileWith(Tiles::Emulated16, TileConfig { warps_m: 2, warps_n: 2, wtm: 32, wtn: 32, bk: 16 }),
    Variant::TileWith(Tiles::Emulated16, TileConfig { warps_m: 1, warps_n: 1, wtm: 64, wtn: 64, bk: 16 }),
    Variant::TileWith(Tiles::Emulated8, TileConfig { warps_m: 2, warps_n: 1, wtm: 32, wtn: 64, bk: 16 }),
    Variant::Tile(Tiles::F16),
];

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Res {
    None,
    From,
    InPlace,
}

/// One forward case: shapes, problems and which epilogue parts are on.
#[derive(Clone, Debug)]
pub(super) struct Case {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub dtype: DType,
    pub problems: Vec<GemmProblem>,
    pub bias: bool,
    pub gelu: bool,
    pub rank: usize,
    pub gate: bool,
    pub res: Res,
}

impl Case {
    pub fn plain(m: usize, n: usize, k: usize, dtype: DType) -> Case {
        let problems = vec![GemmProblem::rows(0, m)];
        Case { m, n, k, dtype, problems, bias: false, gelu: false, rank: 0, gate: false, res: Res::None }
    }
    pub fn name(&self) -> String {
        format!(
            "gemm {}x{}x{} {} problems={} bias={} gelu={} rank={} gate={} res={:?}",
            self.m,
            self.n,
            self.k,
            self.dtype.name(),
            self.problems.len(),
            self.bias,
            self.gelu,
            self.rank,
            self.gate,
            self.res
        )
    }
}

fn gate_end(p: &GemmProblem, n: usize) -> usize {
    let samples = p.rows.div_ceil(p.rows_per_sample);
    let alt = if p.gate.split < p.rows_per_sample { p.gate.alt_shift } else { 0 };
    p.gate.offset + (samples - 1 + alt) * p.gate.sample_stride + n
}

/// Random inputs sized for a case: the weights as stored (`w_bytes`) and decoded (`w`).
pub(super) struct Data {
    pub x: Vec<f32>,
    pub w_bytes: Vec<u8>,
    pub w: Vec<f32>,
    bias: Vec<f32>,
    gate: Vec<f32>,
    res: Vec<f32>,
    t: Vec<f32>,
    lb: Vec<f32>,
}

/// Random weights of `len` elements as stored in `dtype`: uniform in [-1, 1] rounded for the
/// float types, random valid blocks for the quantized and fp8 ones (`quant::random_weight`).
fn weight_bytes(rng: &mut Rng, dtype: DType, len: usize) -> Vec<u8> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => dtype.encode(&rng.vec_uniform(len, -1.0, 1.0)),
        _ => super::quant::random_weight(rng, dtype, len),
    }
}

pub(super) fn data(rng: &mut Rng, c: &Case) -> Data {
    let end = |f: &dyn Fn(&GemmProblem) -> usize| c.problems.iter().map(f).max().unwrap_or(0).max(1);
    let wlen = end(&|p| p.weight_offset + c.n * c.k);
    let x = rng.vec_uniform(c.m * c.k, -1.0, 1.0);
    let w_bytes = weight_bytes(rng, c.dtype, wlen);
    Data {
        x,
        w: c.dtype.decode(&w_bytes),
        w_bytes,
        bias: rng.vec_uniform(end(&|p| p.bias_offset + c.n), -1.0, 1.0),
        gate: rng.vec_uniform(end(&|p| gate_end(p, c.n)), -1.0, 1.0),
        res: rng.vec_uniform(c.m * c.n, -1.0, 1.0),
        t: rng.vec_uniform(c.m * c.rank, -1.0, 1.0),
        lb: rng.vec_uniform(end(&|p| p.lora_offset + c.n * c.rank), -1.0, 1.0),
    }
}

fn up(gpu: &Gpu, v: &[f32], dtype: DType, label: &str) -> Tensor {
    Tensor::from_f32(gpu, v, &[v.len()], dtype, label).unwrap()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

/// Runs the case on the GPU as one launch per entry of `groups` (problem index lists).
pub(super) fn gpu_forward(gpu: &Gpu, c: &Case, d: &Data, groups: &[Vec<usize>], v: Variant) -> Vec<f32> {
    let x = Tensor::from_f32(gpu, &d.x, &[c.m, c.k], DType::F32, "x").unwrap();
    let w = Tensor::from_bytes(gpu, &d.w_bytes, &[d.w.len()], c.dtype, "w").unwrap();
    let (bias, gate, lb) =
        (up(gpu, &d.bias, DType::F32, "b"), up(gpu, &d.gate, DType::F32, "g"), up(gpu, &d.lb, DType::F32, "B"));
    let res = Tensor::from_f32(gpu, &d.res, &[c.m, c.n], DType::F32, "res").unwrap();
    let t = Tensor::from_f32(gpu, &d.t, &[c.m, c.rank], DType::F32, "t").unwrap();
    let y = if c.res == Res::InPlace { res.clone() } else { Tensor::zeros(gpu, &[c.m, c.n], DType::F32, "y").unwrap() };
    if c.res != Res::InPlace {
        gpu.poison(&y.buffer);
    }
    let epilogue = Epilogue {
        bias: c.bias.then_some(&bias),
        lora: (c.rank > 0).then_some(Lora { t: &t, b: &lb, rank: c.rank }),
        gelu: c.gelu,
        gate: c.gate.then_some(&gate),
        residual: match c.res {
            Res::None => Residual::None,
            Res::From => Residual::From(&res),
            Res::InPlace => Residual::InPlace,
        },
    };
    let launches: Vec<_> = groups
        .iter()
        .map(|g| {
            let problems: Vec<_> = g.iter().map(|&i| c.problems[i]).collect();
            let args = GemmArgs { x: &x, weight: &w, n: c.n, problems: &problems, epilogue, y: &y, y_col0: 0 };
            gemm::launch_variant(gpu, &args, v).unwrap()
        })
        .collect();
    gpu.run(&launches).unwrap();
    y.to_f32(gpu).unwrap()
}

pub(super) fn cpu_forward(c: &Case, d: &Data) -> Vec<f32> {
    cpu_forward_of(c, d, &d.x, &d.w)
}

/// The reference of `--precision mixed`: x rows scaled and rounded to f16 as `gemm_coop` does,
/// weights rounded to f16 (after decoding), then the same f64 GEMM.
pub(super) fn cpu_forward_mixed(c: &Case, d: &Data) -> Vec<f32> {
    let w: Vec<f32> = d.w.iter().map(|&v| cpu::round_f16(v)).collect();
    cpu_forward_of(c, d, &cpu::mixed_rows(&d.x, c.k), &w)
}

fn cpu_forward_of(c: &Case, d: &Data, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (x, w, bias, gate, res, t, lb) =
        (f64s(x), f64s(w), f64s(&d.bias), f64s(&d.gate), f64s(&d.res), f64s(&d.t), f64s(&d.lb));
    let g = cpu::Gemm {
        x: &x,
        k: c.k,
        weight: &w,
        n: c.n,
        problems: &c.problems,
        bias: c.bias.then_some(&bias[..]),
        lora: (c.rank > 0).then_some((&t[..], &lb[..], c.rank)),
        gelu: c.gelu,
        gate: c.gate.then_some(&gate[..]),
        residual: (c.res != Res::None).then_some(&res[..]),
        ldy: c.n,
        y_col0: 0,
    };
    let mut y = vec![f64::NAN; c.m * c.n];
    cpu::gemm(&g, &mut y);
    y.iter().map(|&v| v as f32).collect()
}

/// GPU (all problems in one launch, each variant) vs the reference; returns the inputs.
pub(super) fn check(gpu: &Gpu, rng: &mut Rng, c: &Case) -> Data {
    let d = data(rng, c);
    check_with(gpu, c, &d);
    d
}

pub(super) fn check_with(gpu: &Gpu, c: &Case, d: &Data) {
    let all: Vec<usize> = (0..c.problems.len()).collect();
    let want = cpu_forward(c, d);
    for v in VARIANTS {
        let got = gpu_forward(gpu, c, d, std::slice::from_ref(&all), v);
        let s = assert_close(&format!("{} {v:?}", c.name()), &got, &want, Tol::f32_dot(c.k + c.rank));
        eprintln!("{} {v:?}: max_abs {:.2e} rel_l2 {:.2e}", c.name(), s.max_abs, s.rel_l2);
    }
    // The tile programs multiply f16-rounded operands exactly and accumulate in f32: against the
    // reference on the same rounded operands they are as close as the f32 kernels are to theirs.
    let want = cpu_forward_mixed(c, d);
    for v in TILE_VARIANTS {
        let got = gpu_forward(gpu, c, d, std::slice::from_ref(&all), v);
        let s = assert_close(&format!("{} {v:?}", c.name()), &got, &want, Tol::f32_dot(c.k + c.rank));
        eprintln!("{} {v:?}: max_abs {:.2e} rel_l2 {:.2e}", c.name(), s.max_abs, s.rel_l2);
    }
}

/// The scaled-down DiT layout: txt 2 samples x 16 tokens, then img 2 samples x 32 tokens (M = 96);
/// per-stream weights, biases and LoRA Bs packed in one buffer each; gates in modulation-style
/// rows ([shift | scale | gate], stride 3N). `split` < 32 turns on zero_cond_t for the img stream.
/// A two-problem case gives the same bits as one launch per problem, in every variant.
pub(super) fn check_grouped_equals_separate(gpu: &Gpu, c: &Case, d: &Data) {
    for v in VARIANTS.into_iter().chain(TILE_VARIANTS) {
        let grouped = gpu_forward(gpu, c, d, &[vec![0, 1]], v);
        let separate = gpu_forward(gpu, c, d, &[vec![0], vec![1]], v);
        let same = grouped.iter().zip(&separate).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{} {v:?}: grouped != separate launches", c.name());
    }
}

pub(super) fn dit_problems(n: usize, k: usize, rank: usize, split: usize) -> Vec<GemmProblem> {
    let txt = GemmProblem::rows(0, 32).samples(16).gate(PerSampleRef::per_sample(2 * n, 3 * n));
    let img_gate = PerSampleRef::per_sample(6 * n + 2 * n, 3 * n).zero_cond(split, 2);
    let img = GemmProblem::rows(32, 64).samples(32).weight(n * k).bias(n).lora(n * rank).gate(img_gate);
    vec![txt, img]
}

#[test]
fn gemm_matches_reference_at_awkward_shapes_for_all_weight_dtypes() {
    let gpu = test_gpu();
    let mut rng = Rng::new(11);
    let shapes = [(1, 1, 1), (3, 3, 3), (17, 65, 257), (65, 257, 17), (257, 17, 65), (3, 257, 64), (65, 17, 258)];
    for dtype in DTYPES {
        for &(m, n, k) in &shapes {
            let c = Case { bias: true, ..Case::plain(m, n, k, dtype) };
            check(&gpu, &mut rng, &c);
        }
    }
}

#[test]
fn odd_weight_offsets_fall_back_to_scalar_loads_for_half_weights() {
    let gpu = test_gpu();
    let mut rng = Rng::new(12);
    for dtype in DTYPES {
        let problems = vec![GemmProblem::rows(0, 5).weight(1), GemmProblem::rows(5, 12).weight(3 + 33 * 64)];
        let c = Case { problems, ..Case::plain(17, 33, 64, dtype) };
        check(&gpu, &mut rng, &c);
    }
}

#[test]
fn grouped_dit_epilogues_match_reference_and_separate_launches() {
    let gpu = test_gpu();
    let mut rng = Rng::new(13);
    let (m, n, k) = (96, 192, 64);
    let base = Case { bias: true, ..Case::plain(m, n, k, DType::F32) };
    let combos = [
        Case { ..base.clone() },
        Case { gelu: true, ..base.clone() },
        Case { gate: true, res: Res::From, ..base.clone() },
        Case { rank: 8, ..base.clone() },
        Case { rank: 8, gate: true, res: Res::InPlace, ..base.clone() },
    ];
    for dtype in DTYPES {
        for combo in &combos {
            let c = Case { dtype, problems: dit_problems(n, k, combo.rank, 32), ..combo.clone() };
            let d = check(&gpu, &mut rng, &c);
            check_grouped_equals_separate(&gpu, &c, &d);
        }
    }
}

#[test]
fn zero_cond_t_split_gates_read_the_t0_rows_for_reference_tokens() {
    let gpu = test_gpu();
    let mut rng = Rng::new(14);
    let (m, n, k) = (96, 40, 24);
    let c = Case {
        problems: dit_problems(n, k, 0, 20),
        bias: true,
        gate: true,
        res: Res::From,
        ..Case::plain(m, n, k, DType::BF16)
    };
    let d = check(&gpu, &mut rng, &c);
    // The split must matter: without it the reference tokens (img rows j >= 20) differ.
    let plain = Case { problems: dit_problems(n, k, 0, 32), ..c.clone() };
    let (want, want_plain) = (cpu_forward(&c, &d), cpu_forward(&plain, &d));
    let row = |r: usize| (r * n)..((r + 1) * n);
    assert!(want[row(32 + 25)] != want_plain[row(32 + 25)], "split had no effect on img token 25");
    assert_eq!(want[row(32 + 5)], want_plain[row(32 + 5)], "tokens before the split changed");
}

/// Stacked LoRAs: t = [s1·x·A1ᵀ | s2·x·A2ᵀ] from two down-projection launches into column ranges
/// of one t, per-stream A/B and scales, then the side path with B = [B1 | B2] per output row.
#[test]
fn two_stacked_loras_match_reference_through_lora_down_and_side_path() {
    let gpu = test_gpu();
    let mut rng = Rng::new(15);
    let (m, n, k, r1, r2) = (96, 192, 64, 4, 8);
    let r = r1 + r2;
    let x = rng.vec_uniform(m * k, -1.0, 1.0);
    let (a1, a2) = (rng.vec_uniform(2 * r1 * k, -1.0, 1.0), rng.vec_uniform(2 * r2 * k, -1.0, 1.0));
    let xt = Tensor::from_f32(&gpu, &x, &[m, k], DType::F32, "x").unwrap();
    let t = Tensor::zeros(&gpu, &[m, r], DType::F32, "t").unwrap();
    gpu.poison(&t.buffer);
    let lp = |rank: usize, s: [f32; 2]| {
        [
            LoraProblem { row0: 0, rows: 32, a_offset: 0, b_offset: 0, scale: s[0] },
            LoraProblem { row0: 32, rows: 64, a_offset: rank * k, b_offset: 0, scale: s[1] },
        ]
    };
    let (p1, p2) = (lp(r1, [0.5, 1.5]), lp(r2, [2.0, -0.25]));
    let l1 = gemm::launch_lora_down(&gpu, &xt, &up(&gpu, &a1, DType::F32, "A1"), r1, &p1, &t, 0).unwrap();
    let l2 = gemm::launch_lora_down(&gpu, &xt, &up(&gpu, &a2, DType::F32, "A2"), r2, &p2, &t, r1).unwrap();
    gpu.run(&[l1, l2]).unwrap();
    let got_t = t.to_f32(&gpu).unwrap();
    // Reference t, column block by column block.
    let mut want_t = vec![0.0f64; m * r];
    for (a, ps, col0, rank) in [(&a1, &p1, 0, r1), (&a2, &p2, r1, r2)] {
        let probs: Vec<_> =
            ps.iter().map(|p| GemmProblem::rows(p.row0, p.rows).weight(p.a_offset).alpha(p.scale)).collect();
        let (xf, af) = (f64s(&x), f64s(a));
        let g = cpu::Gemm {
            x: &xf,
            k,
            weight: &af,
            n: rank,
            problems: &probs,
            bias: None,
            lora: None,
            gelu: false,
            gate: None,
            residual: None,
            ldy: r,
            y_col0: col0,
        };
        cpu::gemm(&g, &mut want_t);
    }
    let want_t: Vec<f32> = want_t.iter().map(|&v| v as f32).collect();
    assert_close("stacked lora down t", &got_t, &want_t, Tol::f32_dot(k));
    // Side path with the GPU's t: the generic forward case, rank R = r1 + r2.
    let c = Case {
        dtype: DType::F16,
        problems: dit_problems(n, k, r, 32),
        bias: true,
        rank: r,
        ..Case::plain(m, n, k, DType::F16)
    };
    let mut d = data(&mut rng, &c);
    d.t = got_t;
    check_with(&gpu, &c, &d);
}

#[test]
fn gelu_epilogue_stays_finite_for_large_activations() {
    let gpu = test_gpu();
    let mut rng = Rng::new(16);
    let c = Case { gelu: true, ..Case::plain(9, 7, 5, DType::F32) };
    let mut d = data(&mut rng, &c);
    d.x.iter_mut().for_each(|v| *v *= 4e3); // |pre-activation| up to ~2e4: exp(2u) would overflow
    for v in VARIANTS {
        let got = gpu_forward(&gpu, &c, &d, &[vec![0]], v);
        // Values reach 1e4: scale the absolute tolerance with them (f32 dot of 5 terms).
        let tol = Tol { abs: 1e-6 * 2e4, ..Tol::f32_dot(5) };
        assert_close(&format!("gelu large {v:?}"), &got, &cpu_forward(&c, &d), tol);
    }
}

#[test]
fn tile_programs_differ_from_f32_by_f16_operand_rounding_only() {
    // The mixed reference is not the f32 one: the f16 rounding shows at ~1e-3 (so the tile
    // checks above could fail), and the tile programs stay within a few f16 ulps of f32.
    let gpu = test_gpu();
    let mut rng = Rng::new(21);
    let c = Case { bias: true, ..Case::plain(65, 130, 257, DType::BF16) };
    let d = data(&mut rng, &c);
    let f32_ref = cpu_forward(&c, &d);
    let s = crate::testing::stats(&cpu_forward_mixed(&c, &d), &f32_ref);
    assert!(s.rel_l2 > 1e-5, "rounding to f16 should show: rel_l2 {:.2e}", s.rel_l2);
    for v in TILE_VARIANTS {
        let got = gpu_forward(&gpu, &c, &d, &[vec![0]], v);
        let s = crate::testing::stats(&got, &f32_ref);
        eprintln!("{v:?} vs f32: rel_l2 {:.2e} max_abs {:.2e}", s.rel_l2, s.max_abs);
        assert!(s.rel_l2 < 2e-3, "{v:?}: rel_l2 {:.2e} vs the f32 GEMM", s.rel_l2);
    }
}

#[test]
fn tile_programs_scale_rows_so_activations_of_2e7_do_not_overflow_f16() {
    // Qwen-Image's activations reach ~2e7 (f16's largest value is 65504); tiny rows (1e-6)
    // keep their precision too. Each row has its own power-of-two scale.
    let gpu = test_gpu();
    let mut rng = Rng::new(22);
    let c = Case::plain(40, 70, 96, DType::F16);
    let mut d = data(&mut rng, &c);
    let scale = |r: usize| [2e7f32, 1e-6, 1.0, 3e4][r % 4];
    for (r, row) in d.x.chunks_mut(c.k).enumerate() {
        row.iter_mut().for_each(|v| *v *= scale(r));
    }
    // Rows compared at unit scale (the tolerances are for unit-sized operands).
    let unit = |y: &[f32]| -> Vec<f32> {
        y.chunks(c.n).enumerate().flat_map(|(r, row)| row.iter().map(move |v| v / scale(r))).collect()
    };
    let want = unit(&cpu_forward_mixed(&c, &d));
    let f32_ref = unit(&cpu_forward(&c, &d));
    for v in TILE_VARIANTS {
        let got = gpu_forward(&gpu, &c, &d, &[vec![0]], v);
        assert!(got.iter().all(|v| v.is_finite()), "{v:?}: overflowed");
        let got = unit(&got);
        assert_close(&format!("rows of 2e7 {v:?}"), &got, &want, Tol::f32_dot(c.k));
        for (r, (g, w)) in got.chunks(c.n).zip(f32_ref.chunks(c.n)).enumerate() {
            let s = crate::testing::stats(g, w);
            assert!(s.rel_l2 < 2e-3, "{v:?} row {r}: rel_l2 {:.2e} vs f32", s.rel_l2);
        }
    }
}

#[test]
fn gemm_with_trusted_shaders_matches_checked_shaders_bit_for_bit() {
    let (checked, trusted) = (test_gpu(), crate::testing::trusted_test_gpu());
    let mut rng = Rng::new(77);
    let mut cases = vec![Case::plain(17, 65, 32, DType::F32), Case::plain(3, 257, 64, DType::BF16)];
    cases.push(Case {
        bias: true,
        gelu: true,
        rank: 3,
        gate: true,
        res: Res::From,
        ..Case::plain(65, 17, 96, DType::F16)
    });
    for c in &cases {
        let d = data(&mut rng, c);
        for v in VARIANTS.into_iter().chain(TILE_VARIANTS) {
            let all = vec![(0..c.problems.len()).collect::<Vec<_>>()];
            let (a, b) = (gpu_forward(&checked, c, &d, &all, v), gpu_forward(&trusted, c, &d, &all, v));
            let bits = |y: &[f32]| y.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{} {v:?}", c.name());
        }
    }
}
