//! The Qwen-Image RoPE table (`models::qwen_image::rope`) vs hand-computed positions and vs numbers made by
//! diffusers 0.42.1 itself (`tools/gen_rope_fixture.py`).

use wgdit::models::qwen_image::rope;
use wgdit::testing::{assert_close, Tol};

/// f32 cos/sin of f32 angles vs the same computed by torch: libm and torch may differ by an ulp.
const TABLE_TOL: Tol = Tol { abs: 1e-6, rel: 0.0, rel_l2: 1e-6 };

fn fixture() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rope/qwen_rope_tiny.safetensors");
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (regenerate with tools/gen_rope_fixture.py)"))
}

fn tensor(st: &safetensors::SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Interleaves separate cos and sin tables `[rows, pairs]` into `[rows, pairs, 2]`.
fn interleave(cos: &[f32], sin: &[f32]) -> Vec<f32> {
    cos.iter().zip(sin).flat_map(|(c, s)| [*c, *s]).collect()
}

#[test]
fn odd_grid_positions_are_centred_like_diffusers() {
    // gh = 3, gw = 5: rows −ceil(3/2) .. = −2..0, cols −3..1; text starts at max(3/2, 5/2) = 2.
    let p = rope::positions(&[(1, 3, 5)], 4);
    let text: Vec<[i64; 3]> = (2..6).map(|j| [j; 3]).collect();
    assert_eq!(&p[..4], &text[..]);
    let mut img = Vec::new();
    for r in -2..=0 {
        for c in -3..=1 {
            img.push([0, r, c]);
        }
    }
    assert_eq!(&p[4..], &img[..]);
}

#[test]
fn edit_layout_gives_references_the_next_frame_index() {
    let p = rope::positions(&[(1, 4, 4), (1, 3, 5)], 3);
    assert_eq!(p.len(), 3 + 16 + 15);
    assert_eq!(&p[..3], &[[2; 3], [3; 3], [4; 3]], "text starts at max over all images of max(gh/2, gw/2) = 2");
    assert_eq!(p[3], [0, -2, -2], "target first token");
    assert_eq!(p[3 + 15], [0, 1, 1], "target last token");
    assert_eq!(p[3 + 16], [1, -2, -3], "reference first token has frame 1");
    assert_eq!(p[3 + 16 + 14], [1, 0, 1], "reference last token");
}

#[test]
fn three_references_take_the_text_start_from_the_largest_image() {
    // zero_cond_t-like (Edit-2511) layout: target + 3 references; the 8x3 reference has max(4, 1) = 4.
    let shapes = [(1, 4, 6), (1, 2, 2), (1, 8, 3), (1, 1, 1)];
    let p = rope::positions(&shapes, 2);
    assert_eq!(&p[..2], &[[4; 3], [5; 3]]);
    let mut at = 2;
    for (idx, &(_, h, w)) in shapes.iter().enumerate() {
        assert_eq!(p[at], [idx as i64, -(h.div_ceil(2) as i64), -(w.div_ceil(2) as i64)], "image {idx} start");
        at += h * w;
        assert_eq!(p[at - 1], [idx as i64, (h / 2) as i64 - 1, (w / 2) as i64 - 1], "image {idx} end");
    }
    assert_eq!(at, p.len());
}

#[test]
fn table_rows_hold_cos_sin_of_position_times_inverse_frequency() {
    let axes = [8, 4, 4];
    let shapes = [(1, 3, 5), (1, 2, 3)];
    let t = rope::table(&axes, &shapes, 5);
    let pos = rope::positions(&shapes, 5);
    assert_eq!(t.len(), pos.len() * 16);
    let mut want = Vec::new();
    for p in &pos {
        for (axis, &d) in axes.iter().enumerate() {
            for k in 0..d / 2 {
                let a = p[axis] as f64 / 10000f64.powf(2.0 * k as f64 / d as f64);
                want.extend([a.cos() as f32, a.sin() as f32]);
            }
        }
    }
    assert_close("table vs f64 formula", &t, &want, TABLE_TOL);
}

#[test]
fn tiny_table_matches_diffusers_qwen_embed_rope() {
    let bytes = fixture();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let txt = interleave(&tensor(&st, "tiny_txt_cos"), &tensor(&st, "tiny_txt_sin"));
    let img = interleave(&tensor(&st, "tiny_img_cos"), &tensor(&st, "tiny_img_sin"));
    let want: Vec<f32> = txt.iter().chain(&img).copied().collect();
    let got = rope::table(&[8, 4, 4], &[(1, 3, 5), (1, 2, 3)], 5);
    let s = assert_close("tiny table vs diffusers", &got, &want, TABLE_TOL);
    eprintln!("tiny table vs diffusers: max_abs {:.2e} rel_l2 {:.2e}", s.max_abs, s.rel_l2);
}

/// Large positions: torch's vectorised f32 pow is 1 ulp off the correctly rounded value that
/// `rope::inv_freq` computes at one of the 28 frequencies of a 56-dim axis (k = 11: 37.275932 vs
/// 37.275936), so the angles differ by |p|·ulp(inv) ≈ |p|·1.9e-9: up to 7.6e-6 at |p| = 4095.
/// Positions up to 400 (every text start of the real model) stay within 1e-6.
const LARGE_P_TOL: Tol = Tol { abs: 1e-5, rel: 0.0, rel_l2: 1e-5 };

/// (position, our table row, diffusers' row).
type Row = (f32, Vec<f32>, Vec<f32>);

/// (position, table row [128]) pairs of diffusers' `pos_freqs` ("pos") or `neg_freqs` ("neg") rows
/// in the fixture, with our table's matching row; neg rows compare the width axis (pairs 36..64) only.
fn real_rows(st: &safetensors::SafeTensors, sign: &str, table: &[f32]) -> Vec<Row> {
    let idx = tensor(st, &format!("real_{sign}_index"));
    let want = interleave(&tensor(st, &format!("real_{sign}_cos")), &tensor(st, &format!("real_{sign}_sin")));
    let span = if sign == "pos" { 0..128 } else { 72..128 };
    idx.iter()
        .enumerate()
        .map(|(n, &p)| {
            let row = if sign == "pos" { p as usize } else { (p + 4096.0) as usize };
            let got = table[row * 128..(row + 1) * 128][span.clone()].to_vec();
            (p, got, want[n * 128..(n + 1) * 128][span.clone()].to_vec())
        })
        .collect()
}

#[test]
fn real_axes_match_diffusers_at_large_positive_and_negative_positions() {
    let bytes = fixture();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // Text tokens of a 1x1 image sit at positions 0.. on all three axes (max_vid_index = 0): the
    // text rows of this table are diffusers' pos_freqs rows.
    let pos_table = rope::table(&[16, 56, 56], &[(1, 1, 1)], 4096);
    // A 1x8192 image spans width positions −4096..4095: its first 4096 tokens' width pairs are neg_freqs.
    let wide = rope::table(&[16, 56, 56], &[(1, 1, 8192)], 0);
    for (sign, table) in [("pos", &pos_table), ("neg", &wide)] {
        let rows = real_rows(&st, sign, table);
        for (limit, tol) in [(400.0, TABLE_TOL), (f32::INFINITY, LARGE_P_TOL)] {
            let pick = |f: fn(&Row) -> &Vec<f32>| -> Vec<f32> {
                rows.iter().filter(|r| r.0.abs() <= limit).flat_map(|r| f(r).clone()).collect()
            };
            let name = format!("{sign}_freqs |p| <= {limit} vs diffusers");
            let s = assert_close(&name, &pick(|r| &r.1), &pick(|r| &r.2), tol);
            eprintln!("{name}: max_abs {:.2e} rel_l2 {:.2e}", s.max_abs, s.rel_l2);
        }
    }
}

#[test]
fn cpu_rotation_inverse_undoes_the_rotation() {
    let t = rope::table(&[8, 4, 4], &[(1, 3, 5)], 2);
    let x: Vec<f64> = (0..16).map(|i| (i as f64 * 0.37).sin()).collect();
    let mut y = x.clone();
    rope::cpu::rotate(&mut y, &t[7 * 16..8 * 16], false);
    rope::cpu::rotate(&mut y, &t[7 * 16..8 * 16], true);
    // The f32 table's cos² + sin² is 1 only to ~1e-7, so the round trip is exact to that.
    for (a, b) in x.iter().zip(&y) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

#[test]
fn cpu_apply_rotates_every_head_by_its_token_row() {
    let t = rope::table(&[8, 4, 4], &[(1, 1, 3)], 2);
    let x: Vec<f64> = (0..5 * 32).map(|i| (i as f64 * 0.11).cos()).collect();
    let mut y = x.clone();
    rope::cpu::apply(&mut y, &t, 16);
    for s in 0..5 {
        for h in 0..2 {
            let mut want = x[s * 32 + h * 16..s * 32 + h * 16 + 16].to_vec();
            rope::cpu::rotate(&mut want, &t[s * 16..s * 16 + 16], false);
            assert_eq!(&y[s * 32 + h * 16..s * 32 + h * 16 + 16], &want[..], "token {s} head {h}");
        }
    }
}
