//! Fuzz harness for protobuf decoding: bytes from a peer decoded into every
//! message of `tessera.v1`, then the checked conversions of
//! `tessera_proto::convert`, version negotiation, the [`Assembler`] that
//! rebuilds chunked tensors, stored parameters and compressed deltas.
//!
//! Hostile inputs are made by mutating the encodings of real messages (bit
//! flips, byte edits, varints and lengths replaced with extreme ones, pieces
//! spliced from other messages, chunks dropped, repeated and reordered) and
//! from random bytes. Each case asserts only that nothing panics, and that
//! an error is one line.
//!
//! cargo-fuzz needs a nightly toolchain, so this is proptest-driven. By
//! default each test runs 5000 cases (about a second in a debug build); run
//! longer with `PROPTEST_CASES` (which applies to each test), e.g. for about
//! three minutes:
//!
//! ```text
//! PROPTEST_CASES=1000000 cargo test -p tessera-proto --test fuzz
//! ```
//!
//! One test binary: the tests are here; the seeds, the edits, the checks
//! and update streams they use are in the modules below.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod check;
mod mutate;
mod seeds;
mod stream;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use tessera_core::ParameterSet;

use check::check;
use mutate::{apply, edit};
use seeds::{MLP, MODEL, SEEDS};
use stream::{apply_to_stream, receive, stream_edit, update_stream};

/// Cases per test when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 5000;

/// proptest's default configuration (which reads `PROPTEST_CASES`), with
/// other cases than its 256 when the variable is not set.
fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    config
}

fn one_line(e: &dyn std::fmt::Display) {
    let text = e.to_string();
    assert!(
        !text.contains('\n') && !text.contains('\r'),
        "error is not one line: {text:?}"
    );
}

#[test]
fn seeds_decode() {
    for bytes in SEEDS.iter() {
        check(bytes);
    }
    for set in [&*MODEL, &*MLP] {
        assert_eq!(&receive(set, &update_stream(set, 16, None)).unwrap(), set);
        for k in 0..3 {
            receive(set, &update_stream(set, 16, Some(k))).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Encodings of real messages, mutated, decoded as every message.
    #[test]
    fn mutated_messages(seed in any::<Index>(), edits in prop::collection::vec(edit(), 1..8)) {
        let mut bytes = SEEDS[seed.index(SEEDS.len())].clone();
        for e in &edits {
            apply(&mut bytes, e);
        }
        check(&bytes);
    }

    /// Random bytes decoded as every message.
    #[test]
    fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    /// An update's stream of messages, mutated, received as the coordinator
    /// receives it.
    #[test]
    fn mutated_update_streams(
        mlp in any::<bool>(),
        chunk_bytes in 1usize..200,
        codec in prop::option::of(0usize..3),
        edits in prop::collection::vec(stream_edit(), 1..8),
    ) {
        let set: &ParameterSet = if mlp { &MLP } else { &MODEL };
        let mut parts = update_stream(set, chunk_bytes, codec);
        for e in &edits {
            apply_to_stream(&mut parts, e);
        }
        if let Err(e) = receive(set, &parts) {
            one_line(&e);
        }
    }
}
