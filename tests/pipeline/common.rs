//! Fixture access and exact-comparison helpers shared by the integration tests. The fixture is
//! made by `tools/gen_pipeline_math_fixture.py` from torch / diffusers / Pillow.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use safetensors::{Dtype, SafeTensors};

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline_math")
}

fn bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let path = fixture_dir().join("pipeline_math.safetensors");
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run tools/gen_pipeline_math_fixture.py)", path.display()))
    })
}

fn tensors() -> &'static SafeTensors<'static> {
    static T: OnceLock<SafeTensors<'static>> = OnceLock::new();
    T.get_or_init(|| SafeTensors::deserialize(bytes()).expect("fixture is not a valid safetensors file"))
}

fn raw(name: &str, dtype: Dtype) -> &'static [u8] {
    let t =
        tensors().tensor(name).unwrap_or_else(|_| panic!("fixture tensor {name} missing (regenerate the fixture?)"));
    assert_eq!(t.dtype(), dtype, "fixture tensor {name} has dtype {:?}", t.dtype());
    t.data()
}

pub fn shape(name: &str) -> Vec<usize> {
    tensors().tensor(name).unwrap_or_else(|_| panic!("fixture tensor {name} missing")).shape().to_vec()
}

pub fn f32s(name: &str) -> Vec<f32> {
    raw(name, Dtype::F32).chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

pub fn f64s(name: &str) -> Vec<f64> {
    raw(name, Dtype::F64).chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
}

pub fn i64s(name: &str) -> Vec<i64> {
    raw(name, Dtype::I64).chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
}

pub fn u64s(name: &str) -> Vec<u64> {
    raw(name, Dtype::U64).chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().unwrap())).collect()
}

pub fn u8s(name: &str) -> Vec<u8> {
    raw(name, Dtype::U8).to_vec()
}

/// A `__metadata__` entry (JSON text written by the generator).
pub fn metadata(key: &str) -> serde_json::Value {
    let (_, meta) = SafeTensors::read_metadata(bytes()).expect("fixture header");
    let map = meta.metadata().as_ref().expect("fixture has no metadata");
    let text = map.get(key).unwrap_or_else(|| panic!("fixture metadata {key} missing"));
    serde_json::from_str(text).expect("fixture metadata is JSON")
}

/// Distance in units in the last place between two finite f32 (0 when bit-identical; NaN == NaN).
pub fn ulps(a: f32, b: f32) -> u64 {
    if a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) {
        return 0;
    }
    let key = |x: f32| {
        let i = x.to_bits() as i32 as i64;
        if i < 0 {
            i64::from(i32::MIN) - i
        } else {
            i
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

/// Asserts `got` and `want` are equal to within `max_ulps` (0 = bit for bit), reporting the worst
/// element and the first few mismatches.
pub fn assert_ulps(got: &[f32], want: &[f32], max_ulps: u64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    let diffs: Vec<(usize, u64)> =
        got.iter().zip(want).map(|(&g, &w)| ulps(g, w)).enumerate().filter(|&(_, d)| d > 0).collect();
    let worst = diffs.iter().max_by_key(|&&(_, d)| d);
    if let Some(&(i, d)) = worst {
        if d > max_ulps {
            let first: Vec<String> = diffs
                .iter()
                .take(8)
                .map(|&(j, d)| format!("[{j}] got {:e} want {:e} ({d} ulp)", got[j], want[j]))
                .collect();
            panic!(
                "{what}: {} of {} differ, worst [{i}] got {:e} want {:e} ({d} ulp > {max_ulps}); first: {}",
                diffs.len(),
                got.len(),
                got[i],
                want[i],
                first.join(", ")
            );
        }
    }
}

/// Bit-for-bit equality of f32 slices.
pub fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_ulps(got, want, 0, what);
}

/// Largest ulp distance between two slices.
pub fn max_ulps(got: &[f32], want: &[f32]) -> u64 {
    got.iter().zip(want).map(|(&g, &w)| ulps(g, w)).max().unwrap_or(0)
}
