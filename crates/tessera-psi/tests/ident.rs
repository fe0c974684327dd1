//! Identifier preparation: normalisation, keyed hashing, duplicates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tessera_psi::*;

#[test]
fn normalisation_folds_case_whitespace_and_separators() {
    assert_eq!(normalise("  AB-12/3 "), "ab123");
    assert_eq!(normalise("ab 1 2_3"), "ab123");
    assert_eq!(normalise("Ab.12:3"), "ab123");
    assert_eq!(normalise("\tÉCOLE\n"), "école");
    // Other symbols are kept: these stay apart.
    assert_ne!(normalise("ab+123"), normalise("ab123"));
}

#[test]
fn tokens_depend_on_the_key_and_the_normalised_identifier() {
    let k1 = MatchingKey::from_bytes([1; 32]);
    let k2 = MatchingKey::from_bytes([2; 32]);
    let t = |k: &MatchingKey, s: &str| ident::token(k, s, 0).unwrap();
    assert_eq!(t(&k1, " ab-123 "), t(&k1, "AB123"));
    assert_ne!(t(&k1, "ab123"), t(&k2, "ab123"));
    assert_ne!(t(&k1, "ab123"), t(&k1, "ab124"));
    // The token is not a plain hash of the identifier.
    use sha2::{Digest, Sha256};
    assert_ne!(
        t(&k1, "ab123").0,
        <[u8; 32]>::from(Sha256::digest(b"ab123"))
    );
}

#[test]
fn duplicates_are_counted_once_and_map_to_their_first_row() {
    let ids = ["x-1", "Y-2", " x1 ", "y 2", "z-3", "X-1"];
    let set = prepare(&MatchingKey::from_bytes([3; 32]), &ids).unwrap();
    assert_eq!(set.tokens.len(), 3);
    assert_eq!(set.first_row, vec![0, 1, 4]);
    assert_eq!(set.duplicates, 3);
}

#[test]
fn empty_identifiers_are_refused_with_their_row() {
    let err = prepare(&MatchingKey::from_bytes([3; 32]), &["a1", " - / "]).unwrap_err();
    assert_eq!(err, PsiError::EmptyIdentifier { index: 1 });
    assert!(err.to_string().contains("identifier 1 is empty"));
}

#[test]
fn values_of_repeated_identifiers_add_up_within_the_bound() {
    let key = MatchingKey::from_bytes([3; 32]);
    let rows = [("a-1", 5u64), ("b-2", 7), ("A1", 10)];
    let p = prepare_with_values(&key, &rows, 20).unwrap();
    assert_eq!(p.values, vec![15, 7]);
    assert_eq!(p.duplicates, 1);
    let err = prepare_with_values(&key, &rows, 12).unwrap_err();
    assert_eq!(
        err,
        PsiError::ValueTooLarge {
            index: 0,
            value: 15,
            bound: 12
        }
    );
}

#[test]
fn the_matching_key_is_not_printed() {
    let k = MatchingKey::from_bytes([9; 32]);
    assert!(!format!("{k:?}").contains('9'));
    let g1 = MatchingKey::generate().unwrap();
    let g2 = MatchingKey::generate().unwrap();
    assert_ne!(g1, g2);
}
