//! Malformed messages are refused with errors naming what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use tessera_psi::*;

fn setup(mode: Mode) -> (PsiConfig, Vec<Token>, Vec<Token>, Query) {
    let config = PsiConfig {
        max_elements: 1000,
        ..PsiConfig::new(mode)
    };
    let a = tokens(&ids(0..20)).tokens;
    let b = tokens(&ids(10..40)).tokens;
    let (_, q) = Receiver::start_seeded_for_tests(config, &a, 1).unwrap();
    (config, a, b, q)
}

#[test]
fn a_query_of_the_wrong_length_is_refused() {
    let (config, _, b, mut q) = setup(Mode::Both);
    q.points.pop();
    let err = Sender::respond_seeded_for_tests(config, &b, &q, 2)
        .err()
        .unwrap();
    assert_eq!(
        err,
        PsiError::WrongLength {
            what: "query.points",
            expected: 640,
            got: 639
        }
    );
    assert_eq!(err.to_string(), "query.points: expected 640 bytes, got 639");
}

#[test]
fn a_point_that_is_not_a_valid_encoding_is_refused_by_position() {
    let (config, _, b, mut q) = setup(Mode::Both);
    q.points[7 * 32..8 * 32].copy_from_slice(&[0xff; 32]);
    let err = Sender::respond_seeded_for_tests(config, &b, &q, 2)
        .err()
        .unwrap();
    assert_eq!(
        err,
        PsiError::InvalidPoint {
            what: "query.points",
            index: 7
        }
    );
    assert!(
        err.to_string()
            .contains("element 7 is not a valid ristretto255 point encoding")
    );
}

#[test]
fn more_elements_than_the_agreed_bound_are_refused_before_use() {
    let (config, _, b, mut q) = setup(Mode::Both);
    q.count = 5000;
    let err = Sender::respond_seeded_for_tests(config, &b, &q, 2)
        .err()
        .unwrap();
    assert_eq!(
        err,
        PsiError::TooManyElements {
            what: "query.points",
            got: 5000,
            bound: 1000
        }
    );
    assert!(err.to_string().contains("exceed the agreed bound of 1000"));
    // And locally: a site holding more than the bound is refused too.
    let many = tokens(&ids(0..1001)).tokens;
    assert!(matches!(
        Receiver::start(config, &many).err().unwrap(),
        PsiError::TooManyElements {
            what: "receiver's tokens",
            ..
        }
    ));
}

#[test]
fn a_response_that_does_not_answer_the_query_is_refused() {
    let (config, a, b, _) = setup(Mode::Both);
    let fresh = || Receiver::start_seeded_for_tests(config, &a, 1).unwrap();
    let (_, q) = fresh();
    let (_, resp) = Sender::respond_seeded_for_tests(config, &b, &q, 2).unwrap();
    // One point short.
    let mut short = resp.clone();
    short.count -= 1;
    short.evaluated.truncate(short.evaluated.len() - 32);
    let err = fresh().0.finish(&short).err().unwrap();
    assert!(
        err.to_string().contains("19 points answer a query of 20"),
        "{err}"
    );
    // An invalid point.
    let mut bad = resp.clone();
    bad.evaluated[3 * 32..4 * 32].copy_from_slice(&[0xee; 32]);
    let err = fresh().0.finish(&bad).err().unwrap();
    assert_eq!(
        err,
        PsiError::InvalidPoint {
            what: "response.evaluated",
            index: 3
        }
    );
    // A coded set cut short.
    let mut cut = resp.clone();
    cut.set.data.truncate(cut.set.data.len() / 2);
    let err = fresh().0.finish(&cut).err().unwrap();
    assert!(err.to_string().starts_with("response.set:"), "{err}");
    // A coded set declaring more values than the bound.
    let mut big = resp.clone();
    big.set.count = 1001;
    let err = fresh().0.finish(&big).err().unwrap();
    assert!(matches!(
        err,
        PsiError::TooManyElements {
            what: "response.set",
            got: 1001,
            ..
        }
    ));
    // The wrong Rice parameter.
    let mut param = resp.clone();
    param.set.param_bits += 1;
    let err = fresh().0.finish(&param).err().unwrap();
    assert!(err.to_string().contains("Rice parameter"), "{err}");
    // A public key that is not a point (modes both and receiver-only
    // unblind with it).
    let mut key = resp.clone();
    key.public_key = [0xff; 32];
    let err = fresh().0.finish(&key).err().unwrap();
    assert_eq!(
        err,
        PsiError::InvalidPoint {
            what: "response.public_key",
            index: 0
        }
    );
    // Trailing garbage in the coded set.
    let mut tail = resp;
    tail.set.data.push(0);
    let err = fresh().0.finish(&tail).err().unwrap();
    assert!(
        matches!(
            err,
            PsiError::WrongLength {
                what: "response.set",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn framing_errors_name_the_message() {
    let (_, _, _, q) = setup(Mode::Both);
    let bytes = q.to_bytes();
    let err = Query::from_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
    assert!(err.to_string().starts_with("query: "), "{err}");
    let mut extra = bytes.clone();
    extra.push(1);
    assert!(
        Query::from_bytes(&extra)
            .unwrap_err()
            .to_string()
            .contains("1 trailing bytes")
    );
    let err = Response::from_bytes(&bytes).unwrap_err();
    assert!(
        err.to_string().contains("not this kind of message"),
        "{err}"
    );
    let mut version = bytes.clone();
    version[1] = 9;
    assert!(
        Query::from_bytes(&version)
            .unwrap_err()
            .to_string()
            .contains("framing version 9")
    );
    let mut mode = bytes;
    mode[2] = 7;
    assert!(
        Query::from_bytes(&mode)
            .unwrap_err()
            .to_string()
            .contains("unknown mode code 7")
    );
    assert!(
        Reveal::from_bytes(&[])
            .unwrap_err()
            .to_string()
            .contains("empty message")
    );
}

#[test]
fn the_modes_must_agree() {
    let (_, _, b, q) = setup(Mode::Cardinality);
    let err = Sender::respond_seeded_for_tests(PsiConfig::new(Mode::Both), &b, &q, 2)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("this party runs both, the message was made for cardinality")
    );
}

#[test]
fn a_reveal_that_does_not_fit_the_senders_set_is_refused() {
    let (config, a, b, _) = setup(Mode::Both);
    let run_to_reveal = || {
        let (r, q) = Receiver::start_seeded_for_tests(config, &a, 1).unwrap();
        let (s, resp) = Sender::respond_seeded_for_tests(config, &b, &q, 2).unwrap();
        let (_, reveal) = r.finish(&resp).unwrap();
        (s, reveal.unwrap())
    };
    let (s, reveal) = run_to_reveal();
    let Reveal::Matches { count, mut bits } = reveal else {
        panic!("mode both reveals matches")
    };
    bits.push(0);
    let err = s
        .finish(Some(&Reveal::Matches {
            count,
            bits: bits.clone(),
        }))
        .unwrap_err();
    assert_eq!(
        err,
        PsiError::WrongLength {
            what: "reveal.matches",
            expected: 4,
            got: 5
        }
    );
    bits.pop();
    bits[3] |= 0x80; // bit 31 of a 30-value set
    let (s, _) = run_to_reveal();
    let err = s
        .finish(Some(&Reveal::Matches { count, bits }))
        .unwrap_err();
    assert!(err.to_string().contains("bits set past the end"), "{err}");
    let (s, _) = run_to_reveal();
    let err = s.finish(Some(&Reveal::Size(3))).unwrap_err();
    assert!(
        err.to_string()
            .contains("mode both expects a matches reveal, got a size reveal"),
        "{err}"
    );
    let (s, _) = run_to_reveal();
    assert!(s.finish(None).is_err());
}

#[test]
fn a_cardinality_larger_than_either_set_is_refused() {
    let (config, a, b, _) = setup(Mode::Cardinality);
    let (_, q) = Receiver::start_seeded_for_tests(config, &a, 1).unwrap();
    let (s, _) = Sender::respond_seeded_for_tests(config, &b, &q, 2).unwrap();
    let err = s.finish(Some(&Reveal::Size(21))).unwrap_err();
    assert!(
        err.to_string()
            .contains("21 is more than the smaller set's 20 elements"),
        "{err}"
    );
}

#[test]
fn unusable_configurations_are_refused() {
    let a = tokens(&ids(0..3)).tokens;
    let bad = PsiConfig {
        fp_bits: 4,
        ..PsiConfig::new(Mode::Both)
    };
    assert!(
        Receiver::start(bad, &a)
            .err()
            .unwrap()
            .to_string()
            .contains("fp_bits 4")
    );
    let bad = PsiConfig {
        max_elements: 0,
        ..PsiConfig::new(Mode::Both)
    };
    assert!(
        Receiver::start(bad, &a)
            .err()
            .unwrap()
            .to_string()
            .contains("max_elements 0")
    );
}
