// act: activation helpers (and their derivatives) shared by the GEMM epilogue and the element-wise kernels.
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

// The derivative of act_gelu_tanh: 0.5·(1 + tanh u) + 0.5·v·sech²(u)·k·(1 + 3·0.044715·v²), k = sqrt(2/π), with
// tanh and sech² from one e = exp(−2|u|) (no overflow for large |u|). Past |v| = 20, sech² underflows to 0 while v³
// may overflow (0·inf): the term is dropped.
fn act_gelu_tanh_grad(v: f32) -> f32 {
    let k = 0.7978845608028654;
    let u = k * (v + 0.044715 * v * v * v);
    let e = exp(-2.0 * abs(u));
    let t = sign(u) * (1.0 - e) / (1.0 + e);
    let sech2 = 4.0 * e / ((1.0 + e) * (1.0 + e));
    let inner = select(0.0, 0.5 * v * sech2 * k * (1.0 + 0.134145 * v * v), abs(v) < 20.0);
    return 0.5 * (1.0 + t) + inner;
}
