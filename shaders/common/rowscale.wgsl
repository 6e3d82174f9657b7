// rowscale: the per-row power-of-two scaling of the tile programs' f16 operands
// (docs/kernels.md "Precision"): a row whose largest |value| has f32 bits `amax_bits` is multiplied
// by 2^s before rounding to f16, s = 14 - floor(log2 max) clamped to ±100, so its largest value lies
// in [2^14, 2^15); the result is multiplied by 2^-s (both exact). Mirrors `gemm::cpu::row_shift`.
fn rowscale_shift(amax_bits: u32) -> i32 {
    return clamp(14 - (i32((amax_bits >> 23u) & 0xffu) - 127), -100, 100);
}
