//! Host encode (quantize) and decode (dequantize) of the block and fp8 formats: one function per
//! block and direction in `legacy` (Q8_0 … Q5_1), `kquant` (Q2_K … Q6_K) and `fp8`, applied here
//! to whole tensors, on every core when the tensor is large.

use super::{fp8, kquant, legacy, DType};

/// Tensors with at least this many elements are split over threads (`std::thread::scope`); smaller
/// ones are not worth the thread start.
const PARALLEL_MIN_ELEMS: usize = 1 << 20;

pub(super) fn encode(dt: DType, v: &[f32]) -> Vec<u8> {
    use DType::*;
    match dt {
        Q8_0 => encode_with(v, legacy::encode_q8_0),
        Q4_0 => encode_with(v, legacy::encode_q4_0),
        Q4_1 => encode_with(v, legacy::encode_q4_1),
        Q5_0 => encode_with(v, legacy::encode_q5_0),
        Q5_1 => encode_with(v, legacy::encode_q5_1),
        Q2K => encode_with(v, kquant::encode_q2_k),
        Q3K => encode_with(v, kquant::encode_q3_k),
        Q4K => encode_with(v, kquant::encode_q4_k),
        Q5K => encode_with(v, kquant::encode_q5_k),
        Q6K => encode_with(v, kquant::encode_q6_k),
        F8E4M3 => encode_with(v, |x: &[f32; 1], b: &mut [u8; 1]| b[0] = fp8::f32_to_e4m3(x[0])),
        F8E5M2 => encode_with(v, |x: &[f32; 1], b: &mut [u8; 1]| b[0] = fp8::f32_to_e5m2(x[0])),
        F8E4M3Scaled | F8E5M2Scaled => encode_with(v, |x, b| fp8::encode_scaled(dt, x, b)),
        F32 | F16 | BF16 => unreachable!("DType::encode handles {}", dt.name()),
    }
}

pub(super) fn decode(dt: DType, b: &[u8]) -> Vec<f32> {
    use DType::*;
    match dt {
        Q8_0 => decode_with(b, legacy::decode_q8_0),
        Q4_0 => decode_with(b, legacy::decode_q4_0),
        Q4_1 => decode_with(b, legacy::decode_q4_1),
        Q5_0 => decode_with(b, legacy::decode_q5_0),
        Q5_1 => decode_with(b, legacy::decode_q5_1),
        Q2K => decode_with(b, kquant::decode_q2_k),
        Q3K => decode_with(b, kquant::decode_q3_k),
        Q4K => decode_with(b, kquant::decode_q4_k),
        Q5K => decode_with(b, kquant::decode_q5_k),
        Q6K => decode_with(b, kquant::decode_q6_k),
        F8E4M3 => b.iter().map(|q| fp8::e4m3_to_f32(*q)).collect(),
        F8E5M2 => b.iter().map(|q| fp8::e5m2_to_f32(*q)).collect(),
        F8E4M3Scaled | F8E5M2Scaled => decode_with(b, |q, y| fp8::decode_scaled(dt, q, y)),
        F32 | F16 | BF16 => unreachable!("DType::decode handles {}", dt.name()),
    }
}

/// Encodes `v` (whole blocks of `E` values) block by block into blocks of `B` bytes.
fn encode_with<const E: usize, const B: usize>(v: &[f32], f: impl Fn(&[f32; E], &mut [u8; B]) + Sync) -> Vec<u8> {
    debug_assert_eq!(v.len() % E, 0, "encode: {} values are not whole blocks of {E}", v.len());
    let mut out = vec![0u8; v.len() / E * B];
    par_blocks(v, &mut out, E, B, |src, dst| {
        for (x, b) in src.chunks_exact(E).zip(dst.chunks_exact_mut(B)) {
            f(x.try_into().expect("cannot fail: chunks of E"), b.try_into().expect("cannot fail: chunks of B"));
        }
    });
    out
}

/// Decodes `b` (whole blocks of `B` bytes) block by block into blocks of `E` values.
fn decode_with<const B: usize, const E: usize>(b: &[u8], f: impl Fn(&[u8; B], &mut [f32; E]) + Sync) -> Vec<f32> {
    debug_assert_eq!(b.len() % B, 0, "decode: {} bytes are not whole blocks of {B}", b.len());
    let mut out = vec![0f32; b.len() / B * E];
    par_blocks(b, &mut out, B, E, |src, dst| {
        for (q, y) in src.chunks_exact(B).zip(dst.chunks_exact_mut(E)) {
            f(q.try_into().expect("cannot fail: chunks of B"), y.try_into().expect("cannot fail: chunks of E"));
        }
    });
    out
}

/// Calls `f` on matching runs of whole blocks of `src` (`sb` items a block) and `dst` (`db` items a
/// block): once for a small tensor, else once per thread on contiguous runs.
fn par_blocks<S: Sync, D: Send>(src: &[S], dst: &mut [D], sb: usize, db: usize, f: impl Fn(&[S], &mut [D]) + Sync) {
    let blocks = src.len() / sb;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || src.len().max(dst.len()) < PARALLEL_MIN_ELEMS {
        return f(src, dst);
    }
    let per = blocks.div_ceil(threads);
    std::thread::scope(|s| {
        for (src, dst) in src.chunks(per * sb).zip(dst.chunks_mut(per * db)) {
            let f = &f;
            s.spawn(move || f(src, dst));
        }
    });
}
