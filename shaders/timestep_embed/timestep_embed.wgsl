// timestep_embed: diffusers Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0, scale=1000):
//   arg[b, k] = 1000 * (t[b] * freq[k])   (f32, product first, then x1000; freq from the host)
//   emb[b, k] = cos(arg), emb[b, 128 + k] = sin(arg),  k = 0..127
// t: [B] (a storage buffer, so a plan can update timesteps without rebinding)  emb: [B, 256].
// sin/cos do their own Cody-Waite reduction by pi/2 (args reach 1000 rad, where GPU builtins are
// only specified on [-pi, pi]) and cephes minimax polynomials on [-pi/4, pi/4].
// One workgroup of 128 per sample. Dispatch: [B, 1, 1].

struct Params {
    batch: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    freqs: array<vec4<f32>, 32>, // freq[k] = freqs[k / 4][k % 4]
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> t: array<f32>;
@group(0) @binding(2) var<storage, read_write> emb: array<f32>;

// pi/2 = C1 + C2 + C3; C1 (8 significant bits) and C2 (11 bits) times n < 2^13 are exact in f32.
const C1: f32 = 1.5703125;
const C2: f32 = 4.837512969970703125e-4;
const C3: f32 = 7.549789954891882e-8;
const TWO_OVER_PI: f32 = 0.6366197723675814;

// (sin, cos) of a, accurate to a few 1e-7 absolute for |a| < ~8000.
fn sincos(a: f32) -> vec2<f32> {
    let n = round(a * TWO_OVER_PI);
    let r = ((a - n * C1) - n * C2) - n * C3;
    let z = r * r;
    let s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r;
    let c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0;
    switch (bitcast<u32>(i32(n)) & 3u) {
        case 0u: { return vec2<f32>(s, c); }
        case 1u: { return vec2<f32>(c, -s); }
        case 2u: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}

@compute @workgroup_size(128)
fn timestep_embed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) k: u32) {
    let b = wid.x;
    if (b >= p.batch) { return; }
    let arg = 1000.0 * (t[b] * p.freqs[k / 4u][k % 4u]);
    let sc = sincos(arg);
    emb[b * 256u + k] = sc.y;
    emb[b * 256u + 128u + k] = sc.x;
}
