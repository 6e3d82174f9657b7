//! fp8 E4M3 (torch `float8_e4m3fn`) and E5M2 (torch `float8_e5m2`), one byte per element, and
//! wgdit's scaled-fp8 blocks (an f32 scale, then 32 fp8 bytes).
//!
//! E4M3: sign, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is subnormal (m·2⁻⁹), there
//! are no infinities and only S.1111.111 is NaN, so the largest finite value is 1.75·2⁸ = 448.
//! E5M2: the upper byte of an f16 (bias 15, subnormals m·2⁻¹⁶, infinities and NaNs); max 57344.
//!
//! Encoding rounds to nearest even and **saturates**: values beyond the largest finite one
//! (infinities included) become ±448 / ±57344, never NaN or inf; NaN stays NaN (S.1111111).
//! That is what a ComfyUI fp8 checkpoint holds: ComfyUI clamps to the fp8 range before it casts
//! (torch 2.15 already saturates for E4M3 but rounds E5M2 overflow to inf).

use super::DType;

/// The largest finite E4M3 value.
pub(super) const E4M3_MAX: f32 = 448.0;
/// The largest finite E5M2 value.
pub(super) const E5M2_MAX: f32 = 57344.0;

/// Decode tables of all 256 codes, built at compile time from the bit layouts.
static E4M3_TABLE: [f32; 256] = table(4, 3);
static E5M2_TABLE: [f32; 256] = table(5, 2);

/// The f32 of every code of an fp8 format with `eb` exponent and `mb` mantissa bits.
const fn table(eb: u32, mb: u32) -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut code = 0u32;
    while code < 256 {
        t[code as usize] = f32::from_bits(f32_bits(code, eb, mb));
        code += 1;
    }
    t
}

/// The f32 bits of one fp8 code (E4M3 when `eb` = 4, E5M2 when `eb` = 5).
const fn f32_bits(code: u32, eb: u32, mb: u32) -> u32 {
    let sign = (code >> 7) << 31;
    let e = (code >> mb) & ((1 << eb) - 1);
    let m = code & ((1 << mb) - 1);
    let bias = (1 << (eb - 1)) - 1;
    let all_ones = (1 << eb) - 1;
    if eb == 4 && e == all_ones && m == (1 << mb) - 1 {
        return sign | 0x7fc0_0000; // E4M3's only NaN
    }
    if eb == 5 && e == all_ones {
        return sign | 0x7f80_0000 | (m << (23 - mb)); // inf, or NaN with its payload
    }
    if e == 0 {
        if m == 0 {
            return sign;
        }
        // m·2^(1-bias-mb): normalise the leading one of m into the implicit bit.
        let p = 31 - m.leading_zeros();
        let exp = p + 127 + 1 - bias - mb;
        return sign | (exp << 23) | ((m - (1 << p)) << (23 - p));
    }
    sign | ((e + 127 - bias) << 23) | (m << (23 - mb))
}

/// The f32 value of an E4M3 byte.
pub(super) fn e4m3_to_f32(b: u8) -> f32 {
    E4M3_TABLE[b as usize]
}

/// The f32 value of an E5M2 byte.
pub(super) fn e5m2_to_f32(b: u8) -> f32 {
    E5M2_TABLE[b as usize]
}

/// E4M3 byte of `x`: round to nearest even, saturating at ±448.
pub(super) fn f32_to_e4m3(x: f32) -> u8 {
    encode(x, E4M3_MAX, 3, 7)
}

/// E5M2 byte of `x`: round to nearest even, saturating at ±57344.
pub(super) fn f32_to_e5m2(x: f32) -> u8 {
    encode(x, E5M2_MAX, 2, 15)
}

/// Rounds |x| (clamped to `max`) to `mb` mantissa bits: below the smallest normal 2^(1-bias) the
/// step is the subnormal step 2^(1-bias-mb) and `|x| / step` rounded is the code (a result equal to
/// 2^mb is the smallest normal's code, as it should be); above it, the f32 bits are rounded to
/// nearest even at mantissa bit `23-mb` (a carry moves into the exponent) and rebiased.
fn encode(x: f32, max: f32, mb: u32, bias: i32) -> u8 {
    let sign = ((x.to_bits() >> 31) as u8) << 7;
    if x.is_nan() {
        return sign | 0x7f;
    }
    let a = x.abs().min(max);
    let min_normal = f32::from_bits(((1 - bias + 127) as u32) << 23);
    let code = if a < min_normal {
        let inv_step = f32::from_bits(((bias - 1 + mb as i32 + 127) as u32) << 23);
        (a * inv_step).round_ties_even() as u32 // exact: a power-of-two scaling
    } else {
        let shift = 23 - mb;
        let bits = a.to_bits();
        let rounded = (bits + (1 << (shift - 1)) - 1 + ((bits >> shift) & 1)) >> shift;
        rounded - (((127 - bias) as u32) << mb)
    };
    sign | code as u8
}

/// The largest finite value of an fp8 dtype (or of the elements of a scaled one).
pub(super) fn max_finite(fp8: DType) -> f32 {
    match fp8 {
        DType::F8E4M3 | DType::F8E4M3Scaled => E4M3_MAX,
        DType::F8E5M2 | DType::F8E5M2Scaled => E5M2_MAX,
        d => panic!("max_finite: {} is not an fp8 dtype", d.name()),
    }
}

/// The f32 value of one element byte of an fp8 or scaled-fp8 dtype.
pub(super) fn to_f32(fp8: DType, b: u8) -> f32 {
    match fp8 {
        DType::F8E4M3 | DType::F8E4M3Scaled => e4m3_to_f32(b),
        _ => e5m2_to_f32(b),
    }
}

/// The byte of `x` in an fp8 or scaled-fp8 dtype's element format.
pub(super) fn from_f32(fp8: DType, x: f32) -> u8 {
    match fp8 {
        DType::F8E4M3 | DType::F8E4M3Scaled => f32_to_e4m3(x),
        _ => f32_to_e5m2(x),
    }
}

/// Bytes of one scaled block: the f32 scale (little-endian), then 32 fp8 bytes.
pub(super) const SCALED_BLOCK_BYTES: usize = 36;

/// Decodes one scaled block: `fp8(byte) * scale`, an f32 multiply.
pub(super) fn decode_scaled(fp8: DType, b: &[u8; 36], y: &mut [f32; 32]) {
    let scale = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (y, q) in y.iter_mut().zip(&b[4..]) {
        *y = to_f32(fp8, *q) * scale;
    }
}

/// Encodes one scaled block: scale = amax / fp8_max (1 for a block of zeros), elements x / scale.
pub(super) fn encode_scaled(fp8: DType, x: &[f32; 32], b: &mut [u8; 36]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = if amax > 0.0 { amax / max_finite(fp8) } else { 1.0 };
    b[..4].copy_from_slice(&scale.to_le_bytes());
    for (q, v) in b[4..].iter_mut().zip(x) {
        *q = from_f32(fp8, v / scale);
    }
}

/// Scaled blocks of a whole tensor of raw `fp8` bytes ([`DType::F8E4M3`] or [`DType::F8E5M2`]) that
/// share one per-tensor `scale` (ComfyUI's `scale_weight`): each 32 bytes get the scale in front.
/// The result is [`DType::F8E4M3Scaled`] / [`DType::F8E5M2Scaled`] data. `bytes.len()` must be a
/// multiple of 32 (callers check tensor shapes first).
pub fn scaled_blocks(fp8: DType, bytes: &[u8], scale: f32) -> Vec<u8> {
    assert!(matches!(fp8, DType::F8E4M3 | DType::F8E5M2), "scaled_blocks: {} is not a plain fp8 dtype", fp8.name());
    assert_eq!(bytes.len() % 32, 0, "scaled_blocks: {} fp8 bytes are not whole blocks of 32", bytes.len());
    let mut out = Vec::with_capacity(bytes.len() / 32 * SCALED_BLOCK_BYTES);
    for block in bytes.chunks_exact(32) {
        out.extend_from_slice(&scale.to_le_bytes());
        out.extend_from_slice(block);
    }
    out
}
