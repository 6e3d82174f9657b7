//! The chunked mid-block attention at the real VAE's width (C = 384, beyond the DiT flash
//! kernel's head_dim ≤ 128) in several chunks, against an f64 reference of diffusers'
//! `QwenImageAttentionBlock`; activations poisoned with NaN.

use super::vae::{attention_block, attention_chunk_rows, ParamSrc};
use crate::exec::Plan;
use crate::kernels::norm::channel_norm_denom::cpu::normalize as channel_norm;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::testing::{assert_close, test_gpu, Tol};
use std::collections::HashMap;

/// `proj(softmax(q·kᵀ/sqrt(C))·v) + x` with `q, k, v = to_qkv(norm(x))`, f64.
fn reference(x: &[f64], t: &HashMap<&str, Vec<f64>>, c: usize) -> Vec<f64> {
    let s = x.len() / c;
    let n = channel_norm(x, &t["attn.norm.gamma"], false);
    let lin = |inp: &[f64], w: &[f64], b: &[f64], co: usize| -> Vec<f64> {
        let ci = inp.len() / s;
        (0..s * co)
            .map(|i| b[i % co] + (0..ci).map(|k| inp[i / co * ci + k] * w[i % co * ci + k]).sum::<f64>())
            .collect()
    };
    let qkv = lin(&n, &t["attn.to_qkv.weight"], &t["attn.to_qkv.bias"], 3 * c);
    let mut o = vec![0.0; s * c];
    for i in 0..s {
        let q = &qkv[i * 3 * c..][..c];
        let sc: Vec<f64> = (0..s)
            .map(|j| q.iter().zip(&qkv[j * 3 * c + c..][..c]).map(|(a, b)| a * b).sum::<f64>() / (c as f64).sqrt())
            .collect();
        let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = sc.iter().map(|v| (v - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for j in 0..s {
            for d in 0..c {
                o[i * c + d] += e[j] / z * qkv[j * 3 * c + 2 * c + d];
            }
        }
    }
    let y = lin(&o, &t["attn.proj.weight"], &t["attn.proj.bias"], c);
    y.iter().zip(x).map(|(a, b)| a + b).collect()
}

#[test]
fn vae_attention_at_width_384_in_several_chunks_matches_reference() {
    let gpu = test_gpu();
    let (c, s) = (384, 40);
    let budget = 7 * 4 * s as u64; // 7 query rows per chunk: 6 chunks, the last one short
    assert_eq!(attention_chunk_rows(s, budget), 7);
    let vg = attention_block(c, s, budget);
    let mut rng = Rng::new(384);
    let mut t: HashMap<&str, Vec<f32>> = HashMap::new();
    t.insert("attn.norm.gamma", rng.vec_uniform(c, 0.8, 1.2));
    t.insert("attn.to_qkv.weight", rng.vec_normal(3 * c * c, 2.5 / (c as f32).sqrt()));
    t.insert("attn.to_qkv.bias", rng.vec_normal(3 * c, 0.05));
    t.insert("attn.proj.weight", rng.vec_normal(c * c, 1.0 / (c as f32).sqrt()));
    t.insert("attn.proj.bias", rng.vec_normal(c, 0.05));
    let mut params = HashMap::new();
    for (id, src) in &vg.params {
        let v: Vec<f32> = match src {
            ParamSrc::F32 { name } | ParamSrc::ConvWeight { name, .. } => t[name.as_str()].clone(),
            ParamSrc::Rows { name, row0, rows, .. } => {
                let all = &t[name.as_str()];
                let row = all.len() / (3 * c);
                all[row0 * row..(row0 + rows) * row].to_vec()
            }
        };
        let shape = vg.graph.shape(*id).to_vec();
        params.insert(*id, Tensor::from_f32(&gpu, &v, &shape, DType::F32, "param").unwrap());
    }
    let plan = Plan::new(&gpu, &vg.graph, &params).unwrap();
    let x = rng.vec_normal(s * c, 1.0);
    plan.poison_activations();
    plan.write_input(vg.input, &x);
    plan.run().unwrap();
    let got = plan.read(vg.output).unwrap();
    let t64: HashMap<&str, Vec<f64>> = t.iter().map(|(k, v)| (*k, v.iter().map(|&a| a as f64).collect())).collect();
    let want: Vec<f32> =
        reference(&x.iter().map(|&a| a as f64).collect::<Vec<_>>(), &t64, c).iter().map(|&v| v as f32).collect();
    // Three f32 GEMMs of K = 384 (and K = S) and a softmax; peaked scores (c = 2.5) amplify q·k errors.
    let st = assert_close("attention C=384 in 6 chunks", &got, &want, Tol { abs: 2e-4, rel: 1e-4, rel_l2: 2e-5 });
    eprintln!("attention C=384, 6 chunks: rel_l2 {:.2e} max_abs {:.2e}", st.rel_l2, st.max_abs);
    let chunks = vg.graph.nodes.iter().filter(|n| matches!(n.op, crate::graph::Op::Softmax { .. })).count();
    assert_eq!(chunks, 6);
}

#[test]
fn auto_tiling_tiles_a_1328_decode_only_where_it_would_not_fit() {
    use super::runtime::{needs_tiling, planned_memory, Pass};
    use super::{TileSpec, VaeConfig};
    let cfg = VaeConfig::qwen_image();
    let m = planned_memory(&cfg, Pass::Decode { clamp: true }, 166, 166, 256 << 20);
    // 96 × 1328² f32 = 646 MiB: over lavapipe's 128 MiB binding, under wgpu's 2 GiB − 1.
    assert_eq!(m.largest_activation_bytes, 96 * 1328 * 1328 * 4);
    assert!(needs_tiling(&m, 128 << 20, 8 << 30));
    assert!(!needs_tiling(&m, (2 << 30) - 1, 8 << 30));
    assert!(needs_tiling(&m, (2 << 30) - 1, 1 << 30), "a 1 GiB budget is below the {} B peak", m.peak_bytes);
    // Every tile of the default 256-px spec fits the smallest binding.
    let spec = TileSpec::default();
    let grid = spec.grid(166, 166, cfg.spatial_factor());
    assert_eq!((grid.len(), grid[0].len()), (7, 7));
    let t = planned_memory(&cfg, Pass::Decode { clamp: false }, grid[0][0].h, grid[0][0].w, 256 << 20);
    assert!(!needs_tiling(&t, 128 << 20, 8 << 30), "tile plan {t:?}");
}

#[test]
fn tile_grid_matches_the_diffusers_fixture() {
    use super::TileSpec;
    // cases/vae_tiled_decode.json: latents 8×9, factor 4, tile 16×24 px, stride 12×16 px.
    let spec = TileSpec { min_h: 16, min_w: 24, stride_h: 12, stride_w: 16 };
    let g = spec.grid(8, 9, 4);
    let rows: Vec<(usize, usize)> = g.iter().map(|r| (r[0].y0, r[0].h)).collect();
    let cols: Vec<(usize, usize)> = g[0].iter().map(|t| (t.x0, t.w)).collect();
    assert_eq!(rows, [(0, 4), (3, 4), (6, 2)]);
    // The middle column's slice z[..., 4:10] is clipped to the 9 latent columns: 5 wide.
    assert_eq!(cols, [(0, 6), (4, 5), (8, 1)]);
    assert!(spec.tiles(8, 9, 4) && !spec.tiles(4, 6, 4));
}
