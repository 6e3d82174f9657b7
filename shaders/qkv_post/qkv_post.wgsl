// qkv_post: the fused epilogue of the QKV projection, one dispatch for both streams. For every joint
// row (stream-major: text rows [b0 S_txt | b1 S_txt | ..], then image rows [b0 S_img | ..]) and head h:
//   q_h = rope(rmsnorm(x_q[row, h*Dh ..]) * w_q);  k_h likewise with w_k;  v_h = x_v[row, h*Dh ..]
//   rmsnorm(x) = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps)   (diffusers RMSNorm, eps 1e-6)
//   rope (ROPE_HALF = false, the DiT): interleaved pairs, out[2i] = x[2i] cos - x[2i+1] sin,
//         out[2i+1] = x[2i] sin + x[2i+1] cos;
//   rope (ROPE_HALF = true, transformers' rotate_half, Qwen2.5-VL): pairs (i, i + Dh/2), i < Dh/2,
//         out[i] = x[i] cos - x[i+Dh/2] sin, out[i+Dh/2] = x[i+Dh/2] cos + x[i] sin;
//   (cos, sin) of pair i from the table row of the token's joint position s (text j: s = j; image j:
//   s = S_txt + j), of sample b's table when rope_b4 != 0.
// NORM = false skips the RMSNorm (norm_w and rstd are then unused bindings): q_h = rope(x_q[..]).
// GQA: q has `heads` heads, k and v have kv_heads <= heads; units with h >= kv_heads write q only.
// Inputs: element (row, c) of q/k/v is x_{q,k,v}[row * in_stride + off_{q,k,v} + c]:
//   merged  = one [rows, (H + 2 Hkv) Dh] buffer bound three times, offsets 0, H Dh, (H + Hkv) Dh;
//   standard = three [rows, D] buffers, offsets 0, stride D (H = Hkv).   (All in vec4 units below.)
//   norm_w: [4, Dh] = (image q, image k, text q, text k).  rope: [S_txt + S_img, Dh/2, 2] (cos, sin),
//   shared by the batch (rope_b4 = 0), or [B, S_txt + S_img, Dh/2, 2] (rope_b4 = S Dh / 4).
// Outputs: q: [B, H, S_txt + S_img, Dh], k, v: [B, Hkv, S_txt + S_img, Dh] (head-major, text first);
//   rstd: [2, rows, H] (q, then k; NORM only).
// Geometry: a unit = (row, head), served by lanes = Dh / (4 * PER_LANE) invocations; lane l holds
// the vec4s (2 rotary pairs each) l, l + lanes, .. of the head, so each load instruction of the lanes
// covers contiguous memory; with ROPE_HALF (Dh % 8 == 0, so PER_LANE is even) vec4 i's partner i + Dh/8
// is the lane's own vec4 i + PER_LANE/2. A 256-invocation workgroup serves 256 / lanes units (32 at
// Dh = 128, PER_LANE = 4) and reduces each unit's sums of squares through workgroup memory (one
// barrier, NORM only). Units are row-major (unit = row * H + h): a workgroup reads contiguous columns
// of one row or more, and each head writes Dh contiguous floats.
// Dispatch: grid_2d(ceil(rows * H / units_per_group)).  Needs Dh % 4 == 0, Dh <= 1024.

override HEAD_DIM: u32 = 128u;
override PER_LANE: u32 = 4u;    // vec4 per lane: 1, 2 or 4, dividing HEAD_DIM / 4
override NORM: bool = true;       // false: no QK-RMSNorm (norm_w, rstd unused)
override ROPE_HALF: bool = false; // true: rotate_half pairs (i, i + Dh/2); needs PER_LANE even
const MAX_PER_LANE: u32 = 4u;
const WG: u32 = 256u;

struct Params {
    batch: u32,
    heads: u32,
    s_txt: u32,
    s_img: u32,
    in_stride4: u32, // row stride of the inputs, in vec4
    q_off4: u32,     // column offset of q in x_q, in vec4
    k_off4: u32,
    v_off4: u32,
    units: u32,      // rows * heads
    eps: f32,
    kv_heads: u32,   // heads of k and v, <= heads
    rope_b4: u32,    // vec4 offset between the tables of consecutive samples (0: one shared table)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x_q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> x_k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> x_v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> norm_w: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> rope: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> q: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> k: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> v: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> rstd: array<f32>;

var<workgroup> part_q: array<f32, WG>;
var<workgroup> part_k: array<f32, WG>;

// Sample index, joint position and stream of a stream-major row.
struct Token {
    b: u32,
    s: u32,
    txt: bool,
}

fn token(row: u32) -> Token {
    let n_txt = p.batch * p.s_txt;
    if (row < n_txt) {
        return Token(row / p.s_txt, row % p.s_txt, true);
    }
    let r = row - n_txt;
    return Token(r / p.s_img, p.s_txt + r % p.s_img, false);
}

// Two interleaved pairs (x.xy, x.zw) rotated by cs = (cos0, sin0, cos1, sin1).
fn rotate(x: vec4<f32>, cs: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(x.x * cs.x - x.y * cs.y, x.x * cs.y + x.y * cs.x,
                     x.z * cs.z - x.w * cs.w, x.z * cs.w + x.w * cs.z);
}

// Rotate-half pairs of one lane: the vec4 lo (dims 4e..4e+3, e < Dh/8) with its partner hi (dims
// 4e + Dh/2 ..), by the angles of pairs 4e..4e+3, whose (cos, sin) are the table's vec4s 2e and 2e + 1.
struct Halves {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn rotate_half(lo: vec4<f32>, hi: vec4<f32>, cs0: vec4<f32>, cs1: vec4<f32>) -> Halves {
    let c = vec4<f32>(cs0.x, cs0.z, cs1.x, cs1.z);
    let sn = vec4<f32>(cs0.y, cs0.w, cs1.y, cs1.w);
    return Halves(lo * c - hi * sn, hi * c + lo * sn);
}

@compute @workgroup_size(256)
fn qkv_post(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let lanes = HEAD_DIM / (4u * PER_LANE);
    let per_group = WG / lanes;
    let slot = li / lanes;
    let lane = li % lanes;
    let unit = (wid.y * nwg.x + wid.x) * per_group + slot;
    let live = slot < per_group && unit < p.units;
    // Idle lanes read unit 0 (in bounds) so that every lane reaches the barrier; they write nothing.
    let u = select(0u, unit, live);
    let row = u / p.heads;
    let h = u % p.heads;
    let has_kv = h < p.kv_heads;
    let hk = min(h, p.kv_heads - 1u); // K/V head read (in bounds; written only when has_kv)
    let v4 = HEAD_DIM / 4u; // vec4 per head
    let base = row * p.in_stride4 + h * v4 + lane;
    let kbase = row * p.in_stride4 + hk * v4 + lane;
    var xq: array<vec4<f32>, MAX_PER_LANE>;
    var xk: array<vec4<f32>, MAX_PER_LANE>;
    var pq = 0.0;
    var pk = 0.0;
    for (var i = 0u; i < PER_LANE; i++) {
        xq[i] = x_q[base + p.q_off4 + i * lanes];
        xk[i] = x_k[kbase + p.k_off4 + i * lanes];
        pq += dot(xq[i], xq[i]);
        pk += dot(xk[i], xk[i]);
    }
    if (NORM) {
        part_q[li] = pq;
        part_k[li] = pk;
        workgroupBarrier();
    }
    if (!live) {
        return;
    }
    let t = token(row);
    var rq = 1.0;
    var rk = 1.0;
    if (NORM) {
        var sq = 0.0;
        var sk = 0.0;
        for (var i = 0u; i < lanes; i++) {
            sq += part_q[slot * lanes + i];
            sk += part_k[slot * lanes + i];
        }
        rq = 1.0 / sqrt(sq / f32(HEAD_DIM) + p.eps);
        rk = 1.0 / sqrt(sk / f32(HEAD_DIM) + p.eps);
        let w0 = select(0u, 2u, t.txt); // norm_w row of this stream's q weight; +1 for k
        for (var i = 0u; i < PER_LANE; i++) {
            let e = lane + i * lanes; // vec4 index within the head
            xq[i] = xq[i] * rq * norm_w[w0 * v4 + e];
            xk[i] = xk[i] * rk * norm_w[(w0 + 1u) * v4 + e];
        }
    }
    let s_all = p.s_txt + p.s_img;
    let o = ((t.b * p.heads + h) * s_all + t.s) * v4 + lane;
    let ok = ((t.b * p.kv_heads + hk) * s_all + t.s) * v4 + lane;
    let tab = t.b * p.rope_b4 + t.s * v4; // this token's table row
    if (ROPE_HALF) {
        let hp = PER_LANE / 2u;
        for (var i = 0u; i < hp; i++) {
            let e = lane + i * lanes; // first-half vec4; its partner is vec4 i + hp of this lane
            let cs0 = rope[tab + 2u * e];
            let cs1 = rope[tab + 2u * e + 1u];
            let rq2 = rotate_half(xq[i], xq[i + hp], cs0, cs1);
            q[o + i * lanes] = rq2.lo;
            q[o + (i + hp) * lanes] = rq2.hi;
            if (has_kv) {
                let rk2 = rotate_half(xk[i], xk[i + hp], cs0, cs1);
                k[ok + i * lanes] = rk2.lo;
                k[ok + (i + hp) * lanes] = rk2.hi;
            }
        }
    } else {
        for (var i = 0u; i < PER_LANE; i++) {
            let cs = rope[tab + lane + i * lanes];
            q[o + i * lanes] = rotate(xq[i], cs);
            if (has_kv) { k[ok + i * lanes] = rotate(xk[i], cs); }
        }
    }
    if (has_kv) {
        for (var i = 0u; i < PER_LANE; i++) { v[ok + i * lanes] = x_v[kbase + p.v_off4 + i * lanes]; }
    }
    if (NORM && lane == 0u) {
        rstd[u] = rq;
        rstd[p.units + u] = rk;
    }
}
