// gemm_dw: the parameter gradients of y = alpha·x·Wᵀ + b, per row-range problem (ACCUMULATED: +=):
//   dw[w_off + n·K + k] += alpha · Σ_{rows m of p} dy[m, n] · x[m, k]
//   db[bias_off + n]    += Σ_{rows m of p} dy[m, n]   (HAS_BIAS; the forward does not scale b)
//   dy: [M, N] f32   x: [M, K] f32   dw, db: f32, laid out like the parameters they belong to.
// A workgroup of 8x8x4 invocations owns a 32x32 tile of dw: each invocation sums outer products
// for a 4x4 block (4 n x 4 k) over every 4th row of the problem (rows split 4 ways along z, for
// parallelism when N·K is small, e.g. LoRA A/B gradients), then slice 0 adds the other three
// slices' partial sums from workgroup memory (one barrier) and updates dw; the invocations of the
// first k block also sum db. No atomics: each dw element has one owner per problem (problems of
// one dispatch must use disjoint dw/db ranges).
// Dispatch: [ceil(K/32), ceil(N/32), problems].

override HAS_BIAS: bool = false;

struct Problem {
    row0: u32,
    rows: u32,
    w_off: u32,     // element offset of this problem's dw [N, K]
    bias_off: u32,  // element offset of its db [N]
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct Params {
    n: u32,   // columns of dy = rows of dw
    k: u32,   // columns of x = columns of dw
    problems: u32,
    ldy: u32,      // row stride of dy
    dy_col0: u32,  // first dy column used (y was a column slice of a wider output)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    prob: array<Problem, 4>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;
@group(0) @binding(4) var<storage, read_write> db: array<f32>;

const SLICES: u32 = 4u;  // invocations along z split the problem's rows m ≡ slice (mod 4)

// Partial sums of slices 1..3: [slice - 1][invocation in the 8x8 plane][acc0..acc3, bsum].
var<workgroup> partial: array<vec4<f32>, 960>;

@compute @workgroup_size(8, 8, 4)
fn gemm_dw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let pr = p.prob[wid.z];
    let c0 = gid.x * 4u;
    let n0 = gid.y * 4u;
    let K = p.k;
    let N = p.n;
    // No early return: every invocation must reach the barrier.
    let inside = c0 < K && n0 < N;
    // Clamped indices: edge invocations compute duplicates and skip their stores.
    let n1 = min(n0 + 1u, N - 1u);
    let n2 = min(n0 + 2u, N - 1u);
    let n3 = min(n0 + 3u, N - 1u);
    let c1 = min(c0 + 1u, K - 1u);
    let c2 = min(c0 + 2u, K - 1u);
    let c3 = min(c0 + 3u, K - 1u);
    var acc0 = vec4<f32>(0.0);  // row n0 of dw, columns c0..c0+3
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var bsum = vec4<f32>(0.0);  // db[n0..n0+3]
    if (inside) {
        for (var m = pr.row0 + lid.z; m < pr.row0 + pr.rows; m += SLICES) {
            let dr = m * p.ldy + p.dy_col0;
            let d = vec4<f32>(dy[dr + n0], dy[dr + n1], dy[dr + n2], dy[dr + n3]);
            let xv = vec4<f32>(x[m * K + c0], x[m * K + c1], x[m * K + c2], x[m * K + c3]);
            acc0 += d.x * xv;
            acc1 += d.y * xv;
            acc2 += d.z * xv;
            acc3 += d.w * xv;
            bsum += d;
        }
    }
    let slot = lid.y * 8u + lid.x;
    if (lid.z > 0u) {
        let base = ((lid.z - 1u) * 64u + slot) * 5u;
        partial[base] = acc0;
        partial[base + 1u] = acc1;
        partial[base + 2u] = acc2;
        partial[base + 3u] = acc3;
        partial[base + 4u] = bsum;
    }
    workgroupBarrier();
    if (lid.z != 0u || !inside) { return; }
    for (var s = 0u; s < SLICES - 1u; s += 1u) {
        let base = (s * 64u + slot) * 5u;
        acc0 += partial[base];
        acc1 += partial[base + 1u];
        acc2 += partial[base + 2u];
        acc3 += partial[base + 3u];
        bsum += partial[base + 4u];
    }
    for (var j = 0u; j < 4u; j += 1u) {
        let c = c0 + j;
        if (c < K) {
            dw[pr.w_off + n0 * K + c] += pr.alpha * acc0[j];
            if (n0 + 1u < N) { dw[pr.w_off + (n0 + 1u) * K + c] += pr.alpha * acc1[j]; }
            if (n0 + 2u < N) { dw[pr.w_off + (n0 + 2u) * K + c] += pr.alpha * acc2[j]; }
            if (n0 + 3u < N) { dw[pr.w_off + (n0 + 3u) * K + c] += pr.alpha * acc3[j]; }
        }
    }
    if (HAS_BIAS && c0 == 0u) {
        for (var j = 0u; j < 4u; j += 1u) {
            if (n0 + j < N) { db[pr.bias_off + n0 + j] += bsum[j]; }
        }
    }
}
