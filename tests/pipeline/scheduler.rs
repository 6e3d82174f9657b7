//! `wgdit::pipeline::scheduler` against diffusers' `FlowMatchEulerDiscreteScheduler` driven as
//! `QwenImagePipeline.__call__` drives it (fixture: `sched/*`).

use crate::common::{assert_bits, f32s, f64s, fixture_dir, shape};
use wgdit::pipeline::scheduler::{pipeline_sigmas, Schedule, SchedulerConfig, TimeShift};
use wgdit::Error;

const STEPS: [usize; 4] = [1, 2, 5, 50];
const SEQ_LENS: [usize; 5] = [16, 256, 4096, 8192, 10000];

#[test]
fn linspace_sigmas_match_numpy_bit_for_bit() {
    for n in [2, 3, 7, 50, 1000] {
        let want = f64s(&format!("sched/linspace/N{n}"));
        let got = pipeline_sigmas(n);
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "N {n}"
        );
    }
}

#[test]
fn qwen_schedules_match_diffusers_bit_for_bit() {
    let config = SchedulerConfig::qwen_image();
    for n in STEPS {
        for l in SEQ_LENS {
            let k = format!("sched/qwen/N{n}/L{l}");
            assert_eq!(config.mu(l).to_bits(), f64s(&format!("{k}/mu"))[0].to_bits(), "{k}: mu");
            if n == 1 {
                continue; // diffusers gives NaN there; see the next test
            }
            let s = Schedule::for_pipeline(&config, n, l).unwrap();
            assert_bits(&s.sigmas, &f32s(&format!("{k}/sigmas")), &format!("{k}: sigmas"));
            assert_bits(&s.timesteps, &f32s(&format!("{k}/timesteps")), &format!("{k}: timesteps"));
            let dit: Vec<f32> = (0..s.len()).map(|i| s.dit_timestep(i)).collect();
            assert_bits(&dit, &f32s(&format!("{k}/dit_timestep")), &format!("{k}: timestep / 1000"));
        }
    }
}

#[test]
fn one_step_with_a_terminal_stretch_is_refused_where_diffusers_returns_nan() {
    assert!(f32s("sched/qwen/N1/L4096/sigmas")[0].is_nan(), "the reference produces NaN for N = 1");
    let err = Schedule::for_pipeline(&SchedulerConfig::qwen_image(), 1, 4096).unwrap_err();
    assert!(err.to_string().contains("shift_terminal"), "{err}");
}

#[test]
fn custom_sigmas_match_diffusers_bit_for_bit() {
    let config = SchedulerConfig::qwen_image();
    let mu = f64s("sched/custom/mu")[0];
    let s = Schedule::from_sigmas(&config, &f64s("sched/custom/sigmas_in"), Some(mu)).unwrap();
    assert_bits(&s.sigmas, &f32s("sched/custom/sigmas"), "custom sigmas");
    assert_bits(&s.timesteps, &f32s("sched/custom/timesteps"), "custom timesteps");
}

#[test]
fn static_shift_without_terminal_stretch_matches_diffusers() {
    let config = SchedulerConfig {
        use_dynamic_shifting: false,
        shift: 3.0,
        shift_terminal: None,
        ..SchedulerConfig::qwen_image()
    };
    let s = Schedule::from_sigmas(&config, &pipeline_sigmas(10), None).unwrap();
    assert_bits(&s.sigmas, &f32s("sched/static/N10/sigmas"), "static sigmas");
    assert_bits(&s.timesteps, &f32s("sched/static/N10/timesteps"), "static timesteps");
}

#[test]
fn linear_time_shift_matches_diffusers() {
    let config = SchedulerConfig { time_shift_type: TimeShift::Linear, ..SchedulerConfig::qwen_image() };
    assert_eq!(config.mu(4096).to_bits(), f64s("sched/linear/N20/mu")[0].to_bits());
    let s = Schedule::for_pipeline(&config, 20, 4096).unwrap();
    assert_bits(&s.sigmas, &f32s("sched/linear/N20/sigmas"), "linear sigmas");
    assert_bits(&s.timesteps, &f32s("sched/linear/N20/timesteps"), "linear timesteps");
}

#[test]
fn euler_steps_match_diffusers_step_bit_for_bit() {
    let s = Schedule::for_pipeline(&SchedulerConfig::qwen_image(), 5, 4096).unwrap();
    let mut x = f32s("sched/step/x0");
    let v = f32s("sched/step/v");
    let want = f32s("sched/step/x");
    let per_step = x.len();
    assert_eq!(shape("sched/step/v")[0], s.len());
    for i in 0..s.len() {
        s.step(i, &v[i * per_step..(i + 1) * per_step], &mut x);
        assert_bits(&x, &want[i * per_step..(i + 1) * per_step], &format!("after step {i}"));
    }
}

#[test]
fn dynamic_shifting_without_mu_is_an_error() {
    let err = Schedule::from_sigmas(&SchedulerConfig::qwen_image(), &[1.0, 0.5], None).unwrap_err();
    assert!(err.to_string().contains("mu"), "{err}");
}

#[test]
fn empty_custom_sigmas_and_zero_steps_are_errors() {
    let config = SchedulerConfig::qwen_image();
    assert!(Schedule::from_sigmas(&config, &[], Some(0.7)).is_err());
    assert!(Schedule::for_pipeline(&config, 0, 4096).is_err());
}

#[test]
fn the_diffusers_written_config_file_parses_to_the_qwen_values() {
    let config = SchedulerConfig::from_file(&fixture_dir().join("scheduler_config.json")).unwrap();
    assert_eq!(config, SchedulerConfig::qwen_image());
}

fn parse(json: &str) -> wgdit::Result<SchedulerConfig> {
    let dir = std::env::temp_dir().join(format!("pieces-sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("cfg-{:x}.json", json.len() * 31 + json.bytes().map(|b| b as usize).sum::<usize>()));
    std::fs::write(&path, json).unwrap();
    let r = SchedulerConfig::from_file(&path);
    std::fs::remove_file(&path).unwrap();
    r
}

#[test]
fn unknown_keys_are_ignored_and_missing_keys_take_diffusers_defaults() {
    let c = parse(r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "some_future_key": [1, 2], "shift": 2.0}"#)
        .unwrap();
    assert_eq!(c, SchedulerConfig { shift: 2.0, ..SchedulerConfig::default() });
}

#[test]
fn unsupported_settings_are_refused_naming_the_key() {
    for key in
        ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas", "stochastic_sampling"]
    {
        let err = parse(&format!(r#"{{"{key}": true}}"#)).unwrap_err();
        assert!(matches!(err, Error::File { .. }), "{key}: {err:?}");
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

#[test]
fn malformed_config_files_are_file_errors() {
    for bad in ["{", "[]", r#"{"shift": "large"}"#, r#"{"base_shift": null}"#, r#"{"time_shift_type": "cubic"}"#] {
        let err = parse(bad).unwrap_err();
        assert!(matches!(err, Error::File { .. }), "{bad}: {err:?}");
    }
    let missing = SchedulerConfig::from_file(&fixture_dir().join("no_such_config.json")).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing:?}");
}
