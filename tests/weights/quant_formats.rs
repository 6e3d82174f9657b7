//! The host reference of the GGML block formats and fp8 (`DType::decode` / `DType::encode`) against
//! ggml's own C (ggml-quants.c compiled by the generator), gguf-py 0.19.0 and torch 2.15:
//! tests/fixtures/quant/blocks.safetensors, written by tools/gen_quant_fixtures.py (see
//! tests/fixtures/README.md).

use std::collections::HashMap;
use wgdit::dtype::DType;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quant/blocks.safetensors");

/// The GGML block formats; legacy ones have 32-element blocks, k-quants 256-element super-blocks.
fn block_types(block_elems: Option<usize>) -> impl Iterator<Item = DType> {
    wgdit::dtype::ALL.into_iter().filter(move |d| d.is_ggml_block() && block_elems.is_none_or(|n| d.block_elems() == n))
}

/// Tensor name → raw little-endian bytes.
fn fixture() -> HashMap<String, Vec<u8>> {
    let file = std::fs::read(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e} (run tools/gen_quant_fixtures.py)"));
    let st = safetensors::SafeTensors::deserialize(&file).expect("fixture is a safetensors file");
    st.tensors().into_iter().map(|(name, view)| (name, view.data().to_vec())).collect()
}

fn bytes(fx: &HashMap<String, Vec<u8>>, name: &str) -> Vec<u8> {
    fx.get(name).unwrap_or_else(|| panic!("{name} missing from {FIXTURE}")).clone()
}

fn floats(fx: &HashMap<String, Vec<u8>>, name: &str) -> Vec<f32> {
    DType::F32.decode(&bytes(fx, name))
}

/// Asserts bit equality (NaN matches any NaN) and names the first mismatch.
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits() && !(got[i].is_nan() && want[i].is_nan()))
        .collect();
    if let Some(&i) = bad.first() {
        panic!(
            "{what}: {} of {} values differ; first at {i}: got {:e}, want {:e}",
            bad.len(),
            got.len(),
            got[i],
            want[i]
        );
    }
}

fn assert_same_bytes(what: &str, got: &[u8], want: &[u8], block: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    if let Some(&i) = bad.first() {
        panic!(
            "{what}: {} of {} bytes differ; first at byte {i} (block {}, offset {}): got {:#04x}, want {:#04x}",
            bad.len(),
            got.len(),
            i / block,
            i % block,
            got[i],
            want[i]
        );
    }
}

/// gguf-py's numpy dequantizers do the same f32 operations in the same order as ggml's C (`d·q − m`
/// as a multiply then a subtraction, `d·sc·q` left to right), so the match is exact.
#[test]
fn decode_of_every_ggml_block_format_matches_gguf_py_bit_for_bit() {
    let fx = fixture();
    for dt in block_types(None) {
        let b = bytes(&fx, &format!("{}.bytes", dt.name()));
        assert_eq!(b.len() % dt.block_bytes(), 0, "{}: fixture blocks", dt.name());
        assert_same_bits(dt.name(), &dt.decode(&b), &floats(&fx, &format!("{}.values", dt.name())));
    }
}

#[test]
fn legacy_quantizers_match_gguf_py_byte_for_byte() {
    let fx = fixture();
    for dt in block_types(Some(32)) {
        let src = floats(&fx, &format!("{}.src", dt.name()));
        let want = bytes(&fx, &format!("{}.quantized", dt.name()));
        assert_same_bytes(dt.name(), &dt.encode(&src), &want, dt.block_bytes());
    }
}

/// ggml's `quantize_row_q*_K_ref` (what `llama-quantize` writes without an importance matrix),
/// compiled as ggml-base is on x86-64: without fused multiply-adds. A build that contracts
/// `a*b + c` into FMAs (aarch64, or `-march=native` with GCC) picks other quants in a few blocks.
#[test]
fn k_quant_quantizers_match_ggml_byte_for_byte() {
    let fx = fixture();
    let src = floats(&fx, "kquant.src");
    for dt in block_types(Some(256)) {
        let want = bytes(&fx, &format!("{}.quantized", dt.name()));
        assert_same_bytes(dt.name(), &dt.encode(&src), &want, dt.block_bytes());
    }
}

#[test]
fn fp8_decode_of_all_256_codes_matches_torch() {
    let fx = fixture();
    for dt in [DType::F8E4M3, DType::F8E5M2] {
        let codes: Vec<u8> = (0..=255).collect();
        assert_same_bits(dt.name(), &dt.decode(&codes), &floats(&fx, &format!("{}.table", dt.name())));
    }
}

/// The sources are every midpoint between neighbouring fp8 values (ties to even), the midpoints
/// nudged by one f32 ulp, random values, overflow, infinities and NaN; torch's cast follows
/// ComfyUI's clamp to the fp8 range.
#[test]
fn fp8_encode_rounds_ties_to_even_and_saturates_like_a_clamped_torch_cast() {
    let fx = fixture();
    for dt in [DType::F8E4M3, DType::F8E5M2] {
        let src = floats(&fx, &format!("{}.src", dt.name()));
        assert_same_bytes(dt.name(), &dt.encode(&src), &bytes(&fx, &format!("{}.encoded", dt.name())), 1);
    }
}
