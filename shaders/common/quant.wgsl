// quant: decoders of the block-quantized and fp8 weight formats (DType codes 3..16), the WGSL
// side of src/dtype/formats.rs. Unlike the other preludes these read the kernel's own
// `weight: array<u32>` binding (the tensor's bytes, little-endian, as stored in the file), so
// weights stay quantized on the GPU and are decoded in the GEMMs' load stage.
//
// Element i of a tensor lies in block i / BE at byte (i / BE)·BB, index j = i % BE in it
// (BE = 32 or 256 elements, BB bytes: ggml-common.h). Blocks are only 2-byte aligned (34-byte
// Q8_0, 110-byte Q3_K, 210-byte Q6_K), so 4-byte fields are read at even byte addresses as two
// half words (`quant_u32`). `quant_dq4_<fmt>(blk, j)` decodes elements j..j+3 of the block at
// byte blk (j a multiple of 4: the four share one scale and lie in 4 consecutive quant bytes);
// `quant_load_w4(dtype, i)` (i a multiple of 4) and `quant_load_w1(dtype, i)` dispatch on the
// kernel's DTYPE override, so the unused decoders are dropped when the pipeline is created.
//
// Numerics: each value is computed in f32 with the operation order of ggml-quants.c
// dequantize_row_* (and of DType::decode), so decoded weights equal the host's bit for bit. The
// int-times-f16-scale products are exact (≤ 22 significant bits), so a fused multiply-add of
// `d·q − m` rounds once either way; Q3_K and Q6_K round once in their last product,
// (d·sc)·q, which is therefore kept in that order.
//
// Cost per 4 elements in u32 loads (f16 weights take 2; the block header is re-read each time):
// Q8_0/Q4_0 2-3, Q4_1 2, Q5_0 3-5, Q5_1 3, Q2_K 3, Q3_K 5-7, Q4_K 4-5, Q5_K 5-6, Q6_K 4-6,
// fp8 1, scaled fp8 2; plus ~10-30 integer ops. Measured on lavapipe: 0.65-1.55x the f16 GEMM
// time (docs/quantize-kernels.md).

// ---- byte access (addresses in bytes from the start of `weight`) ----------------------------

fn quant_u8(a: u32) -> u32 {
    return (weight[a >> 2u] >> ((a & 3u) << 3u)) & 0xffu;
}

// The little-endian u16 at the even address a.
fn quant_u16(a: u32) -> u32 {
    return (weight[a >> 2u] >> ((a & 2u) << 3u)) & 0xffffu;
}

// The little-endian u32 at the even address a (the next word is read only when a % 4 == 2).
fn quant_u32(a: u32) -> u32 {
    let w = a >> 2u;
    let lo = weight[w];
    if ((a & 2u) == 0u) { return lo; }
    return (lo >> 16u) | (weight[w + 1u] << 16u);
}

// The f16 at the even address a.
fn quant_f16(a: u32) -> f32 {
    return unpack2x16float(quant_u16(a)).x;
}

// ---- fp8 -------------------------------------------------------------------------------------

// Four fp8 E4M3 (float8_e4m3fn) bytes, byte 0 lowest. Each becomes the f16 with the same sign,
// exponent field e and mantissa m in the top bits: 2^(e−15)·(1 + m/8) (subnormals 2^−14·m/8),
// and ·2^8 rebiases to 2^(e−7)·(1 + m/8) (2^−6·m/8): exact. 0x7f/0xff are NaN (no infinities).
fn quant_e4m3x4(w: u32) -> vec4<f32> {
    let b = unpack4xU8(w);
    var h = ((b & vec4<u32>(0x80u)) << vec4<u32>(8u)) | ((b & vec4<u32>(0x7fu)) << vec4<u32>(7u));
    h = select(h, h | vec4<u32>(0x7c00u), (b & vec4<u32>(0x7fu)) == vec4<u32>(0x7fu));
    let v = vec4<f32>(unpack2x16float(h.x | (h.y << 16u)), unpack2x16float(h.z | (h.w << 16u)));
    return v * 256.0;
}

// Four fp8 E5M2 bytes: each is the upper byte of an f16 (infinities and NaN included).
fn quant_e5m2x4(w: u32) -> vec4<f32> {
    let lo = ((w & 0xffu) << 8u) | ((w & 0xff00u) << 16u);
    let hi = ((w >> 8u) & 0xff00u) | (w & 0xff000000u);
    return vec4<f32>(unpack2x16float(lo), unpack2x16float(hi));
}

// Scaled fp8 (wgdit, 36 bytes): f32 scale, then 32 fp8 bytes; value = fp8 · scale.
fn quant_dq4_f8_scaled(blk: u32, j: u32, e5m2: bool) -> vec4<f32> {
    let scale = bitcast<f32>(weight[blk >> 2u]);
    let w = weight[(blk + 4u + j) >> 2u];
    if (e5m2) { return quant_e5m2x4(w) * scale; }
    return quant_e4m3x4(w) * scale;
}

// ---- 32-element blocks -----------------------------------------------------------------------

// Q8_0 (34 bytes): f16 d, i8 qs[32]; value = qs·d.
fn quant_dq4_q8_0(blk: u32, j: u32) -> vec4<f32> {
    let d = quant_f16(blk);
    return vec4<f32>(unpack4xI8(quant_u32(blk + 2u + j))) * d;
}

// The 4-bit quants of elements j..j+3 from qs[16] at byte qs: element j < 16 is the low nibble
// of qs[j], element j >= 16 the high nibble of qs[j − 16].
fn quant_nibbles(qs: u32, j: u32) -> vec4<u32> {
    return unpack4xU8((quant_u32(qs + (j & 15u)) >> ((j & 16u) >> 2u)) & 0x0f0f0f0fu);
}

// Bits j..j+3 of the u32 qh as the 5th quant bit (value 16).
fn quant_high4(qh: u32, j: u32) -> vec4<u32> {
    return ((vec4<u32>(qh >> j) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u)) << vec4<u32>(4u);
}

// Q4_0 (18 bytes): f16 d, qs[16]; value = (q − 8)·d.
fn quant_dq4_q4_0(blk: u32, j: u32) -> vec4<f32> {
    let d = quant_f16(blk);
    return vec4<f32>(vec4<i32>(quant_nibbles(blk + 2u, j)) - vec4<i32>(8)) * d;
}

// Q4_1 (20 bytes): f16 d, f16 m, qs[16]; value = q·d + m.
fn quant_dq4_q4_1(blk: u32, j: u32) -> vec4<f32> {
    let dm = unpack2x16float(weight[blk >> 2u]);
    return vec4<f32>(quant_nibbles(blk + 4u, j)) * dm.x + dm.y;
}

// Q5_0 (22 bytes): f16 d, u32 qh (bit j = 5th bit of element j), qs[16]; value = (q − 16)·d.
fn quant_dq4_q5_0(blk: u32, j: u32) -> vec4<f32> {
    let d = quant_f16(blk);
    let q = quant_nibbles(blk + 6u, j) | quant_high4(quant_u32(blk + 2u), j);
    return vec4<f32>(vec4<i32>(q) - vec4<i32>(16)) * d;
}

// Q5_1 (24 bytes): f16 d, f16 m, u32 qh, qs[16]; value = q·d + m.
fn quant_dq4_q5_1(blk: u32, j: u32) -> vec4<f32> {
    let dm = unpack2x16float(weight[blk >> 2u]);
    let q = quant_nibbles(blk + 8u, j) | quant_high4(weight[(blk + 4u) >> 2u], j);
    return vec4<f32>(q) * dm.x + dm.y;
}

// ---- 256-element k-quant super-blocks --------------------------------------------------------
// Q2_K, Q3_K, Q6_K: 16 sub-blocks of 16 (scale index j/16); Q4_K, Q5_K: 8 of 32 (index j/32).
// Q2_K/Q3_K keep 2-bit quants in qs[64]: element j is bits 2·((j/32) % 4) of qs[32·(j/128) + j % 32].

// Q2_K (84 bytes): scales[16] (low nibble scale, high nibble min), qs[64], f16 d, f16 dmin;
// value = (d·sc)·q − dmin·m.
fn quant_dq4_q2_k(blk: u32, j: u32) -> vec4<f32> {
    let dm = unpack2x16float(weight[(blk + 80u) >> 2u]);
    let sc = quant_u8(blk + (j >> 4u));
    let dl = dm.x * f32(sc & 0xfu);
    let ml = dm.y * f32(sc >> 4u);
    let qs = weight[(blk + 16u + 32u * (j >> 7u) + (j & 31u)) >> 2u];
    let q = unpack4xU8((qs >> (2u * ((j >> 5u) & 3u))) & 0x03030303u);
    return dl * vec4<f32>(q) - ml;
}

// The 6-bit scale s of Q3_K (scales[12] at byte sc): low 4 bits from byte s % 8 (high nibble
// when s >= 8), high 2 bits from byte 8 + s % 4 at bit 2·(s / 4); minus 32.
fn quant_q3_k_scale(sc: u32, s: u32) -> i32 {
    let lo = (quant_u8(sc + (s & 7u)) >> (4u * (s >> 3u))) & 0xfu;
    let hi = (quant_u8(sc + 8u + (s & 3u)) >> (2u * (s >> 2u))) & 3u;
    return i32(lo | (hi << 4u)) - 32;
}

// Q3_K (110 bytes): hmask[32] (bit j/32 of hmask[j % 32]: the 3rd bit), qs[64], scales[12],
// f16 d; value = (d·(sc − 32))·(q − (hbit ? 0 : 4)).
fn quant_dq4_q3_k(blk: u32, j: u32) -> vec4<f32> {
    let dl = quant_f16(blk + 108u) * f32(quant_q3_k_scale(blk + 96u, j >> 4u));
    let hm = unpack4xU8((quant_u32(blk + (j & 31u)) >> (j >> 5u)) & 0x01010101u);
    let qs = quant_u32(blk + 32u + 32u * (j >> 7u) + (j & 31u));
    let q = vec4<i32>(unpack4xU8((qs >> (2u * ((j >> 5u) & 3u))) & 0x03030303u));
    return dl * vec4<f32>(q - select(vec4<i32>(4), vec4<i32>(0), hm != vec4<u32>(0u)));
}

// Scale and min of sub-block s of Q4_K/Q5_K (ggml get_scale_min_k4) from scales[12] at byte sc,
// as (d·scale, dmin·min).
fn quant_k4_scale_min(dm: vec2<f32>, sc: u32, s: u32) -> vec2<f32> {
    var d: u32;
    var m: u32;
    if (s < 4u) {
        d = quant_u8(sc + s) & 63u;
        m = quant_u8(sc + s + 4u) & 63u;
    } else {
        let b = quant_u8(sc + s + 4u);
        d = (b & 0xfu) | ((quant_u8(sc + s - 4u) >> 6u) << 4u);
        m = (b >> 4u) | ((quant_u8(sc + s) >> 6u) << 4u);
    }
    return vec2<f32>(dm.x * f32(d), dm.y * f32(m));
}

// Q4_K (144 bytes): f16 d, f16 dmin, scales[12], qs[128] (element j: nibble (j/32) % 2 of
// qs[32·(j/64) + j % 32]); value = (d·sc)·q − dmin·m.
fn quant_dq4_q4_k(blk: u32, j: u32) -> vec4<f32> {
    let sm = quant_k4_scale_min(unpack2x16float(weight[blk >> 2u]), blk + 4u, j >> 5u);
    let qs = weight[(blk + 16u + 32u * (j >> 6u) + (j & 31u)) >> 2u];
    let q = unpack4xU8((qs >> (4u * ((j >> 5u) & 1u))) & 0x0f0f0f0fu);
    return sm.x * vec4<f32>(q) - sm.y;
}

// Q5_K (176 bytes): as Q4_K with qh[32] before qs (bit j/32 of qh[j % 32]: the 5th bit).
fn quant_dq4_q5_k(blk: u32, j: u32) -> vec4<f32> {
    let sm = quant_k4_scale_min(unpack2x16float(weight[blk >> 2u]), blk + 4u, j >> 5u);
    let qs = weight[(blk + 48u + 32u * (j >> 6u) + (j & 31u)) >> 2u];
    let qh = weight[(blk + 16u + (j & 31u)) >> 2u];
    let lo = (qs >> (4u * ((j >> 5u) & 1u))) & 0x0f0f0f0fu;
    let hi = ((qh >> (j >> 5u)) & 0x01010101u) << 4u;
    return sm.x * vec4<f32>(unpack4xU8(lo | hi)) - sm.y;
}

// Q6_K (210 bytes): ql[128], qh[64], i8 scales[16], f16 d. In each half n = j/128, quarter
// t = (j % 128)/32, l = j % 32: low 4 bits = nibble t/2 of ql[64n + 32·(t % 2) + l], high 2
// bits = bits 2t of qh[32n + l]; value = (d·sc)·(q − 32).
fn quant_dq4_q6_k(blk: u32, j: u32) -> vec4<f32> {
    let n = j >> 7u;
    let t = (j >> 5u) & 3u;
    let l = j & 31u;
    let ql = quant_u32(blk + 64u * n + 32u * (t & 1u) + l);
    let qh = quant_u32(blk + 128u + 32u * n + l);
    let q = ((ql >> (4u * (t >> 1u))) & 0x0f0f0f0fu) | (((qh >> (2u * t)) & 0x03030303u) << 4u);
    let sc = f32(unpack4xI8(quant_u8(blk + 192u + (j >> 4u))).x);
    let dl = quant_f16(blk + 208u) * sc;
    return dl * vec4<f32>(vec4<i32>(unpack4xU8(q)) - vec4<i32>(32));
}

// ---- dispatch on the DType code --------------------------------------------------------------

// Elements i..i+3 of a weight in a quantized or fp8 dtype (codes 3..16); i % 4 == 0, and the
// four lie in one block (the launchers require K and the offsets in whole blocks).
fn quant_load_w4(dtype: u32, i: u32) -> vec4<f32> {
    switch (dtype) {
        case 3u: { return quant_dq4_q8_0((i >> 5u) * 34u, i & 31u); }
        case 4u: { return quant_dq4_q4_0((i >> 5u) * 18u, i & 31u); }
        case 5u: { return quant_dq4_q4_1((i >> 5u) * 20u, i & 31u); }
        case 6u: { return quant_dq4_q5_0((i >> 5u) * 22u, i & 31u); }
        case 7u: { return quant_dq4_q5_1((i >> 5u) * 24u, i & 31u); }
        case 8u: { return quant_dq4_q2_k((i >> 8u) * 84u, i & 255u); }
        case 9u: { return quant_dq4_q3_k((i >> 8u) * 110u, i & 255u); }
        case 10u: { return quant_dq4_q4_k((i >> 8u) * 144u, i & 255u); }
        case 11u: { return quant_dq4_q5_k((i >> 8u) * 176u, i & 255u); }
        case 12u: { return quant_dq4_q6_k((i >> 8u) * 210u, i & 255u); }
        case 13u: { return quant_e4m3x4(weight[i >> 2u]); }
        case 14u: { return quant_e5m2x4(weight[i >> 2u]); }
        case 15u: { return quant_dq4_f8_scaled((i >> 5u) * 36u, i & 31u, false); }
        case 16u: { return quant_dq4_f8_scaled((i >> 5u) * 36u, i & 31u, true); }
        default: { return vec4<f32>(0.0); }
    }
}

// Element i (any index) of a weight in a quantized or fp8 dtype. fp8 reads its one byte; block
// formats decode the aligned four and pick one (edge loops only: the GEMMs load blocks 4-wide).
fn quant_load_w1(dtype: u32, i: u32) -> f32 {
    if (dtype == 13u || dtype == 14u) {
        let w = quant_u8(i);
        if (dtype == 13u) { return quant_e4m3x4(w).x; }
        return quant_e5m2x4(w).x;
    }
    return quant_load_w4(dtype, i & ~3u)[i & 3u];
}
