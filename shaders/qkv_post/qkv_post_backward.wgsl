// qkv_post_backward: the activation gradient of qkv_post, one dispatch for both streams.
// forward: y = rope(x * rstd * w), v_out = v   =>   per (row, head):
//   g  = rope^T(dy)   (rotation by -theta: g[2i] = dy[2i] cos + dy[2i+1] sin, g[2i+1] = -dy[2i] sin + dy[2i+1] cos)
//   dx = rstd * (w*g - xh * mean(w*g*xh)),  xh = x * rstd   (q with w_q, k with w_k);   dv = dV
// Activation gradients are written with `=`. The norm-weight gradient is qkv_post_norm_grad.wgsl.
// Inputs: dq, dk, dv: [B, H, S_txt + S_img, Dh] head-major; x_q, x_k: the forward inputs (same
//   layouts/params as qkv_post); norm_w [4, Dh]; rope [S_joint, Dh/2, 2]; rstd [2, rows, H] saved by qkv_post.
// Outputs: dx_q, dx_k, dx_v: element (row, c) at row * in_stride + off + c, the layout of the forward
//   input (merged: one [rows, 3D] buffer bound three times; standard: three [rows, D] buffers).
// Geometry as qkv_post: Dh / (4 * PER_LANE) lanes per (row, head) unit, lane l holding vec4s l, l + lanes, ..;
// 256 / lanes units per 256-invocation workgroup; one barrier for the two dot products. Dispatch: grid_2d(ceil(rows * H / units_per_group)).

override HEAD_DIM: u32 = 128u;
override PER_LANE: u32 = 4u;    // vec4 per lane: 1, 2 or 4, dividing HEAD_DIM / 4
const MAX_PER_LANE: u32 = 4u;
const WG: u32 = 256u;

struct Params {
    batch: u32,
    heads: u32,
    s_txt: u32,
    s_img: u32,
    in_stride4: u32, // row stride of x and dx, in vec4
    q_off4: u32,
    k_off4: u32,
    v_off4: u32,
    units: u32,      // rows * heads
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dq: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dk: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> dv: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> x_q: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> x_k: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> norm_w: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> rope: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> rstd: array<f32>;
@group(0) @binding(9) var<storage, read_write> dx_q: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> dx_k: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> dx_v: array<vec4<f32>>;

var<workgroup> part_q: array<f32, WG>;
var<workgroup> part_k: array<f32, WG>;

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

// The transpose of qkv_post's rotate: two pairs rotated by -theta, cs = (cos0, sin0, cos1, sin1).
fn unrotate(d: vec4<f32>, cs: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(d.x * cs.x + d.y * cs.y, -d.x * cs.y + d.y * cs.x,
                     d.z * cs.z + d.w * cs.w, -d.z * cs.w + d.w * cs.z);
}

@compute @workgroup_size(256)
fn qkv_post_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) li: u32) {
    let lanes = HEAD_DIM / (4u * PER_LANE);
    let per_group = WG / lanes;
    let slot = li / lanes;
    let lane = li % lanes;
    let unit = (wid.y * nwg.x + wid.x) * per_group + slot;
    let live = slot < per_group && unit < p.units;
    // Idle lanes compute on unit 0 (in bounds) so that every lane reaches the barrier; they write nothing.
    let u = select(0u, unit, live);
    let row = u / p.heads;
    let h = u % p.heads;
    let t = token(row);
    let v4 = HEAD_DIM / 4u;
    let o = ((t.b * p.heads + h) * (p.s_txt + p.s_img) + t.s) * v4 + lane;
    let w0 = select(0u, 2u, t.txt);
    let rq = rstd[u];
    let rk = rstd[p.units + u];
    let base = row * p.in_stride4 + h * v4 + lane;
    var wgq: array<vec4<f32>, MAX_PER_LANE>;
    var wgk: array<vec4<f32>, MAX_PER_LANE>;
    var xhq: array<vec4<f32>, MAX_PER_LANE>;
    var xhk: array<vec4<f32>, MAX_PER_LANE>;
    var pq = 0.0;
    var pk = 0.0;
    for (var i = 0u; i < PER_LANE; i++) {
        let e = lane + i * lanes; // vec4 index within the head
        let cs = rope[t.s * v4 + e];
        wgq[i] = norm_w[w0 * v4 + e] * unrotate(dq[o + i * lanes], cs);
        wgk[i] = norm_w[(w0 + 1u) * v4 + e] * unrotate(dk[o + i * lanes], cs);
        xhq[i] = x_q[base + p.q_off4 + i * lanes] * rq;
        xhk[i] = x_k[base + p.k_off4 + i * lanes] * rk;
        pq += dot(wgq[i], xhq[i]);
        pk += dot(wgk[i], xhk[i]);
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
    let mq = sq / f32(HEAD_DIM);
    let mk = sk / f32(HEAD_DIM);
    for (var i = 0u; i < PER_LANE; i++) {
        dx_q[base + p.q_off4 + i * lanes] = rq * (wgq[i] - xhq[i] * mq);
        dx_k[base + p.k_off4 + i * lanes] = rk * (wgk[i] - xhk[i] * mk);
        dx_v[base + p.v_off4 + i * lanes] = dv[o + i * lanes];
    }
}
