//! Intersection-sum: against a direct computation, what each party holds,
//! malformed messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::collections::HashMap;
use tessera_psi::*;

const CONFIG: SumConfig = SumConfig {
    max_elements: 10_000,
    max_value: 1_000,
    min_receiver_elements: 0,
};

/// B's rows (identifier, value) for `range`, values from a seeded stream.
fn rows(range: std::ops::Range<usize>, seed: u64) -> Vec<(String, u64)> {
    let mut s = seed;
    ids(range)
        .into_iter()
        .map(|id| (id, lcg(&mut s) % (CONFIG.max_value + 1)))
        .collect()
}

/// The direct computation: count and sum of B's values (per normalised
/// identifier, repeated rows added) over identifiers A holds.
fn direct(a: &[String], b: &[(String, u64)]) -> (usize, u64) {
    let a: std::collections::HashSet<String> = a.iter().map(|s| normalise(s)).collect();
    let mut per: HashMap<String, u64> = HashMap::new();
    for (id, v) in b {
        *per.entry(normalise(id)).or_default() += v;
    }
    let shared: Vec<u64> = per
        .iter()
        .filter(|(k, _)| a.contains(*k))
        .map(|(_, v)| *v)
        .collect();
    (shared.len(), shared.iter().sum())
}

fn check(name: &str, a: &[String], b: &[(String, u64)], seed: u64) -> SumOutput {
    let pa = tokens(a);
    let pb = prepare_with_values(&key(), b, CONFIG.max_value).unwrap();
    let (out, b_learned, _) = run_sum(CONFIG, &pa.tokens, &pb.tokens, &pb.values, seed);
    let (count, sum) = direct(a, b);
    assert_eq!(out.intersection_size, count, "{name}: count");
    assert_eq!(out.sum, sum, "{name}: sum");
    assert_eq!(out.sender_size, pb.tokens.len(), "{name}: |B|");
    assert_eq!(b_learned, pa.tokens.len(), "{name}: B learns |A|");
    match out.mean() {
        Some(m) => assert!((m - sum as f64 / count as f64).abs() < 1e-12),
        None => assert_eq!(count, 0),
    }
    out
}

#[test]
fn sums_equal_the_direct_computation() {
    check("partial", &ids(0..600), &rows(400..1200, 1), 10);
    check("full", &ids(0..300), &rows(0..300, 2), 11);
    check("different sizes", &ids(0..40), &rows(0..2000, 3), 12);
    let out = check("disjoint", &ids(0..100), &rows(100..200, 4), 13);
    assert_eq!((out.sum, out.mean()), (0, None));
    check("A empty", &[], &rows(0..50, 5), 14);
    check("B empty", &ids(0..50), &[], 15);
    check("both empty", &[], &[], 16);
}

#[test]
fn repeated_identifiers_count_once_with_their_values_added() {
    let mut a = ids(0..100);
    a.extend(ids(0..30));
    let mut b = rows(50..150, 6);
    b.push(("p 000060".into(), 7)); // a second row for P-000060
    b.push(("P-000140".into(), 3)); // and for one A does not hold
    let out = check("duplicates", &a, &b, 17);
    assert_eq!(out.intersection_size, 50);
}

#[test]
fn the_largest_values_sum_exactly() {
    let b: Vec<(String, u64)> = ids(0..2000)
        .into_iter()
        .map(|id| (id, CONFIG.max_value))
        .collect();
    let out = check("all at the bound", &ids(0..2000), &b, 18);
    assert_eq!(out.sum, 2_000_000);
}

/// What A receives does not depend on the order of either list: its
/// doubly-blinded values and B's entries come sorted by encoding, so it
/// cannot tell which of its elements matched, only how many. B receives
/// one query and one uniformly random point.
#[test]
fn the_receiver_cannot_tell_which_elements_matched() {
    let a = tokens(&ids(0..200)).tokens;
    let b = prepare_with_values(&key(), &rows(100..300, 7), CONFIG.max_value).unwrap();
    let mut a_perm = a.clone();
    a_perm.reverse();
    let mut order: Vec<usize> = (0..b.tokens.len()).collect();
    order.rotate_left(33);
    let b_tokens: Vec<Token> = order.iter().map(|&i| b.tokens[i]).collect();
    let b_values: Vec<u64> = order.iter().map(|&i| b.values[i]).collect();
    let view = |a: &[Token], bt: &[Token], bv: &[u64]| {
        let (_, q) = SumReceiver::start_seeded_for_tests(CONFIG, a, 1).unwrap();
        let (_, resp) = SumSender::respond_seeded_for_tests(CONFIG, bt, bv, &q, 2).unwrap();
        (q, resp)
    };
    let (q1, r1) = view(&a, &b.tokens, &b.values);
    let (q2, r2) = view(&a_perm, &b.tokens, &b.values);
    assert!(q1 == q2, "the query does not reveal A's order");
    assert!(
        r1.doubly == r2.doubly,
        "A's doubly-blinded values are sorted"
    );
    let doubly: Vec<&[u8]> = r1.doubly.chunks(32).collect();
    assert!(doubly.windows(2).all(|w| w[0] < w[1]));
    // B's order changes the nonces of its ciphertexts but not the points'
    // order: entries are sorted by their point.
    let (_, r3) = view(&a, &b_tokens, &b_values);
    let points = |r: &SumResponse| -> Vec<Vec<u8>> {
        r.entries.chunks(96).map(|e| e[..32].to_vec()).collect()
    };
    assert!(
        points(&r1) == points(&r3),
        "B's entries are sorted by point"
    );
    // None of A's elements reappears in what A receives as itself: no
    // doubly-blinded value equals a query point.
    let q: std::collections::HashSet<&[u8]> = q1.points.chunks(32).collect();
    assert!(doubly.iter().all(|d| !q.contains(d)));
    // The decryption request is re-randomised: two different receiver
    // secrets give different requests for the same total.
    let (_, _, m1) = run_sum(CONFIG, &a, &b.tokens, &b.values, 20);
    let (_, _, m2) = run_sum(CONFIG, &a, &b.tokens, &b.values, 40);
    assert_ne!(m1[2], m2[2]);
}

#[test]
fn production_constructors_compute_the_same_sum() {
    let a = tokens(&ids(0..300));
    let b = prepare_with_values(&key(), &rows(100..400, 8), CONFIG.max_value).unwrap();
    let (r, q) = SumReceiver::start(CONFIG, &a.tokens).unwrap();
    let (s, resp) = SumSender::respond(CONFIG, &b.tokens, &b.values, &q).unwrap();
    let (w, req) = r.combine(&resp).unwrap();
    let out = w.finish(&s.decrypt(&req).unwrap()).unwrap();
    let (count, sum) = direct(&ids(0..300), &rows(100..400, 8));
    assert_eq!((out.intersection_size, out.sum), (count, sum));
}

#[test]
fn malformed_sum_messages_are_refused() {
    let a = tokens(&ids(0..20)).tokens;
    let b = prepare_with_values(&key(), &rows(10..40, 9), CONFIG.max_value).unwrap();
    let start = || SumReceiver::start_seeded_for_tests(CONFIG, &a, 1).unwrap();
    let (_, q) = start();
    let respond =
        |q: &SumQuery| SumSender::respond_seeded_for_tests(CONFIG, &b.tokens, &b.values, q, 2);
    let mut short = q.clone();
    short.points.truncate(100);
    assert_eq!(
        respond(&short).err().unwrap(),
        PsiError::WrongLength {
            what: "sum query.points",
            expected: 640,
            got: 100
        }
    );
    let mut bad = q.clone();
    bad.points[32..64].copy_from_slice(&[0xff; 32]);
    assert_eq!(
        respond(&bad).err().unwrap(),
        PsiError::InvalidPoint {
            what: "sum query.points",
            index: 1
        }
    );
    let mut many = q.clone();
    many.count = 20_000;
    assert!(matches!(
        respond(&many).err().unwrap(),
        PsiError::TooManyElements {
            got: 20_000,
            bound: 10_000,
            ..
        }
    ));
    let (_, resp) = respond(&q).unwrap();
    let mut key_bad = resp.clone();
    key_bad.public_key = [0xff; 32];
    let err = start().0.combine(&key_bad).err().unwrap();
    assert_eq!(
        err,
        PsiError::InvalidPoint {
            what: "sum response.public_key",
            index: 0
        }
    );
    let mut ident = resp.clone();
    ident.public_key = [0; 32];
    assert!(
        start()
            .0
            .combine(&ident)
            .err()
            .unwrap()
            .to_string()
            .contains("the identity is not a public key")
    );
    let mut entries = resp.clone();
    entries.entries.pop();
    assert!(matches!(
        start().0.combine(&entries).err().unwrap(),
        PsiError::WrongLength {
            what: "sum response.entries",
            expected: 2880,
            got: 2879
        }
    ));
    let mut entry_point = resp.clone();
    entry_point.entries[5 * 96..5 * 96 + 32].copy_from_slice(&[0xfe; 32]);
    assert!(matches!(
        start().0.combine(&entry_point).err().unwrap(),
        PsiError::InvalidPoint { index: 5, .. }
    ));
    let mut doubly = resp.clone();
    doubly.doubly[64..96].copy_from_slice(&[0xfe; 32]);
    assert_eq!(
        start().0.combine(&doubly).err().unwrap(),
        PsiError::InvalidPoint {
            what: "sum response.doubly",
            index: 2
        }
    );
    // A wrong decryption share cannot pass for a sum.
    let (w, _) = start().0.combine(&resp).unwrap();
    let wrong = DecryptShare {
        share: curve25519_dalek::constants::RISTRETTO_BASEPOINT_COMPRESSED.to_bytes(),
    };
    assert!(
        w.finish(&wrong)
            .unwrap_err()
            .to_string()
            .contains("is not a sum in [0,")
    );
    // Framing.
    let bytes = DecryptRequest { c1: [1; 32] }.to_bytes();
    assert!(
        DecryptShare::from_bytes(&bytes)
            .unwrap_err()
            .to_string()
            .contains("not this kind of message")
    );
    let mut long = bytes.clone();
    long.push(0);
    assert!(DecryptRequest::from_bytes(&long).is_err());
}

#[test]
fn values_and_bounds_are_checked() {
    let a = tokens(&ids(0..5)).tokens;
    let b = tokens(&ids(0..5)).tokens;
    let (_, q) = SumReceiver::start_seeded_for_tests(CONFIG, &a, 1).unwrap();
    let err = SumSender::respond_seeded_for_tests(CONFIG, &b, &[1, 2, 3, 1001, 5], &q, 2)
        .err()
        .unwrap();
    assert_eq!(
        err,
        PsiError::ValueTooLarge {
            index: 3,
            value: 1001,
            bound: 1000
        }
    );
    let err = SumSender::respond_seeded_for_tests(CONFIG, &b, &[1, 2], &q, 2)
        .err()
        .unwrap();
    assert!(err.to_string().contains("2 values for 5 identifiers"));
    let huge = SumConfig {
        max_elements: 1 << 20,
        max_value: 1 << 21,
        min_receiver_elements: 0,
    };
    let err = SumReceiver::start(huge, &a).err().unwrap();
    assert!(err.to_string().contains("exceeds 2^40"), "{err}");
}
