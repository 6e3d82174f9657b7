//! `wgdit vae encode|decode|plan`: the CLI contract against the diffusers fixtures, and clear
//! errors with a non-zero exit and no output file on bad input.

use crate::{assert_refused, tmp, wgdit};
use std::path::Path;

fn fixture(p: &str) -> String {
    crate::fixture(&format!("pipeline/{p}"))
}

fn read(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    (t.shape().to_vec(), bytemuck::pod_collect_to_vec(t.data()))
}

fn write_f32(path: &Path, name: &str, shape: Vec<usize>, v: &[f32]) {
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, bytemuck::cast_slice(v)).unwrap();
    safetensors::serialize_to_file(vec![(name, view)], None, path).unwrap();
}

#[test]
fn vae_encode_writes_the_latents_diffusers_computes() {
    let out = tmp("lat.safetensors");
    let args = ["vae", "encode", "--model", &fixture("t2i"), "--image", &fixture("inputs/vae_encode.png")];
    let (ok, log) = wgdit(&[&args[..], &["--output", out.to_str().unwrap()]].concat());
    assert!(ok, "{log}");
    let (shape, got) = read(&out, "latents");
    assert_eq!(shape, [1, 4, 1, 7, 11]);
    let (_, want) = read(Path::new(&fixture("cases/vae_encode.safetensors")), "latents");
    let s = wgdit::testing::stats(&got, &want);
    assert!(s.rel_l2 < 1e-4, "rel_l2 {}", s.rel_l2);
    std::fs::remove_file(out).ok();
}

#[test]
fn vae_decode_writes_the_image_tensor_and_the_png() {
    let lat = fixture("cases/vae_decode.safetensors"); // holds `latents` [1, 4, 1, 9, 13] (and `image`)
    let out = tmp("img.safetensors");
    let (ok, log) =
        wgdit(&["vae", "decode", "--model", &fixture("t2i/vae"), "--latents", &lat, "--output", out.to_str().unwrap()]);
    assert!(ok, "{log}");
    let (shape, got) = read(&out, "image");
    assert_eq!(shape, [1, 3, 36, 52]);
    let (_, want) = read(Path::new(&lat), "image");
    assert!(wgdit::testing::stats(&got, &want).rel_l2 < 1e-4);
    let png = tmp("img.png");
    let (ok, log) =
        wgdit(&["vae", "decode", "--model", &fixture("t2i"), "--latents", &lat, "--output", png.to_str().unwrap()]);
    assert!(ok, "{log}");
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (52, 36));
    // The PNG is round((x/2 + 0.5)·255) of diffusers' image (|Δ| ≤ 1 at .5 boundaries).
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            let want = ((want[c * 36 * 52 + i] / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round();
            assert!((p[c] as f32 - want).abs() <= 1.0, "pixel {i} channel {c}: {} vs {want}", p[c]);
        }
    }
    std::fs::remove_file(out).ok();
    std::fs::remove_file(png).ok();
}

#[test]
fn vae_decode_tiles_like_diffusers_enable_tiling() {
    let lat = fixture("cases/vae_tiled_decode.safetensors");
    let out = tmp("tiled.safetensors");
    let o = out.to_str().unwrap();
    let args = ["vae", "decode", "--model", &fixture("t2i"), "--latents", &lat, "--output", o];
    let (ok, log) =
        wgdit(&[&args[..], &["--vae-tiling", "on", "--vae-tile", "16x24", "--vae-tile-stride", "12x16"]].concat());
    assert!(ok, "{log}");
    assert!(log.contains("9 tiles"), "{log}");
    let (_, got) = read(&out, "image");
    let (_, want) = read(Path::new(&lat), "image_tiled");
    assert!(wgdit::testing::stats(&got, &want).rel_l2 < 1e-4);
    std::fs::remove_file(out).ok();
}

#[test]
fn vae_encode_tiles_when_asked() {
    let out = tmp("lat-tiled.safetensors");
    let args = ["vae", "encode", "--model", &fixture("t2i"), "--image", &fixture("inputs/vae_encode.png")];
    let tiles = ["--vae-tiling", "on", "--vae-tile", "16x24", "--vae-tile-stride", "12x16"];
    let (ok, log) = wgdit(&[&args[..], &["--output", out.to_str().unwrap()], &tiles].concat());
    assert!(ok && log.contains("9 tiles"), "{log}");
    assert_eq!(read(&out, "latents").0, [1, 4, 1, 7, 11]);
    let (ok, log) = wgdit(
        &[&args[..], &["--output", out.to_str().unwrap(), "--vae-tile", "8", "--vae-tile-stride", "12"]].concat(),
    );
    assert!(!ok && log.contains("--vae-tile-stride"), "{log}");
    std::fs::remove_file(out).ok();
}

#[test]
fn vae_encode_refuses_bad_images_and_writes_nothing() {
    let out = tmp("never-enc.safetensors");
    let o = out.to_str().unwrap();
    let m = fixture("t2i");
    // 37×29 is not a multiple of the spatial factor 4.
    assert_refused(
        &["vae", "encode", "--model", &m, "--image", &fixture("inputs/ref_a.png"), "--output", o],
        &out,
        "multiple of 4",
    );
    let corrupt = tmp("corrupt.png");
    let mut bytes = std::fs::read(fixture("inputs/vae_encode.png")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).unwrap();
    assert_refused(
        &["vae", "encode", "--model", &m, "--image", corrupt.to_str().unwrap(), "--output", o],
        &out,
        "cannot decode",
    );
    let missing = tmp("missing.png");
    assert_refused(
        &["vae", "encode", "--model", &m, "--image", missing.to_str().unwrap(), "--output", o],
        &out,
        "missing.png",
    );
    // A grey PNG is read as Pillow's convert("RGB") does (the channel replicated), like generate's images.
    let gray = tmp("gray.png");
    image::GrayImage::new(8, 8).save(&gray).unwrap();
    let (ok, log) = wgdit(&["vae", "encode", "--model", &m, "--image", gray.to_str().unwrap(), "--output", o]);
    assert!(ok && out.exists(), "{log}");
    std::fs::remove_file(&out).unwrap();
    let img = fixture("inputs/vae_encode.png");
    let png_out = tmp("never.png");
    assert_refused(
        &["vae", "encode", "--model", &m, "--image", &img, "--output", png_out.to_str().unwrap()],
        &png_out,
        ".safetensors",
    );
    for p in [corrupt, gray] {
        std::fs::remove_file(p).ok();
    }
}

#[test]
fn vae_decode_refuses_bad_latents_and_writes_nothing() {
    let out = tmp("never-dec.png");
    let o = out.to_str().unwrap();
    let m = fixture("t2i");
    let bad = tmp("bad-lat.safetensors");
    let b = bad.to_str().unwrap();
    write_f32(&bad, "latents", vec![1, 5, 1, 3, 3], &[0.0; 45]); // z_dim is 4
    assert_refused(&["vae", "decode", "--model", &m, "--latents", b, "--output", o], &out, "[1, 4, 1, h, w]");
    write_f32(&bad, "noise", vec![1, 4, 1, 3, 3], &[0.0; 36]);
    assert_refused(&["vae", "decode", "--model", &m, "--latents", b, "--output", o], &out, "no tensor `latents`");
    let half = vec![0u8; 72];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![1, 4, 1, 3, 3], &half).unwrap();
    safetensors::serialize_to_file(vec![("latents", view)], None, &bad).unwrap();
    assert_refused(&["vae", "decode", "--model", &m, "--latents", b, "--output", o], &out, "F32");
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    assert_refused(&["vae", "decode", "--model", &m, "--latents", b, "--output", o], &out, "safetensors");
    let lat = fixture("cases/vae_decode.safetensors");
    let jpg = tmp("never.jpg");
    assert_refused(
        &["vae", "decode", "--model", &m, "--latents", &lat, "--output", jpg.to_str().unwrap()],
        &jpg,
        ".png or .safetensors",
    );
    std::fs::remove_file(bad).ok();
}

#[test]
fn vae_refuses_broken_model_folders_naming_the_problem() {
    let lat = fixture("cases/vae_decode.safetensors");
    let out = tmp("never-model.safetensors");
    let o = out.to_str().unwrap();
    let dir = tmp("vae-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(&fixture("t2i/vae")).to_path_buf();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    // Weights without decoder.conv_out.bias.
    let bytes = std::fs::read(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = st.tensors().into_iter().filter(|(n, _)| n != "decoder.conv_out.bias").collect();
    safetensors::serialize_to_file(kept, None, &dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let d = dir.to_str().unwrap();
    assert_refused(
        &["vae", "decode", "--model", d, "--latents", &lat, "--output", o],
        &out,
        "missing: decoder.conv_out.bias",
    );
    std::fs::write(dir.join("config.json"), "{\"z_dim\": 4, \"latents_mean\": [0.0]").unwrap();
    assert_refused(&["vae", "decode", "--model", d, "--latents", &lat, "--output", o], &out, "not valid JSON");
    std::fs::write(
        dir.join("config.json"),
        "{\"base_dim\": 4, \"z_dim\": 4, \"dim_mult\": [1, 1, 2], \"temperal_downsample\": [false]}",
    )
    .unwrap();
    assert_refused(&["vae", "decode", "--model", d, "--latents", &lat, "--output", o], &out, "temperal_downsample");
    let nowhere = tmp("no-such-dir");
    assert_refused(
        &["vae", "decode", "--model", nowhere.to_str().unwrap(), "--latents", &lat, "--output", o],
        &out,
        "not a VAE folder",
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn vae_plan_reports_memory_and_dispatches_without_weights() {
    let (ok, log) = wgdit(&["vae", "plan", "--size", "1328"]);
    assert!(ok, "{log}");
    assert!(log.contains("encode") && log.contains("decode") && log.contains("1328x1328"), "{log}");
    let (ok, log) = wgdit(&["vae", "plan", "--size", "30x44", "--model", &fixture("t2i")]);
    assert!(!ok && log.contains("multiple"), "{log}");
}
