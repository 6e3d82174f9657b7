// qkv_post_norm_grad: the QK-RMSNorm weight gradient of qkv_post, accumulated (`+=`) in two dispatches.
// forward: y = rope(x * rstd * w)   =>   dw += sum over the stream's (row, head) units of rope^T(dy) * x * rstd
// dw: [4, Dh] = (image q, image k, text q, text k), the layout of qkv_post's norm_w.
// Inputs as qkv_post_backward: dq, dk [B, H, S_joint, Dh]; x_q, x_k (forward inputs); rope; rstd [2, rows, H].
// Entry norm_grad_partial: workgroup (c, stream) sums units [c*chunk_units, (c+1)*chunk_units) of the stream
//   (image = units from B*S_txt*H on, text = units below it) with 256 / (Dh/4) sub-rows of Dh/4 vec4 lanes,
//   reduced through workgroup memory into partial[c, 2*stream + {0 (q), 1 (k)}, Dh]. Dispatch: [chunks, 2, 1].
// Entry norm_grad_sum: one invocation per (slot, element) of dw sums the chunks and adds to dw.
//   Dispatch: [ceil(4 * Dh / 256), 1, 1].
// Frozen in LoRA training: the model only needs this for full fine-tuning or checks.

override HEAD_DIM: u32 = 128u;
const WG: u32 = 256u;

struct Params {
    batch: u32,
    heads: u32,
    s_txt: u32,
    s_img: u32,
    in_stride4: u32,
    q_off4: u32,
    k_off4: u32,
    units: u32,       // rows * heads
    chunk_units: u32, // units per partial-sum workgroup
    chunks: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dq: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dk: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> x_q: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> x_k: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> rope: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> rstd: array<f32>;
@group(0) @binding(7) var<storage, read_write> partial: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> dw: array<f32>;

var<workgroup> acc_q: array<vec4<f32>, WG>;
var<workgroup> acc_k: array<vec4<f32>, WG>;

fn unrotate(d: vec4<f32>, cs: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(d.x * cs.x + d.y * cs.y, -d.x * cs.y + d.y * cs.x,
                     d.z * cs.z + d.w * cs.w, -d.z * cs.w + d.w * cs.z);
}

@compute @workgroup_size(256)
fn norm_grad_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let lanes = HEAD_DIM / 4u;
    let per_group = WG / lanes;
    let sub = li / lanes;
    let lane = li % lanes;
    let txt_units = p.batch * p.s_txt * p.heads;
    let stream = wid.y; // 0 image, 1 text
    let lo = select(txt_units, 0u, stream == 1u);
    let hi = select(p.units, txt_units, stream == 1u);
    let start = lo + wid.x * p.chunk_units;
    let end = min(start + p.chunk_units, hi);
    let s_joint = p.s_txt + p.s_img;
    var gq = vec4<f32>(0.0);
    var gk = vec4<f32>(0.0);
    if (sub < per_group) {
        for (var u = start + sub; u < end; u += per_group) {
            let row = u / p.heads;
            let h = u % p.heads;
            var b: u32;
            var s: u32;
            if (stream == 1u) {
                b = row / p.s_txt;
                s = row % p.s_txt;
            } else {
                b = (row - p.batch * p.s_txt) / p.s_img;
                s = p.s_txt + (row - p.batch * p.s_txt) % p.s_img;
            }
            let cs = rope[s * lanes + lane];
            let o = ((b * p.heads + h) * s_joint + s) * lanes + lane;
            let base = row * p.in_stride4 + h * lanes + lane;
            gq += unrotate(dq[o], cs) * x_q[base + p.q_off4] * rstd[u];
            gk += unrotate(dk[o], cs) * x_k[base + p.k_off4] * rstd[p.units + u];
        }
    }
    acc_q[li] = gq;
    acc_k[li] = gk;
    workgroupBarrier();
    if (sub == 0u) {
        var sq = vec4<f32>(0.0);
        var sk = vec4<f32>(0.0);
        for (var i = 0u; i < per_group; i++) {
            sq += acc_q[i * lanes + lane];
            sk += acc_k[i * lanes + lane];
        }
        partial[(wid.x * 4u + 2u * stream) * lanes + lane] = sq;
        partial[(wid.x * 4u + 2u * stream + 1u) * lanes + lane] = sk;
    }
}

@compute @workgroup_size(256)
fn norm_grad_sum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x; // slot * Dh + element
    if (i >= 4u * HEAD_DIM) {
        return;
    }
    let lanes = HEAD_DIM / 4u;
    let slot = i / HEAD_DIM;
    let e = i % HEAD_DIM;
    var s = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        s += partial[(c * 4u + slot) * lanes + e / 4u][e % 4u];
    }
    dw[i] += s;
}
