// adamw: one torch.optim.AdamW step on f32 parameters, in torch's order and rounding:
//   g  = grad * grad_scale * clip,  clip = min(1, max_norm / (grad_scale * sqrt(sq_norm[0]) + 1e-6))
//        (clip = 1 when max_norm <= 0; sq_norm from sq_norm.wgsl = torch.nn.utils.clip_grad_norm_)
//   p  = p * (1 - lr * wd)                       (decoupled weight decay first)
//   m  = m + (1 - b1) * (g - m)                  (torch lerp_, weight < 0.5)
//   v  = v * b2 + ((1 - b2) * g) * g             (torch mul_ + addcmul_)
//   p  = p + (-lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)   (addcdiv_)
// Scalars are precomputed on the host in f64 and rounded to f32 (as torch does with Python floats).
// grad: [n]  sq_norm: [1] (any read-only buffer when max_norm <= 0)  param, m, v: [n] (updated).
// 256 invocations per workgroup, one element each. Dispatch: grid_2d(ceil(n / 256)).

struct Params {
    n: u32,
    row_pitch: u32,   // elements per grid row = 256 * groups in x
    max_norm: f32,
    grad_scale: f32,
    decay: f32,       // 1 - lr * wd
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    step_size: f32,   // lr / (1 - b1^t)
    bc2_sqrt: f32,    // sqrt(1 - b2^t)
    eps: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> sq_norm: array<f32>;
@group(0) @binding(3) var<storage, read_write> param: array<f32>;
@group(0) @binding(4) var<storage, read_write> m: array<f32>;
@group(0) @binding(5) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row_pitch + gid.x;
    if (i >= p.n) { return; }
    var g = grad[i] * p.grad_scale;
    if (p.max_norm > 0.0) {
        let coef = p.max_norm / (p.grad_scale * sqrt(sq_norm[0]) + 1e-6);
        g = g * min(coef, 1.0);
    }
    let pd = param[i] * p.decay;
    let mi = m[i] + p.one_minus_b1 * (g - m[i]);
    let vi = v[i] * p.b2 + (p.one_minus_b2 * g) * g;
    let denom = sqrt(vi) / p.bc2_sqrt + p.eps;
    m[i] = mi;
    v[i] = vi;
    param[i] = pd + (-p.step_size * mi) / denom;
}
