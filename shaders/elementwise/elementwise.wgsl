// elementwise: y = op(a, b) over n f32 elements; entry points
//   add:  y = a + b          mul:  y = a * b
//   silu: y = a * sigmoid(a)  gelu_tanh: y = 0.5 a (1 + tanh(sqrt(2/pi) (a + 0.044715 a^3)))   (b unused)
//   gelu_erf: y = a * Phi(a) = 0.5 a (1 + erf(a / sqrt(2)))   (exact GELU; Phi from act_phi; b unused)
//   clamp: y = min(max(a, lo), hi)   (b unused; torch.clamp, e.g. the VAE's output to [-1, 1])
// a, b, y: [n]. 256 invocations per workgroup, one element each; a 2D grid past 65535 workgroups.
// Dispatch: [min(ceil(n/256), 65535), ceil(ceil(n/256) / 65535), 1].

struct Params {
    n: u32,
    row_pitch: u32, // elements per grid row = 256 * groups in x
    lo: f32,        // clamp only
    hi: f32,        // clamp only
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

fn index(gid: vec3<u32>) -> u32 {
    return gid.y * p.row_pitch + gid.x;
}

@compute @workgroup_size(256)
fn add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i < p.n) { y[i] = a[i] + b[i]; }
}

@compute @workgroup_size(256)
fn mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i < p.n) { y[i] = a[i] * b[i]; }
}

@compute @workgroup_size(256)
fn silu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i < p.n) { let x = a[i]; y[i] = x / (1.0 + exp(-x)); }
}

@compute @workgroup_size(256)
fn gelu_tanh(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i < p.n) {
        let x = a[i];
        let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
        y[i] = 0.5 * x * (1.0 + act_tanh(u));
    }
}

@compute @workgroup_size(256)
fn gelu_erf(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i < p.n) { y[i] = act_gelu_erf(a[i]); }
}

@compute @workgroup_size(256)
fn clamp(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i < p.n) { y[i] = min(max(a[i], p.lo), p.hi); }
}
