// flash: the attention forward of attention.wgsl (same function, masks, options but segments,
// joint layout, lse and empty-row convention) as a FlashAttention-2 tile program on the fragment
// API (common/coop16), f16 operands and f32 softmax and accumulation:
//   S = Qs·Kᵀ with Qs = f16(Q·scale) (f32 product, then rounded: exact for Dh = 4^n),
//   online softmax per row in f32 (m, l over the unrounded p = exp(S − m)),
//   O += f16(p)·V' rescaled by exp(m_old − m_new);  O = 2^−s_v·O/l;  lse = m + log(l).
// V is staged as V' = f16(2^s_v·V), one power-of-two shift per K/V head, s_v = rowscale_shift of
// max |V| over all S keys of the head (common/rowscale; found in a prologue of every workgroup),
// so V' lies in f16's normal range whatever V's magnitude (activations reach ~2e7); the scalar
// factors out of P·V exactly. Q·scale is post-RMSNorm and bounded: unscaled.
// q: [B, H, S, Dh]; k, v: [B, Hkv, S, Dh] head-major (query head h reads K/V head h / (H / Hkv))
// mask: [B, s_txt]   o: [B·S, H·Dh] stream-major joint rows   lse: [B, H, S].
// Workgroup: WARPS subgroups of LANES invocations; subgroup w owns WR query rows (WR / FRAG
// fragment row strips) of the BR = WARPS·WR rows of the block. The Q block is staged once; K/V
// tiles of BC keys are staged per step (one buffer: stage, S by fragments into coop_out, softmax
// by one invocation per row writing f16(p) into coop_in, P·V by fragments in rounds of BC output
// columns through coop_out, each added into the lanes' f32 O registers: WR·DH/LANES per lane).
// Rows padded by PAD elements. Segments are not supported (the launcher runs attention.wgsl).
// Dispatch: [ceil(S / BR), B·H, 1].

struct Params {
    batch: u32,
    heads: u32,
    s_txt: u32,
    s_img: u32,
    has_mask: u32, // 0: every text key valid (mask binding unused)
    scale: f32,    // 1 / sqrt(Dh)
    kv_heads: u32, // divides heads
    causal: u32,   // 1: key j visible to query i only if j <= i
    segments: u32, // must be 0 here
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override DH: u32 = 64u;        // head_dim, a multiple of FRAG, at most 128
override WARPS: u32 = 4u;      // subgroups per workgroup
override LANES: u32 = 32u;     // invocations per subgroup (the emulation's 32, or the adapter's fixed size)
override WR: u32 = 16u;        // query rows per subgroup, a multiple of FRAG, at most 16
override BC: u32 = 32u;        // keys per staged tile, a multiple of FRAG; LANES divides WR·BC
override PAD: u32 = 0u;        // elements of padding per staged row
override WG: u32 = WARPS * LANES;
override BR: u32 = WARPS * WR;
override LDD: u32 = DH + PAD;  // row stride of the Q, K, V tiles
override LDP: u32 = BC + PAD;  // row stride of the P tile
override K_OFF: u32 = BR * LDD;
override V_OFF: u32 = K_OFF + BC * LDD;
override P_OFF: u32 = V_OFF + BC * LDD;
override COOP_IN_LEN: u32 = P_OFF + BR * LDP;
override COOP_OUT_LEN: u32 = BR * BC;
override PER_ROUND: u32 = WR * BC / LANES;  // O registers per lane per round of BC columns
const MAX_O: u32 = 64u;        // O registers per lane: ceil(DH / BC)·PER_ROUND <= MAX_O
const NEG_BIG: f32 = -3.0e38;  // attention.wgsl's finite −∞ (EMPTY_ROW_LSE)

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;
@group(0) @binding(5) var<storage, read> seg_bounds: array<f32>;
@group(0) @binding(6) var<storage, read_write> o: array<f32>;
@group(0) @binding(7) var<storage, read_write> lse: array<f32>;

var<workgroup> coop_in: array<CoopElem, COOP_IN_LEN>;  // Q block, K tile, V tile, P tile
var<workgroup> coop_out: array<f32, COOP_OUT_LEN>;     // S tile; then each subgroup's O round
var<workgroup> key_ok: array<f32, BC>;                  // 1 valid key, 0 masked or past the end
var<workgroup> row_alpha: array<f32, BR>;               // exp(m_old − m_new) of this tile; at the end 1/l
var<workgroup> head_amax: atomic<u32>;                  // f32 bits of max |V| over the K/V head

// s_v of the K/V head at row `kv_base`: coalesced reads of its S·DH values, one atomicMax per
// invocation (non-negative f32 bits order as u32).
fn v_shift(kv_base: u32, s_all: u32, lix: u32) -> i32 {
    if (lix == 0u) { atomicStore(&head_amax, 0u); }
    workgroupBarrier();
    var mx = 0.0;
    for (var e = lix; e < s_all * DH; e += WG) { mx = max(mx, abs(v[kv_base * DH + e])); }
    atomicMax(&head_amax, bitcast<u32>(mx));
    workgroupBarrier();
    return rowscale_shift(atomicLoad(&head_amax));
}

// Keys [j0, j0 + BC) of K/V head row `kv_base` (zeros past the end; V as f16(2^sv·V)) and their
// validity.
fn stage_kv(kv_base: u32, j0: u32, s_all: u32, b: u32, lix: u32, sv: i32) {
    for (var e = lix; e < BC * DH; e += WG) {
        let c = e / DH;
        let d = e % DH;
        let j = j0 + c;
        var kx = 0.0;
        var vx = 0.0;
        if (j < s_all) {
            kx = k[(kv_base + j) * DH + d];
            vx = v[(kv_base + j) * DH + d];
        }
        coop_in[K_OFF + c * LDD + d] = coop_elem(kx);
        coop_in[V_OFF + c * LDD + d] = coop_elem(ldexp(vx, sv));
    }
    for (var c = lix; c < BC; c += WG) { key_ok[c] = key_valid(b, j0 + c, s_all); }
}

// S = Qs·Kᵀ of the subgroup's rows into its rows of coop_out (row stride BC).
fn scores(warp: u32) {
    for (var s = 0u; s < WR / FRAG; s += 1u) {
        let r0 = warp * WR + s * FRAG;
        for (var cf = 0u; cf < BC / FRAG; cf += 1u) {
            var c = frag_zero();
            for (var kd = 0u; kd < DH / FRAG; kd += 1u) {
                let a = frag_a_rows(r0 * LDD + kd * FRAG, LDD);
                let bf = frag_b_cols(K_OFF + cf * FRAG * LDD + kd * FRAG, LDD);
                c = frag_mma(a, bf, c);
            }
            frag_store_rows(c, r0 * BC + cf * FRAG, BC);
        }
    }
}

// One round of P·V: output columns [d0, d0 + BC) ∩ [0, DH) of the subgroup's rows into its
// WR x BC slot of coop_out (the region of its scores, consumed by then).
fn pv_round(warp: u32, d0: u32) {
    let nf = (min(d0 + BC, DH) - d0) / FRAG;
    for (var s = 0u; s < WR / FRAG; s += 1u) {
        let r0 = warp * WR + s * FRAG;
        for (var f = 0u; f < nf; f += 1u) {
            var c = frag_zero();
            for (var kf = 0u; kf < BC / FRAG; kf += 1u) {
                let a = frag_a_rows(P_OFF + r0 * LDP + kf * FRAG, LDP);
                let bf = frag_b_rows(V_OFF + kf * FRAG * LDD + d0 + f * FRAG, LDD);
                c = frag_mma(a, bf, c);
            }
            frag_store_rows(c, r0 * BC + f * FRAG, BC);
        }
    }
}

@compute @workgroup_size(WG, 1, 1)
fn flash(ids: CoopIds) {
    coop_init(ids);
    let lix = ids.lix;
    let s_all = p.s_txt + p.s_img;
    let bh = ids.wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let row0 = ids.wid.x * BR;
    let base = bh * s_all;
    let kv_base = (b * p.kv_heads + h / (p.heads / p.kv_heads)) * s_all;
    let warp = coop_warp(ids);
    let lane = coop_lane(ids);
    // Uniform key range: all keys, or up to the block's last row when causal.
    var j_end = s_all;
    if (p.causal != 0u) { j_end = min(s_all, row0 + BR); }
    let sv = v_shift(kv_base, s_all, lix);
    for (var e = lix; e < BR * DH; e += WG) {
        let i = row0 + e / DH;
        var x = 0.0;
        if (i < s_all) { x = q[(base + i) * DH + e % DH] * p.scale; }
        coop_in[(e / DH) * LDD + e % DH] = coop_elem(x);
    }
    // Invocation t < BR keeps the running max and sum of block row t.
    var m = NEG_BIG;
    var l = 0.0;
    let i_own = row0 + lix;
    var acc: array<f32, MAX_O>;
    for (var t = 0u; t < MAX_O; t += 1u) { acc[t] = 0.0; }
    for (var j0 = 0u; j0 < j_end; j0 += BC) {
        stage_kv(kv_base, j0, s_all, b, lix, sv);
        workgroupBarrier();
        scores(warp);
        workgroupBarrier();
        if (lix < BR) {
            var mt = m;
            for (var c = 0u; c < BC; c += 1u) {
                let ok = key_ok[c] != 0.0 && (p.causal == 0u || j0 + c <= i_own);
                if (ok) { mt = max(mt, coop_out[lix * BC + c]); }
            }
            let alpha = exp(m - mt);  // 0 on the first valid tile, 1 while nothing valid was seen
            l *= alpha;
            for (var c = 0u; c < BC; c += 1u) {
                let ok = key_ok[c] != 0.0 && (p.causal == 0u || j0 + c <= i_own);
                let pj = select(0.0, exp(coop_out[lix * BC + c] - mt), ok);
                l += pj;
                coop_in[P_OFF + lix * LDP + c] = coop_elem(pj);
            }
            m = mt;
            row_alpha[lix] = alpha;
        }
        workgroupBarrier();
        for (var d0 = 0u; d0 < DH; d0 += BC) {
            pv_round(warp, d0);
            workgroupBarrier();
            for (var e = 0u; e < PER_ROUND; e += 1u) {
                let qx = lane + e * LANES;  // element of the subgroup's WR x BC slot
                let r = warp * WR + qx / BC;
                let t = (d0 / BC) * PER_ROUND + e;
                acc[t] = acc[t] * row_alpha[r] + coop_out[warp * WR * BC + qx];
            }
            workgroupBarrier();
        }
    }
    if (lix < BR) {
        // As attention.wgsl: a row without a visible key has l = 0, O = 0, lse = NEG_BIG.
        let lv = max(l, 1.0e-30);
        row_alpha[lix] = 1.0 / lv;
        if (i_own < s_all) { lse[base + i_own] = m + log(lv); }
    }
    workgroupBarrier();
    for (var d0 = 0u; d0 < DH; d0 += BC) {
        for (var e = 0u; e < PER_ROUND; e += 1u) {
            let qx = lane + e * LANES;
            let r = warp * WR + qx / BC;
            let d = d0 + qx % BC;
            let i = row0 + r;
            if (i < s_all && d < DH) {
                o[(joint_row(b, i) * p.heads + h) * DH + d] = ldexp(acc[(d0 / BC) * PER_ROUND + e] * row_alpha[r], -sv);
            }
        }
    }
}
