//! `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)`,
//! reproduced bit for bit: the initial latents of every diffusers pipeline (`randn_tensor` →
//! `prepare_latents`, shape `[B, 1, 16, 2·(H/16), 2·(W/16)]` for Qwen-Image).
//!
//! torch 2.15, `aten/src/ATen/native/cpu/DistributionTemplates.h` (`normal_kernel`):
//! - The generator is a 32-bit mt19937 seeded with `seed & 0xffff_ffff` (torch keeps the full u64
//!   as `initial_seed()`, but the engine only sees its low word: seeds 5 and 2³²+5 give the same noise).
//! - **numel ≥ 16** (float32, contiguous): all `numel` uniforms `u = (next_u32 & 0xff_ffff)·2⁻²⁴` are
//!   drawn first; then each full block of 16 becomes 16 normals by Box–Muller, `u1 = 1 − u[j]` (j < 8)
//!   and `u2 = u[j+8]` giving `r·cos θ` at j and `r·sin θ` at j+8. If `numel % 16 ≠ 0`, 16 *fresh*
//!   uniforms are drawn and the last 16 outputs are recomputed from them (overlapping the last block).
//!   On x86-64 with AVX2 or AVX-512 (what torch dispatches to on any recent x86 CPU) the block uses
//!   `avx_mathfun.h` (`log256_ps`, `sincos256_ps`: Cephes polynomials in f32) compiled by GCC with FMA
//!   contraction, and `θ = f32(2π)·u2` in f32. [`randn`] reproduces that kernel exactly, FMAs included.
//!   Without AVX2 (`ATEN_CPU_CAPABILITY=default`, non-x86 builds) torch runs the scalar block instead:
//!   libm `logf/cosf/sinf` and `θ` rounded from a double product; that is [`randn_scalar`].
//! - **numel < 16**: `at::normal_distribution<double>` per element: two 53-bit uniforms from
//!   `random64()` (two u32 draws, first one high), `r = √(−2·log1p(−u2))`, `θ = 2π·u1`; it returns
//!   `r·cos θ` and caches `r·sin θ` for the next element; the f64 result is rounded to f32.

use std::f64::consts::PI;

/// `numel` at and above which torch switches from the per-element double path to the 16-wide block fill.
const BLOCK_FILL_MIN_NUMEL: usize = 16;

/// Normal samples as torch's CPU `randn` on x86-64 with AVX2/AVX-512 produces them (see the module doc).
///
/// `shape` is only multiplied out (row-major order, as torch fills a contiguous tensor); an empty
/// product gives an empty vector. Panics if the element count overflows `usize`.
pub fn randn(seed: u64, shape: &[usize]) -> Vec<f32> {
    fill(seed, numel(shape), Kernel::Avx2)
}

/// Normal samples as torch's portable (non-SIMD) CPU kernel produces them: torch on CPUs without
/// AVX2, on non-x86 builds, or with `ATEN_CPU_CAPABILITY=default`. It calls the platform's
/// `logf`/`cosf`/`sinf`, so it matches torch bit for bit where both use the same libm (glibc).
/// Differs from [`randn`] by up to a few ulps (more near zeros of cos/sin) for `numel ≥ 16`.
pub fn randn_scalar(seed: u64, shape: &[usize]) -> Vec<f32> {
    fill(seed, numel(shape), Kernel::Scalar)
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).expect("randn: shape element count overflows usize")
}

#[derive(Clone, Copy)]
enum Kernel {
    Avx2,
    Scalar,
}

fn fill(seed: u64, n: usize, kernel: Kernel) -> Vec<f32> {
    let mut mt = Mt19937::new(seed as u32);
    if n < BLOCK_FILL_MIN_NUMEL {
        return normal_f64_stream(&mut mt, n);
    }
    let mut data: Vec<f32> = (0..n).map(|_| uniform_f32(&mut mt)).collect();
    let block = match kernel {
        Kernel::Avx2 => box_muller_16_avx2,
        Kernel::Scalar => box_muller_16_scalar,
    };
    for chunk in data.chunks_exact_mut(16) {
        block(chunk.try_into().expect("cannot fail: chunks_exact(16)"));
    }
    if n % 16 != 0 {
        let tail = &mut data[n - 16..];
        for v in tail.iter_mut() {
            *v = uniform_f32(&mut mt);
        }
        block(tail.try_into().expect("cannot fail: 16-element slice"));
    }
    data
}

/// `at::uniform_real_distribution<float>(0, 1)`: the low 24 bits of one draw, times 2⁻²⁴ (exact).
fn uniform_f32(mt: &mut Mt19937) -> f32 {
    (mt.next_u32() & 0x00ff_ffff) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// `at::uniform_real_distribution<double>(0, 1)`: 53 low bits of `random64()`, times 2⁻⁵³.
fn uniform_f64(mt: &mut Mt19937) -> f64 {
    let hi = mt.next_u32() as u64;
    let lo = mt.next_u32() as u64;
    (((hi << 32) | lo) & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The numel < 16 path: `normal_distribution<double>` with its cached second value.
fn normal_f64_stream(mt: &mut Mt19937, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    let mut cached: Option<f64> = None;
    while out.len() < n {
        if let Some(s) = cached.take() {
            out.push(s as f32);
            continue;
        }
        let u1 = uniform_f64(mt);
        let u2 = uniform_f64(mt);
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * PI * u1;
        cached = Some(r * theta.sin());
        // `transformation::normal(ret, mean=0, std=1)` = ret·1 + 0: a −0 becomes +0.
        out.push((r * theta.cos() + 0.0) as f32);
    }
    out
}

/// torch `normal_fill_16` (portable): f32 libm calls, θ rounded from `2.0f * pi<double> * u2`.
fn box_muller_16_scalar(d: &mut [f32; 16]) {
    for j in 0..8 {
        let u1 = 1.0 - d[j];
        let u2 = d[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = (2.0 * PI * u2 as f64) as f32;
        // `radius * cos(theta) * std + mean` with std = 1, mean = 0.
        d[j] = radius * theta.cos() * 1.0 + 0.0;
        d[j + 8] = radius * theta.sin() * 1.0 + 0.0;
    }
}

/// torch `normal_fill_16_AVX2`, one lane at a time (the lanes are independent).
fn box_muller_16_avx2(d: &mut [f32; 16]) {
    let two_pi = (2.0 * PI) as f32;
    for j in 0..8 {
        let u1 = 1.0 - d[j];
        let u2 = d[j + 8];
        let radius = (-2.0 * avx_mathfun::log(u1)).sqrt();
        let (sin, cos) = avx_mathfun::sincos(two_pi * u2);
        // `_mm256_fmadd_ps(n, std, mean)` with std = 1, mean = 0.
        d[j] = (radius * cos).mul_add(1.0, 0.0);
        d[j + 8] = (radius * sin).mul_add(1.0, 0.0);
    }
}

// Scalar transcriptions of torch's `aten/src/ATen/native/cpu/avx_mathfun.h` (Pommier/Garberoglio,
// Cephes coefficients) exactly as GCC compiles them with `-mfma`: a product whose only use is an
// add/sub is contracted into one fused multiply-add (`mul_add` below); every other op rounds to f32.
// The constants are the C source's double literals, converted to f32 as the C initialisers do
// (decimal → f64 → f32); some carry more digits than an f64 holds.
#[allow(clippy::excessive_precision)]
mod avx_mathfun {
    // cephes_SQRTHF = 0.707106781186547524, the same f64 as FRAC_1_SQRT_2.
    const SQRTHF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
    const LOG_P: [f32; 9] = [
        7.0376836292E-2_f64 as f32,
        -1.1514610310E-1_f64 as f32,
        1.1676998740E-1_f64 as f32,
        -1.2420140846E-1_f64 as f32,
        1.4249322787E-1_f64 as f32,
        -1.6668057665E-1_f64 as f32,
        2.0000714765E-1_f64 as f32,
        -2.4999993993E-1_f64 as f32,
        3.3333331174E-1_f64 as f32,
    ];
    const LOG_Q1: f32 = -2.12194440e-4_f64 as f32;
    const LOG_Q2: f32 = 0.693359375_f64 as f32;

    /// `log256_ps` for one lane (x ≤ 0 or NaN gives NaN, as the kernel's `invalid_mask` does).
    pub(super) fn log(x: f32) -> f32 {
        if x.is_nan() || x <= 0.0 {
            return f32::NAN;
        }
        let x = x.max(f32::from_bits(0x0080_0000)); // cut off denormals
        let bits = x.to_bits();
        let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
        // Keep the mantissa, exponent of 0.5: x ∈ [0.5, 1).
        let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
        // if x < SQRTHF { e -= 1; x = x + x - 1 } else { x = x - 1 }, written as the kernel does it.
        let below = x < SQRTHF;
        let tmp = if below { x } else { 0.0 };
        x -= 1.0;
        if below {
            e -= 1.0;
        }
        x += tmp;
        let z = x * x;
        let mut y = LOG_P[0];
        for &p in &LOG_P[1..] {
            y = y.mul_add(x, p);
        }
        y *= x;
        y = y.mul_add(z, e * LOG_Q1); // y·z + e·q1: GCC fuses the first product
        y = (-z).mul_add(0.5, y); // y − z·0.5
        let x = x + y;
        e.mul_add(LOG_Q2, x) // (x + y) + e·q2
    }

    const FOPI: f32 = 1.27323954473516_f64 as f32; // 4/π
    const DP: [f32; 3] =
        [-0.78515625_f64 as f32, -2.4187564849853515625e-4_f64 as f32, -3.77489497744594108e-8_f64 as f32];
    const SINCOF: [f32; 3] = [-1.9515295891E-4_f64 as f32, 8.3321608736E-3_f64 as f32, -1.6666654611E-1_f64 as f32];
    const COSCOF: [f32; 3] =
        [2.443315711809948E-005_f64 as f32, -1.388731625493765E-003_f64 as f32, 4.166664568298827E-002_f64 as f32];

    /// `sincos256_ps` for one lane: returns (sin x, cos x).
    pub(super) fn sincos(x: f32) -> (f32, f32) {
        let sign_in = x.to_bits() & 0x8000_0000;
        let mut x = f32::from_bits(x.to_bits() & 0x7fff_ffff);
        // j = (trunc(|x|·4/π) + 1) & !1; `_mm256_cvttps_epi32` gives i32::MIN when out of range.
        let q = x * FOPI;
        let j_raw = if q < 2_147_483_648.0 { q as i32 } else { i32::MIN };
        let j = j_raw.wrapping_add(1) & !1;
        let y = j as f32;
        let swap_sign_sin = ((j & 4) as u32) << 29;
        let poly_mask = (j & 2) == 0;
        // x = ((x − y·DP1) − y·DP2) − y·DP3, each step fused
        for dp in DP {
            x = y.mul_add(dp, x);
        }
        let sign_cos = ((!j.wrapping_sub(2) & 4) as u32) << 29;
        let sign_sin = sign_in ^ swap_sign_sin;
        let z = x * x;
        // cos polynomial: ((p0·z + p1)·z + p2)·z·z − z·0.5 + 1
        let mut yc = COSCOF[0].mul_add(z, COSCOF[1]);
        yc = yc.mul_add(z, COSCOF[2]);
        yc *= z;
        yc = yc.mul_add(z, -(z * 0.5));
        yc += 1.0;
        // sin polynomial: ((q0·z + q1)·z + q2)·z·x + x
        let mut ys = SINCOF[0].mul_add(z, SINCOF[1]);
        ys = ys.mul_add(z, SINCOF[2]);
        ys *= z;
        ys = ys.mul_add(x, x);
        // Select with the kernel's and/andnot masks and the same adds (−0 + +0 gives +0).
        let (ysin2, ysin1) = if poly_mask { (ys, 0.0) } else { (0.0, yc) };
        let ys = ys - ysin2;
        let yc = yc - ysin1;
        let s = ysin1 + ysin2;
        let c = yc + ys;
        (f32::from_bits(s.to_bits() ^ sign_sin), f32::from_bits(c.to_bits() ^ sign_cos))
    }
}

/// The 32-bit Mersenne Twister (`at::mt19937`, identical to `std::mt19937`).
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Mt19937 {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        Mt19937 { state, index: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        for k in 0..624 {
            let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % 624] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.state[k] = self.state[(k + 397) % 624] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_cpp_standard_reference_value() {
        // C++11 [rand.predef]: the 10000th output of a default-constructed std::mt19937 (seed 5489).
        let mut mt = Mt19937::new(5489);
        let mut v = 0;
        for _ in 0..10000 {
            v = mt.next_u32();
        }
        assert_eq!(v, 4_123_659_995);
    }
}
