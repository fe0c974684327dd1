//! Debug output never prints tokens (as with the matching key).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use tessera_psi::*;

#[test]
fn debug_output_does_not_print_tokens() {
    let set = tokens(&ids(0..3));
    let t = set.tokens[0];
    let bytes = format!("{:?}", t.0);
    assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    assert!(!format!("{set:?}").contains(&bytes), "{set:?}");
    let values = prepare_with_values(&key(), &[("P-1", 3u64), ("P-2", 4)], 10).unwrap();
    let v = format!("{:?}", values.tokens[0].0);
    assert!(!format!("{values:?}").contains(&v), "{values:?}");
}
