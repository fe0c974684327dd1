//! Tessera's wire protocol: the protobuf messages and gRPC service of
//! `proto/tessera/v1/` (compiled with protox, no system protoc), tensors sent
//! in bounded chunks ([`chunks`], [`Assembler`]), version and capability
//! negotiation ([`negotiate`]), and the explicit conversions between wire
//! messages and Tessera's types ([`convert`]).
//!
//! Key design decision: no core type derives prost. Conversions are explicit
//! and the fallible direction (from the wire) validates: a message from
//! outside never panics, it is refused with what was wrong.
//!
//! This crate holds no logic beyond encoding, decoding and validation.
//!
//! `proto/tessera/v1/federation.proto` is compiled in `build.rs`. `chunks`
//! and `Assembler` move parameter sets of any size in 1 MiB chunks
//! (`CHUNK_BYTES`), validating order and layout. `negotiate`: the major
//! version must match, capabilities intersect, and required ones are named.
//! A strategy's `Instructions` meet the wire only in
//! `convert::instructions_to_pb` and `convert::instructions_from_pb`.
//!
//! *API boundary:* the only crate that knows the wire format. The frozen 1.0
//! schema is compiled beside the current one (`pb_v1_0`) for compatibility
//! tests. It depends on `tessera-data` and `tessera-learn`, not only on
//! `tessera-core`, because the conversions of offers, agreements and
//! evaluations must live beside the messages: the orphan rule forbids them
//! anywhere else.
#![deny(missing_docs)]

pub mod convert;
mod error;
mod tensors;
pub mod trace;
mod version;

pub use error::ProtoError;
pub use tensors::{
    Assembler, CHUNK_BYTES, Limits, chunks, decode_parameters, encode_parameters, layout_of,
    parameters_from_stored, stored_parameters,
};
pub use version::{
    CAPABILITIES, CAPABILITY_SINCE, MAJOR, MINOR, Negotiated, capabilities_at, codec_capabilities,
    model_codec_capabilities, negotiate, oldest_with, required_capabilities,
};

/// The longest reason a `WithdrawRequest` may give, in bytes.
pub const MAX_WITHDRAW_REASON: usize = 1000;

/// `reason` cut to at most [`MAX_WITHDRAW_REASON`] bytes, on a character
/// boundary.
pub fn withdraw_reason(reason: &str) -> &str {
    cut(reason, MAX_WITHDRAW_REASON)
}

/// The longest site name any call may carry, in bytes.
pub const MAX_SITE_NAME: usize = 128;

/// The metadata key of `Join` that carries a participant process's session:
/// random, drawn once per process, at most [`MAX_SESSION`] bytes. A
/// coordinator refuses a second live process with the same site and another
/// session (`ALREADY_EXISTS`) until the first has been silent for the
/// liveness period; a join without it is not checked.
pub const SESSION_HEADER: &str = "tessera-session";

/// The longest session a `Join` may carry, in bytes.
pub const MAX_SESSION: usize = 64;

pub use tessera_core::{cut, shown};

/// The messages and service of the current protocol (`tessera.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod pb {
    tonic::include_proto!("tessera.v1");
}

/// The frozen 1.0 schema, kept to test that current peers read its messages.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod pb_v1_0 {
    tonic::include_proto!("tessera.v1_0");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A reason is cut to the limit on a character boundary, and is a
        /// prefix of what was given: the longest one that fits.
        #[test]
        fn withdraw_reasons_are_cut_on_character_boundaries(reason in "\\PC{0,700}") {
            let cut = withdraw_reason(&reason);
            prop_assert!(cut.len() <= MAX_WITHDRAW_REASON);
            prop_assert!(reason.starts_with(cut));
            if cut.len() < reason.len() {
                let next = reason[cut.len()..].chars().next().map_or(0, char::len_utf8);
                prop_assert!(cut.len() + next > MAX_WITHDRAW_REASON);
            }
        }
    }
}
