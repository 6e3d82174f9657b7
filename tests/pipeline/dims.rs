//! `wgdit::pipeline::dims` against the Qwen pipelines' size code (fixture: `dims/*`).

use crate::common::{i64s, metadata, shape};
use wgdit::pipeline::dims::{
    calculate_dimensions, edit_plus_sizes, edit_sizes, packed_seq_len, t2i_size, Size, SizeRules,
};

const R: SizeRules = SizeRules { multiple: 16, t2i_default: 1024, ref_area: 1024 * 1024, condition_area: 384 * 384 };

fn opt(v: i64) -> Option<u32> {
    (v != 0).then_some(v as u32)
}

#[test]
fn the_default_rules_are_the_real_vaes() {
    assert_eq!(SizeRules::qwen_image(), R);
}

#[test]
fn calculate_dimensions_matches_python_including_half_ties() {
    let input = i64s("dims/calc/in");
    let want = i64s("dims/calc/out");
    let n = shape("dims/calc/in")[0];
    let mut ties = 0;
    for i in 0..n {
        let (area, w, h) = (input[3 * i] as u64, input[3 * i + 1], input[3 * i + 2]);
        let got = calculate_dimensions(area, w as f64 / h as f64);
        assert_eq!((got.0 as i64, got.1 as i64), (want[2 * i], want[2 * i + 1]), "area {area}, image {w}x{h}");
        let width = (area as f64 * (w as f64 / h as f64)).sqrt();
        ties += ((width / 32.0).fract() == 0.5) as usize;
    }
    assert!(ties >= 10, "the fixture should exercise exact .5 ties ({ties})");
}

#[test]
fn t2i_sizes_match_the_pipeline() {
    let rows = i64s("dims/t2i");
    for r in rows.chunks_exact(4) {
        let got = t2i_size(&R, opt(r[0]), opt(r[1])).unwrap();
        assert_eq!(got, Size::new(r[2] as u32, r[3] as u32), "requested {}x{}", r[0], r[1]);
    }
}

#[test]
fn t2i_sizes_below_sixteen_pixels_are_errors() {
    assert!(t2i_size(&R, Some(15), Some(1024)).is_err());
}

#[test]
fn edit_sizes_match_the_pipeline() {
    let rows = i64s("dims/edit");
    for r in rows.chunks_exact(8) {
        let got = edit_sizes(&R, Size::new(r[0] as u32, r[1] as u32), opt(r[2]), opt(r[3])).unwrap();
        assert_eq!(got.output, Size::new(r[4] as u32, r[5] as u32), "image {}x{}", r[0], r[1]);
        assert_eq!(got.reference, Size::new(r[6] as u32, r[7] as u32), "image {}x{}", r[0], r[1]);
    }
}

#[test]
fn edit_plus_sizes_match_the_pipeline() {
    for case in metadata("dims/edit_plus").as_array().unwrap() {
        let imgs = case["images"].as_array().unwrap();
        let px = |row: &serde_json::Value, i: usize| row[i].as_u64().unwrap() as u32;
        let inputs: Vec<Size> = imgs.iter().map(|r| Size::new(px(r, 0), px(r, 1))).collect();
        let req = &case["requested"];
        let got = edit_plus_sizes(&R, &inputs, opt(req[0].as_i64().unwrap()), opt(req[1].as_i64().unwrap())).unwrap();
        assert_eq!(got.output, Size::new(px(&case["output"], 0), px(&case["output"], 1)), "{case}");
        for (k, r) in imgs.iter().enumerate() {
            assert_eq!(got.vae[k], Size::new(px(r, 2), px(r, 3)), "{case}: VAE size of image {k}");
            assert_eq!(got.condition[k], Size::new(px(r, 4), px(r, 5)), "{case}: VL size of image {k}");
        }
    }
}

#[test]
fn degenerate_inputs_are_errors_not_zero_sizes() {
    assert!(edit_sizes(&R, Size::new(0, 10), None, None).is_err());
    assert!(edit_sizes(&R, Size::new(16384, 1), None, None).is_err(), "1024² at ratio 16384 has a zero height");
    assert!(edit_plus_sizes(&R, &[], None, None).is_err());
}

#[test]
fn the_1024_square_output_has_4096_packed_tokens() {
    assert_eq!(packed_seq_len(&R, Size::new(1024, 1024)), 4096);
    assert_eq!(packed_seq_len(&R, Size::new(1376, 768)), 86 * 48);
}
