// attention_backward: FlashAttention-2 style backward of shaders/attention.wgsl from the saved lse, for full
// attention only (kv_heads = heads, not causal, no segments: the forward's options are forward-only).
// forward: S = Q Kᵀ·scale + maskbias, P = exp(S − lse), O = P V   =>
//   D_i = rowsum(dO_i ⊙ O_i);  dP = dO Vᵀ;  dS = P ⊙ (dP − D);
//   dQ = dS K · scale;  dK = dSᵀ Q · scale;  dV = Pᵀ dO;  masked keys get dK = dV = 0.
// q, k, v, dq, dk, dv: [B, H, S, Dh] head-major (gradients written with `=`)   o, dout: [B·S, H·Dh]
// stream-major joint rows (see attention.wgsl)   lse, delta: [B, H, S]   mask: [B, s_txt] (any buffer
// if has_mask == 0).
// Two passes, no float atomics:
//   attention_backward_dq:   one invocation per query row (64 per workgroup); writes delta = D, then
//                            loops over staged K/V tiles accumulating dQ.   Dispatch: [ceil(S/64), B·H, 1].
//   attention_backward_dkdv: one invocation per key (64 per workgroup); loops over staged tiles of
//                            Q, dO, lse, D (reads the delta written by the first pass), accumulating
//                            dK and dV.                                      Dispatch: [ceil(S/64), B·H, 1].

struct Params {
    batch: u32,
    heads: u32,
    s_txt: u32,
    s_img: u32,
    has_mask: u32, // 0: every key valid (mask binding unused)
    scale: f32,    // 1 / sqrt(Dh)
    _pad0: u32,
    _pad1: u32,
}

override DH4: u32 = 4u; // head_dim / 4; at most MAX_DH4
override BK: u32 = 16u; // rows per staged tile; BK <= MAX_BK and BK * DH4 <= TILE

const WG: u32 = 64u;
const MAX_DH4: u32 = 32u;
const MAX_BK: u32 = 32u;
const TILE: u32 = 512u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;
@group(0) @binding(5) var<storage, read> o: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> lse: array<f32>;
@group(0) @binding(8) var<storage, read_write> delta: array<f32>;
@group(0) @binding(9) var<storage, read_write> dq: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> dk: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> dv: array<vec4<f32>>;

var<workgroup> tile_a: array<vec4<f32>, TILE>; // dq pass: K rows;  dkdv pass: Q rows
var<workgroup> tile_b: array<vec4<f32>, TILE>; // dq pass: V rows;  dkdv pass: dO rows
var<workgroup> row_a: array<f32, MAX_BK>;      // dq pass: key valid (1/0);  dkdv pass: lse
var<workgroup> row_b: array<f32, MAX_BK>;      // dkdv pass: D

// First vec4 of (b, h, token s) in the stream-major O / dO buffers.
fn joint_index(b: u32, h: u32, s: u32) -> u32 {
    return (joint_row(b, s) * p.heads + h) * DH4;
}

fn dot_row(x: ptr<function, array<vec4<f32>, MAX_DH4>>, t: u32) -> f32 {
    var a4 = vec4<f32>(0.0);
    for (var d = 0u; d < DH4; d++) { a4 = fma((*x)[d], tile_a[t * DH4 + d], a4); }
    return (a4.x + a4.y) + (a4.z + a4.w);
}

fn dot_row_b(x: ptr<function, array<vec4<f32>, MAX_DH4>>, t: u32) -> f32 {
    var a4 = vec4<f32>(0.0);
    for (var d = 0u; d < DH4; d++) { a4 = fma((*x)[d], tile_b[t * DH4 + d], a4); }
    return (a4.x + a4.y) + (a4.z + a4.w);
}

@compute @workgroup_size(64)
fn attention_backward_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s_all = p.s_txt + p.s_img;
    let bh = wg.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let i = wg.x * WG + lid;
    let base = bh * s_all;
    let qi = min(i, s_all - 1u); // idle lanes still stage tiles and hit the barriers
    var qr: array<vec4<f32>, MAX_DH4>;
    var dor: array<vec4<f32>, MAX_DH4>;
    var acc: array<vec4<f32>, MAX_DH4>;
    var d4 = vec4<f32>(0.0);
    let jrow = joint_index(b, h, qi);
    for (var d = 0u; d < DH4; d++) {
        qr[d] = q[(base + qi) * DH4 + d] * p.scale;
        dor[d] = dout[jrow + d];
        d4 = fma(dor[d], o[jrow + d], d4);
        acc[d] = vec4<f32>(0.0);
    }
    let di = (d4.x + d4.y) + (d4.z + d4.w);
    let li = lse[base + qi];
    for (var j0 = 0u; j0 < s_all; j0 += BK) {
        workgroupBarrier();
        for (var t = lid; t < BK * DH4; t += WG) {
            let src = (base + min(j0 + t / DH4, s_all - 1u)) * DH4 + t % DH4;
            tile_a[t] = k[src];
            tile_b[t] = v[src];
        }
        if (lid < BK) { row_a[lid] = key_valid(b, j0 + lid, s_all); }
        workgroupBarrier();
        for (var jj = 0u; jj < BK; jj++) {
            let pj = select(0.0, exp(dot_row(&qr, jj) - li), row_a[jj] != 0.0);
            let ds = pj * (dot_row_b(&dor, jj) - di);
            for (var d = 0u; d < DH4; d++) { acc[d] = fma(vec4<f32>(ds), tile_a[jj * DH4 + d], acc[d]); }
        }
    }
    if (i < s_all) {
        delta[base + i] = di;
        for (var d = 0u; d < DH4; d++) { dq[(base + i) * DH4 + d] = acc[d] * p.scale; }
    }
}

// Stages query rows [i0, i0 + BK): Q into tile_a, dO into tile_b, lse into row_a, D into row_b.
// Rows past the end get p = 0 through lse = +big.
fn stage_queries(b: u32, h: u32, base: u32, i0: u32, s_all: u32, lid: u32) {
    for (var t = lid; t < BK * DH4; t += WG) {
        let i = min(i0 + t / DH4, s_all - 1u);
        tile_a[t] = q[(base + i) * DH4 + t % DH4];
        tile_b[t] = dout[joint_index(b, h, i) + t % DH4];
    }
    if (lid < BK) {
        let i = i0 + lid;
        let live = i < s_all;
        row_a[lid] = select(3.0e38, lse[base + min(i, s_all - 1u)], live);
        row_b[lid] = select(0.0, delta[base + min(i, s_all - 1u)], live);
    }
}

@compute @workgroup_size(64)
fn attention_backward_dkdv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s_all = p.s_txt + p.s_img;
    let bh = wg.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let j = wg.x * WG + lid;
    let base = bh * s_all;
    let kj = min(j, s_all - 1u);
    let ok = key_valid(b, j, s_all) != 0.0;
    var kr: array<vec4<f32>, MAX_DH4>;
    var vr: array<vec4<f32>, MAX_DH4>;
    var dka: array<vec4<f32>, MAX_DH4>;
    var dva: array<vec4<f32>, MAX_DH4>;
    for (var d = 0u; d < DH4; d++) {
        kr[d] = k[(base + kj) * DH4 + d] * p.scale;
        vr[d] = v[(base + kj) * DH4 + d];
        dka[d] = vec4<f32>(0.0);
        dva[d] = vec4<f32>(0.0);
    }
    for (var i0 = 0u; i0 < s_all; i0 += BK) {
        workgroupBarrier();
        stage_queries(b, h, base, i0, s_all, lid);
        workgroupBarrier();
        for (var ii = 0u; ii < BK; ii++) {
            // (q_i · k_j) · scale − lse_i; a masked key's score can exceed lse (inf), hence the select
            let pi = select(0.0, exp(dot_row(&kr, ii) - row_a[ii]), ok);
            let ds = pi * (dot_row_b(&vr, ii) - row_b[ii]);
            for (var d = 0u; d < DH4; d++) {
                dva[d] = fma(vec4<f32>(pi), tile_b[ii * DH4 + d], dva[d]);
                dka[d] = fma(vec4<f32>(ds), tile_a[ii * DH4 + d], dka[d]);
            }
        }
    }
    if (j < s_all) { // masked keys never reach the softmax: p = 0 above, so dK = dV = 0
        for (var d = 0u; d < DH4; d++) {
            dk[(base + j) * DH4 + d] = dka[d] * p.scale;
            dv[(base + j) * DH4 + d] = dva[d];
        }
    }
}
