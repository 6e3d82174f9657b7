//! Checkpoints: a save → load round trip is exact (LoRA, moments, step, RNG, data position,
//! hyper-parameters), writes are atomic (no partial folder; a rewrite replaces), corrupt or
//! mismatched checkpoints are refused with a reason, and loss.csv is cut back on resume.

use crate::synthetic_checkpoint::tmpdir;
use std::path::Path;
use wgdit::models::qwen_image::DitConfig;
use wgdit::rng::Rng;
use wgdit::train::checkpoint::{checkpoint_dir, hyper_differences, latest, Checkpoint, LossLog, LossRow, TrainState};
use wgdit::train::data::BatcherState;
use wgdit::train::lora::{parse_targets, LoraConfig, LoraParams};

fn tiny() -> DitConfig {
    DitConfig::tiny()
}

fn checkpoint(step: u64) -> Checkpoint {
    let conf = LoraConfig { rank: 2, alpha: 4.0, targets: parse_targets("to_q,to_add_out,txt_mod.1") };
    let mut rng = Rng::new(step);
    let mut lora = LoraParams::init(&tiny(), &conf, &mut rng).unwrap();
    for t in lora.tensors_mut() {
        *t = rng.vec_normal(t.len(), 0.3);
    }
    let lens: Vec<usize> = lora.tensors().iter().map(|t| t.2.len()).collect();
    let m = lens.iter().map(|&n| rng.vec_normal(n, 1e-3)).collect();
    let v = lens.iter().map(|&n| rng.vec_uniform(n, 0.0, 1e-6)).collect();
    rng.normal(); // leaves a cached spare: the state must carry it
    let state = TrainState {
        version: 1,
        step,
        rng,
        data: BatcherState { epoch: 3, position: 5 },
        lora: conf,
        hyper: serde_json::json!({"lr": 1e-4, "batch": 1, "schedule": "diffsynth", "seed": 7}),
    };
    Checkpoint { state, lora, m, v }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn save_then_load_restores_everything_exactly() {
    let out = tmpdir("train-ckpt-roundtrip");
    let c = checkpoint(12);
    let dir = c.save(&out).unwrap();
    assert_eq!(dir, checkpoint_dir(&out, 12));
    assert_eq!(listing(&dir), ["lora.safetensors", "optimizer.safetensors", "state.json"]);
    let back = Checkpoint::load(&dir, &tiny()).unwrap();
    assert_eq!(back, c);
    // the restored generator continues the same stream
    let (mut a, mut b) = (c.state.rng.clone(), back.state.rng.clone());
    assert_eq!((a.normal(), a.next_u64()), (b.normal(), b.next_u64()));
    assert_eq!(listing(&out), ["checkpoint-12"], "no temporary left behind");
}

#[test]
fn latest_picks_the_highest_complete_step_and_rewrites_replace() {
    let out = tmpdir("train-ckpt-latest");
    for s in [5, 40, 9] {
        checkpoint(s).save(&out).unwrap();
    }
    std::fs::create_dir(out.join("checkpoint-99")).unwrap(); // no state.json: incomplete
    std::fs::create_dir(out.join("checkpoint-77.tmp-1")).unwrap();
    assert_eq!(latest(&out), Some(checkpoint_dir(&out, 40)));
    let mut c = checkpoint(40);
    c.state.data.position = 6;
    c.save(&out).unwrap();
    assert_eq!(Checkpoint::load(&checkpoint_dir(&out, 40), &tiny()).unwrap().state.data.position, 6);
    assert!(!listing(&out).iter().any(|n| n.contains(".old")));
}

#[test]
fn a_failed_save_leaves_no_checkpoint_folder() {
    let out = tmpdir("train-ckpt-fail");
    let mut c = checkpoint(3);
    c.m[0].pop(); // a moment of the wrong size: panics after the LoRA is written to the temporary
    let r = std::panic::catch_unwind(|| c.save(&out));
    assert!(r.is_err());
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
}

#[test]
fn corrupt_or_mismatched_checkpoints_are_refused_with_a_reason() {
    let out = tmpdir("train-ckpt-bad");
    let dir = checkpoint(4).save(&out).unwrap();
    let err = |d: &Path| Checkpoint::load(d, &tiny()).unwrap_err().to_string();
    assert!(err(&out.join("nope")).contains("not a folder"));
    // a model with another hidden size
    let big = DitConfig { num_attention_heads: 3, ..tiny() };
    assert!(Checkpoint::load(&dir, &big).unwrap_err().to_string().contains("expected A"));
    // truncated moments
    let opt = dir.join("optimizer.safetensors");
    let bytes = std::fs::read(&opt).unwrap();
    std::fs::write(&opt, &bytes[..bytes.len() - 8]).unwrap();
    assert!(err(&dir).contains("optimizer.safetensors"), "{}", err(&dir));
    std::fs::write(&opt, &bytes).unwrap();
    // a state from a future version, then garbage
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).unwrap();
    std::fs::write(&sp, text.replace("\"version\": 1", "\"version\": 2")).unwrap();
    assert!(err(&dir).contains("state version 2"), "{}", err(&dir));
    std::fs::write(&sp, "{").unwrap();
    assert!(err(&dir).contains("not a wgdit training state"));
}

#[test]
fn hyper_parameter_differences_are_listed_by_key() {
    let a = serde_json::json!({"lr": 1e-4, "batch": 1, "seed": 7});
    let b = serde_json::json!({"lr": 2e-4, "batch": 1, "rank": 8});
    let d = hyper_differences(&a, &b);
    assert_eq!(d.len(), 3, "{d:?}");
    assert!(d[0].starts_with("lr:") && d[1].starts_with("rank:") && d[2].starts_with("seed:"));
    assert!(hyper_differences(&a, &a).is_empty());
}

fn row(step: u64) -> LossRow {
    LossRow { step, loss: 0.1 * step as f64, sigma: 0.5, lr: 1e-4, step_ms: 12.5 }
}

#[test]
fn loss_csv_is_flushed_per_step_and_cut_back_on_resume() {
    let dir = tmpdir("train-loss-csv");
    let path = dir.join("loss.csv");
    let mut log = LossLog::create(&path).unwrap();
    for s in 1..=7 {
        log.append(&row(s)).unwrap();
        // flushed: visible to a reader while the log is still open
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), s as usize + 1);
    }
    drop(log);
    let mut log = LossLog::resume(&path, 4).unwrap();
    log.append(&row(5)).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let steps: Vec<&str> = text.lines().map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(steps, ["step", "1", "2", "3", "4", "5"]);
    assert!(text.starts_with("step,loss,sigma,lr,step_ms\n"));
    // resuming with no log starts one; a mangled log is an error
    assert!(LossLog::resume(&dir.join("new.csv"), 3).is_ok());
    std::fs::write(&path, "step,loss\nx,1\n").unwrap();
    assert!(LossLog::resume(&path, 3).unwrap_err().to_string().contains("line 2"));
}
