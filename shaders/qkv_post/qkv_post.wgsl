// qkv_post: the fused epilogue of the QKV projection, one dispatch for both streams. For every joint
// row (stream-major: text rows [b0 S_txt | b1 S_txt | ..], then image rows [b0 S_img | ..]) and head h:
//   q_h = rope(rmsnorm(x_q[row, h*Dh ..]) * w_q);  k_h likewise with w_k;  v_h = x_v[row, h*Dh ..]
//   rmsnorm(x) = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps)   (diffusers RMSNorm, eps 1e-6)
//   rope: interleaved pairs, out[2i] = x[2i] cos - x[2i+1] sin, out[2i+1] = x[2i] sin + x[2i+1] cos,
//         (cos, sin) from the table row of the token's joint position s (text j: s = j; image j: s = S_txt + j).
// Inputs: element (row, c) of q/k/v is x_{q,k,v}[row * in_stride + off_{q,k,v} + c]:
//   merged  = one [rows, 3D] buffer bound three times, offsets 0, D, 2D, stride 3D;
//   standard = three [rows, D] buffers, offsets 0, stride D.   (All in vec4 units below.)
//   norm_w: [4, Dh] = (image q, image k, text q, text k).  rope: [S_txt + S_img, Dh/2, 2] (cos, sin).
// Outputs: q, k, v: [B, H, S_txt + S_img, Dh] (head-major, text first); rstd: [2, rows, H] (q, then k).
// Geometry: a unit = (row, head), served by lanes = Dh / (4 * PER_LANE) invocations; lane l holds
// the vec4s (2 rotary pairs each) l, l + lanes, .. of the head, so each load instruction of the lanes
// covers contiguous memory. A 256-invocation workgroup serves 256 / lanes units (32 at Dh = 128,
// PER_LANE = 4) and reduces each unit's sums of squares through workgroup memory (one barrier).
// Units are row-major (unit = row * H + h): a workgroup reads contiguous columns of one row or more,
// and each head writes Dh contiguous floats.
// Dispatch: grid_2d(ceil(rows * H / units_per_group)).  Needs Dh % 4 == 0, Dh <= 1024.

override HEAD_DIM: u32 = 128u;
override PER_LANE: u32 = 4u;    // vec4 per lane: 1, 2 or 4, dividing HEAD_DIM / 4
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
    _pad0: u32,
    _pad1: u32,
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
    let v4 = HEAD_DIM / 4u; // vec4 per head
    let base = row * p.in_stride4 + h * v4 + lane;
    var xq: array<vec4<f32>, MAX_PER_LANE>;
    var xk: array<vec4<f32>, MAX_PER_LANE>;
    var pq = 0.0;
    var pk = 0.0;
    for (var i = 0u; i < PER_LANE; i++) {
        xq[i] = x_q[base + p.q_off4 + i * lanes];
        xk[i] = x_k[base + p.k_off4 + i * lanes];
        pq += dot(xq[i], xq[i]);
        pk += dot(xk[i], xk[i]);
    }
    part_q[li] = pq;
    part_k[li] = pk;
    workgroupBarrier();
    if (!live) {
        return;
    }
    var sq = 0.0;
    var sk = 0.0;
    for (var i = 0u; i < lanes; i++) {
        sq += part_q[slot * lanes + i];
        sk += part_k[slot * lanes + i];
    }
    let rq = 1.0 / sqrt(sq / f32(HEAD_DIM) + p.eps);
    let rk = 1.0 / sqrt(sk / f32(HEAD_DIM) + p.eps);
    let t = token(row);
    let w0 = select(0u, 2u, t.txt); // norm_w row of this stream's q weight; +1 for k
    let o = ((t.b * p.heads + h) * (p.s_txt + p.s_img) + t.s) * v4 + lane;
    for (var i = 0u; i < PER_LANE; i++) {
        let e = lane + i * lanes; // vec4 index within the head
        let cs = rope[t.s * v4 + e];
        q[o + i * lanes] = rotate(xq[i] * rq * norm_w[w0 * v4 + e], cs);
        k[o + i * lanes] = rotate(xk[i] * rk * norm_w[(w0 + 1u) * v4 + e], cs);
        v[o + i * lanes] = x_v[base + p.v_off4 + i * lanes];
    }
    if (lane == 0u) {
        rstd[u] = rq;
        rstd[p.units + u] = rk;
    }
}
