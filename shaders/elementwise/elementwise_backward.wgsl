// elementwise_backward: dx = dy * f'(x) over n f32 elements (dx written, `=`); entry points
//   silu_backward:      f = x * s, s = sigmoid(x)          f' = s * (1 + x * (1 - s))
//   gelu_tanh_backward: f = 0.5 x (1 + tanh(u)), u = k (x + 0.044715 x^3), k = sqrt(2/pi)
//                       f' = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) k (1 + 3 * 0.044715 x^2)
//   gelu_erf_backward:  f = x Phi(x)                        f' = Phi(x) + x exp(-x^2 / 2) / sqrt(2 pi)
// x, dy, dx: [n]. 256 invocations per workgroup, one element each; a 2D grid past 65535 workgroups.
// Dispatch: [min(ceil(n/256), 65535), ceil(ceil(n/256) / 65535), 1].

struct Params {
    n: u32,
    row_pitch: u32, // elements per grid row = 256 * groups in x
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

fn index(gid: vec3<u32>) -> u32 {
    return gid.y * p.row_pitch + gid.x;
}

@compute @workgroup_size(256)
fn silu_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= p.n) { return; }
    let v = x[i];
    let s = 1.0 / (1.0 + exp(-v)); // exp overflow -> s = 0 -> f' = 0: fine
    dx[i] = dy[i] * (s * (1.0 + v * (1.0 - s)));
}

@compute @workgroup_size(256)
fn gelu_tanh_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= p.n) { return; }
    dx[i] = dy[i] * act_gelu_tanh_grad(x[i]);
}

@compute @workgroup_size(256)
fn gelu_erf_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= p.n) { return; }
    dx[i] = dy[i] * act_gelu_erf_grad(x[i]);
}
