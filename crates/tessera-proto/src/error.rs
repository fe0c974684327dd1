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

/// `text` with its control characters (line breaks among them) escaped: a
/// name from a peer quoted in a message keeps it on one line.
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}
