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

// The standard normal CDF Φ(v) = erfc(|v|/√2)/2 for v < 0 and 1 − erfc(|v|/√2)/2 otherwise (WGSL has no erf;
// taking erfc of |v| keeps the negative tail's relative accuracy, where 1 + erf(v/√2) would cancel).
// erfc(z) = t·exp(−z² + P(t)), t = 1/(1 + z/2): Numerical Recipes' Chebyshev fit `erfcc` (Press et al., 2nd
// ed., §6.2), fractional error < 1.2e-7 everywhere in exact arithmetic. z² = v²/2 is formed from v directly
// (one rounding: the f32 error of the exp argument, ~v²/2 · 6e-8, dominates the far negative tail). |v| is
// capped at 14 (Φ(−14) ≈ 8e-45 is already 0 in f32), so v² never overflows.
fn act_phi(v: f32) -> f32 {
    let a = min(abs(v), 14.0);
    let t = 1.0 / (1.0 + 0.35355339059327373 * a); // z/2 = a/(2√2)
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let c = 0.5 * t * exp(poly - 0.5 * a * a);
    return select(c, 1.0 - c, v >= 0.0);
}

// Exact GELU (torch nn.GELU() default, approximate='none'): v·Φ(v).
fn act_gelu_erf(v: f32) -> f32 {
    return v * act_phi(v);
}

// The derivative of act_gelu_erf: Φ(v) + v·φ(v), φ(v) = exp(−v²/2)/√(2π); |v| is capped at 20 inside φ
// (exp(−200) is 0 in f32), so v² never overflows.
fn act_gelu_erf_grad(v: f32) -> f32 {
    let a = min(abs(v), 20.0);
    return act_phi(v) + v * (0.3989422804014327 * exp(-0.5 * a * a));
}
