//! `wgdit bench kernels --quick`: every JSON line carries the contract keys (`kernel`, `variant`,
//! `shape`, `ms`, `tflops`, `pct_peak`) with sane values, every variant lavapipe can run appears,
//! `--peak` fills `pct_peak`, and the table labels CPU-adapter numbers.

use std::process::Command;

/// Runs the binary; (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wgdit")).args(args).env("NODEVICE_SELECT", "1").output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn json_rows(args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["bench", "kernels", "--quick", "--json", "--iters", "1"];
    all.extend_from_slice(args);
    let (ok, out, err) = run(&all);
    assert!(ok, "{out}{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l}\n{err}")))
        .collect();
    assert!(!rows.is_empty(), "no rows: {err}");
    for r in &rows {
        for key in ["kernel", "variant", "shape"] {
            assert!(r[key].as_str().is_some_and(|s| !s.is_empty()), "{key} in {r}");
        }
        for key in ["ms", "tflops"] {
            let v = r[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number: {r}"));
            assert!(v > 0.0 && v.is_finite(), "{key} = {v}: {r}");
        }
        assert!(r.get("pct_peak").is_some(), "pct_peak missing: {r}");
    }
    rows
}

#[test]
fn quick_json_rows_have_the_contract_keys_and_every_variant_lavapipe_runs() {
    let rows = json_rows(&[]);
    let cpu = rows[0]["cpu_adapter"] == true;
    let has = |kernel: &str, variant: &str| rows.iter().any(|r| r["kernel"] == kernel && r["variant"] == variant);
    for kernel in ["gemm", "attention_forward", "attention_backward"] {
        assert!(has(kernel, "portable"), "no portable {kernel} row");
    }
    // Every adapter runs the emulation; lavapipe also has SHADER_F16, and no cooperative matrices.
    assert!(has("gemm", "coop-emulated"), "no coop-emulated gemm row");
    if cpu {
        assert!(has("gemm", "f16"), "lavapipe has SHADER_F16: an f16 gemm row");
        for r in &rows {
            assert!(r["pct_peak"].is_null(), "an unknown device has no peak: {r}");
            assert_ne!(r["variant"], "coop", "lavapipe has no cooperative matrices: {r}");
        }
    }
    let gelu = rows.iter().filter(|r| r["kernel"] == "gemm" && r["gelu"] == true).count();
    assert!(gelu > 0, "a GEMM row with the GELU epilogue");
    for r in rows.iter().filter(|r| r["variant"] == "portable") {
        assert_eq!(r["speedup_vs_portable"], 1.0, "{r}");
    }
}

#[test]
fn a_given_peak_fills_pct_peak_and_the_table_labels_cpu_numbers() {
    for r in json_rows(&["--peak", "1", "--kernels-list", "portable"]) {
        let (tf, pct) = (r["tflops"].as_f64().unwrap(), r["pct_peak"].as_f64());
        assert!(pct.is_some_and(|p| (p - 100.0 * tf).abs() <= 1e-9 * p.max(1.0)), "pct_peak of 1 TFLOP/s: {r}");
        assert_eq!(r["variant"], "portable");
    }
    let (ok, out, err) = run(&["bench", "kernels", "--quick", "--iters", "1", "--kernels-list", "portable"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("kernel choice:") && out.contains("x portable"), "{out}");
    if out.contains("(Vulkan, Cpu)") || out.contains("llvmpipe") {
        assert!(out.contains("CPU-emulated numbers") && out.contains("not GPU performance"), "{out}");
    }
    let (ok, out, err) = run(&["bench", "kernels", "--quick", "--kernels-list", "auto"]);
    assert!(!ok && err.contains("--kernels-list"), "{out}{err}");
}
