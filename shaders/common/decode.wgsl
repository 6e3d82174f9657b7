// decode: weight decoders, the WGSL side of src/dtype.rs (its encode/decode are the reference).
// Storage dtypes (the `DTYPE` override of a kernel, DType::code): 0 f32 (one u32 per element),
// 1 f16 and 2 bf16 (two per u32 word, little-endian: element 2i in the low 16 bits). The kernel
// keeps its own loads (`weight[i]` for f32, `weight[i >> 1u]` for halves) and passes words here.

// Element `hi ? 2i+1 : 2i` of the half word `w` (dtype 1 f16, else bf16).
fn decode_half(dtype: u32, w: u32, hi: bool) -> f32 {
    if (dtype == 1u) { let h = unpack2x16float(w); return select(h.x, h.y, hi); }
    return bitcast<f32>(select(w << 16u, w & 0xffff0000u, hi));
}

// The four elements of two consecutive half words (dtype 1 f16, else bf16).
fn decode_half4(dtype: u32, a: u32, b: u32) -> vec4<f32> {
    if (dtype == 1u) { return vec4<f32>(unpack2x16float(a), unpack2x16float(b)); }
    return vec4<f32>(bitcast<f32>(a << 16u), bitcast<f32>(a & 0xffff0000u),
                     bitcast<f32>(b << 16u), bitcast<f32>(b & 0xffff0000u));
}
