// act: activation helpers shared by the GEMM epilogue and the element-wise kernels.
// act_tanh: tanh through exp of a non-positive argument, so no overflow for large |u|:
// tanh(u) = sign(u)·(1 − e)/(1 + e), e = exp(−2|u|).

fn act_tanh(u: f32) -> f32 {
    let e = exp(-2.0 * abs(u));
    return sign(u) * (1.0 - e) / (1.0 + e);
}

// tanh-approximated GELU: 0.5·v·(1 + tanh(sqrt(2/π)·(v + 0.044715·v³))).
fn act_gelu_tanh(v: f32) -> f32 {
    let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
    return 0.5 * v * (1.0 + act_tanh(u));
}
