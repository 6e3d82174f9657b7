//! `wgdit::image::resize` against Pillow 13 `Image.resize((w, h), LANCZOS)` as diffusers'
//! `VaeImageProcessor.resize` calls it (fixture: `resize/*`).

use crate::common::{metadata, u64s, u8s};
use ::image::RgbImage;
use wgdit::image::resize::resize_lanczos;

/// The generator's `pattern(w, h)`: 16-px tiles alternating hashed noise and a smooth gradient.
fn pattern(w: u32, h: u32) -> RgbImage {
    let (wd, hd) = ((w.max(2) - 1) as u64, (h.max(2) - 1) as u64);
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as u64, y as u64);
        ::image::Rgb(std::array::from_fn(|c| {
            let c = c as u64;
            let m = 0xffff_ffffu64;
            let mut hsh = ((x * 73_856_093) ^ (y * 19_349_663) ^ (c * 83_492_791)) & m;
            hsh = ((hsh ^ (hsh >> 13)) * 0x5bd1_e995) & m;
            hsh ^= hsh >> 15;
            let noise = hsh & 255;
            let smooth = ((x * 255 / wd + y * 255 / hd + c * 60) / 2) % 256;
            (if ((x >> 4) + (y >> 4)) & 1 == 1 { noise } else { smooth }) as u8
        }))
    })
}

fn fnv1a_rows(img: &RgbImage) -> Vec<u64> {
    img.as_raw()
        .chunks_exact(img.width() as usize * 3)
        .map(|row| row.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)))
        .collect()
}

#[test]
fn lanczos_resize_matches_pillow_bit_for_bit_on_every_case() {
    for case in metadata("resize/cases").as_array().unwrap() {
        let name = case[0].as_str().unwrap();
        let dim = |v: &serde_json::Value, i: usize| v[i].as_u64().unwrap() as u32;
        let (iw, ih, ow, oh) = (dim(&case[1], 0), dim(&case[1], 1), dim(&case[2], 0), dim(&case[2], 1));
        let src = match case[3].as_str().unwrap() {
            "random" => RgbImage::from_raw(iw, ih, u8s(&format!("resize/{name}/input"))).unwrap(),
            _ => pattern(iw, ih),
        };
        let got = resize_lanczos(&src, ow, oh).unwrap();
        assert_eq!((got.width(), got.height()), (ow, oh), "{name}");
        if case[4].as_str().unwrap() == "full" {
            let want = u8s(&format!("resize/{name}/output"));
            let bad = got.as_raw().iter().zip(&want).position(|(a, b)| a != b);
            if let Some(i) = bad {
                let px = i / 3;
                panic!(
                    "{name}: first difference at x {} y {} channel {}: got {} want {} ({} bytes differ)",
                    px % ow as usize,
                    px / ow as usize,
                    i % 3,
                    got.as_raw()[i],
                    want[i],
                    got.as_raw().iter().zip(&want).filter(|(a, b)| a != b).count()
                );
            }
        } else {
            let want = u64s(&format!("resize/{name}/row_hash"));
            let rows = fnv1a_rows(&got);
            let bad: Vec<usize> = (0..rows.len()).filter(|&y| rows[y] != want[y]).collect();
            assert!(
                bad.is_empty(),
                "{name}: {} of {oh} rows differ, first rows {:?}",
                bad.len(),
                &bad[..bad.len().min(8)]
            );
        }
    }
}

#[test]
fn resizing_to_the_same_size_is_a_copy() {
    let src = pattern(33, 17);
    assert_eq!(resize_lanczos(&src, 33, 17).unwrap(), src);
}

#[test]
fn empty_or_oversized_targets_are_errors() {
    let src = pattern(8, 8);
    assert!(resize_lanczos(&src, 0, 8).is_err());
    assert!(resize_lanczos(&src, 8, 0).is_err());
    assert!(resize_lanczos(&src, 16385, 8).is_err());
}
