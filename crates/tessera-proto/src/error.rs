use tessera_core::one_line;
use thiserror::Error;

/// A message that cannot be used, with why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// A required part of a message is missing.
    #[error("malformed message: {}", one_line(.0))]
    Malformed(String),
    /// The message is larger than the limits allow.
    #[error("message too large: {}", one_line(.0))]
    TooLarge(String),
    /// The peer speaks an incompatible protocol.
    #[error("incompatible protocol: {}", one_line(.0))]
    Incompatible(String),
}
