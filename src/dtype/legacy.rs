//! GGML's 32-element block formats Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1: ports of `dequantize_row_*`
//! and `quantize_row_*_ref` (ggml/src/ggml-quants.c; block structs in ggml-common.h), operation
//! for operation in f32, so that the results are bit-identical to ggml's.
//!
//! Layouts (little-endian f16 `d` and `m`):
//! - Q8_0 (34 B): d, qs[32] (i8); x = qs·d.
//! - Q4_0 (18 B): d, qs[16]; element j is the low nibble of qs[j], element j+16 its high nibble;
//!   x = (q − 8)·d.
//! - Q4_1 (20 B): d, m, qs[16] as Q4_0; x = q·d + m.
//! - Q5_0 (22 B): d, qh (u32), qs[16]; bit j of qh is bit 4 of element j; x = (q − 16)·d.
//! - Q5_1 (24 B): d, m, qh, qs[16] as Q5_0; x = q·d + m.
//!
//! The quantizers truncate with `as` where C converts a float to `int8_t`/`uint8_t`: the values
//! are in range there, where both agree (Rust saturates, C's conversion would be undefined).

use half::f16;

/// The f16 at byte `i`, widened (exact).
pub(super) fn half(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Stores `v` rounded to f16 (nearest even, as `GGML_FP32_TO_FP16`) at byte `i`.
pub(super) fn put_half(b: &mut [u8], i: usize, v: f32) {
    b[i..i + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// The value of largest magnitude (the first of equal ones) and that magnitude, as ggml's
/// `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`.
pub(super) fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// (min, max) starting from (FLT_MAX, −FLT_MAX) as ggml does.
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

pub(super) fn decode_q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = half(b, 0);
    for (y, q) in y.iter_mut().zip(&b[2..]) {
        *y = (*q as i8) as f32 * d;
    }
}

pub(super) fn decode_q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = half(b, 0);
    for (j, q) in b[2..].iter().enumerate() {
        y[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

pub(super) fn decode_q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    for (j, q) in b[4..].iter().enumerate() {
        y[j] = (q & 0x0f) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// The 5-bit quants of a Q5 block: `qh` holds bit 4 of element j at bit j.
fn q5(qh: u32, qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for (j, b) in qs.iter().enumerate() {
        q[j] = (b & 0x0f) | ((((qh >> j) << 4) & 0x10) as u8);
        q[j + 16] = (b >> 4) | (((qh >> (j + 12)) & 0x10) as u8);
    }
    q
}

pub(super) fn decode_q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = half(b, 0);
    let q = q5(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..]);
    for (y, q) in y.iter_mut().zip(q) {
        *y = (q as i32 - 16) as f32 * d;
    }
}

pub(super) fn decode_q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    let q = q5(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), &b[8..]);
    for (y, q) in y.iter_mut().zip(q) {
        *y = q as f32 * d + m;
    }
}

/// `quantize_row_q8_0_ref`: d = amax/127, q = roundf(x/d) (half away from zero, as `f32::round`).
pub(super) fn encode_q8_0(x: &[f32; 32], b: &mut [u8; 34]) {
    let amax = x.iter().fold(0.0f32, |m, v| if m > v.abs() { m } else { v.abs() });
    let d = amax / 127.0;
    let id = inverse(d);
    put_half(b, 0, d);
    for (q, v) in b[2..].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
}

/// `quantize_row_q4_0_ref`: d = max/−8 with max the signed value of largest magnitude, so that it
/// maps to q = 0 exactly; q = min(15, trunc(x/d + 8.5)).
pub(super) fn encode_q4_0(x: &[f32; 32], b: &mut [u8; 18]) {
    let (max, _) = signed_absmax(x);
    let d = max / -8.0;
    let id = inverse(d);
    put_half(b, 0, d);
    for j in 0..16 {
        let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let q1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        b[2 + j] = q0 | (q1 << 4);
    }
}

/// `quantize_row_q4_1_ref`: d = (max − min)/15, m = min, q = min(15, trunc((x − min)/d + 0.5)).
pub(super) fn encode_q4_1(x: &[f32; 32], b: &mut [u8; 20]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    put_half(b, 0, d);
    put_half(b, 2, min);
    for j in 0..16 {
        let q0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let q1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        b[4 + j] = q0 | (q1 << 4);
    }
}

/// Packs 5-bit quants into `qh` (bit 4 of element j at bit j) and nibbles `qs`.
fn pack_q5(q: &[u8; 32], qh: &mut [u8], qs: &mut [u8]) {
    let mut h = 0u32;
    for j in 0..16 {
        qs[j] = (q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4);
        h |= ((q[j] as u32 & 0x10) >> 4) << j;
        h |= ((q[j + 16] as u32 & 0x10) >> 4) << (j + 16);
    }
    qh.copy_from_slice(&h.to_le_bytes());
}

/// `quantize_row_q5_0_ref`: d = max/−16, q = min(31, trunc(x/d + 16.5)).
pub(super) fn encode_q5_0(x: &[f32; 32], b: &mut [u8; 22]) {
    let (max, _) = signed_absmax(x);
    let d = max / -16.0;
    let id = inverse(d);
    put_half(b, 0, d);
    let q = x.map(|v| ((v * id + 16.5) as i8).min(31) as u8);
    let (qh, qs) = b[2..].split_at_mut(4);
    pack_q5(&q, qh, qs);
}

/// `quantize_row_q5_1_ref`: d = (max − min)/31, m = min, q = trunc((x − min)/d + 0.5) (no clamp in
/// ggml: the largest is 31 + rounding).
pub(super) fn encode_q5_1(x: &[f32; 32], b: &mut [u8; 24]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    put_half(b, 0, d);
    put_half(b, 2, min);
    let q = x.map(|v| ((v - min) * id + 0.5) as u8);
    let (qh, qs) = b[4..].split_at_mut(4);
    pack_q5(&q, qh, qs);
}
