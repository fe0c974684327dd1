//! Compression end to end on both real benchmarks: MNIST over 20 sites
//! (Dirichlet 0.5, MLP) and Fed-Heart-Disease. Bytes are counted from the
//! encodings themselves; accuracies come from the simulated runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use tessera_compress::Codec;
use tessera_data::{FederatedData, Filesystem};
use tessera_engine::Plan;
use tessera_engine::report::RunReport;
use tessera_sim::{SimOptions, initial_model, simulate};

fn example(name: &str) -> (Plan, FederatedData) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let plan = Plan::from_file(&dir.join(name)).expect("example plan");
    let data = tessera_data::load(&plan.data, &dir, &Filesystem).expect("example data");
    (plan, data)
}

fn run(plan: &Plan, data: &FederatedData, upload: &str, feedback: bool) -> RunReport {
    let mut plan = plan.clone();
    plan.compression.upload = upload.parse::<Codec>().unwrap();
    plan.compression.error_feedback = feedback;
    simulate(&plan, data, &SimOptions::default(), &mut |_| {}).unwrap()
}

#[test]
fn traffic_is_counted_per_site_and_adds_up() {
    let (mut plan, data) = example("fed-heart-disease.toml");
    plan.federation.rounds = 3;
    let plain = run(&plan, &data, "none", true);
    let packed = run(&plan, &data, "q8", true);
    let n = initial_model(&plan, &data).unwrap().parameters().n_values();
    for report in [&plain, &packed] {
        for record in &report.rounds {
            let up: u64 = record.traffic.values().map(|t| t.up).sum();
            let down: u64 = record.traffic.values().map(|t| t.down).sum();
            assert_eq!((up, down), (record.bytes_up, record.bytes_down));
            assert_eq!(record.traffic.len(), 4);
        }
    }
    // Uncompressed: an envelope and the tensors' protobuf bytes. q8: the
    // envelope, one length-delimited field, then the codec's exact bytes.
    let delta_wire = initial_model(&plan, &data).unwrap().parameters().wire_len() as u64;
    assert_eq!(plain.communication.update_bytes_up, 12 * (32 + delta_wire));
    let q8 = "q8".parse::<Codec>().unwrap().max_encoded_len(n) as u64;
    assert_eq!(packed.communication.update_bytes_up, 12 * (32 + 1 + 1 + q8));
    let site = &packed.rounds[0].traffic["cleveland"];
    assert_eq!(site.codec.as_deref(), Some("q8"));
}

#[test]
fn mnist_sends_99_percent_fewer_bytes_within_a_point() {
    let (plan, data) = example("mnist.toml");
    let plain = run(&plan, &data, "none", true);
    let sparse = run(&plan, &data, "topk:0.02+q2", true);
    let saved = 1.0
        - sparse.communication.update_bytes_up as f64 / plain.communication.update_bytes_up as f64;
    let total_saved =
        1.0 - sparse.communication.bytes_up as f64 / plain.communication.bytes_up as f64;
    let lost = plain.final_metrics.accuracy.unwrap() - sparse.final_metrics.accuracy.unwrap();
    println!(
        "MNIST: none {:.4} ({} B up); topk:0.02+q2 {:.4} ({} B up): {:.2}% fewer update bytes, {:.2}% fewer bytes up, {:.2} points lost",
        plain.final_metrics.accuracy.unwrap(),
        plain.communication.bytes_up,
        sparse.final_metrics.accuracy.unwrap(),
        sparse.communication.bytes_up,
        100.0 * saved,
        100.0 * total_saved,
        100.0 * lost
    );
    assert!(plain.final_metrics.accuracy.unwrap() > 0.9);
    assert!(total_saved >= 0.99, "saved {total_saved}");
    assert!(lost <= 0.01, "lost {lost}");
}

#[test]
fn error_feedback_beats_no_feedback_at_the_same_bytes() {
    let (plan, data) = example("mnist.toml");
    for codec in ["topk:0.01", "topk:0.003+q8"] {
        let with = run(&plan, &data, codec, true);
        let without = run(&plan, &data, codec, false);
        let (a, b) = (
            with.communication.update_bytes_up as f64,
            without.communication.update_bytes_up as f64,
        );
        println!(
            "{codec}: error feedback {:.4} ({a} B), none {:.4} ({b} B)",
            with.final_metrics.accuracy.unwrap(),
            without.final_metrics.accuracy.unwrap()
        );
        // The same k values a round; error feedback spreads them over more
        // coordinates, so its index gaps take a few per cent more bytes.
        assert!((a / b - 1.0).abs() < 0.08, "{a} vs {b}");
        assert!(
            with.final_metrics.accuracy.unwrap() > without.final_metrics.accuracy.unwrap() + 0.01,
            "{codec}: {} vs {}",
            with.final_metrics.accuracy.unwrap(),
            without.final_metrics.accuracy.unwrap()
        );
    }
}

#[test]
fn secure_aggregation_keeps_random_k_from_a_shared_seed() {
    let (mut plan, data) = example("fed-heart-disease.toml");
    plan.secure_aggregation.enabled = true;
    plan.compression.upload = "randk:0.25".parse().unwrap();
    // One round: the model moves only on the round's shared coordinates.
    let mut one = plan.clone();
    one.federation.rounds = 1;
    let report = simulate(&one, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    let initial = initial_model(&one, &data).unwrap().parameters().clone();
    let n = initial.n_values();
    let k = one.compression.upload.kept(n);
    let shared = tessera_compress::random_k_indices(n, k, one.shared_codec_seed(1));
    let moved: Vec<usize> = report
        .final_parameters
        .values()
        .zip(initial.values())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect();
    assert!(!moved.is_empty());
    assert!(
        moved.iter().all(|i| shared.contains(i)),
        "{moved:?} vs {shared:?}"
    );
    // The masked input is k ring elements, not n, and the metadata's
    // (example count, train loss, steps: masked with the update).
    let masked = report.communication.update_bytes_up;
    let ring = (k + tessera_secagg::METADATA_LEN) as u64;
    assert_eq!(masked, 4 * (4 * ring + 8));
    // Over the whole plan it still learns.
    let full = simulate(&plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    assert!(
        full.final_metrics.accuracy.unwrap() > 0.7,
        "{}",
        full.final_metrics.accuracy.unwrap()
    );
    // Codecs that cannot be summed under masking are refused with the reason.
    for bad in ["topk:0.1", "q8", "randk:0.5+fp16"] {
        let mut wrong = plan.clone();
        wrong.compression.upload = bad.parse().unwrap();
        let err = wrong.validate().unwrap_err().to_string();
        assert!(
            err.contains("cannot be summed under secure aggregation"),
            "{err}"
        );
    }
}

#[test]
fn the_adaptive_ladder_fits_rounds_to_the_target() {
    let (mut plan, data) = example("mnist.toml");
    plan.federation.rounds = 8;
    // Links from 100 kB/s to 10 MB/s (100x); the model goes down at q8.
    plan.simulation.bandwidth_bytes_per_second = Some(tessera_engine::Range { min: 1e5, max: 1e7 });
    plan.compression.download = "q8".parse().unwrap();
    let fixed = run(&plan, &data, "none", true);
    let mut adaptive_plan = plan.clone();
    adaptive_plan.compression.adaptive = Some(tessera_compress::AdaptiveConfig {
        target_round_seconds: 0.5,
        ladder: tessera_compress::AdaptiveConfig::default_ladder(),
    });
    let adaptive = simulate(&adaptive_plan, &data, &SimOptions::default(), &mut |_| {}).unwrap();
    // After the first round (the full initial model goes down), every round fits.
    for record in &adaptive.rounds[1..] {
        assert!(
            record.virtual_seconds <= 0.5 + 1e-6,
            "{}",
            record.virtual_seconds
        );
    }
    let slowest_fixed = fixed.rounds[1..]
        .iter()
        .map(|r| r.virtual_seconds)
        .fold(0.0, f64::max);
    assert!(slowest_fixed > 1.0, "{slowest_fixed}");
    // Fast links keep sending everything; slow ones compress.
    let codecs: Vec<&str> = adaptive.rounds[1]
        .traffic
        .values()
        .map(|t| t.codec.as_deref().unwrap_or("none"))
        .collect();
    assert!(
        codecs.contains(&"none") && codecs.iter().any(|c| *c != "none"),
        "{codecs:?}"
    );
}
