// flash_backward: the backward of flash.wgsl (full attention, like attention_backward.wgsl) as two
// tile programs on the fragment API (common/coop16), f16 operands and f32 accumulation, P
// recomputed from the saved lse:
// forward: S = Qs·Kᵀ (Qs = f16(Q·scale)), P = exp(S + maskbias − lse), O = P V   =>
//   D_i = rowsum(dO_i ⊙ O_i) (f32, unrounded);  dP = dO Vᵀ;  dS = P ⊙ (dP − D);
//   dQ = dS·K·scale;  dK = dSᵀ·Qs (the scale rides in Qs);  dV = Pᵀ·dO.
// Scaling (every shift a power of two, so it factors out exactly; common/rowscale): per (b, head)
// a = rowscale_shift(max |dO|), c = rowscale_shift(max |V|) over all S rows, found in a prologue of
// every workgroup; the f16 operands are dO' = f16(2^a·dO), V' = f16(2^c·V) (normal range whatever
// their magnitude: loss gradients reach 1e-9, activations 2e7), Qs and K unscaled;
//   dP' = dO'·V'ᵀ = 2^(a+c)·dP;  D' = 2^(a+c)·D;  dS' = f16(2^−DS_SHIFT·P ⊙ (dP' − D')) = f16(2^(a+c−21)·dS),
//   |dS| ≤ P(1−P)·|dO_i·(V_j − O_i)| ≤ Dh/2·max|dO|·max|V|, so |dS'| < 64·2^30·2^−21 = 2^15 at Dh ≤ 128;
//   dQ = 2^(21−a−c)·scale·dS'·K;  dK = 2^(21−a−c)·dS'ᵀ·Qs;  dV = 2^−a·f16(P)ᵀ·dO'.
// delta holds the unscaled D.
// q, k, v, dq, dk, dv: [B, H, S, Dh] head-major (gradients written with `=`)   o, dout: [B·S, H·Dh]
// stream-major joint rows   lse, delta: [B, H, S]   mask: [B, s_txt] (any buffer if has_mask == 0).
// Workgroup: WARPS subgroups of LANES invocations, subgroup w owns WR rows of the block's BR.
//   flash_backward_dq:   a block of BR query rows (Qs, dO staged once; D written to delta), K/V
//                        tiles of BC keys per step; S and dP by fragments into coop_out, dS by
//                        all invocations into coop_in, dQ += dS·K in fragment accumulators.
//   flash_backward_dkdv: a block of BR keys (K, V staged once), tiles of BC queries (Qs, dO, lse,
//                        D) per step; Sᵀ = K·Qsᵀ and dPᵀ = V·dOᵀ by fragments, Pᵀ and dSᵀ into
//                        coop_in, dV += Pᵀ·dO and dK += dSᵀ·Qs in fragment accumulators.
// Dispatch (both): [ceil(S / BR), B·H, 1]; the second reads the delta written by the first.

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

override DH: u32 = 64u;        // head_dim, a multiple of FRAG, at most 128
override WARPS: u32 = 4u;
override LANES: u32 = 32u;
override WR: u32 = 16u;        // block rows per subgroup, a multiple of FRAG, at most 16
override BC: u32 = 32u;        // rows per staged tile, a multiple of FRAG
override PAD: u32 = 0u;
override WG: u32 = WARPS * LANES;
override BR: u32 = WARPS * WR;
override LDD: u32 = DH + PAD;
override LDP: u32 = BC + PAD;
override X_OFF: u32 = BR * LDD;          // block operand 2 (dq: dO;  dkdv: V)
override T_OFF: u32 = 2u * BR * LDD;     // tile operand 1  (dq: K;   dkdv: Qs)
override U_OFF: u32 = T_OFF + BC * LDD;  // tile operand 2  (dq: V;   dkdv: dO)
override E_OFF: u32 = U_OFF + BC * LDD;  // dS (dkdv: Pᵀ, then dSᵀ at F_OFF)
override F_OFF: u32 = E_OFF + BR * LDP;
override COOP_IN_LEN: u32 = F_OFF + BR * LDP;
override COOP_OUT_LEN: u32 = 2u * BR * BC;     // S (or Sᵀ), then dP (or dPᵀ) at BR·BC
const DS_SHIFT: i32 = 21;  // dS' = 2^(a+c−DS_SHIFT)·dS stays below 2^15 (header)
const MAX_ACC: u32 = (16u / FRAG) * (128u / FRAG);  // (WR / FRAG)·(DH / FRAG) fragments

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;
@group(0) @binding(5) var<storage, read> o: array<f32>;
@group(0) @binding(6) var<storage, read> dout: array<f32>;
@group(0) @binding(7) var<storage, read> lse: array<f32>;
@group(0) @binding(8) var<storage, read_write> delta: array<f32>;
@group(0) @binding(9) var<storage, read_write> dq: array<f32>;
@group(0) @binding(10) var<storage, read_write> dk: array<f32>;
@group(0) @binding(11) var<storage, read_write> dv: array<f32>;

var<workgroup> coop_in: array<CoopElem, COOP_IN_LEN>;
var<workgroup> coop_out: array<f32, COOP_OUT_LEN>;
var<workgroup> block_a: array<f32, BR>;  // dq: lse of the row;  dkdv: key valid (1/0)
var<workgroup> block_b: array<f32, BR>;  // dq: D' = 2^(a+c)·D of the row
var<workgroup> tile_a: array<f32, BC>;   // dq: key valid;  dkdv: lse of the query (+big past the end)
var<workgroup> tile_b: array<f32, BC>;   // dkdv: D' of the query
var<workgroup> head_amax: array<atomic<u32>, 2>;  // f32 bits of max |dO|, max |V| of the head

// First element of (b, h, token s) in the stream-major O / dO buffers.
fn joint_index(b: u32, h: u32, s: u32) -> u32 {
    return (joint_row(b, s) * p.heads + h) * DH;
}

// (a, c) = the shifts of dO and V of head (b, h) (header): coalesced reads of their S·DH values,
// one atomicMax per invocation each (non-negative f32 bits order as u32).
fn head_shifts(b: u32, h: u32, base: u32, s_all: u32, lix: u32) -> vec2<i32> {
    if (lix == 0u) {
        atomicStore(&head_amax[0], 0u);
        atomicStore(&head_amax[1], 0u);
    }
    workgroupBarrier();
    var mo = 0.0;
    var mv = 0.0;
    for (var e = lix; e < s_all * DH; e += WG) {
        mo = max(mo, abs(dout[joint_index(b, h, e / DH) + e % DH]));
        mv = max(mv, abs(v[base * DH + e]));
    }
    atomicMax(&head_amax[0], bitcast<u32>(mo));
    atomicMax(&head_amax[1], bitcast<u32>(mv));
    workgroupBarrier();
    return vec2(rowscale_shift(atomicLoad(&head_amax[0])), rowscale_shift(atomicLoad(&head_amax[1])));
}

// 2^(a+c)·x in two exact steps (each shift within ldexp's range).
fn scaled_d(x: f32, sh: vec2<i32>) -> f32 {
    return ldexp(ldexp(x, sh.x), sh.y);
}

// Rows [r0, r0 + n) of head-major `which` (0: Qs = q·scale, 1: k, 2: V' = 2^c·v, 3: dO' = 2^a·dO)
// into coop_in at `off`, zeros past the end.
fn stage_rows(which: u32, b: u32, h: u32, base: u32, r0: u32, n: u32, off: u32, s_all: u32, lix: u32, sh: vec2<i32>) {
    for (var e = lix; e < n * DH; e += WG) {
        let i = r0 + e / DH;
        let d = e % DH;
        var x = 0.0;
        if (i < s_all) {
            switch which {
                case 0u: { x = q[(base + i) * DH + d] * p.scale; }
                case 1u: { x = k[(base + i) * DH + d]; }
                case 2u: { x = ldexp(v[(base + i) * DH + d], sh.y); }
                default: { x = ldexp(dout[joint_index(b, h, i) + d], sh.x); }
            }
        }
        coop_in[off + (e / DH) * LDD + d] = coop_elem(x);
    }
}

// coop_out[out + r·BC + c] = Σ_d A[r][d]·B[c][d] for the subgroup's rows r of the block operand at
// `a_off` and the BC rows c of the tile operand at `b_off` (both row-major, stride LDD).
fn block_times_tile_t(warp: u32, a_off: u32, b_off: u32, out: u32) {
    for (var s = 0u; s < WR / FRAG; s += 1u) {
        let r0 = warp * WR + s * FRAG;
        for (var cf = 0u; cf < BC / FRAG; cf += 1u) {
            var c = frag_zero();
            for (var kd = 0u; kd < DH / FRAG; kd += 1u) {
                c = frag_mma(frag_a_rows(a_off + r0 * LDD + kd * FRAG, LDD),
                             frag_b_cols(b_off + cf * FRAG * LDD + kd * FRAG, LDD), c);
            }
            frag_store_rows(c, out + r0 * BC + cf * FRAG, BC);
        }
    }
}

// acc[s·(DH/FRAG) + f] += E[rows of strip s][0..BC) · T[0..BC)[f-th FRAG columns]: E at `e_off`
// (stride LDP), T the tile operand at `t_off` (stride LDD).
fn accumulate(acc: ptr<function, array<FragC, MAX_ACC>>, warp: u32, e_off: u32, t_off: u32) {
    for (var s = 0u; s < WR / FRAG; s += 1u) {
        let r0 = warp * WR + s * FRAG;
        for (var f = 0u; f < DH / FRAG; f += 1u) {
            var c = (*acc)[s * (DH / FRAG) + f];
            for (var kf = 0u; kf < BC / FRAG; kf += 1u) {
                c = frag_mma(frag_a_rows(e_off + r0 * LDP + kf * FRAG, LDP),
                             frag_b_rows(t_off + kf * FRAG * LDD + f * FRAG, LDD), c);
            }
            (*acc)[s * (DH / FRAG) + f] = c;
        }
    }
}

// Writes the subgroup's accumulators times mul·2^e.x·2^e.y (two exact steps) to head-major
// `which` (0: dq, 1: dk, 2: dv), rows r0 + .. below S, one fragment at a time through the
// subgroup's slot of coop_out.
fn write_rows(acc: ptr<function, array<FragC, MAX_ACC>>, which: u32, warp: u32, lane: u32, base: u32, row0: u32, s_all: u32, mul: f32, e: vec2<i32>) {
    let slot = warp * FRAG * FRAG;
    for (var s = 0u; s < WR / FRAG; s += 1u) {
        for (var f = 0u; f < DH / FRAG; f += 1u) {
            frag_store_rows((*acc)[s * (DH / FRAG) + f], slot, FRAG);
            workgroupBarrier();
            for (var x = lane; x < FRAG * FRAG; x += LANES) {
                let i = row0 + warp * WR + s * FRAG + x / FRAG;
                let at = (base + i) * DH + f * FRAG + x % FRAG;
                let val = ldexp(ldexp(coop_out[slot + x] * mul, e.x), e.y);
                if (i < s_all) {
                    switch which {
                        case 0u: { dq[at] = val; }
                        case 1u: { dk[at] = val; }
                        default: { dv[at] = val; }
                    }
                }
            }
            workgroupBarrier();
        }
    }
}

@compute @workgroup_size(WG, 1, 1)
fn flash_backward_dq(ids: CoopIds) {
    coop_init(ids);
    let lix = ids.lix;
    let s_all = p.s_txt + p.s_img;
    let bh = ids.wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let row0 = ids.wid.x * BR;
    let base = bh * s_all;
    let warp = coop_warp(ids);
    let sh = head_shifts(b, h, base, s_all, lix);
    stage_rows(0u, b, h, base, row0, BR, 0u, s_all, lix, sh);
    stage_rows(3u, b, h, base, row0, BR, X_OFF, s_all, lix, sh);
    for (var r = lix; r < BR; r += WG) {
        let i = row0 + r;
        var di = 0.0;
        var li = 3.0e38;  // rows past the end: p = 0
        if (i < s_all) {
            let jr = joint_index(b, h, i);
            for (var d = 0u; d < DH; d += 1u) { di = fma(dout[jr + d], o[jr + d], di); }
            li = lse[base + i];
            delta[base + i] = di;
        }
        block_a[r] = li;
        block_b[r] = scaled_d(di, sh);
    }
    var acc: array<FragC, MAX_ACC>;
    for (var t = 0u; t < MAX_ACC; t += 1u) { acc[t] = frag_zero(); }
    for (var j0 = 0u; j0 < s_all; j0 += BC) {
        workgroupBarrier();  // the previous tile is consumed
        stage_rows(1u, b, h, base, j0, BC, T_OFF, s_all, lix, sh);
        stage_rows(2u, b, h, base, j0, BC, U_OFF, s_all, lix, sh);
        for (var c = lix; c < BC; c += WG) { tile_a[c] = key_valid(b, j0 + c, s_all); }
        workgroupBarrier();
        block_times_tile_t(warp, 0u, T_OFF, 0u);          // S
        block_times_tile_t(warp, X_OFF, U_OFF, BR * BC);  // dP'
        workgroupBarrier();
        for (var e = lix; e < BR * BC; e += WG) {
            let r = e / BC;
            let c = e % BC;
            let pj = select(0.0, exp(coop_out[e] - block_a[r]), tile_a[c] != 0.0);
            coop_in[E_OFF + r * LDP + c] = coop_elem(ldexp(pj * (coop_out[BR * BC + e] - block_b[r]), -DS_SHIFT));
        }
        workgroupBarrier();
        accumulate(&acc, warp, E_OFF, T_OFF);  // dQ += dS'·K
    }
    workgroupBarrier();
    write_rows(&acc, 0u, warp, coop_lane(ids), base, row0, s_all, p.scale, vec2(DS_SHIFT - sh.x, -sh.y));
}

@compute @workgroup_size(WG, 1, 1)
fn flash_backward_dkdv(ids: CoopIds) {
    coop_init(ids);
    let lix = ids.lix;
    let s_all = p.s_txt + p.s_img;
    let bh = ids.wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let row0 = ids.wid.x * BR;
    let base = bh * s_all;
    let warp = coop_warp(ids);
    let sh = head_shifts(b, h, base, s_all, lix);
    stage_rows(1u, b, h, base, row0, BR, 0u, s_all, lix, sh);
    stage_rows(2u, b, h, base, row0, BR, X_OFF, s_all, lix, sh);
    for (var r = lix; r < BR; r += WG) { block_a[r] = key_valid(b, row0 + r, s_all); }
    var acc_k: array<FragC, MAX_ACC>;
    var acc_v: array<FragC, MAX_ACC>;
    for (var t = 0u; t < MAX_ACC; t += 1u) {
        acc_k[t] = frag_zero();
        acc_v[t] = frag_zero();
    }
    for (var i0 = 0u; i0 < s_all; i0 += BC) {
        workgroupBarrier();
        stage_rows(0u, b, h, base, i0, BC, T_OFF, s_all, lix, sh);
        stage_rows(3u, b, h, base, i0, BC, U_OFF, s_all, lix, sh);
        for (var c = lix; c < BC; c += WG) {
            let i = i0 + c;
            let live = i < s_all;
            tile_a[c] = select(3.0e38, lse[base + min(i, s_all - 1u)], live);
            tile_b[c] = select(0.0, scaled_d(delta[base + min(i, s_all - 1u)], sh), live);
        }
        workgroupBarrier();
        block_times_tile_t(warp, 0u, T_OFF, 0u);          // Sᵀ = K·Qsᵀ
        block_times_tile_t(warp, X_OFF, U_OFF, BR * BC);  // dP'ᵀ = V'·dO'ᵀ
        workgroupBarrier();
        for (var e = lix; e < BR * BC; e += WG) {
            let r = e / BC;
            let c = e % BC;
            // a masked key's score can exceed lse (inf), hence the select
            let pj = select(0.0, exp(coop_out[e] - tile_a[c]), block_a[r] != 0.0);
            coop_in[E_OFF + r * LDP + c] = coop_elem(pj);
            coop_in[F_OFF + r * LDP + c] = coop_elem(ldexp(pj * (coop_out[BR * BC + e] - tile_b[c]), -DS_SHIFT));
        }
        workgroupBarrier();
        accumulate(&acc_v, warp, E_OFF, U_OFF);  // dV += Pᵀ·dO'
        accumulate(&acc_k, warp, F_OFF, T_OFF);  // dK += dS'ᵀ·Qs
    }
    workgroupBarrier();
    let lane = coop_lane(ids);
    write_rows(&acc_k, 1u, warp, lane, base, row0, s_all, 1.0, vec2(DS_SHIFT - sh.x, -sh.y));
    write_rows(&acc_v, 2u, warp, lane, base, row0, s_all, 1.0, vec2(-sh.x, 0));
}
