//! GGML's k-quants Q2_K … Q6_K (256-element super-blocks): ports of `dequantize_row_q*_K` and
//! `quantize_row_q*_K_ref` (ggml/src/ggml-quants.c; block structs in ggml-common.h), operation for
//! operation in f32. `quantize_row_*_ref` is what `llama-quantize` runs without an importance
//! matrix. The decoders are bit-exact with ggml (and gguf-py). The quantizers follow the C line by
//! line but cannot be checked against ggml's here (there is no llama.cpp offline, and gguf-py has
//! no k-quant quantizer); their tests check valid blocks and round-trip errors.
//!
//! Layouts (d, dmin: little-endian f16):
//! - Q2_K (84 B): scales[16] (low nibble: scale, high nibble: min, per 16 elements), qs[64]
//!   (2 bits), d, dmin. x = d·sc·q − dmin·m.
//! - Q3_K (110 B): hmask[32] (bit 2 of q; set means no −4), qs[64] (bits 0–1), scales[12]
//!   (sixteen 6-bit scales, offset 32), d. x = d·(sc − 32)·(q − 4).
//! - Q4_K (144 B): d, dmin, scales[12] (eight 6-bit scales and mins, `get_scale_min_k4`),
//!   qs[128]. x = d·sc·q − dmin·m per 32 elements.
//! - Q5_K (176 B): d, dmin, scales[12], qh[32] (bit 4), qs[128] (bits 0–3); as Q4_K.
//! - Q6_K (210 B): ql[128] (bits 0–3), qh[64] (bits 4–5), scales[16] (i8), d.
//!   x = d·sc·(q − 32) per 16 elements.
//!
//! Element order inside a super-block follows ggml: for Q2_K/Q3_K/Q6_K each 128-element half
//! reads its 32 bytes of `qs` four (Q6_K: two) times at growing bit shifts.

use super::legacy::half;

/// `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) of Q4_K/Q5_K.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The sixteen 6-bit Q3_K scales (still offset by 32), unpacked as `dequantize_row_q3_K` does.
fn q3_scales(s: &[u8]) -> [i8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0i8; 16];
    for (o, b) in out.iter_mut().zip(aux.iter().flat_map(|w| w.to_le_bytes())) {
        *o = b as i8;
    }
    out
}

pub(super) fn decode_q2_k(b: &[u8; 84], y: &mut [f32; 256]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, min) = (half(b, 80), half(b, 82));
    let mut i = 0;
    for (n, q) in qs.chunks_exact(32).enumerate() {
        for j in 0..4 {
            let shift = 2 * j;
            for (half16, sc) in [0, 16].into_iter().zip(&scales[8 * n + 2 * j..8 * n + 2 * j + 2]) {
                let (dl, ml) = (d * (sc & 0x0f) as f32, min * (sc >> 4) as f32);
                for l in 0..16 {
                    y[i] = dl * ((q[l + half16] >> shift) & 3) as f32 - ml;
                    i += 1;
                }
            }
        }
    }
}

pub(super) fn decode_q3_k(b: &[u8; 110], y: &mut [f32; 256]) {
    let (hm, qs) = (&b[..32], &b[32..96]);
    let scales = q3_scales(&b[96..108]);
    let d_all = half(b, 108);
    let (mut i, mut is, mut m) = (0, 0, 1u8);
    for q in qs.chunks_exact(32) {
        for j in 0..4 {
            let shift = 2 * j;
            for half16 in [0, 16] {
                let dl = d_all * (scales[is] as i32 - 32) as f32;
                is += 1;
                for l in half16..half16 + 16 {
                    let low = ((q[l] >> shift) & 3) as i32;
                    y[i] = dl * (low - if hm[l] & m != 0 { 0 } else { 4 }) as f32;
                    i += 1;
                }
            }
            m <<= 1;
        }
    }
}

pub(super) fn decode_q4_k(b: &[u8; 144], y: &mut [f32; 256]) {
    let (d, min) = (half(b, 0), half(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..]);
    for (n, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * n, scales);
        let (sc2, m2) = scale_min_k4(2 * n + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1 as f32, min * m1 as f32, d * sc2 as f32, min * m2 as f32);
        for l in 0..32 {
            y[64 * n + l] = d1 * (q[l] & 0x0f) as f32 - m1;
            y[64 * n + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

pub(super) fn decode_q5_k(b: &[u8; 176], y: &mut [f32; 256]) {
    let (d, min) = (half(b, 0), half(b, 2));
    let (scales, qh, ql) = (&b[4..16], &b[16..48], &b[48..]);
    for (n, q) in ql.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * n, scales);
        let (sc2, m2) = scale_min_k4(2 * n + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1 as f32, min * m1 as f32, d * sc2 as f32, min * m2 as f32);
        let (u1, u2) = (1u8 << (2 * n), 2u8 << (2 * n));
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[64 * n + l] = d1 * ((q[l] & 0x0f) + h1) as f32 - m1;
            y[64 * n + 32 + l] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

pub(super) fn decode_q6_k(b: &[u8; 210], y: &mut [f32; 256]) {
    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for n in 0..2 {
        let (ql, qh, sc, y) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..], &mut y[128 * n..]);
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
