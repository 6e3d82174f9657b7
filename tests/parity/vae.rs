//! The VAE against diffusers 0.42.1 (tests/fixtures/pipeline/cases/vae_*; README's tolerance:
//! rel-L2 ≤ 1e-4): encode (non-square 44×28, odd latents 11×7 through two pad-(0,1) downsamples),
//! decode (13×9 latents), tiled and untiled decode, the mid-block attention in several chunks,
//! activations poisoned with NaN before every run.

use crate::diffusers_fixtures::{fixtures, Fixture};
use wgdit::models::qwen_image_vae::{normalize_latents, TileSpec, Tiling, Vae};
use wgdit::testing::{stats, test_gpu};

const REL_L2: f64 = 1e-4;

fn vae() -> Vae {
    let mut v = Vae::open(&test_gpu(), &fixtures().join("pipeline/t2i")).expect("tiny VAE opens");
    v.poison_activations = true;
    v
}

fn case(name: &str) -> Fixture {
    Fixture::read(&fixtures().join(format!("pipeline/cases/{name}.safetensors")))
}

#[track_caller]
fn check(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    assert!(got.iter().all(|v| v.is_finite()), "{name}: non-finite output (an activation was not written)");
    let s = stats(got, want);
    eprintln!("{name}: rel_l2 {:.2e} max_abs {:.2e}", s.rel_l2, s.max_abs);
    assert!(
        s.rel_l2 <= REL_L2,
        "{name}: rel_l2 {:.3e} > {REL_L2:e} (max_abs {:.3e} at {})",
        s.rel_l2,
        s.max_abs,
        s.worst
    );
}

#[test]
fn vae_encode_matches_diffusers_on_a_non_square_image() {
    let f = case("vae_encode");
    let mut v = vae();
    let lat = v.encode(&f.get("x"), 28, 44).unwrap();
    check("vae_encode latents", &lat, &f.get("latents"));
    let mut n = lat.clone();
    normalize_latents(&v.config, &mut n);
    check("vae_encode latents_normalized", &n, &f.get("latents_normalized"));
}

#[test]
fn vae_encode_attention_in_several_chunks_matches_diffusers() {
    let f = case("vae_encode");
    let mut v = vae();
    // 77 tokens: 200 bytes per chunk = 1 row of 77 f32 scores → 77 chunks.
    v.set_scores_budget(200);
    let lat = v.encode(&f.get("x"), 28, 44).unwrap();
    check("vae_encode latents (77 attention chunks)", &lat, &f.get("latents"));
}

#[test]
fn vae_decode_matches_diffusers() {
    let f = case("vae_decode");
    let mut v = vae();
    let (img, info) = v.decode(&f.get("latents"), 9, 13, Tiling::Off).unwrap();
    assert_eq!(info.tiles, 0);
    check("vae_decode image", &img, &f.get("image"));
}

#[test]
fn vae_tiled_decode_matches_diffusers_tiled_and_untiled() {
    let f = case("vae_tiled_decode");
    let mut v = vae();
    let z = f.get("latents");
    let (img, info) = v.decode(&z, 8, 9, Tiling::Off).unwrap();
    assert_eq!(info.tiles, 0);
    check("vae_tiled_decode image_untiled", &img, &f.get("image_untiled"));
    let spec = TileSpec { min_h: 16, min_w: 24, stride_h: 12, stride_w: 16 };
    let (img, info) = v.decode(&z, 8, 9, Tiling::On(spec)).unwrap();
    assert_eq!(info.tiles, 9, "3×3 tiles (fixture json)");
    check("vae_tiled_decode image_tiled", &img, &f.get("image_tiled"));
    // auto with a budget below the untiled plan tiles too; with a large one it does not.
    let (img, info) = v.decode(&z, 8, 9, Tiling::Auto { spec, budget: 1 }).unwrap();
    assert_eq!(info.tiles, 9);
    check("vae_tiled_decode image_tiled (auto)", &img, &f.get("image_tiled"));
    let (_, info) = v.decode(&z, 8, 9, Tiling::Auto { spec, budget: u64::MAX }).unwrap();
    assert_eq!(info.tiles, 0);
}

/// A copy of the tiny VAE folder with every tensor stored as `dtype` (`as_f32`: rounded to it,
/// then stored as f32).
fn vae_copy(dtype: wgdit::dtype::DType, as_f32: bool) -> std::path::PathBuf {
    let src = fixtures().join("pipeline/t2i/vae");
    let dir = std::env::temp_dir().join(format!("wgdit-vae-{}-{}-{as_f32}", std::process::id(), dtype.name()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut data = Vec::new();
    for (name, t) in st.tensors() {
        let v: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
        let (d, raw) = if as_f32 {
            (safetensors::Dtype::F32, wgdit::dtype::DType::F32.encode(&dtype.round(&v)))
        } else {
            let d = if dtype == wgdit::dtype::DType::F16 { safetensors::Dtype::F16 } else { safetensors::Dtype::BF16 };
            (d, dtype.encode(&v))
        };
        data.push((name, d, t.shape().to_vec(), raw));
    }
    let views: Vec<_> = data
        .iter()
        .map(|(n, d, s, r)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), r).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    dir
}

#[test]
fn vae_runs_half_weights_as_stored_exactly_like_their_f32_values() {
    // f16/bf16 weights are decoded in WGSL (convs) or widened on the host (biases, gammas); the
    // decode is exact, so the result equals an f32 run on the rounded weights.
    let gpu = test_gpu();
    let f = case("vae_encode");
    let d = case("vae_decode");
    for dtype in [wgdit::dtype::DType::BF16, wgdit::dtype::DType::F16] {
        let (dh, df) = (vae_copy(dtype, false), vae_copy(dtype, true));
        let mut half = Vae::open(&gpu, &dh).unwrap();
        let mut full = Vae::open(&gpu, &df).unwrap();
        for d in [dh, df] {
            std::fs::remove_dir_all(d).ok(); // the weights are uploaded and mapped already
        }
        let (a, b) = (half.encode(&f.get("x"), 28, 44).unwrap(), full.encode(&f.get("x"), 28, 44).unwrap());
        let s = stats(&a, &b);
        assert!(s.rel_l2 <= 1e-6, "{dtype:?} encode: {:.3e}", s.rel_l2);
        let (a, _) = half.decode(&d.get("latents"), 9, 13, Tiling::Off).unwrap();
        let (b, _) = full.decode(&d.get("latents"), 9, 13, Tiling::Off).unwrap();
        let s = stats(&a, &b);
        assert!(s.rel_l2 <= 1e-6, "{dtype:?} decode: {:.3e}", s.rel_l2);
        // For scale: what the rounding of the weights alone does to the random tiny VAE.
        eprintln!("{dtype:?} weights vs diffusers f32: {:.2e}", stats(&a, &d.get("image")).rel_l2);
    }
}

#[test]
fn vae_encode_tiles_only_when_asked_or_when_auto_says_it_does_not_fit() {
    let f = case("vae_encode");
    let mut v = vae();
    let spec = TileSpec { min_h: 16, min_w: 24, stride_h: 12, stride_w: 16 };
    let (_, info) = v.encode_with(&f.get("x"), 28, 44, Tiling::On(spec)).unwrap();
    assert_eq!(info.tiles, 9, "rows 0, 12, 24 × columns 0, 16, 32");
    let (lat, info) = v.encode_with(&f.get("x"), 28, 44, Tiling::Auto { spec, budget: u64::MAX }).unwrap();
    assert_eq!(info.tiles, 0);
    check("vae_encode latents (auto, untiled)", &lat, &f.get("latents"));
    let (_, info) = v.encode_with(&f.get("x"), 28, 44, Tiling::Auto { spec, budget: 1 }).unwrap();
    assert_eq!(info.tiles, 9);
    let bad = TileSpec { min_h: 18, ..spec }; // not a multiple of the spatial factor 4
    assert!(v.encode_with(&f.get("x"), 28, 44, Tiling::On(bad)).is_err());
}

/// The tiled encode against diffusers' `tiled_encode`, which the fixtures do not record: run
/// `tools/check_vae_tiled_encode.py` first, then this test with WGDIT_VAE_TILED_ENCODE_REF set.
#[test]
#[ignore = "needs the reference written by tools/check_vae_tiled_encode.py (WGDIT_VAE_TILED_ENCODE_REF)"]
fn vae_tiled_encode_matches_diffusers() {
    let path = std::env::var("WGDIT_VAE_TILED_ENCODE_REF").expect("set WGDIT_VAE_TILED_ENCODE_REF");
    let want = Fixture::read(std::path::Path::new(&path)).get("latents_tiled");
    let f = case("vae_encode");
    let spec = TileSpec { min_h: 16, min_w: 24, stride_h: 12, stride_w: 16 };
    let (lat, _) = vae().encode_with(&f.get("x"), 28, 44, Tiling::On(spec)).unwrap();
    check("vae_encode latents tiled (diffusers tiled_encode)", &lat, &want);
}

/// The real config (base_dim 96, dim_mult [1, 2, 4, 4], 2 res blocks, factor 8) with random weights against
/// diffusers: run `tools/check_vae_real_config.py` first (writes a 508 MB VAE folder), then this test with
/// WGDIT_VAE_REAL_DIR set.
#[test]
#[ignore = "needs the folder written by tools/check_vae_real_config.py (WGDIT_VAE_REAL_DIR)"]
fn vae_real_config_matches_diffusers() {
    let dir = std::path::PathBuf::from(std::env::var("WGDIT_VAE_REAL_DIR").expect("set WGDIT_VAE_REAL_DIR"));
    let r = Fixture::read(&dir.join("reference.safetensors"));
    let mut v = Vae::open(&test_gpu(), &dir).unwrap();
    v.poison_activations = true;
    assert_eq!(v.spatial_factor(), 8);
    let lat = v.encode(&r.get("x"), 32, 48).unwrap();
    check("real-config encode latents", &lat, &r.get("latents"));
    let (img, _) = v.decode(&r.get("z"), 4, 6, Tiling::Off).unwrap();
    check("real-config decode image", &img, &r.get("image"));
}
