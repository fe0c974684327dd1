//! Traffic counting and upload-codec choice on virtual time.

use tessera_compress::{AdaptiveConfig, Codec, CompressionConfig};
use tessera_orchestrator::{Links, RoundTraffic, Timestamp, Traffic, upload_codec};

fn at(seconds: u64) -> Timestamp {
    Timestamp(seconds * 1_000_000)
}

#[test]
fn a_round_counts_updates_within_what_was_sent() {
    let mut round = RoundTraffic::default();
    round.down("a", 100);
    round.update("a", 40, Some("q8".into()));
    round.up("a", 5);
    round.up("b", 7);
    round.update_within("b", 3);
    assert_eq!(round.bytes_up(), 52);
    assert_eq!(round.bytes_down(), 100);
    let a = &round.sites()["a"];
    assert_eq!((a.up, a.down, a.update), (45, 100, 40));
    assert_eq!(a.codec.as_deref(), Some("q8"));
    let b = &round.sites()["b"];
    assert_eq!((b.up, b.update, b.codec.as_deref()), (7, 3, None));
    let taken = round.take();
    assert_eq!(taken.len(), 2);
    assert!(
        round.sites().is_empty(),
        "the next round starts from nothing"
    );
    assert_eq!(round.bytes_up(), 0);
}

#[test]
fn strangers_count_in_totals_only() {
    let mut traffic = Traffic::default();
    traffic.received("a", 10, true, None);
    traffic.received("mallory", 1000, false, Some("none".into()));
    traffic.received("a", 20, true, Some("none".into()));
    traffic.update_received(20);
    traffic.sent("a", 50, true);
    traffic.sent("mallory", 5, false);
    assert_eq!(traffic.bytes_up, 1030);
    assert_eq!(traffic.bytes_down, 55);
    assert_eq!(traffic.update_bytes_up, 20);
    assert_eq!(traffic.bytes_up_per_site.len(), 1);
    assert_eq!(traffic.bytes_up_per_site["a"], 30);
    assert_eq!(traffic.round.bytes_up(), 30);
    assert_eq!(traffic.round.bytes_down(), 50);
    assert!(!traffic.round.sites().contains_key("mallory"));
}

fn adaptive() -> CompressionConfig {
    CompressionConfig {
        adaptive: Some(AdaptiveConfig {
            target_round_seconds: 10.0,
            ladder: AdaptiveConfig::default_ladder(),
        }),
        ..CompressionConfig::default()
    }
}

#[test]
fn without_adaptation_the_plans_codec_is_used() {
    let plain = CompressionConfig::default();
    assert_eq!(
        upload_codec(&plain, 1_000_000, Some(1.0), 1e9),
        plain.upload
    );
    let mut links = Links::default();
    let codec = links.assign(&plain, "a", 1, 1000, at(0));
    assert_eq!(codec, plain.upload);
    assert_eq!(links.expected(&plain, "a", 1), plain.upload);
}

#[test]
fn a_slow_link_gets_a_smaller_codec() {
    let compression = adaptive();
    let n = 1_000_000;
    let fast = upload_codec(&compression, n, Some(1e12), 0.0);
    let slow = upload_codec(&compression, n, Some(1e3), 0.0);
    assert!(
        slow.max_encoded_len(n) < fast.max_encoded_len(n),
        "{slow} should be smaller than {fast}"
    );
    // Time already spent leaves less for the upload.
    let late = upload_codec(&compression, n, Some(1e7), 9.9);
    let early = upload_codec(&compression, n, Some(1e7), 0.0);
    assert!(late.max_encoded_len(n) <= early.max_encoded_len(n));
}

#[test]
fn links_measure_bandwidth_and_work_time_on_the_run_clock() {
    let compression = adaptive();
    let mut links = Links::default();
    let codec = links.assign(&compression, "a", 3, 1000, at(10));
    assert_eq!(links.expected(&compression, "a", 3), codec);
    assert_eq!(
        links.expected(&compression, "a", 4),
        compression.upload,
        "another round's codec is the plan's"
    );
    assert_eq!(links.observe_upload("a", 1000, 2.0, at(14)), Some(500.0));
    assert_eq!(links.work_seconds("a"), Some(4.0));
    // Smoothed: half the old, half the new.
    assert_eq!(links.observe_upload("a", 1000, 1.0, at(12)), Some(750.0));
    assert_eq!(links.work_seconds("a"), Some(3.0));
    // No bandwidth from an empty or instant upload (its work time counts).
    assert_eq!(links.observe_upload("a", 0, 1.0, at(12)), None);
    assert_eq!(links.observe_upload("a", 10, 0.0, at(12)), None);
    assert_eq!(links.upload_rate("a"), Some(750.0));
    assert_eq!(links.work_seconds("a"), Some(2.25));
    // An upload that started before the task left says nothing of work time.
    links.observe_upload("a", 1, 1.0, at(5));
    assert_eq!(links.work_seconds("a"), Some(2.25));
    let _: Codec = codec;
}
