//! The training dataset: metadata.jsonl + safetensors samples, whole-dataset validation with
//! every bad sample named, lazy loading of f32/f16/bf16 and any mask dtype, diffusers' latent
//! packing, and the seeded, resumable shape-grouped batcher.

use crate::synthetic_checkpoint::{tmpdir, write_st, Raw};
use safetensors::Dtype;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use wgdit::models::qwen_image::latents::{pack, unpack};
use wgdit::models::qwen_image::DitConfig;
use wgdit::rng::Rng;
use wgdit::tensor::DType;
use wgdit::train::data::{Batcher, BatcherState, Dataset};

/// patch 2, 16 packed channels → 4 latent channels; text dim 8.
fn cfg() -> DitConfig {
    DitConfig {
        num_layers: 1,
        attention_head_dim: 8,
        joint_attention_dim: 8,
        axes_dims_rope: [2, 3, 3],
        ..DitConfig::tiny()
    }
}

fn raw(dtype: DType, shape: &[usize], rng: &mut Rng) -> Raw {
    let v = rng.vec_normal(shape.iter().product(), 1.0);
    Raw { dtype: crate::synthetic_checkpoint::st_dtype(dtype), shape: shape.to_vec(), bytes: dtype.encode(&v) }
}

/// A sample with latents [4, h, w], embeds [s, 8] and the given extra tensors.
fn sample(h: usize, w: usize, s: usize, extra: Vec<(&str, Raw)>, rng: &mut Rng) -> BTreeMap<String, Raw> {
    let mut t = BTreeMap::new();
    t.insert("latents".into(), raw(DType::BF16, &[4, h, w], rng));
    t.insert("prompt_embeds".into(), raw(DType::F16, &[s, 8], rng));
    for (n, r) in extra {
        t.insert(n.to_string(), r);
    }
    t
}

fn write_dataset(dir: &Path, samples: &[(&str, BTreeMap<String, Raw>)], extra_lines: &[&str]) {
    let mut lines = Vec::new();
    for (name, t) in samples {
        write_st(&dir.join(name), t, None);
        lines.push(format!("{{\"file\": \"{name}\", \"caption\": \"a cat\"}}"));
        lines.push(String::new());
    }
    lines.extend(extra_lines.iter().map(|s| s.to_string()));
    std::fs::write(dir.join("metadata.jsonl"), lines.join("\n")).unwrap();
}

fn mask_i64(v: &[i64]) -> Raw {
    Raw { dtype: Dtype::I64, shape: vec![v.len()], bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
}

#[test]
fn valid_dataset_opens_with_shapes_img_shapes_and_groups() {
    let dir = tmpdir("train-data-ok");
    let mut rng = Rng::new(1);
    let r0 = raw(DType::F32, &[4, 6, 4], &mut rng);
    let r1 = raw(DType::F16, &[4, 2, 2], &mut rng);
    let samples = vec![
        ("a.safetensors", sample(4, 6, 3, vec![], &mut rng)),
        ("sub_b.safetensors", sample(8, 2, 5, vec![("prompt_mask", mask_i64(&[1, 1, 1, 0, 0]))], &mut rng)),
        ("c.safetensors", sample(4, 6, 3, vec![], &mut rng)),
        ("d.safetensors", sample(4, 6, 3, vec![("ref_latents.0", r0), ("ref_latents.1", r1)], &mut rng)),
    ];
    write_dataset(&dir, &samples, &[]);
    let ds = Dataset::open(&dir, &cfg()).unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.samples[1].latents, [4, 8, 2]);
    assert_eq!((ds.samples[1].txt_len, ds.samples[1].has_mask), (5, true));
    assert_eq!(ds.samples[3].img_shapes(2), vec![(1, 2, 3), (1, 3, 2), (1, 1, 1)]);
    // a and c share a shape; b and d (refs) are alone
    assert_eq!(ds.groups(), vec![vec![0, 2], vec![1], vec![3]]);
}

#[test]
fn every_bad_sample_is_reported_by_name_and_reason_in_one_error() {
    let dir = tmpdir("train-data-bad");
    let mut rng = Rng::new(2);
    let mut no_latents = sample(4, 4, 3, vec![], &mut rng);
    no_latents.remove("latents");
    let i32_latents = Raw { dtype: Dtype::I32, shape: vec![4, 4, 4], bytes: vec![0; 256] };
    let bad = vec![
        ("ok.safetensors", sample(4, 4, 3, vec![], &mut rng)),
        ("no_latents.safetensors", no_latents),
        ("rank.safetensors", sample(4, 4, 3, vec![("latents", raw(DType::F32, &[4, 16], &mut rng))], &mut rng)),
        ("chan.safetensors", sample(4, 4, 3, vec![("latents", raw(DType::F32, &[3, 4, 4], &mut rng))], &mut rng)),
        ("odd.safetensors", sample(5, 4, 3, vec![], &mut rng)),
        ("embdim.safetensors", sample(4, 4, 3, vec![("prompt_embeds", raw(DType::F32, &[3, 7], &mut rng))], &mut rng)),
        ("masklen.safetensors", sample(4, 4, 3, vec![("prompt_mask", mask_i64(&[1, 1]))], &mut rng)),
        ("dtype.safetensors", sample(4, 4, 3, vec![("latents", i32_latents)], &mut rng)),
        (
            "gap.safetensors",
            sample(
                4,
                4,
                3,
                vec![
                    ("ref_latents.0", raw(DType::F32, &[4, 2, 2], &mut rng)),
                    ("ref_latents.2", raw(DType::F32, &[4, 2, 2], &mut rng)),
                ],
                &mut rng,
            ),
        ),
    ];
    write_dataset(&dir, &bad, &["{\"file\": \"missing.safetensors\"}", "{\"caption\": \"no file\"}", "not json"]);
    std::fs::write(dir.join("garbage.safetensors"), b"\xff\xff\xff\xff\xff\xff\xff\xffnope").unwrap();
    let mut meta = std::fs::read_to_string(dir.join("metadata.jsonl")).unwrap();
    meta.push_str("\n{\"file\": \"garbage.safetensors\"}\n");
    std::fs::write(dir.join("metadata.jsonl"), meta).unwrap();

    let msg = Dataset::open(&dir, &cfg()).unwrap_err().to_string();
    println!("{msg}");
    for (name, reason) in [
        ("no_latents", "missing tensor `latents`"),
        ("rank", "rank 2"),
        ("chan", "3 channels; expected 4"),
        ("odd", "multiples of the patch size"),
        ("embdim", "joint_attention_dim"),
        ("masklen", "prompt_mask has shape [2]"),
        ("dtype", "unsupported dtype I32"),
        ("gap", "ref_latents.1 is missing"),
        ("missing", "file not found"),
        ("garbage", "bad header"),
        ("line ", "no \"file\" key"),
        ("line ", "not a JSON object"),
    ] {
        let hit = msg.lines().any(|l| l.contains(name) && l.contains(reason));
        assert!(hit, "no line names {name} with `{reason}`");
    }
    assert!(msg.contains("12 bad sample(s)"), "count");
    assert!(!msg.contains("ok.safetensors"), "good samples are not listed");
}

#[test]
fn load_decodes_half_precision_and_masks_of_any_dtype() {
    let dir = tmpdir("train-data-load");
    let mut rng = Rng::new(3);
    let lat = raw(DType::BF16, &[4, 2, 4], &mut rng);
    let mask_bool = Raw { dtype: Dtype::BOOL, shape: vec![3], bytes: vec![1, 0, 1] };
    let mask_f = Raw {
        dtype: Dtype::F32,
        shape: vec![3],
        bytes: [1.0f32, -0.0, 0.5].iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    let samples = vec![
        ("b.safetensors", sample(2, 4, 3, vec![("latents", lat.clone()), ("prompt_mask", mask_bool)], &mut rng)),
        ("f.safetensors", sample(2, 4, 3, vec![("prompt_mask", mask_f)], &mut rng)),
        ("n.safetensors", sample(2, 4, 3, vec![("ref_latents.0", raw(DType::F32, &[4, 4, 2], &mut rng))], &mut rng)),
    ];
    write_dataset(&dir, &samples, &[]);
    let ds = Dataset::open(&dir, &cfg()).unwrap();
    let s0 = ds.load(0).unwrap();
    assert_eq!(s0.latents, DType::BF16.decode(&lat.bytes));
    assert_eq!(s0.prompt_embeds.len(), 3 * 8);
    assert_eq!(s0.prompt_mask, vec![true, false, true]);
    assert_eq!(ds.load(1).unwrap().prompt_mask, vec![true, false, true]);
    let s2 = ds.load(2).unwrap();
    assert_eq!(s2.prompt_mask, vec![true; 3], "no mask: all valid");
    assert_eq!(s2.refs.len(), 1);
    assert_eq!(s2.refs[0].len(), 32);
}

#[test]
fn pack_matches_diffusers_pack_latents_on_a_hand_example() {
    // C = 2, h = 2, w = 4: x.view(C, 1, 2, 2, 2).permute(1, 3, 0, 2, 4) → 2 tokens of 8 channels
    let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let want = vec![
        0., 1., 4., 5., 8., 9., 12., 13., // token (0, 0): c0 [dy0 dx0, dy0 dx1, dy1 dx0, dy1 dx1], c1 ...
        2., 3., 6., 7., 10., 11., 14., 15.,
    ];
    assert_eq!(pack(&x, [2, 2, 4], 2), want);
    assert_eq!(unpack(&want, [2, 2, 4], 2), x);
}

#[test]
fn unpack_inverts_pack_on_an_awkward_grid() {
    let mut rng = Rng::new(4);
    for shape in [[16, 6, 10], [1, 2, 2], [3, 34, 2]] {
        let x = rng.vec_normal(shape.iter().product(), 1.0);
        let t = pack(&x, shape, 2);
        // token (i, j) channel c·4 + dy·2 + dx = x[c, 2i + dy, 2j + dx]
        let (gw, k) = (shape[2] / 2, shape[0] * 4);
        let (i, j, c, dy, dx) = (shape[1] / 2 - 1, gw - 1, shape[0] - 1, 1, 0);
        assert_eq!(t[(i * gw + j) * k + c * 4 + dy * 2 + dx], x[(c * shape[1] + 2 * i + dy) * shape[2] + 2 * j + dx]);
        assert_eq!(unpack(&t, shape, 2), x);
    }
}

/// 3 shape groups of 7, 2 and 4 samples.
fn groups() -> Vec<Vec<usize>> {
    vec![(0..7).collect(), vec![7, 8], (9..13).collect()]
}

#[test]
fn batcher_covers_each_sample_once_per_epoch_in_same_shape_batches() {
    let g = groups();
    let mut b = Batcher::from_groups(g.clone(), 3, 42);
    assert_eq!(b.batches_per_epoch(), 3 + 1 + 2);
    let epoch0: Vec<_> = (&mut b).take(6).collect();
    let epoch1: Vec<_> = (&mut b).take(6).collect();
    for epoch in [&epoch0, &epoch1] {
        let mut seen = BTreeSet::new();
        for batch in epoch.iter() {
            assert!(batch.samples.len() <= 3);
            assert!(g.iter().any(|grp| batch.samples.iter().all(|s| grp.contains(s))), "mixed shapes in {batch:?}");
            seen.extend(batch.samples.iter().copied());
        }
        assert_eq!(seen.len(), 13);
    }
    assert!(epoch0.iter().all(|x| x.epoch == 0) && epoch1.iter().all(|x| x.epoch == 1));
    let order = |e: &Vec<wgdit::train::data::Batch>| e.iter().map(|x| x.samples.clone()).collect::<Vec<_>>();
    assert_ne!(order(&epoch0), order(&epoch1), "epochs reshuffle");
    let again: Vec<_> = Batcher::from_groups(g, 3, 42).take(12).collect();
    assert_eq!(again, [epoch0, epoch1].concat(), "same seed, same order");
}

#[test]
fn batcher_resumed_from_a_saved_position_continues_identically() {
    let full: Vec<_> = Batcher::from_groups(groups(), 2, 9).take(20).collect();
    for cut in [1, 7, 8, 13] {
        let mut b = Batcher::from_groups(groups(), 2, 9);
        let state: BatcherState = (&mut b).take(cut).last().map(|_| b.state()).unwrap();
        let json = serde_json::to_string(&state).unwrap();
        let mut resumed = Batcher::from_groups(groups(), 2, 9);
        resumed.resume(serde_json::from_str(&json).unwrap()).unwrap();
        let rest: Vec<_> = resumed.take(20 - cut).collect();
        assert_eq!(rest, full[cut..], "resume after {cut} batches");
    }
    let mut b = Batcher::from_groups(groups(), 2, 9);
    assert!(b.resume(BatcherState { epoch: 0, position: 99 }).is_err());
}

#[test]
fn collate_packs_a_batch_and_puts_references_after_each_target() {
    let dir = tmpdir("train-data-collate");
    let mut rng = Rng::new(6);
    let mut samples = Vec::new();
    for (i, mask) in [(0, Some(mask_i64(&[1, 0, 1]))), (1, None)] {
        let r = raw(DType::F32, &[4, 2, 4], &mut rng);
        let mut extra = vec![("ref_latents.0", r)];
        if let Some(m) = mask {
            extra.push(("prompt_mask", m));
        }
        samples.push((["s0.safetensors", "s1.safetensors"][i], sample(4, 2, 3, extra, &mut rng)));
    }
    write_dataset(&dir, &samples, &[]);
    let ds = Dataset::open(&dir, &cfg()).unwrap();
    let c = ds.collate(&[1, 0]).unwrap();
    assert_eq!((c.batch, c.s_target, c.s_ref, c.s_txt), (2, 2, 2, 3));
    assert_eq!(c.img_shapes, vec![[1, 2, 1], [1, 1, 2]]);
    let s1 = ds.load(1).unwrap();
    assert_eq!(c.x0[..32], pack(&s1.latents, [4, 4, 2], 2)[..]);
    assert_eq!(c.refs[..32], pack(&s1.refs[0], [4, 2, 4], 2)[..]);
    assert_eq!(c.mask, Some(vec![1., 1., 1., 1., 0., 1.]), "unmasked sample: all valid");
    let x_t: Vec<f32> = (0..64).map(|v| v as f32).collect();
    let fi = c.forward_inputs(&x_t, &[0.5, 0.25]);
    assert_eq!(fi.hidden.len(), 2 * 4 * 16);
    assert_eq!(fi.hidden[..32], x_t[..32]);
    assert_eq!(fi.hidden[32..64], c.refs[..32]);
    assert_eq!(fi.hidden[64..96], x_t[32..]);
    assert_eq!(fi.shape().img_shapes, c.img_shapes);
}

#[test]
fn padded_prompts_in_one_batch_give_each_sample_its_own_output() {
    // Prompts of 3, 7 and 5 tokens share a bucket (same latents): one batch, padded to 7 with a
    // mask; the padded keys get no attention weight, so each sample's prediction equals its
    // prediction alone (the DiT forward on the tiny model).
    use wgdit::models::qwen_image::{open::open, runtime::Dit, QkvMode};
    let dir = tmpdir("train-data-padded");
    let (mp, _) = crate::diffusers_fixtures::model_paths("tiny");
    let (cfg, _) = open(&mp, None).unwrap();
    let mut rng = Rng::new(8);
    let mut t = |s: usize, mask: Option<Vec<i64>>| {
        let mut m = BTreeMap::new();
        m.insert("latents".to_string(), raw(DType::F32, &[4, 8, 6], &mut rng));
        m.insert("prompt_embeds".to_string(), raw(DType::F32, &[s, cfg.joint_attention_dim], &mut rng));
        if let Some(v) = mask {
            m.insert("prompt_mask".to_string(), mask_i64(&v));
        }
        m
    };
    let samples = vec![
        ("a.safetensors", t(3, None)),
        ("b.safetensors", t(7, None)),
        ("c.safetensors", t(5, Some(vec![1, 1, 1, 1, 0]))),
    ];
    write_dataset(&dir, &samples, &[]);
    let ds = Dataset::open(&dir, &cfg).unwrap();
    assert_eq!(ds.groups(), vec![vec![0, 1, 2]], "one bucket whatever the prompt lengths");
    let batch = ds.collate(&[0, 1, 2]).unwrap();
    assert_eq!(batch.s_txt, 7);
    let mask = batch.mask.clone().expect("padded prompts carry a mask");
    assert_eq!(&mask[..7], &[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(&mask[14..], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    let gpu = wgdit::testing::test_gpu();
    let (cfg, ckpt) = open(&mp, None).unwrap();
    let mut dit = Dit::new(&gpu, cfg, Box::new(ckpt), QkvMode::Fused).unwrap();
    let sigma = [0.3, 0.6, 0.9];
    let run = |dit: &mut Dit, c: &wgdit::train::data::Collated, t: &[f32]| {
        let inputs = c.forward_inputs(&c.x0, t);
        dit.plan(&inputs.shape(), false).unwrap().forward(&inputs).unwrap()
    };
    let together = run(&mut dit, &batch, &sigma);
    let per = together.len() / 3;
    for i in 0..3 {
        let alone = run(&mut dit, &ds.collate(&[i]).unwrap(), &sigma[i..i + 1]);
        let s = wgdit::testing::stats(&together[i * per..(i + 1) * per], &alone);
        assert!(s.rel_l2 < 1e-5, "sample {i}: padded batch vs alone rel_l2 {:.2e}", s.rel_l2);
    }
}
