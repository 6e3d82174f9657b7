//! `wgdit::image::pixels` against Pillow's `Image.open(p).convert("RGB")` and diffusers'
//! `VaeImageProcessor.preprocess` / `postprocess` (fixture: `pixels/*`, `fixtures/images/`).

use std::path::{Path, PathBuf};

use crate::common::{assert_bits, f32s, fixture_dir, metadata, shape, u8s};
use ::image::RgbImage;
use wgdit::image::pixels::{load_rgb, read_png_text, vae_input, vae_output_to_rgb8, vae_output_to_unit, write_png};
use wgdit::Error;

fn images() -> PathBuf {
    fixture_dir().join("images")
}

/// A fresh scratch folder for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pieces-pixels-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn pillow_rgb(name: &str) -> Vec<u8> {
    u8s(&format!("pixels/load/{name}"))
}

#[test]
fn png_files_of_every_mode_load_like_pillow_convert_rgb() {
    for name in metadata("pixels/load/files").as_array().unwrap() {
        let name = name.as_str().unwrap();
        if !name.ends_with(".png") {
            continue;
        }
        let img = load_rgb(&images().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = pillow_rgb(name);
        let s = shape(&format!("pixels/load/{name}"));
        assert_eq!((img.height() as usize, img.width() as usize), (s[0], s[1]), "{name}");
        assert_eq!(img.as_raw(), &want, "{name}: pixels differ from Pillow");
    }
}

#[test]
fn lossless_webp_loads_like_pillow() {
    assert_eq!(load_rgb(&images().join("lossless.webp")).unwrap().as_raw(), &pillow_rgb("lossless.webp"));
}

/// (max, mean) absolute difference in levels between this crate's and Pillow's decode of a JPEG.
fn jpeg_difference(name: &str) -> (i32, f64) {
    let got = load_rgb(&images().join(name)).unwrap();
    let want = pillow_rgb(name);
    assert_eq!(got.as_raw().len(), want.len(), "{name}");
    let d: Vec<i32> = got.as_raw().iter().zip(&want).map(|(&a, &b)| (a as i32 - b as i32).abs()).collect();
    (*d.iter().max().unwrap(), d.iter().sum::<i32>() as f64 / d.len() as f64)
}

#[test]
fn jpeg_loads_close_to_pillow() {
    // zune-jpeg and libjpeg-turbo (Pillow) differ in IDCT rounding and, for 4:2:0 files, in chroma
    // upsampling, so JPEG is not bit-exact. The image is a worst case (hashed noise tiles next to
    // gradients, quality 90). Measured: 4:4:4 max 2 levels (mean 0.03); 4:2:0 max 10 levels (mean 0.35).
    const JPEG_444_MAX_DIFF: i32 = 2;
    const JPEG_420_MAX_DIFF: i32 = 10;
    const JPEG_420_MEAN_DIFF: f64 = 0.5;
    let (max444, _) = jpeg_difference("photo444.jpg");
    assert!(max444 <= JPEG_444_MAX_DIFF, "4:4:4 JPEG differs from Pillow by {max444} levels");
    let (max420, mean420) = jpeg_difference("photo.jpg");
    assert!(
        max420 <= JPEG_420_MAX_DIFF && mean420 <= JPEG_420_MEAN_DIFF,
        "4:2:0 JPEG: max {max420}, mean {mean420:.3}"
    );
}

#[test]
fn text_chunks_written_by_pillow_are_read_back() {
    let want: Vec<(String, String)> = metadata("pixels/text")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(read_png_text(&images().join("text.png")).unwrap(), want);
}

#[test]
fn written_png_round_trips_pixels_and_text_and_leaves_no_temporary_file() {
    let dir = scratch("roundtrip");
    let img = load_rgb(&images().join("rgb8.png")).unwrap();
    let path = dir.join("out.png");
    let text = [("prompt", "a red fox, snow"), ("seed", "42"), ("latin", "café ½"), ("unicode", "日本語 ✓")];
    write_png(&path, &img, &text).unwrap();
    write_png(&path, &img, &text).unwrap(); // replacing an existing file works too
    assert_eq!(load_rgb(&path).unwrap(), img);
    let back = read_png_text(&path).unwrap();
    assert_eq!(back, text.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>());
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("out.png")], "temporary files left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn invalid_text_keys_are_refused_before_anything_is_written() {
    let dir = scratch("badkey");
    let img = RgbImage::new(2, 2);
    let path = dir.join("x.png");
    let long = "k".repeat(80);
    for key in ["", " lead", "trail ", "dou  ble", "nul\0", long.as_str(), "ключ"] {
        let err = write_png(&path, &img, &[(key, "v")]).unwrap_err();
        assert!(matches!(err, Error::Input(_)), "{key:?}: {err:?}");
    }
    assert!(write_png(&path, &img, &[("key", "nul\0value")]).is_err());
    assert!(!path.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn writing_into_a_missing_folder_is_an_io_error() {
    let err = write_png(Path::new("/nonexistent-pieces-dir/x.png"), &RgbImage::new(1, 1), &[]).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

#[test]
fn vae_input_matches_diffusers_preprocess_bit_for_bit() {
    let s = shape("pixels/pre/image");
    let img = RgbImage::from_raw(s[1] as u32, s[0] as u32, u8s("pixels/pre/image")).unwrap();
    assert_bits(&vae_input(&img), &f32s("pixels/pre/out"), "preprocess of all 256 levels");
}

#[test]
fn vae_output_postprocess_matches_diffusers_pt_and_pil() {
    let x = f32s("pixels/post/in");
    let s = shape("pixels/post/in"); // [1, 3, H, W]
    assert_bits(&vae_output_to_unit(&x), &f32s("pixels/post/pt"), "postprocess pt");
    let img = vae_output_to_rgb8(&x, s[3] as u32, s[2] as u32).unwrap();
    assert_eq!(img.as_raw(), &u8s("pixels/post/pil"), "postprocess pil (u8 rounding)");
}

#[test]
fn postprocess_with_a_wrong_size_is_an_error() {
    assert!(vae_output_to_rgb8(&[0.0; 11], 2, 2).is_err());
}

/// A PNG file whose IHDR claims `w`x`h` (valid CRC) followed by a tiny, truncated IDAT.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let mut crc = 0xffff_ffffu32;
        for &b in kind.iter().chain(data) {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        c.extend_from_slice(&(!crc).to_be_bytes());
        c
    }
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x63]));
    png
}

#[test]
fn unreadable_corrupt_and_huge_images_are_errors_not_panics() {
    let dir = scratch("bad");
    let valid = std::fs::read(images().join("rgb8.png")).unwrap();
    let mut bad_crc = valid.clone();
    bad_crc[40] ^= 0x55;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.png", vec![]),
        ("garbage.png", b"definitely not an image, just text".to_vec()),
        ("truncated.png", valid[..valid.len() / 2].to_vec()),
        ("bad_crc.png", bad_crc),
        ("wide.png", png_header_only(100_000, 10)),
        ("tall.png", png_header_only(10, 16_385)),
        ("huge.png", png_header_only(0x7fff_ffff, 0x7fff_ffff)),
        ("zero.png", png_header_only(0, 5)),
        ("truncated_small.png", png_header_only(64, 64)),
        ("truncated.jpg", std::fs::read(images().join("photo.jpg")).unwrap()[..300].to_vec()),
    ];
    for (name, bytes) in &cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        match load_rgb(&path) {
            Err(Error::File { path: p, .. }) | Err(Error::Io { path: p, .. }) => assert_eq!(p, path, "{name}"),
            other => panic!("{name}: expected a file error, got {other:?}"),
        }
    }
    let missing = load_rgb(&dir.join("missing.png")).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing:?}");
    assert!(read_png_text(&dir.join("garbage.png")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
