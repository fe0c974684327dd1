//! Two-party ECDH-PSI: known overlaps in every mode, what each party ends
//! up holding, what the messages let it link.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::collections::BTreeSet;
use tessera_psi::*;

const MODES: [Mode; 3] = [Mode::Both, Mode::ReceiverOnly, Mode::Cardinality];

/// Runs every mode on `(a, b)` and checks each party's holdings against
/// the direct intersection.
fn check_case(name: &str, a: &[String], b: &[String]) {
    let want = expected(a, b);
    let (pa, pb) = (tokens(a), tokens(b));
    for (k, mode) in MODES.into_iter().enumerate() {
        let out = run(PsiConfig::new(mode), &pa.tokens, &pb.tokens, 100 + k as u64);
        let (r, s) = (&out.receiver, &out.sender);
        assert_eq!(r.size, want.len(), "{name} {mode}: receiver's size");
        assert_eq!(r.sender_size, pb.tokens.len(), "{name} {mode}: |B|");
        assert_eq!(s.receiver_size, pa.tokens.len(), "{name} {mode}: |A|");
        match mode {
            Mode::Both => {
                let ra = r.intersection.as_ref().expect("receiver's intersection");
                let sb = s.intersection.as_ref().expect("sender's intersection");
                assert_eq!(names(a, &pa, ra), want, "{name}: receiver's elements");
                assert_eq!(names(b, &pb, sb), want, "{name}: sender's elements");
                assert_eq!(s.size, Some(want.len()));
            }
            Mode::ReceiverOnly => {
                let ra = r.intersection.as_ref().expect("receiver's intersection");
                assert_eq!(names(a, &pa, ra), want, "{name}: receiver's elements");
                assert_eq!(s.intersection, None, "{name}: sender learns no elements");
                assert_eq!(s.size, None, "{name}: sender learns no size");
                assert!(out.reveal.is_none(), "{name}: nothing goes back to B");
            }
            Mode::Cardinality => {
                assert_eq!(r.intersection, None, "{name}: receiver learns no elements");
                assert_eq!(s.intersection, None, "{name}: sender learns no elements");
                assert_eq!(s.size, Some(want.len()), "{name}: sender's size");
            }
        }
    }
}

#[test]
fn both_sides_empty() {
    check_case("empty", &[], &[]);
}

#[test]
fn disjoint_sets_share_nothing() {
    check_case("disjoint", &ids(0..300), &ids(300..700));
}

#[test]
fn equal_sets_share_everything() {
    check_case("full", &ids(0..500), &ids(0..500));
}

#[test]
fn partial_overlap_is_found_exactly() {
    check_case("partial", &ids(0..1000), &ids(600..1500));
}

#[test]
fn duplicates_and_spelling_variants_count_once() {
    let mut a = ids(0..200);
    a.extend(ids(100..150)); // exact repeats
    a.push(" p 000010 ".into()); // a spelling variant of P-000010
    let mut b = ids(150..400);
    b.extend(
        ids(150..160)
            .iter()
            .map(|s| s.to_lowercase().replace('-', "_")),
    );
    check_case("duplicates", &a, &b);
    let (pa, pb) = (tokens(&a), tokens(&b));
    assert_eq!(pa.tokens.len(), 200);
    assert_eq!(pb.tokens.len(), 250);
    let out = run(PsiConfig::new(Mode::Both), &pa.tokens, &pb.tokens, 1);
    assert_eq!(out.receiver.size, 50);
}

#[test]
fn one_empty_side() {
    check_case("A empty", &[], &ids(0..100));
    check_case("B empty", &ids(0..100), &[]);
}

#[test]
fn different_sizes() {
    check_case("small A", &ids(0..37), &ids(10..3000));
    check_case("small B", &ids(0..3000), &ids(2990..3011));
}

#[test]
fn production_constructors_agree_with_the_seeded_ones() {
    let (a, b) = (tokens(&ids(0..400)), tokens(&ids(250..900)));
    let config = PsiConfig::new(Mode::Both);
    let (r, q) = Receiver::start(config, &a.tokens).unwrap();
    let (s, resp) = Sender::respond(config, &b.tokens, &q).unwrap();
    let (out, reveal) = r.finish(&resp).unwrap();
    let sout = s.finish(reveal.as_ref()).unwrap();
    assert_eq!(out.size, 150);
    assert_eq!(sout.size, Some(150));
    // Fresh secrets each run: the query differs from a second run's.
    let (_, q2) = Receiver::start(config, &a.tokens).unwrap();
    assert_ne!(q.points, q2.points);
}

/// In cardinality mode the points A gets back are sorted by their own
/// bytes: permuting A's list leaves every byte it receives unchanged, so
/// nothing in what it holds links a value to one of its elements. In mode
/// both the same permutation moves the points (the test can fail).
#[test]
fn cardinality_mode_returns_nothing_that_links_to_the_receivers_elements() {
    let a = tokens(&ids(0..300)).tokens;
    let mut a_perm = a.clone();
    a_perm.reverse();
    a_perm.swap(3, 250);
    let b = tokens(&ids(200..500)).tokens;
    let resp = |mode: Mode, a: &[Token]| {
        let config = PsiConfig::new(mode);
        let (_, q) = Receiver::start_seeded_for_tests(config, a, 5).unwrap();
        Sender::respond_seeded_for_tests(config, &b, &q, 6)
            .unwrap()
            .1
    };
    let card = resp(Mode::Cardinality, &a);
    assert!(
        card == resp(Mode::Cardinality, &a_perm),
        "permuting A's list changed what A receives in cardinality mode"
    );
    let chunks: Vec<&[u8]> = card.evaluated.chunks(32).collect();
    assert!(chunks.windows(2).all(|w| w[0] < w[1]), "sorted by encoding");
    // In mode both the order follows A's query, so it moves.
    assert_ne!(
        resp(Mode::Both, &a).evaluated,
        resp(Mode::Both, &a_perm).evaluated
    );
    // And the receiver's output holds the count alone.
    let out = run(PsiConfig::new(Mode::Cardinality), &a, &b, 9);
    assert_eq!((out.receiver.intersection, out.receiver.size), (None, 100));
}

/// B's set is sent sorted and coded: permuting B's list changes no byte
/// A receives.
#[test]
fn the_senders_set_does_not_reveal_its_order() {
    let a = tokens(&ids(0..100)).tokens;
    let b = tokens(&ids(50..400)).tokens;
    let mut b_perm = b.clone();
    b_perm.rotate_left(77);
    let config = PsiConfig::new(Mode::ReceiverOnly);
    let (_, q) = Receiver::start_seeded_for_tests(config, &a, 5).unwrap();
    let r1 = Sender::respond_seeded_for_tests(config, &b, &q, 6)
        .unwrap()
        .1;
    let r2 = Sender::respond_seeded_for_tests(config, &b_perm, &q, 6)
        .unwrap()
        .1;
    assert!(r1 == r2, "permuting B's list changed what A receives");
}

/// What a relaying coordinator sees carries neither raw identifiers, nor
/// tokens, nor the unblinded group elements `H(token)`.
#[test]
fn relayed_messages_hold_no_identifier_token_or_hash() {
    let raw = ids(0..50);
    let a = tokens(&raw);
    let b = tokens(&ids(25..80));
    let out = run(PsiConfig::new(Mode::Both), &a.tokens, &b.tokens, 3);
    let mut wire = out.query.clone();
    wire.extend(&out.response);
    wire.extend(out.reveal.unwrap());
    let contains = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    for (id, t) in raw.iter().zip(&a.tokens) {
        assert!(!contains(id.as_bytes()));
        assert!(!contains(&t.0[..8]));
    }
    // The query with another receiver secret shares no point with this one.
    let (_, q2) =
        Receiver::start_seeded_for_tests(PsiConfig::new(Mode::Both), &a.tokens, 4).unwrap();
    let q1 = Query::from_bytes(&out.query).unwrap();
    let p1: BTreeSet<&[u8]> = q1.points.chunks(32).collect();
    assert!(q2.points.chunks(32).all(|c| !p1.contains(c)));
}

/// The bytes: two 32-byte points per element plus a coded value of about
/// `(p + 1.6) / 8` bytes, at most 70 per element.
#[test]
fn bytes_per_element_stay_within_70() {
    let n = 20_000;
    let a = tokens(&ids(0..n)).tokens;
    let b = tokens(&ids(n / 2..n + n / 2)).tokens;
    for mode in [Mode::ReceiverOnly, Mode::Both] {
        let out = run(PsiConfig::new(mode), &a, &b, 11);
        let total = out.query.len() + out.response.len() + out.reveal.map_or(0, |r| r.len());
        let per = total as f64 / n as f64;
        assert!(per <= 70.0, "{mode}: {per:.2} bytes per element");
        assert!(per > 64.0, "{mode}: {per:.2} cannot be below two points");
        assert_eq!(out.receiver.size, n / 2);
    }
}

/// With a coarse false-positive parameter the sender's coded set holds
/// colliding values (about 4 pairs among 2,000 at `p = 8`); runs still
/// decode, and a shared element is still found on both sides.
#[test]
fn colliding_coded_values_still_decode_and_match() {
    let a = tokens(&ids(5..6)).tokens;
    let b = tokens(&ids(0..2000)).tokens;
    let config = PsiConfig {
        fp_bits: 8,
        ..PsiConfig::new(Mode::Both)
    };
    for seed in 0..4 {
        let out = run(config, &a, &b, 50 + seed);
        assert_eq!(out.receiver.intersection, Some(vec![0]));
        let mine = out.sender.intersection.unwrap();
        assert!(mine.contains(&5), "{mine:?}");
        assert!(mine.len() <= 3, "{mine:?}");
    }
}
