//! A dishonest peer's messages and a careless caller's inputs: sum
//! responses unrelated to the query, invalid ciphertexts wherever they sit,
//! repeated tokens, a minimum query size, padded chain queries, test-only
//! seeded constructors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use tessera_psi::*;

const POINT: usize = 32;
const ENTRY: usize = 96;

fn sum_config() -> SumConfig {
    SumConfig {
        max_elements: 1000,
        max_value: 100,
        min_receiver_elements: 0,
    }
}

/// A's receiver state and B's honest response, values `i % 10`.
fn sum_response(a: &[String], b: &[String]) -> (SumReceiver, SumResponse) {
    let a = tokens(a).tokens;
    let b = tokens(b).tokens;
    let values: Vec<u64> = (0..b.len() as u64).map(|v| v % 10).collect();
    let (r, q) = SumReceiver::start_seeded_for_tests(sum_config(), &a, 3).unwrap();
    let (_, resp) = SumSender::respond_seeded_for_tests(sum_config(), &b, &values, &q, 4).unwrap();
    (r, resp)
}

fn refused(r: SumReceiver, resp: &SumResponse) -> PsiError {
    match r.combine(resp) {
        Ok((_, _)) => panic!("the forged response was accepted"),
        Err(e) => e,
    }
}

#[test]
fn an_invalid_ciphertext_is_refused_whether_or_not_its_entry_matches() {
    for (b, kind) in [(ids(100..120), "unmatched"), (ids(0..20), "matched")] {
        for (at, field) in [
            (32, "sum response.entries (c1)"),
            (64, "sum response.entries (c2)"),
        ] {
            let (r, mut resp) = sum_response(&ids(0..20), &b);
            resp.entries[5 * ENTRY + at..5 * ENTRY + at + POINT].copy_from_slice(&[0xff; 32]);
            match r.combine(&resp) {
                Ok(_) => panic!("an invalid {field} on a {kind} entry was accepted"),
                Err(e) => assert_eq!(
                    e,
                    PsiError::InvalidPoint {
                        what: field,
                        index: 5
                    },
                    "{kind}"
                ),
            }
        }
    }
}

#[test]
fn an_empty_intersection_cannot_be_forged_into_a_sum() {
    // B shares nothing with A, but puts the identity among the doubly-blinded
    // points and as the point of three entries holding 5 each: alpha * O = O
    // matches, and A would report three shared identifiers summing to 15.
    let a = tokens(&ids(0..20)).tokens;
    let b = tokens(&ids(100..103)).tokens;
    let (r, q) = SumReceiver::start_seeded_for_tests(sum_config(), &a, 3).unwrap();
    let (_, mut resp) =
        SumSender::respond_seeded_for_tests(sum_config(), &b, &[5; 3], &q, 4).unwrap();
    resp.doubly[..POINT].copy_from_slice(&[0; 32]);
    for k in 0..3 {
        resp.entries[k * ENTRY..k * ENTRY + POINT].copy_from_slice(&[0; 32]);
    }
    let err = refused(r, &resp);
    assert!(err.to_string().contains("identity"), "{err}");
}

#[test]
fn a_doubly_blinded_set_of_another_size_than_the_query_is_refused() {
    let (r, mut resp) = sum_response(&ids(0..20), &ids(10..30));
    resp.doubly.truncate(19 * POINT);
    resp.doubly_count = 19;
    let err = refused(r, &resp);
    assert!(
        matches!(
            err,
            PsiError::Malformed {
                what: "sum response.doubly",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("19 points answer a query of 20"),
        "{err}"
    );
    let (r, mut resp) = sum_response(&ids(0..20), &ids(10..30));
    let extra = resp.doubly[..POINT].to_vec();
    resp.doubly.extend_from_slice(&extra);
    resp.doubly_count = 21;
    assert!(
        refused(r, &resp)
            .to_string()
            .contains("21 points answer a query of 20")
    );
}

#[test]
fn identity_points_are_refused_in_both_lists() {
    let (r, mut resp) = sum_response(&ids(0..20), &ids(10..30));
    resp.doubly[7 * POINT..8 * POINT].copy_from_slice(&[0; 32]);
    let err = refused(r, &resp);
    assert!(
        matches!(
            err,
            PsiError::Malformed {
                what: "sum response.doubly",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("identity"), "{err}");
    let (r, mut resp) = sum_response(&ids(0..20), &ids(10..30));
    resp.entries[7 * ENTRY..7 * ENTRY + POINT].copy_from_slice(&[0; 32]);
    let err = refused(r, &resp);
    assert!(
        matches!(
            err,
            PsiError::Malformed {
                what: "sum response.entries",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("identity"), "{err}");
}

#[test]
fn repeated_points_are_refused_in_both_lists() {
    let (r, mut resp) = sum_response(&ids(0..20), &ids(10..30));
    let first = resp.doubly[..POINT].to_vec();
    resp.doubly[9 * POINT..10 * POINT].copy_from_slice(&first);
    let err = refused(r, &resp);
    assert!(
        matches!(
            err,
            PsiError::Malformed {
                what: "sum response.doubly",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("more than once"), "{err}");
    // A matched entry repeated (with its ciphertext) would count twice.
    let (r, mut resp) = sum_response(&ids(0..20), &ids(0..20));
    let first = resp.entries[..ENTRY].to_vec();
    resp.entries[ENTRY..2 * ENTRY].copy_from_slice(&first);
    let err = refused(r, &resp);
    assert!(
        matches!(
            err,
            PsiError::Malformed {
                what: "sum response.entries",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("more than once"), "{err}");
}

fn with_repeat(range: std::ops::Range<usize>) -> Vec<Token> {
    let mut t = tokens(&ids(range)).tokens;
    t.push(t[3]);
    t
}

#[test]
fn repeated_tokens_are_refused_by_either_party() {
    let clean = tokens(&ids(0..10)).tokens;
    let repeated = with_repeat(0..10);
    for mode in [Mode::Both, Mode::ReceiverOnly, Mode::Cardinality] {
        let config = PsiConfig::new(mode);
        let err = match Receiver::start(config, &repeated) {
            Ok(_) => panic!("{mode}: the receiver accepted a repeated token"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("more than once"), "{err}");
        let (_, q) = Receiver::start(config, &clean).unwrap();
        let err = match Sender::respond(config, &repeated, &q) {
            Ok(_) => panic!("{mode}: the sender accepted a repeated token"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("more than once"), "{err}");
    }
    let err = match SumReceiver::start(sum_config(), &repeated) {
        Ok(_) => panic!("the sum receiver accepted a repeated token"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("more than once"), "{err}");
    let (_, q) = SumReceiver::start(sum_config(), &clean).unwrap();
    let err = match SumSender::respond(sum_config(), &repeated, &[1; 11], &q) {
        Ok(_) => panic!("the sum sender accepted a repeated token"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("more than once"), "{err}");
}

#[test]
fn chain_queries_have_one_length_whatever_the_overlaps() {
    let runs = [
        [ids(0..200), ids(0..200), ids(0..200), ids(0..200)],
        [ids(0..200), ids(150..400), ids(190..600), ids(195..196)],
        [ids(0..200), ids(500..600), ids(0..200), ids(0..10)],
    ];
    let mut lengths = Vec::new();
    for lists in &runs {
        let prepared: Vec<PreparedSet> = lists.iter().map(|l| tokens(l)).collect();
        let sites: Vec<&[Token]> = prepared.iter().map(|p| p.tokens.as_slice()).collect();
        let out = intersect_sites_seeded_for_tests(PsiConfig::new(Mode::Both), &sites, 5).unwrap();
        assert_eq!(out.chain_query_bytes.len(), 3);
        lengths.extend(out.chain_query_bytes);
    }
    assert!(
        lengths.iter().all(|&l| l == lengths[0]),
        "chain query lengths vary with the overlaps: {lengths:?}"
    );
}

#[test]
fn seeded_constructors_exist_only_for_tests_and_are_hidden() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut found = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let l = line.trim_start();
            let public = l.starts_with("pub fn ") || l.starts_with("pub use ");
            if !(public && l.contains("seeded_for_tests")) {
                continue;
            }
            found += 1;
            let attrs: Vec<&str> = lines[..i]
                .iter()
                .rev()
                .map(|l| l.trim())
                .take_while(|l| l.starts_with("#[") || l.starts_with("///"))
                .collect();
            let at = format!("{}:{}", path.display(), i + 1);
            assert!(
                attrs.contains(&"#[cfg(any(test, feature = \"test-seeds\"))]"),
                "{at}: not gated behind the test-seeds feature"
            );
            assert!(
                attrs.contains(&"#[doc(hidden)]"),
                "{at}: not hidden from the docs"
            );
        }
    }
    assert!(found >= 6, "only {found} seeded constructors found");
}

#[test]
fn a_query_below_the_minimum_receiver_size_is_refused_by_both_sides() {
    let config = SumConfig {
        min_receiver_elements: 5,
        ..sum_config()
    };
    let few = tokens(&ids(0..4)).tokens;
    let enough = tokens(&ids(0..5)).tokens;
    let b = tokens(&ids(0..50)).tokens;
    let err = match SumReceiver::start(config, &few) {
        Ok(_) => panic!("a receiver below the minimum started"),
        Err(e) => e,
    };
    assert_eq!(
        err,
        PsiError::TooFewElements {
            what: "receiver's tokens",
            got: 4,
            min: 5
        }
    );
    // A receiver that does not keep the minimum is refused by the sender.
    let (_, q) = SumReceiver::start(sum_config(), &few).unwrap();
    let err = match SumSender::respond(config, &b, &[1; 50], &q) {
        Ok(_) => panic!("the sender answered a query below the minimum"),
        Err(e) => e,
    };
    assert!(
        err.to_string()
            .contains("fewer than the agreed minimum of 5"),
        "{err}"
    );
    let (_, q) = SumReceiver::start(config, &enough).unwrap();
    assert!(SumSender::respond(config, &b, &[1; 50], &q).is_ok());
    let bad = SumConfig {
        min_receiver_elements: 2000,
        ..sum_config()
    };
    assert!(SumReceiver::start(bad, &enough).is_err());
}
