// elem_f32: operands of an emulated tile program stored as f32 values rounded to f16 (round to
// nearest even, overflow to infinity, f16 subnormals kept), so the emulation multiplies exactly
// what f16 cooperative matrices multiply, without SHADER_F16.
alias CoopElem = f32;

fn coop_elem(v: f32) -> CoopElem {
    let a = abs(v);
    if (a >= 65520.0) {  // rounds past f16's largest finite value (65504)
        return select(bitcast<f32>(0x7f800000u), bitcast<f32>(0xff800000u), v < 0.0);
    }
    if (a < 6.103515625e-05) {  // f16 subnormal range: a fixed quantum of 2^-24; round() ties to even
        return round(v * 16777216.0) / 16777216.0;
    }
    let b = bitcast<u32>(v);
    return bitcast<f32>((b + 0xfffu + ((b >> 13u) & 1u)) & 0xffffe000u);
}

fn coop_f32(v: CoopElem) -> f32 { return v; }
