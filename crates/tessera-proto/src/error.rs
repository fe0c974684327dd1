use thiserror::Error;

/// A message that cannot be used, with why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// A required part of a message is missing.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message is larger than the limits allow.
    #[error("message too large: {0}")]
    TooLarge(String),
    /// The peer speaks an incompatible protocol.
    #[error("incompatible protocol: {0}")]
    Incompatible(String),
}
