//! Quantized and fp8 weights (`shaders/common/quant.wgsl`) through `gemm`, `gemm_tiled` and
//! `gemm_dx`: the decoded weights equal `DType::decode` exactly (one-hot inputs make each output
//! one weight), GEMMs at awkward shapes with several weight offsets and epilogues match the f64
//! reference on the decoded weights, and weights off the block grid are refused at launch.

use super::forward::{
    check, check_grouped_equals_separate, cpu_forward, data, dit_problems, gpu_forward, Case, Res, VARIANTS,
};
use crate::gpu::Gpu;
use crate::kernels::gemm::backward::{self as bwd, DxArgs};
use crate::kernels::gemm::{self, GemmArgs, GemmProblem, Variant};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::testing::{assert_close, test_gpu, Tol};
use half::f16;

/// Every dtype the GEMMs decode with `common/quant` (DType codes 3..16).
fn quant() -> impl Iterator<Item = DType> {
    crate::dtype::ALL.into_iter().filter(|d| !d.is_float())
}

/// Byte offsets of a block's f16 scale fields, and a magnitude that keeps decoded values O(1)
/// (largest quant times largest sub-scale times it is ~1-4).
fn f16_scales(dtype: DType) -> (&'static [usize], f32) {
    match dtype {
        DType::Q8_0 => (&[0], 1.0 / 128.0),
        DType::Q4_0 => (&[0], 1.0 / 8.0),
        DType::Q4_1 => (&[0, 2], 1.0 / 16.0),
        DType::Q5_0 => (&[0], 1.0 / 16.0),
        DType::Q5_1 => (&[0, 2], 1.0 / 32.0),
        DType::Q2K => (&[80, 82], 1.0 / 32.0),
        DType::Q3K => (&[108], 1.0 / 64.0),
        DType::Q4K => (&[0, 2], 1.0 / 256.0),
        DType::Q5K => (&[0, 2], 1.0 / 512.0),
        DType::Q6K => (&[208], 1.0 / 2048.0),
        _ => (&[], 0.0),
    }
}

/// A random fp8 code of magnitude at most 2 (E4M3 exponent field ≤ 8, E5M2 ≤ 16), zeros and
/// subnormals included, never NaN or infinite.
fn small_fp8(rng: &mut Rng, e5m2: bool) -> u8 {
    let b = rng.next_u64() as u8;
    let (shift, max) = if e5m2 { (2, 16) } else { (3, 8) };
    let e = (b & 0x7f) >> shift;
    let e = if e > max { e % (max + 1) } else { e };
    (b & 0x80) | (e << shift) | (b & ((1 << shift) - 1))
}

/// Random valid weights of `dtype` for `elems` elements (whole blocks): random quant bits with
/// f16 scales (or f32, scaled fp8) of random sign drawn so the values are O(1); fp8 codes as
/// [`small_fp8`]. Independent of the host quantizer: every bit pattern of the quants is valid.
pub(super) fn random_weight(rng: &mut Rng, dtype: DType, elems: usize) -> Vec<u8> {
    let (be, bb) = (dtype.block_elems(), dtype.block_bytes());
    assert_eq!(elems % be, 0, "random_weight: {elems} elements are not whole {} blocks", dtype.name());
    let mut b: Vec<u8> = (0..elems / be * bb).map(|_| rng.next_u64() as u8).collect();
    let scale = |rng: &mut Rng, base: f32| base * rng.range(0.5, 1.5) * if rng.below(2) == 0 { 1.0 } else { -1.0 };
    match dtype {
        DType::F8E4M3 | DType::F8E5M2 => b.iter_mut().for_each(|q| *q = small_fp8(rng, dtype == DType::F8E5M2)),
        DType::F8E4M3Scaled | DType::F8E5M2Scaled => {
            let (e5m2, base) = (dtype == DType::F8E5M2Scaled, if dtype == DType::F8E5M2Scaled { 1.0 } else { 0.5 });
            for blk in b.chunks_exact_mut(bb) {
                blk[..4].copy_from_slice(&scale(rng, base).to_le_bytes());
                blk[4..].iter_mut().for_each(|q| *q = small_fp8(rng, e5m2));
            }
        }
        _ => {
            let (fields, base) = f16_scales(dtype);
            for blk in b.chunks_exact_mut(bb) {
                for &o in fields {
                    blk[o..o + 2].copy_from_slice(&f16::from_f32(scale(rng, base)).to_le_bytes());
                }
            }
        }
    }
    b
}

/// Bit-exact comparison (NaN equals NaN; +0 equals −0, which a sum with zeros may turn into +0).
fn assert_same(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let bad: Vec<usize> =
        (0..got.len()).filter(|&i| !(got[i] == want[i] || got[i].is_nan() && want[i].is_nan())).collect();
    let first: Vec<String> =
        bad.iter().take(8).map(|&i| format!("[{i}] got {:e} want {:e}", got[i], want[i])).collect();
    assert!(
        bad.is_empty(),
        "{name}: {} of {} values differ from DType::decode: {}",
        bad.len(),
        got.len(),
        first.join(", ")
    );
}

/// K values for a dtype: one and three blocks (fp8 without blocks: 32 and 96, 4-wide loads).
fn block_ks(dtype: DType) -> [usize; 2] {
    let b = dtype.block_elems().max(32);
    [b, 3 * b]
}

/// Two problems with weights one block apart (m ≥ 2), else one problem at a nonzero offset.
fn problems(dtype: DType, m: usize, n: usize, k: usize) -> Vec<GemmProblem> {
    let be = dtype.block_elems();
    if m < 2 {
        return vec![GemmProblem::rows(0, m).weight(2 * be)];
    }
    let a = m / 3 + 1;
    vec![GemmProblem::rows(0, a), GemmProblem::rows(a, m - a).weight(n * k + be).alpha(-0.5)]
}

fn identity(k: usize) -> Vec<f32> {
    (0..k * k).map(|i| if i % (k + 1) == 0 { 1.0 } else { 0.0 }).collect()
}

#[test]
fn quantized_weights_decode_exactly_like_the_host_in_gemm_and_gemm_tiled() {
    let gpu = test_gpu();
    let mut rng = Rng::new(31);
    for dtype in quant() {
        let k = dtype.block_elems().max(32);
        let n = 5;
        // x = I: row m of y is column m of the problem's W, i.e. y[m, c] = W[c, m].
        let problems = vec![GemmProblem::rows(0, k / 2), GemmProblem::rows(k / 2, k - k / 2).weight(n * k)];
        let c = Case { problems, ..Case::plain(k, n, k, dtype) };
        let mut d = data(&mut rng, &c);
        d.x = identity(k);
        let want = cpu_forward(&c, &d);
        for v in VARIANTS {
            let got = gpu_forward(&gpu, &c, &d, &[vec![0, 1]], v);
            assert_same(&format!("{} {v:?}", c.name()), &got, &want);
        }
    }
}

#[test]
fn quantized_weights_decode_exactly_like_the_host_in_gemm_dx() {
    let gpu = test_gpu();
    let mut rng = Rng::new(32);
    for dtype in quant() {
        let (n, k) = (7, 3 * dtype.block_elems().max(32));
        // dy = I: row m of dx is row m of W.
        let w_bytes = random_weight(&mut rng, dtype, 2 * n * k);
        let w = dtype.decode(&w_bytes);
        let tw = Tensor::from_bytes(&gpu, &w_bytes, &[2 * n * k], dtype, "w").unwrap();
        let dy = Tensor::from_f32(&gpu, &identity(n), &[n, n], DType::F32, "dy").unwrap();
        let problems = [GemmProblem::rows(0, 3).weight(n * k), GemmProblem::rows(3, n - 3)];
        let dx = Tensor::zeros(&gpu, &[n, k], DType::F32, "dx").unwrap();
        gpu.poison(&dx.buffer);
        let args = DxArgs { dy: &dy, dy_cols: None, weight: &tw, problems: &problems, dx: &dx, accumulate: false };
        gpu.run(&[bwd::launch_dx(&gpu, &args).unwrap()]).unwrap();
        let want: Vec<f32> = (0..n).flat_map(|m| w[(if m < 3 { n * k } else { 0 }) + m * k..][..k].to_vec()).collect();
        assert_same(&format!("gemm_dx {}", dtype.name()), &dx.to_f32(&gpu).unwrap(), &want);
    }
}

/// Every fp8 code (NaN, infinities, subnormals, −0) through both GEMM entries: W row c holds
/// code c in one column and zeros elsewhere, x is all ones, so y[c] is the decoded code.
#[test]
fn every_fp8_code_decodes_like_the_host_including_nan_and_infinities() {
    let gpu = test_gpu();
    let mut rng = Rng::new(33);
    for dtype in [DType::F8E4M3, DType::F8E5M2, DType::F8E4M3Scaled, DType::F8E5M2Scaled] {
        let (k, n) = (dtype.block_elems().max(4), 256);
        let mut bytes = Vec::new();
        for code in 0..n {
            let mut row = vec![0u8; k];
            row[code % k] = code as u8;
            if dtype.is_blocked() {
                let s = rng.range(0.25, 4.0);
                bytes.extend(s.to_le_bytes());
            }
            bytes.extend(row);
        }
        let w = dtype.decode(&bytes);
        let want: Vec<f32> = (0..n).map(|c| w[c * k + c % k]).collect();
        let x = Tensor::from_f32(&gpu, &vec![1.0; k], &[1, k], DType::F32, "x").unwrap();
        let tw = Tensor::from_bytes(&gpu, &bytes, &[n * k], dtype, "w").unwrap();
        for v in VARIANTS {
            let y = Tensor::zeros(&gpu, &[1, n], DType::F32, "y").unwrap();
            gpu.poison(&y.buffer);
            let problems = [GemmProblem::rows(0, 1)];
            let args =
                GemmArgs { x: &x, weight: &tw, n, problems: &problems, epilogue: Default::default(), y: &y, y_col0: 0 };
            gpu.run(&[gemm::launch_variant(&gpu, &args, v).unwrap()]).unwrap();
            assert_same(&format!("{} all codes {v:?}", dtype.name()), &y.to_f32(&gpu).unwrap(), &want);
        }
    }
}

#[test]
fn quantized_gemm_matches_reference_at_awkward_shapes_and_offsets() {
    let gpu = test_gpu();
    let mut rng = Rng::new(34);
    for dtype in quant() {
        for k in block_ks(dtype) {
            for m in [1, 3, 17] {
                for n in [1, 5, 33] {
                    let c = Case { bias: true, problems: problems(dtype, m, n, k), ..Case::plain(m, n, k, dtype) };
                    check(&gpu, &mut rng, &c);
                }
            }
        }
    }
}

/// fp8 has no blocks: any K, 4-wide loads when K and the offsets are multiples of 4, scalar
/// loads otherwise.
#[test]
fn fp8_gemm_matches_reference_at_k_and_offsets_off_the_4_grid() {
    let gpu = test_gpu();
    let mut rng = Rng::new(35);
    for dtype in [DType::F8E4M3, DType::F8E5M2] {
        for (k, off) in [(1, 0), (3, 1), (17, 2), (65, 3), (64, 5), (64, 8)] {
            let problems = vec![GemmProblem::rows(0, 4).weight(off), GemmProblem::rows(4, 13).weight(off + 33 * k + 3)];
            let c = Case { bias: true, problems, ..Case::plain(17, 33, k, dtype) };
            check(&gpu, &mut rng, &c);
        }
    }
}

/// The DiT layout (two streams' weights in one buffer, per-sample gates, zero_cond_t split) with
/// bias, LoRA, GELU, gate and residual on quantized weights; grouped = separate launches.
#[test]
fn quantized_gemm_epilogues_match_reference_and_separate_launches() {
    let gpu = test_gpu();
    let mut rng = Rng::new(36);
    for dtype in quant() {
        let (m, n, k) = (96, 40, dtype.block_elems().max(32));
        for (gelu, res) in [(true, Res::None), (false, Res::InPlace)] {
            let rank = 4;
            let c = Case {
                problems: dit_problems(n, k, rank, 20),
                bias: true,
                gelu,
                rank,
                gate: !gelu,
                res,
                ..Case::plain(m, n, k, dtype)
            };
            let d = check(&gpu, &mut rng, &c);
            check_grouped_equals_separate(&gpu, &c, &d);
        }
    }
}

#[test]
fn quantized_gemm_dx_matches_reference_written_and_accumulated() {
    let gpu = test_gpu();
    let mut rng = Rng::new(37);
    for dtype in quant() {
        for k in block_ks(dtype) {
            for (m, n) in [(1, 1), (3, 5), (17, 33), (17, 1), (1, 33)] {
                let problems = problems(dtype, m, n, k);
                let wlen = problems.iter().map(|p| p.weight_offset + n * k).max().unwrap();
                let w_bytes = random_weight(&mut rng, dtype, wlen);
                let w: Vec<f64> = dtype.decode(&w_bytes).iter().map(|&v| v as f64).collect();
                let tw = Tensor::from_bytes(&gpu, &w_bytes, &[wlen], dtype, "w").unwrap();
                let dy = rng.vec_uniform(m * n, -1.0, 1.0);
                let tdy = Tensor::from_f32(&gpu, &dy, &[m, n], DType::F32, "dy").unwrap();
                let dx0 = rng.vec_uniform(m * k, -1.0, 1.0);
                for accumulate in [false, true] {
                    let dx = Tensor::from_f32(&gpu, &dx0, &[m, k], DType::F32, "dx").unwrap();
                    if !accumulate {
                        gpu.poison(&dx.buffer);
                    }
                    let args =
                        DxArgs { dy: &tdy, dy_cols: None, weight: &tw, problems: &problems, dx: &dx, accumulate };
                    gpu.run(&[bwd::launch_dx(&gpu, &args).unwrap()]).unwrap();
                    let mut want: Vec<f64> = dx0.iter().map(|&v| v as f64).collect();
                    let dy64: Vec<f64> = dy.iter().map(|&v| v as f64).collect();
                    bwd::cpu::dx(&dy64, n, &w, k, &problems, &mut want, accumulate);
                    let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                    let name = format!("gemm_dx {m}x{n}x{k} {} accumulate={accumulate}", dtype.name());
                    assert_close(&name, &dx.to_f32(&gpu).unwrap(), &want, Tol::f32_dot(n));
                }
            }
        }
    }
}

/// A GEMM over a `dtype` weight of `n·k` elements with one problem at `offset`.
fn launch_on(gpu: &Gpu, dtype: DType, n: usize, k: usize, offset: usize) -> crate::Result<()> {
    let numel = (offset + n * k).next_multiple_of(dtype.block_elems());
    let w = Tensor::from_bytes(gpu, &random_weight(&mut Rng::new(1), dtype, numel), &[numel], dtype, "w")?;
    let x = Tensor::zeros(gpu, &[2, k], DType::F32, "x")?;
    let y = Tensor::zeros(gpu, &[2, n], DType::F32, "y")?;
    let problems = [GemmProblem::rows(0, 2).weight(offset)];
    let args = GemmArgs { x: &x, weight: &w, n, problems: &problems, epilogue: Default::default(), y: &y, y_col0: 0 };
    for v in [Variant::Registers, Variant::Workgroup] {
        gemm::launch_variant(gpu, &args, v)?;
    }
    let dx = Tensor::zeros(gpu, &[2, k], DType::F32, "dx")?;
    bwd::launch_dx(
        gpu,
        &DxArgs { dy: &y, dy_cols: None, weight: &w, problems: &problems, dx: &dx, accumulate: false },
    )?;
    Ok(())
}

#[test]
fn weights_off_the_block_grid_are_an_error_at_launch_not_a_wrong_answer() {
    let gpu = test_gpu();
    launch_on(&gpu, DType::Q4K, 2, 512, 256).expect("whole blocks launch");
    // K = 384 is 1.5 Q4_K blocks (the tensor itself, 2 x 384 = 3 blocks, is whole).
    let e = launch_on(&gpu, DType::Q4K, 2, 384, 0).unwrap_err().to_string();
    assert!(e.contains("K = 384") && e.contains("q4_k") && e.contains("256-element"), "{e}");
    let e = launch_on(&gpu, DType::Q8_0, 3, 64, 16).unwrap_err().to_string();
    assert!(e.contains("offset 16") && e.contains("q8_0"), "{e}");
    // gemm_dx checks the same (its own launch, after a forward that would pass).
    let w =
        Tensor::from_bytes(&gpu, &random_weight(&mut Rng::new(2), DType::Q6K, 768), &[768], DType::Q6K, "w").unwrap();
    let dy = Tensor::zeros(&gpu, &[1, 2], DType::F32, "dy").unwrap();
    let dx = Tensor::zeros(&gpu, &[1, 384], DType::F32, "dx").unwrap();
    let problems = [GemmProblem::rows(0, 1)];
    let args = DxArgs { dy: &dy, dy_cols: None, weight: &w, problems: &problems, dx: &dx, accumulate: false };
    let e = bwd::launch_dx(&gpu, &args).unwrap_err().to_string();
    assert!(e.starts_with("gemm_dx: K = 384") && e.contains("q6_k"), "{e}");
    // fp8 has no blocks: any K and offset.
    launch_on(&gpu, DType::F8E4M3, 3, 7, 5).expect("fp8 launches at any K");
}
