//! gated_residual forward (in-place `+=`) and backward (d_branch `=`, d_gate `+=`) vs the f64
//! reference on joint text+image rows with a zero_cond_t split; CPU backward vs finite differences.

use crate::kernels::gated_residual::{self, cpu, BackwardArgs, Group, Write};
use crate::kernels::norm::reduce_rows::{cpu as rcpu, Mode, SampleRows, Target};
use crate::kernels::test_util::*;
use crate::rng::Rng;
use crate::testing::{assert_close, test_gpu, Tol};

// One product (+ one add) per element; d_gate sums up to ~70 products onto O(1) values.
const TOL: Tol = Tol { abs: 2e-5, rel: 2e-5, rel_l2: 2e-6 };

/// [txt (B·s_txt rows) | img (B·s_img rows)], gates in a [img_mod (2B rows) | txt_mod (B rows)]
/// buffer of stride 6·cols: image gate1 = chunk 2 (with the split), text gate2 = chunk 5.
fn groups(b: usize, s_txt: usize, s_img: usize, split: usize, cols: usize) -> (Vec<Group>, usize) {
    let stride = 6 * cols;
    let g = vec![
        Group { rows: SampleRows::plain(0, b, s_txt), gate_offset: 2 * b * stride + 5 * cols, sample_stride: stride },
        Group {
            rows: SampleRows { row0: b * s_txt, samples: b, rows_per_sample: s_img, split, alt_rows: b },
            gate_offset: 2 * cols,
            sample_stride: stride,
        },
    ];
    (g, 3 * b * stride)
}

fn targets(groups: &[Group]) -> Vec<Target> {
    groups.iter().map(|g| Target { rows: g.rows, out_offset: g.gate_offset, out_stride: g.sample_stride }).collect()
}

#[test]
fn gated_residual_forward_and_backward_match_reference_with_zero_cond_split() {
    let gpu = test_gpu();
    for (i, &(b, s_txt, s_img, split, cols)) in
        [(2, 3, 17, 12, 64), (1, 1, 65, 65, 300), (3, 17, 40, 33, 16)].iter().enumerate()
    {
        let (gs, mod_len) = groups(b, s_txt, s_img, split, cols);
        let rows = b * (s_txt + s_img);
        let mut rng = Rng::new(i as u64);
        let (x, y, dx) = (
            normal(&mut rng, rows * cols, 1.0),
            normal(&mut rng, rows * cols, 1.0),
            normal(&mut rng, rows * cols, 1.0),
        );
        let (modv, dmod0) = (normal(&mut rng, mod_len, 0.5), normal(&mut rng, mod_len, 1.0));
        let (tx, ty, tdx, tm) = (
            up(&gpu, &x, &[rows, cols]),
            up(&gpu, &y, &[rows, cols]),
            up(&gpu, &dx, &[rows, cols]),
            up(&gpu, &modv, &[mod_len]),
        );
        let (db, dmod) = (poisoned(&gpu, &[rows, cols]), up(&gpu, &dmod0, &[mod_len]));
        let scratch = poisoned(&gpu, &[gated_residual::scratch_elems(&gs, cols)]);
        // out = x + gate·y into a fresh tensor (training graphs), before x is updated in place.
        let fresh = poisoned(&gpu, &[rows, cols]);
        let from_res = gated_residual::Args {
            a: &ty,
            modv: &tm,
            groups: &gs,
            write: Write::FromResidual,
            res: Some(&tx),
            out: &fresh,
        };
        let fwd =
            gated_residual::Args { a: &ty, modv: &tm, groups: &gs, write: Write::Accumulate, res: None, out: &tx };
        let mut l = vec![
            gated_residual::launch_forward(&gpu, &from_res).unwrap(),
            gated_residual::launch_forward(&gpu, &fwd).unwrap(),
        ];
        let bwd = BackwardArgs {
            branch: &ty,
            modv: &tm,
            groups: &gs,
            dx: &tdx,
            d_branch: &db,
            d_gate: Some((&dmod, &scratch)),
        };
        l.extend(gated_residual::launch_backward(&gpu, &bwd).unwrap());
        gpu.run(&l).unwrap();
        let (y64, m64, dx64) = (f64s(&y), f64s(&modv), f64s(&dx));
        let mut want_x = f64s(&x);
        cpu::apply(&y64, cols, &m64, &gs, Write::Accumulate, &mut want_x);
        let mut want_db = vec![f64::NAN; rows * cols];
        cpu::apply(&dx64, cols, &m64, &gs, Write::Assign, &mut want_db);
        let mut want_dm = f64s(&dmod0);
        rcpu::reduce_rows(Mode::Product, &dx64, Some(&y64), None, None, cols, &targets(&gs), &mut want_dm);
        let name = format!("B={b} txt={s_txt} img={s_img} split={split} cols={cols}");
        assert_close(&format!("x {name}"), &tx.to_f32(&gpu).unwrap(), &f32s(&want_x), TOL);
        if gs.iter().map(|g| g.rows.rows()).sum::<usize>() == rows {
            assert_close(&format!("res + gate·a {name}"), &fresh.to_f32(&gpu).unwrap(), &f32s(&want_x), TOL);
        }
        assert_close(&format!("d_branch {name}"), &db.to_f32(&gpu).unwrap(), &f32s(&want_db), TOL);
        let s = assert_close(&format!("d_gate {name}"), &dmod.to_f32(&gpu).unwrap(), &f32s(&want_dm), TOL);
        eprintln!("{name}: d_gate max_abs {:.2e} rel_l2 {:.2e}", s.max_abs, s.rel_l2);
    }
}

#[test]
fn gated_residual_cpu_backward_matches_finite_differences() {
    let (b, s_txt, s_img, split, cols) = (2, 2, 5, 3, 8);
    let (gs, mod_len) = groups(b, s_txt, s_img, split, cols);
    let rows = b * (s_txt + s_img);
    let mut rng = Rng::new(7);
    let (x, y, dy) = (
        f64s(&normal(&mut rng, rows * cols, 1.0)),
        f64s(&normal(&mut rng, rows * cols, 1.0)),
        f64s(&normal(&mut rng, rows * cols, 1.0)),
    );
    let modv = f64s(&normal(&mut rng, mod_len, 0.5));
    let loss = |yp: &[f64], mp: &[f64]| {
        let mut o = x.clone();
        cpu::apply(yp, cols, mp, &gs, Write::Accumulate, &mut o);
        dot(&o, &dy)
    };
    let mut d_branch = vec![0.0; rows * cols];
    cpu::apply(&dy, cols, &modv, &gs, Write::Assign, &mut d_branch);
    let mut d_gate = vec![0.0; mod_len];
    rcpu::reduce_rows(Mode::Product, &dy, Some(&y), None, None, cols, &targets(&gs), &mut d_gate);
    fd_check("d_branch", &y, &d_branch, 40, &mut rng, |yp| loss(yp, &modv));
    fd_check("d_gate", &modv, &d_gate, 40, &mut rng, |mp| loss(&y, mp));
}

#[test]
fn gated_residual_covers_more_workgroups_than_one_grid_dimension() {
    // 70002 rows × 1 column tile > 65535 workgroups: the launcher folds them into a 2-D grid
    // (the same folding as layer_norm_mod / rms_norm, whose barriers make this size too slow here).
    let gpu = test_gpu();
    let (b, s_img, cols) = (2, 35000, 4);
    let (gs, mod_len) = groups(b, 1, s_img, 30000, cols);
    let rows = b * (1 + s_img);
    let mut rng = Rng::new(9);
    let (y, modv) = (normal(&mut rng, rows * cols, 1.0), normal(&mut rng, mod_len, 0.5));
    let out = poisoned(&gpu, &[rows, cols]);
    let a = gated_residual::Args {
        a: &up(&gpu, &y, &[rows, cols]),
        modv: &up(&gpu, &modv, &[mod_len]),
        groups: &gs,
        write: Write::Assign,
        res: None,
        out: &out,
    };
    gpu.run(&[gated_residual::launch_forward(&gpu, &a).unwrap()]).unwrap();
    let mut want = vec![f64::NAN; rows * cols];
    cpu::apply(&f64s(&y), cols, &f64s(&modv), &gs, Write::Assign, &mut want);
    assert_close("gate·a, 70002 rows", &out.to_f32(&gpu).unwrap(), &f32s(&want), TOL);
}
