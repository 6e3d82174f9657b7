//! The scale searches of ggml's k-quant reference quantizers (ggml/src/ggml-quants.c:
//! `nearest_int`, `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`), ported with the same f32
//! operations in the same order, so that they pick the same quants as ggml. Only the argument
//! combinations that `quantize_row_q*_K_ref` uses are ported (no importance weights).
//!
//! Speed: ggml runs one search per sub-block; its sums are sequential chains, so one search is
//! bound by add latency. Here `make_qx_quants` and `make_qkx2_quants` run the searches of all `L`
//! sub-blocks of a super-block at once, one per lane: `x[i][k]` is element i of sub-block k, every `if` of the C
//! becomes a per-lane select, and each lane still adds its terms in ggml's order, so the results
//! are bit-identical (tests/weights/quant_formats.rs compares with ggml's C) while the compiler
//! vectorises across lanes.

/// ggml's `GROUP_MAX_EPS`: groups whose largest magnitude is below it quantize to zero.
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: adding 1.5·2²³ rounds to an integer (to nearest even) in the mantissa.
/// Exact for |x| ≤ 2²² (ggml asserts that in debug builds); beyond that it wraps exactly as the C
/// does, and every caller clamps the result.
#[inline(always)]
pub(super) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Sub-blocks in lanes: `[i][k]` is element i of sub-block k.
pub(super) type Lanes<T, const N: usize, const L: usize> = [[T; L]; N];

/// The L sub-blocks of N consecutive elements of `x`, in lanes.
pub(super) fn to_lanes<const N: usize, const L: usize>(x: &[f32]) -> Lanes<f32, N, L> {
    std::array::from_fn(|i| std::array::from_fn(|k| x[N * k + i]))
}

/// Writes lanes back in element order (sub-block k at `out[N·k..]`).
pub(super) fn from_lanes<T: Copy, const N: usize, const L: usize>(q: &Lanes<T, N, L>, out: &mut [T]) {
    for (i, row) in q.iter().enumerate() {
        for (k, v) in row.iter().enumerate() {
            out[N * k + i] = *v;
        }
    }
}

/// Per lane, the value of largest magnitude (the first of equal ones) and that magnitude.
fn signed_absmax<const N: usize, const L: usize>(x: &Lanes<f32, N, L>) -> ([f32; L], [f32; L]) {
    let (mut max, mut amax) = ([0.0f32; L], [0.0f32; L]);
    for row in x {
        for k in 0..L {
            let bigger = row[k].abs() > amax[k];
            amax[k] = if bigger { row[k].abs() } else { amax[k] };
            max[k] = if bigger { row[k] } else { max[k] };
        }
    }
    (max, amax)
}

/// `make_qx_quants(n, nmax, x, L, rmse_type = 1, qw = NULL)` (Q6_K) on L groups: symmetric quants in
/// [−nmax, nmax − 1] (stored + nmax in `q`), weighted by x², trying 19 scales around −nmax/max and
/// keeping the least-squares best. Returns the scales.
pub(super) fn make_qx_quants<const N: usize, const L: usize>(
    nmax: i32,
    x: &Lanes<f32, N, L>,
    q: &mut Lanes<i8, N, L>,
) -> [f32; L] {
    let (max, amax) = signed_absmax(x);
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: &[f32; L]| {
        let (mut sumlx, mut suml2) = ([0.0f32; L], [0.0f32; L]);
        for row in x {
            for k in 0..L {
                let (l, w) = (quant(iscale[k], row[k]) as f32, row[k] * row[k]);
                sumlx[k] += w * row[k] * l;
                suml2[k] += w * l * l;
            }
        }
        (sumlx, suml2)
    };
    let iscale: [f32; L] = std::array::from_fn(|k| -(nmax as f32) / max[k]);
    for (qr, xr) in q.iter_mut().zip(x) {
        for k in 0..L {
            qr[k] = (quant(iscale[k], xr[k]) + nmax) as i8;
        }
    }
    let (sumlx, suml2) = sums(&iscale);
    let mut scale: [f32; L] = std::array::from_fn(|k| if suml2[k] != 0.0 { sumlx[k] / suml2[k] } else { 0.0 });
    let mut best: [f32; L] = std::array::from_fn(|k| scale[k] * sumlx[k]);
    for is in (-9..=9).filter(|is| *is != 0) {
        let iscale: [f32; L] = std::array::from_fn(|k| -(nmax as f32 + 0.1 * is as f32) / max[k]);
        let (sumlx, suml2) = sums(&iscale);
        let better: [bool; L] = std::array::from_fn(|k| suml2[k] > 0.0 && sumlx[k] * sumlx[k] > best[k] * suml2[k]);
        for (qr, xr) in q.iter_mut().zip(x) {
            for k in 0..L {
                qr[k] = if better[k] { (quant(iscale[k], xr[k]) + nmax) as i8 } else { qr[k] };
            }
        }
        for k in 0..L {
            scale[k] = if better[k] { sumlx[k] / suml2[k] } else { scale[k] };
            best[k] = if better[k] { scale[k] * sumlx[k] } else { best[k] };
        }
    }
    zero_groups(&amax, q, &mut scale);
    scale
}

/// ggml's all-zero early return: groups with amax < GROUP_MAX_EPS get quants 0 and scale 0.
fn zero_groups<const N: usize, const L: usize>(amax: &[f32; L], q: &mut Lanes<i8, N, L>, scale: &mut [f32; L]) {
    for k in (0..L).filter(|k| amax[*k] < GROUP_MAX_EPS) {
        q.iter_mut().for_each(|r| r[k] = 0);
        scale[k] = 0.0;
    }
}

/// `make_q3_quants(n, nmax, x, L, do_rmse = true)` (Q3_K) on one group: symmetric quants in
/// [−nmax, nmax − 1] (stored + nmax), then up to five passes that move single quants while the
/// x²-weighted fit improves. Returns the scale. (One group at a time: the passes are a sequential
/// chain per group that mostly stops after one or two passes, which lanes would not shorten.)
pub(super) fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (l, &v) in l.iter_mut().zip(x) {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *l = q as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for (l, &v) in l.iter_mut().zip(x) {
            let (w, old) = (v * v, *l as f32);
            let mut slx = sumlx - w * v * old;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old * old;
                let new = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new != *l as i32 {
                    slx += w * v * new as f32;
                    sl2 += w * new as f32 * new as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *l = new as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for l in l.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The search of `make_qkx2_quants` (Q2_K, Q4_K, Q5_K).
pub(super) struct Qkx2 {
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    /// Minimise the weighted absolute error instead of the squared error.
    pub use_mad: bool,
}

impl Qkx2 {
    /// Asymmetric quants `q` in [0, nmax] with x ≈ scale·q − min (min ≥ 0), for L groups: starts
    /// from the min/max grid, then tries `nstep + 1` grids (nmax + rmin + rdelta·is)/(max − min),
    /// fitting scale and min by weighted least squares, and keeps the smallest weighted error.
    /// Returns (scales, mins).
    pub fn fit<const N: usize, const L: usize>(
        &self,
        x: &Lanes<f32, N, L>,
        w: &Lanes<f32, N, L>,
        q: &mut Lanes<u8, N, L>,
    ) -> ([f32; L], [f32; L]) {
        let (mut min, mut max, mut sum_w) = (x[0], x[0], w[0]);
        let mut sum_x: [f32; L] = std::array::from_fn(|k| sum_w[k] * x[0][k]);
        for (xr, wr) in x.iter().zip(w).skip(1) {
            for k in 0..L {
                min[k] = if xr[k] < min[k] { xr[k] } else { min[k] };
                max[k] = if xr[k] > max[k] { xr[k] } else { max[k] };
                sum_w[k] += wr[k];
                sum_x[k] += wr[k] * xr[k];
            }
        }
        min = min.map(|m| if m > 0.0 { 0.0 } else { m });
        let (flat, flat_min): ([bool; L], [f32; L]) = (std::array::from_fn(|k| max[k] == min[k]), min);
        let iscale: [f32; L] = std::array::from_fn(|k| self.nmax as f32 / (max[k] - min[k]));
        let mut scale = iscale.map(|s| 1.0 / s);
        // Quants are kept as f32 (small integers, exact) until the end: no conversions in the loops.
        let mut ql = [[0.0f32; L]; N];
        self.quantize(x, &iscale, &min, &mut ql);
        let mut best = self.error(x, w, &ql, &scale, &min);
        // ggml returns the min/max grid when nstep < 1; quantize_row_q*_K_ref always search.
        debug_assert!(self.nstep >= 1, "make_qkx2_quants: nstep {}", self.nstep);
        let mut laux = [[0.0f32; L]; N];
        for is in 0..=self.nstep {
            let step = self.rmin + self.rdelta * is as f32 + self.nmax as f32;
            let iscale: [f32; L] = std::array::from_fn(|k| step / (max[k] - min[k]));
            self.quantize(x, &iscale, &min, &mut laux);
            let (mut sum_l, mut sum_l2, mut sum_xl) = ([0.0f32; L], [0.0f32; L], [0.0f32; L]);
            for ((xr, wr), lr) in x.iter().zip(w).zip(&laux) {
                for k in 0..L {
                    let l = lr[k];
                    sum_l[k] += wr[k] * l;
                    sum_l2[k] += wr[k] * l * l;
                    sum_xl[k] += wr[k] * l * xr[k];
                }
            }
            let d: [f32; L] = std::array::from_fn(|k| sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k]);
            let mut this_scale: [f32; L] = std::array::from_fn(|k| (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / d[k]);
            let mut this_min: [f32; L] = std::array::from_fn(|k| (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / d[k]);
            for k in 0..L {
                let clamp = this_min[k] > 0.0;
                this_min[k] = if clamp { 0.0 } else { this_min[k] };
                this_scale[k] = if clamp { sum_xl[k] / sum_l2[k] } else { this_scale[k] };
            }
            let cur = self.error(x, w, &laux, &this_scale, &this_min);
            let better: [bool; L] = std::array::from_fn(|k| d[k] > 0.0 && cur[k] < best[k]);
            if better.contains(&true) {
                for (qr, lr) in ql.iter_mut().zip(&laux) {
                    for k in 0..L {
                        qr[k] = if better[k] { lr[k] } else { qr[k] };
                    }
                }
            }
            for k in 0..L {
                best[k] = if better[k] { cur[k] } else { best[k] };
                scale[k] = if better[k] { this_scale[k] } else { scale[k] };
                min[k] = if better[k] { this_min[k] } else { min[k] };
            }
        }
        for (qr, lr) in q.iter_mut().zip(&ql) {
            for k in 0..L {
                qr[k] = lr[k] as u8;
            }
        }
        // ggml's early return for max == min: quants 0, scale 0, min as found.
        for k in (0..L).filter(|k| flat[*k]) {
            q.iter_mut().for_each(|r| r[k] = 0);
            (scale[k], min[k]) = (0.0, flat_min[k]);
        }
        (scale, min.map(|m| -m))
    }

    /// q = clamp(nearest_int(iscale·(x − min)), 0, nmax) per lane.
    fn quantize<const N: usize, const L: usize>(
        &self,
        x: &Lanes<f32, N, L>,
        iscale: &[f32; L],
        min: &[f32; L],
        q: &mut Lanes<f32, N, L>,
    ) {
        for (qr, xr) in q.iter_mut().zip(x) {
            for k in 0..L {
                qr[k] = nearest_int(iscale[k] * (xr[k] - min[k])).clamp(0, self.nmax) as f32;
            }
        }
    }

    /// Σ w·|scale·q + min − x| (or squared) per lane, summed in ggml's order.
    fn error<const N: usize, const L: usize>(
        &self,
        x: &Lanes<f32, N, L>,
        w: &Lanes<f32, N, L>,
        q: &Lanes<f32, N, L>,
        scale: &[f32; L],
        min: &[f32; L],
    ) -> [f32; L] {
        let mut err = [0.0f32; L];
        for ((xr, wr), qr) in x.iter().zip(w).zip(q) {
            for k in 0..L {
                let diff = scale[k] * qr[k] + min[k] - xr[k];
                err[k] += wr[k] * if self.use_mad { diff.abs() } else { diff * diff };
            }
        }
        err
    }
}
