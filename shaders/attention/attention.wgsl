// attention: joint flash attention forward (diffusers QwenDoubleStreamAttnProcessor2_0; with the options
// also the Qwen2.5-VL language model's causal GQA and the vision tower's block-diagonal window attention):
//   O = softmax(Q Kᵀ · scale + maskbias) V,   lse = log Σ_j exp(Q Kᵀ · scale + maskbias)   (natural log)
// with scale = 1/sqrt(Dh). Key j is visible to query i (joint positions, text first) when
//   - it is an image key (j >= s_txt), or a text key with mask[b, j] != 0 (or has_mask == 0);
//   - causal == 0, or j <= i;
//   - segments == 0, or i and j lie in the same segment [bounds[t], bounds[t + 1]) (flash-attn's
//     cu_seqlens, f32 integers: bounds[0] = 0 <= .. <= bounds[segments] = S, shared by the batch).
// Invisible keys get −∞. A query row with no visible key writes O = 0 and lse = NEG_BIG (−3e38, finite).
// Online softmax (running max m and sum l) in f32; no S×S buffer.
// q: [B, H, S, Dh]; k, v: [B, Hkv, S, Dh] head-major, S = s_txt + s_img (either may be 0); query head h
// reads K/V head h / (H / Hkv)   mask: [B, s_txt] (any buffer if has_mask == 0)   seg_bounds:
// [segments + 1] (any buffer if segments == 0)   o: [B·S, H·Dh] in stream-major joint rows
// (row(b, s) = s < s_txt ? b·s_txt + s : B·s_txt + b·s_img + s − s_txt)   lse: [B, H, S].
// One workgroup of 64 invocations per (64 query rows, b·H + h), one query row per invocation (q and the
// output accumulator live in registers); K/V tiles of BK keys staged in workgroup memory, two barriers
// per tile. The key loop covers the union of the workgroup's rows' key ranges (their segments, cut at
// the last row when causal), not the whole S. Dispatch: [ceil(S / 64), B·H, 1].

struct Params {
    batch: u32,
    heads: u32,
    s_txt: u32,
    s_img: u32,
    has_mask: u32, // 0: every text key valid (mask binding unused)
    scale: f32,    // 1 / sqrt(Dh)
    kv_heads: u32, // divides heads
    causal: u32,   // 1: key j visible to query i only if j <= i
    segments: u32, // 0: one segment (seg_bounds unused); else seg_bounds holds segments + 1 boundaries
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override DH4: u32 = 4u; // head_dim / 4 (vec4 per row); at most MAX_DH4
override BK: u32 = 16u; // keys per staged tile; BK <= MAX_BK and BK * DH4 <= TILE

const WG: u32 = 64u;
const MAX_DH4: u32 = 32u; // head_dim <= 128
const MAX_BK: u32 = 32u;
const TILE: u32 = 512u; // vec4 per staged tile (8 KiB): 16 keys at Dh 128, 32 at Dh <= 64
const NEG_BIG: f32 = -3.0e38; // finite stand-in for −∞: exp(NEG_BIG − finite) == 0, no inf − inf

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;
@group(0) @binding(5) var<storage, read> seg_bounds: array<f32>;
@group(0) @binding(6) var<storage, read_write> o: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> lse: array<f32>;

var<workgroup> k_tile: array<vec4<f32>, TILE>;
var<workgroup> v_tile: array<vec4<f32>, TILE>;
var<workgroup> key_ok: array<f32, MAX_BK>; // 1 valid key, 0 masked or past the end

// Row of token s of sample b in the stream-major joint layout.
// [start, end) of the segment holding joint position i: bounds[t] <= i < bounds[t + 1] found by binary
// search for the last t < segments with bounds[t] <= i; the whole sequence without segments. Clamped
// to S (boundaries that break the contract give wrong but in-bounds ranges).
fn segment_of(i: u32, s_all: u32) -> vec2<u32> {
    if (p.segments == 0u) { return vec2<u32>(0u, s_all); }
    var lo = 0u;
    var hi = p.segments;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (u32(seg_bounds[mid]) <= i) { lo = mid; } else { hi = mid; }
    }
    return vec2<u32>(min(u32(seg_bounds[lo]), s_all), min(u32(seg_bounds[lo + 1u]), s_all));
}

// The keys [start, end) query i may see before the text mask: its segment, cut after i when causal.
// Both ends are non-decreasing in i, so a run of rows i0..i1 sees keys within
// [key_range(i0).x, key_range(i1).y).
fn key_range(i: u32, s_all: u32) -> vec2<u32> {
    var r = segment_of(i, s_all);
    if (p.causal != 0u) { r.y = min(r.y, i + 1u); }
    return r;
}

// Stages keys [j0, j0 + BK) of K/V head `base` (its first row); rows past the end are clamped
// copies and are excluded through key_ok.
fn stage_kv(base: u32, j0: u32, s_all: u32, b: u32, lid: u32) {
    for (var t = lid; t < BK * DH4; t += WG) {
        let j = min(j0 + t / DH4, s_all - 1u);
        let src = (base + j) * DH4 + t % DH4;
        k_tile[t] = k[src];
        v_tile[t] = v[src];
    }
    if (lid < BK) { key_ok[lid] = key_valid(b, j0 + lid, s_all); }
}

// Staged key jj of the tile at j0 is visible to the row whose key range is `own`.
fn visible(jj: u32, j0: u32, own: vec2<u32>) -> bool {
    let j = j0 + jj;
    return key_ok[jj] != 0.0 && j >= own.x && j < own.y;
}

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s_all = p.s_txt + p.s_img;
    let bh = wg.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let i = wg.x * WG + lid;
    let base = bh * s_all;
    let kv_base = (b * p.kv_heads + h / (p.heads / p.kv_heads)) * s_all;
    let qi = min(i, s_all - 1u); // idle lanes of the last tile still help stage and hit the barriers
    let own = key_range(qi, s_all);
    // Uniform across the workgroup (uniform ids and read-only storage): the union of the rows' ranges.
    let j_begin = key_range(wg.x * WG, s_all).x;
    let j_end = key_range(min(wg.x * WG + WG, s_all) - 1u, s_all).y;
    var qr: array<vec4<f32>, MAX_DH4>;
    var acc: array<vec4<f32>, MAX_DH4>;
    for (var d = 0u; d < DH4; d++) {
        qr[d] = q[(base + qi) * DH4 + d] * p.scale;
        acc[d] = vec4<f32>(0.0);
    }
    var m = NEG_BIG;
    var l = 0.0;
    var sc: array<f32, MAX_BK>;
    for (var j0 = j_begin; j0 < j_end; j0 += BK) {
        workgroupBarrier(); // the previous tile is consumed
        stage_kv(kv_base, j0, s_all, b, lid);
        workgroupBarrier();
        var mt = m;
        for (var jj = 0u; jj < BK; jj++) {
            var a4 = vec4<f32>(0.0);
            for (var d = 0u; d < DH4; d++) { a4 = fma(qr[d], k_tile[jj * DH4 + d], a4); }
            let s = (a4.x + a4.y) + (a4.z + a4.w);
            sc[jj] = s;
            if (visible(jj, j0, own)) { mt = max(mt, s); }
        }
        let alpha = exp(m - mt); // 0 on the first valid tile, 1 while nothing valid was seen
        l *= alpha;
        for (var d = 0u; d < DH4; d++) { acc[d] *= alpha; }
        for (var jj = 0u; jj < BK; jj++) {
            let pj = select(0.0, exp(sc[jj] - mt), visible(jj, j0, own));
            l += pj;
            for (var d = 0u; d < DH4; d++) { acc[d] = fma(vec4<f32>(pj), v_tile[jj * DH4 + d], acc[d]); }
        }
        m = mt;
    }
    if (i < s_all) {
        // l >= 1 once a row has seen a visible key (its max contributes exp(0)); l = 0 (acc = 0, m = NEG_BIG)
        // for a row without one: the max() then gives O = 0 and lse = NEG_BIG + log(1e-30) = NEG_BIG.
        let lv = max(l, 1.0e-30);
        let inv = 1.0 / lv;
        let orow = (joint_row(b, i) * p.heads + h) * DH4;
        for (var d = 0u; d < DH4; d++) { o[orow + d] = acc[d] * inv; }
        lse[base + i] = m + log(lv);
    }
}
