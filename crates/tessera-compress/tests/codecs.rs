//! Codecs against independent computations: round trips, exact lengths,
//! top-k against a full sort, unbiased quantisation, error feedback's
//! telescoping sum, and hostile bytes.

use proptest::prelude::*;
use tessera_compress::{
    Codec, CompressError, ErrorFeedback, Ladder, Sparsifier, Values, decode, random_k_indices,
};
use tessera_core::SeededRng;

const SPECS: &[&str] = &[
    "none",
    "fp16",
    "q8",
    "q4",
    "q2",
    "q4/16",
    "topk:0.1",
    "topk:0.01+q8",
    "topk:0.3+fp16",
    "randk:0.25",
    "randk:0.05+q2",
    "topk:1+q4/7",
];

fn codecs() -> Vec<Codec> {
    SPECS.iter().map(|s| s.parse().expect(s)).collect()
}

fn vector() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-100.0f32..100.0, 0..600)
}

proptest! {
    #[test]
    fn decoding_gives_what_the_sender_computed(values in vector(), seed in any::<u64>()) {
        for codec in codecs() {
            let mut rng = SeededRng::new(seed);
            let encoded = codec.encode(&values, &mut rng);
            let decoded = decode(&encoded.bytes, values.len()).expect("valid encoding");
            prop_assert_eq!(&decoded, &encoded.decoded, "{}", codec);
            let bound = codec.max_encoded_len(values.len());
            if matches!(codec.sparsifier, Some(Sparsifier::TopK(_))) {
                prop_assert!(encoded.bytes.len() <= bound, "{}", codec);
            } else {
                prop_assert_eq!(encoded.bytes.len(), bound, "{}", codec);
            }
        }
    }

    #[test]
    fn quantised_values_stay_within_their_chunk_and_one_level(values in vector(), seed in any::<u64>()) {
        for bits in [8u8, 4, 2] {
            let codec = Codec { sparsifier: None, values: Values::Uniform(bits), chunk: 32 };
            let encoded = codec.encode(&values, &mut SeededRng::new(seed));
            for (chunk, decoded) in values.chunks(32).zip(encoded.decoded.chunks(32)) {
                let low = chunk.iter().copied().fold(f32::INFINITY, f32::min);
                let high = chunk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let step = (f64::from(high) - f64::from(low)) / f64::from((1u32 << bits) - 1);
                for (&v, &d) in chunk.iter().zip(decoded) {
                    prop_assert!(d >= low && d <= high);
                    prop_assert!((f64::from(v) - f64::from(d)).abs() <= step * (1.0 + 1e-6) + 1e-6);
                }
            }
        }
    }

    #[test]
    fn top_k_keeps_the_largest_magnitudes(values in prop::collection::vec(-10.0f32..10.0, 1..400), fraction in 0.01f64..1.0) {
        let codec = Codec { sparsifier: Some(Sparsifier::TopK(fraction)), values: Values::F32, chunk: 256 };
        let encoded = codec.encode(&values, &mut SeededRng::new(1));
        let k = codec.kept(values.len());
        let mut sorted: Vec<f32> = values.iter().map(|v| v.abs()).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let threshold = sorted[k - 1];
        let kept: Vec<usize> = (0..values.len()).filter(|&i| encoded.decoded[i] != 0.0).collect();
        for &i in &kept {
            prop_assert_eq!(encoded.decoded[i], values[i]);
            prop_assert!(values[i].abs() >= threshold);
        }
        // Every value strictly above the k-th largest magnitude is kept.
        for (i, v) in values.iter().enumerate() {
            if v.abs() > threshold {
                prop_assert_eq!(encoded.decoded[i], *v);
            }
        }
        prop_assert!(kept.len() <= k);
    }

    #[test]
    fn error_feedback_loses_nothing_over_time(rounds in prop::collection::vec(prop::collection::vec(-1.0f32..1.0, 50), 1..12), seed in any::<u64>()) {
        // Sum of what was sent plus the residual equals the sum of the inputs.
        for codec in ["topk:0.05", "randk:0.1+q4", "q2"].map(|s| s.parse::<Codec>().expect(s)) {
            let mut feedback = ErrorFeedback::new();
            let mut rng = SeededRng::new(seed);
            let mut sent = vec![0.0f64; 50];
            let mut input = vec![0.0f64; 50];
            for values in &rounds {
                let encoded = feedback.encode(&codec, values, &mut rng);
                for i in 0..50 {
                    sent[i] += f64::from(encoded.decoded[i]);
                    input[i] += f64::from(values[i]);
                }
            }
            let residual_norm = feedback.norm();
            let gap: f64 = sent.iter().zip(&input).map(|(s, x)| (x - s) * (x - s)).sum::<f64>().sqrt();
            prop_assert!((gap - residual_norm).abs() <= 1e-4 * (1.0 + gap), "{codec}: {gap} vs {residual_norm}");
        }
    }

    #[test]
    fn hostile_bytes_are_rejected_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..200), n in 0usize..300) {
        let _ = decode(&bytes, n);
    }

    #[test]
    fn random_k_draws_distinct_sorted_indices(n in 1usize..2000, fraction in 0.001f64..1.0, seed in any::<u64>()) {
        let k = ((fraction * n as f64).ceil() as usize).min(n);
        let ix = random_k_indices(n, k, seed);
        prop_assert_eq!(ix.len(), k);
        prop_assert!(ix.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(ix.iter().all(|&i| i < n));
        prop_assert_eq!(ix, random_k_indices(n, k, seed));
    }
}

#[test]
fn quantisation_is_unbiased() {
    // The mean of many independent encodings approaches the input, within
    // five standard errors of the stochastic rounding (variance <= step^2 / 4).
    let values: Vec<f32> = (0..64)
        .map(|i| ((i * 37) % 19) as f32 * 0.173 - 1.4)
        .collect();
    let draws = 4000;
    for bits in [8u8, 4, 2] {
        let codec = Codec {
            sparsifier: None,
            values: Values::Uniform(bits),
            chunk: 64,
        };
        let mut rng = SeededRng::new(7);
        let mut mean = vec![0.0f64; values.len()];
        for _ in 0..draws {
            let encoded = codec.encode(&values, &mut rng);
            for (m, d) in mean.iter_mut().zip(&encoded.decoded) {
                *m += f64::from(*d) / f64::from(draws);
            }
        }
        let (low, high) = (-1.4f64, 18.0 * 0.173 - 1.4);
        let step = (high - low) / f64::from((1u32 << bits) - 1);
        let tolerance = 5.0 * step / 2.0 / f64::from(draws).sqrt() + 1e-5;
        for (m, v) in mean.iter().zip(&values) {
            assert!(
                (m - f64::from(*v)).abs() <= tolerance,
                "q{bits}: mean {m} for {v} (tolerance {tolerance})"
            );
        }
    }
}

#[test]
fn fp16_error_is_within_half_an_ulp() {
    let values: Vec<f32> = (1..1000).map(|i| (i as f32).sin() * 3.0).collect();
    let codec: Codec = "fp16".parse().expect("fp16");
    let encoded = codec.encode(&values, &mut SeededRng::new(0));
    for (v, d) in values.iter().zip(&encoded.decoded) {
        assert!(
            (v - d).abs() <= v.abs() * 2f32.powi(-11) + 3e-8,
            "{v} -> {d}"
        );
    }
}

#[test]
fn compressed_sizes_are_as_documented() {
    let values: Vec<f32> = (0..50_890)
        .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
        .collect();
    let plain = 50_890 * 4;
    let mut rng = SeededRng::new(3);
    let size = |spec: &str, rng: &mut SeededRng| {
        spec.parse::<Codec>()
            .expect(spec)
            .encode(&values, rng)
            .bytes
            .len()
    };
    assert_eq!(size("none", &mut rng), 1 + 3 + plain);
    assert_eq!(size("fp16", &mut rng), 1 + 3 + plain / 2);
    // q8, chunk 256: 199 chunks of (8 + 256) bytes, then one of 8 + 202.
    assert_eq!(size("q8", &mut rng), 1 + 3 + 2 + 198 * 264 + 8 + 202);
    // randk:0.01 sends 509 values and an 8-byte seed, no indices.
    assert_eq!(size("randk:0.01", &mut rng), 1 + 3 + 2 + 8 + 509 * 4);
    let topk = size("topk:0.01+q8", &mut rng);
    assert!(topk < plain / 100, "{topk} bytes");
}

#[test]
fn specs_parse_print_and_refuse() {
    for spec in SPECS {
        let codec: Codec = spec.parse().expect(spec);
        assert_eq!(codec.to_string(), *spec);
    }
    let bad = [
        ("topk", "needs the share"),
        ("topk:0", "must be in (0, 1]"),
        ("topk:2", "must be in (0, 1]"),
        ("q8+topk:0.1", "before the value coding"),
        ("q8+q4", "one value coding"),
        ("zip", "unknown stage"),
        ("q3", "unknown stage"),
        ("q4/0", "positive integer"),
        ("topk:0.1+randk:0.1", "one sparsifier"),
    ];
    for (spec, why) in bad {
        match spec.parse::<Codec>() {
            Err(CompressError::Spec { reason, .. }) => {
                assert!(reason.contains(why), "{spec}: {reason}");
            }
            other => panic!("{spec}: {other:?}"),
        }
    }
}

#[test]
fn malformed_encodings_name_the_problem() {
    let values: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let mut rng = SeededRng::new(1);
    for codec in codecs() {
        let bytes = codec.encode(&values, &mut rng).bytes;
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], 100).is_err(), "{codec} cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, 100).is_err());
        let err = decode(&bytes, 99).expect_err("wrong length");
        assert!(err.to_string().contains("the model has 99"), "{err}");
    }
    // An index past the end.
    let err = decode(&[0x10, 4, 1, 9, 0, 0, 0, 0], 4).expect_err("index");
    assert!(err.to_string().contains("past the 4 values"), "{err}");
    // A non-finite value.
    let mut nan = vec![0x00, 1];
    nan.extend_from_slice(&f32::NAN.to_le_bytes());
    assert!(
        decode(&nan, 1)
            .expect_err("nan")
            .to_string()
            .contains("not finite")
    );
}

#[test]
fn the_ladder_picks_the_least_lossy_codec_that_fits() {
    let ladder: Vec<Codec> = ["none", "q8", "topk:0.01+q8"]
        .iter()
        .map(|s| s.parse().expect(s))
        .collect();
    let ladder = Ladder::new(&ladder);
    let n = 100_000; // 400 kB plain, 100 kB at q8, about 3 kB at 1% + q8
    assert_eq!(ladder.choose(n, Some(1e6), 1.0), 0);
    assert_eq!(ladder.choose(n, Some(2e5), 1.0), 1);
    assert_eq!(ladder.choose(n, Some(1e4), 1.0), 2);
    assert_eq!(ladder.choose(n, Some(10.0), 1.0), 2); // nothing fits: the smallest
    assert_eq!(ladder.choose(n, None, 1.0), 0);
}
