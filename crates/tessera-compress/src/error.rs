use tessera_core::one_line;
use thiserror::Error;

/// A codec that cannot be built, or bytes that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CompressError {
    /// A codec description that does not parse or makes no sense.
    #[error("codec '{}': {}", one_line(spec), one_line(reason))]
    Spec {
        /// The description as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Encoded bytes that are not a valid encoding of the expected vector.
    #[error("compressed update: {0}")]
    Malformed(String),
}
