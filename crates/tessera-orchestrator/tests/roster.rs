//! The roster's decisions on virtual time.

use std::collections::BTreeSet;
use std::time::Duration;

use tessera_orchestrator::{Expected, Roster, Timestamp};

fn at(seconds: u64) -> Timestamp {
    Timestamp(seconds * 1_000_000)
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn roster() -> Roster {
    Roster::new(
        Expected::Named(names(&["a", "b", "c"])),
        Duration::from_secs(10),
    )
}

#[test]
fn only_named_sites_are_admitted() {
    let expected = Expected::Named(names(&["a", "b"]));
    assert!(expected.admits("a"));
    assert!(!expected.admits("z"));
    assert!(Expected::Count(2).admits("anyone"));
    assert_eq!(expected.len(), 2);
    let offered = |names: &[&'static str]| names.iter().copied().collect::<BTreeSet<&str>>();
    assert!(!expected.complete(&offered(&["a"])));
    assert!(!expected.complete(&offered(&["a", "z"])));
    assert!(expected.complete(&offered(&["a", "b"])));
    assert!(!Expected::Count(2).complete(&offered(&["x"])));
    assert!(Expected::Count(2).complete(&offered(&["x", "y"])));
}

#[test]
fn a_site_is_live_for_exactly_the_liveness_period() {
    let mut r = roster();
    assert!(r.join("a"));
    assert!(!r.join("a"), "joining twice is a rejoin");
    r.seen("a", at(5));
    assert!(!r.is_stale("a", at(15)), "ten seconds after: still live");
    assert!(
        r.is_stale("a", Timestamp(at(15).0 + 1)),
        "a microsecond more: stale"
    );
    assert_eq!(r.live(at(15)), names(&["a"]));
    assert!(r.live(at(16)).is_empty());
    assert_eq!(r.stale(at(16)), names(&["a"]));
}

#[test]
fn a_site_never_heard_from_or_gone_is_stale() {
    let mut r = roster();
    r.join("a");
    r.join("b");
    r.seen("b", at(1));
    assert!(r.is_stale("a", at(1)), "joined but never seen");
    assert_eq!(r.live(at(1)), names(&["b"]));
    r.left("b");
    assert!(r.is_stale("b", at(1)), "left the run");
    r.seen("b", at(2));
    assert_eq!(r.live(at(2)), names(&["b"]), "back once heard from");
}

#[test]
fn only_joined_sites_are_live() {
    let mut r = roster();
    r.seen("stranger", at(1));
    assert!(r.live(at(1)).is_empty());
    r.join("a");
    r.seen("a", at(1));
    r.unjoin("a");
    assert!(!r.is_joined("a"));
    assert!(r.live(at(1)).is_empty());
}

#[test]
fn a_resume_gives_every_site_a_full_period() {
    let mut r = roster();
    r.set_joined(["a".to_string(), "b".to_string()]);
    r.seen_all(at(100));
    assert_eq!(r.live(at(110)), names(&["a", "b"]));
    assert!(r.live(at(111)).is_empty());
}

#[test]
fn previous_round_is_the_last_recorded() {
    let mut r = roster();
    assert_eq!(r.previous("a"), (0, false));
    r.record_round("a", 1, true);
    r.record_round("a", 2, false);
    assert_eq!(r.previous("a"), (2, false));
    assert_eq!(r.previous("b"), (0, false));
}

#[test]
fn heartbeats_and_evaluation_waits_follow_liveness() {
    let r = roster();
    assert_eq!(r.heartbeat_interval(), Duration::from_millis(2500));
    let quick = Roster::new(Expected::Count(1), Duration::from_millis(100));
    assert_eq!(quick.heartbeat_interval(), Duration::from_millis(50));
    let slow = Roster::new(Expected::Count(1), Duration::from_secs(600));
    assert_eq!(slow.heartbeat_interval(), Duration::from_secs(5));
    assert_eq!(r.evaluation_wait(None), Duration::from_secs(100));
    assert_eq!(r.evaluation_wait(Some(3.0)), Duration::from_secs(3));
}
