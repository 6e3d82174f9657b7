//! Round trips, fp8 rounding cases and scaled blocks. Decoding against gguf-py / torch and the
//! legacy quantizers against gguf-py are in tests/weights/quant_formats.rs (fixture).

use super::{fp8, kquant_fit::nearest_int, scaled_blocks, DType};
use crate::rng::Rng;

/// The block formats (GGML and wgdit's scaled fp8).
fn quantized() -> impl Iterator<Item = DType> {
    super::ALL.into_iter().filter(|d| d.is_blocked())
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let err: f64 = got.iter().zip(want).map(|(g, w)| (*g as f64 - *w as f64).powi(2)).sum();
    let norm: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
    (err / norm).sqrt()
}

/// Measured relative L2 of `round` on N(0, 1) data (65,536 values, seed 7), the bounds being about
/// 5% above: Q8_0 0.0053, Q4_0 0.0857, Q4_1 0.0779, Q5_0 0.0425, Q5_1 0.0376, Q2_K 0.2954,
/// Q3_K 0.1503, Q4_K 0.0710, Q5_K 0.0360, Q6_K 0.0177, F8E4M3Scaled 0.0240, F8E5M2Scaled 0.0477.
/// (Uniform steps of a block's range: Q4_0's step is amax/8 ≈ 0.26σ, so √(1/12)·0.26 ≈ 0.075.)
/// A change to a quantizer that loses accuracy fails here.
#[test]
fn round_trip_error_of_normal_data_is_what_each_format_is_known_for() {
    let bound = |dt: DType| match dt {
        DType::Q8_0 => 0.0056,
        DType::Q4_0 => 0.090,
        DType::Q4_1 => 0.082,
        DType::Q5_0 => 0.045,
        DType::Q5_1 => 0.040,
        DType::Q2K => 0.310,
        DType::Q3K => 0.158,
        DType::Q4K => 0.075,
        DType::Q5K => 0.038,
        DType::Q6K => 0.0186,
        DType::F8E4M3Scaled => 0.0252,
        _ => 0.050,
    };
    let x = Rng::new(7).vec_normal(1 << 16, 1.0);
    for dt in quantized() {
        let e = rel_l2(&dt.round(&x), &x);
        eprintln!("{:>16}: relative L2 {e:.4}", dt.name());
        assert!(e <= bound(dt), "{}: relative L2 {e:.4} above {}", dt.name(), bound(dt));
    }
}

/// Every format keeps zeros exact, tiny and huge scales finite, and a constant block close. The
/// bound 0.35 is Q2_K's own error (0.31 on 512 values); Q6_K reaches 0.13 at scale 1e-4, where its
/// f16 super-block scale d = max/128 is a subnormal half (ggml's format, not this port).
#[test]
fn zero_tiny_huge_and_constant_blocks_round_trip_sensibly() {
    for dt in quantized() {
        let n = 512;
        assert!(dt.round(&vec![0.0; n]).iter().all(|v| *v == 0.0), "{}: zeros", dt.name());
        for scale in [1e-4f32, 1e3] {
            let x: Vec<f32> = Rng::new(3).vec_normal(n, scale);
            let y = dt.round(&x);
            assert!(y.iter().all(|v| v.is_finite()), "{}: scale {scale}", dt.name());
            assert!(rel_l2(&y, &x) < 0.35, "{}: scale {scale}: {}", dt.name(), rel_l2(&y, &x));
        }
        let y = dt.round(&vec![0.37; n]);
        assert!(y.iter().all(|v| (v - 0.37).abs() < 0.37 * 0.1), "{}: constant block gave {}", dt.name(), y[0]);
    }
}

/// Large tensors are split over threads on block boundaries: the bytes must not depend on it.
#[test]
fn encode_and_decode_of_a_large_tensor_equal_the_block_by_block_results() {
    let x = Rng::new(11).vec_normal((1 << 20) + 3 * 256, 0.02);
    for dt in [DType::Q8_0, DType::Q4K, DType::Q6K, DType::F8E4M3Scaled] {
        let whole = dt.encode(&x);
        let pieces: Vec<u8> = x.chunks(64 * 256).flat_map(|c| dt.encode(c)).collect();
        assert!(whole == pieces, "{}: threaded encode differs", dt.name());
        assert!(whole == dt.encode(&x), "{}: encode is not deterministic", dt.name());
        let decoded: Vec<f32> = whole.chunks(64 * dt.block_bytes()).flat_map(|c| dt.decode(c)).collect();
        assert!(dt.decode(&whole) == decoded, "{}: threaded decode differs", dt.name());
    }
}

#[test]
fn nearest_int_rounds_half_to_even_like_ggml() {
    for (x, want) in [(0.5, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (3.49, 3), (-7.6, -8), (4194303.0, 4194303)]
    {
        assert_eq!(nearest_int(x), want, "nearest_int({x})");
    }
}

#[test]
fn fp8_encode_rounds_ties_to_even_and_saturates_instead_of_overflowing() {
    let e4 = |x: f32| fp8::f32_to_e4m3(x);
    let e5 = |x: f32| fp8::f32_to_e5m2(x);
    // E4M3 around 1 (0x38): step 1/8. 1 + 1/16 is a tie to even (1.0), 1 + 3/16 rounds up to 1.25.
    assert_eq!((e4(1.0625), e4(1.1875), e4(1.0625001)), (0x38, 0x3a, 0x39));
    // Subnormals (step 2⁻⁹): 2⁻¹⁰ ties to 0, 3·2⁻¹⁰ ties to 2·2⁻⁹; 15·2⁻¹⁰ carries into the smallest normal.
    assert_eq!((e4(2f32.powi(-10)), e4(3.0 * 2f32.powi(-10)), e4(15.0 * 2f32.powi(-10))), (0x00, 0x02, 0x08));
    assert_eq!((e4(448.0), e4(464.0), e4(1e9), e4(f32::INFINITY), e4(-f32::INFINITY)), (0x7e, 0x7e, 0x7e, 0x7e, 0xfe));
    assert_eq!((e4(f32::NAN), e4(-f32::NAN), e4(-0.0)), (0x7f, 0xff, 0x80));
    // E5M2: 57344 = 0x7b is the largest finite; 61440 (the tie to inf) and inf saturate to it.
    assert_eq!((e5(57344.0), e5(61440.0), e5(f32::INFINITY), e5(-1e30)), (0x7b, 0x7b, 0x7b, 0xfb));
    assert_eq!((e5(1.0), e5(1.125), e5(1.375), e5(f32::NAN)), (0x3c, 0x3c, 0x3e, 0x7f));
    assert!(fp8::e4m3_to_f32(0x7f).is_nan() && fp8::e5m2_to_f32(0x7c) == f32::INFINITY);
}

#[test]
fn fp8_decode_then_encode_returns_every_finite_code() {
    for code in 0..=255u8 {
        let (a, b) = (fp8::e4m3_to_f32(code), fp8::e5m2_to_f32(code));
        if !a.is_nan() {
            assert_eq!(fp8::f32_to_e4m3(a), code, "e4m3 {code:#04x} = {a}");
        }
        if b.is_finite() {
            assert_eq!(fp8::f32_to_e5m2(b), code, "e5m2 {code:#04x} = {b}");
        }
    }
}

/// Scaled blocks: per-block scale amax/max (exactly representable maxima come back exactly),
/// and `scaled_blocks` puts one tensor scale in front of every 32 fp8 bytes.
#[test]
fn scaled_fp8_blocks_carry_their_scale_and_decode_as_fp8_times_scale() {
    let mut x = Rng::new(5).vec_normal(64, 3.0);
    x[40] = -50.0;
    let b = DType::F8E4M3Scaled.encode(&x);
    assert_eq!(b.len(), 72);
    let scale1 = f32::from_le_bytes([b[36], b[37], b[38], b[39]]);
    assert_eq!(scale1, 50.0 / 448.0);
    assert_eq!(DType::F8E4M3Scaled.decode(&b)[40], -448.0 * scale1);
    assert_eq!(&DType::F8E5M2Scaled.encode(&[0.0; 32])[..4], &1.0f32.to_le_bytes());

    let raw: Vec<u8> = (0..64).map(|i| (i * 5) as u8 & 0xf7).collect(); // no inf or NaN codes
    for fp8 in [DType::F8E4M3, DType::F8E5M2] {
        let scaled = scaled_blocks(fp8, &raw, 0.25);
        assert_eq!(
            (scaled.len(), &scaled[..4], &scaled[4..36], &scaled[40..]),
            (72, &0.25f32.to_le_bytes()[..], &raw[..32], &raw[32..])
        );
        let want: Vec<f32> = fp8.decode(&raw).iter().map(|v| v * 0.25).collect();
        let dt = if fp8 == DType::F8E4M3 { DType::F8E4M3Scaled } else { DType::F8E5M2Scaled };
        assert_eq!(dt.decode(&scaled), want, "{}", dt.name());
    }
}

/// Single-core quantize and dequantize throughput per format (one call below the threading
/// threshold, repeated). `cargo test --release --lib dtype::tests::speed -- --ignored --nocapture`
#[test]
#[ignore]
fn speed_of_quantize_and_dequantize_per_format() {
    let x = Rng::new(1).vec_normal(1 << 19, 0.02);
    for dt in quantized().chain([DType::F8E4M3]) {
        let t = std::time::Instant::now();
        let mut b = Vec::new();
        for _ in 0..4 {
            b = dt.encode(&x);
        }
        let enc = 4.0 * x.len() as f64 / t.elapsed().as_secs_f64() / 1e6;
        let t = std::time::Instant::now();
        for _ in 0..4 {
            std::hint::black_box(dt.decode(&b));
        }
        let dec = 4.0 * x.len() as f64 / t.elapsed().as_secs_f64() / 1e6;
        println!("{:>16}: quantize {enc:8.1} M weights/s   dequantize {dec:8.1} M weights/s", dt.name());
    }
}
