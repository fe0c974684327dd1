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
#![deny(missing_docs)]

pub mod convert;
mod error;
mod tensors;
mod version;

pub use error::ProtoError;
pub use tensors::{
    Assembler, CHUNK_BYTES, Limits, chunks, decode_parameters, encode_parameters, layout_of,
};
pub use version::{
    CAPABILITIES, MAJOR, MINOR, Negotiated, codec_capabilities, model_codec_capabilities,
    negotiate, required_capabilities,
};

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
