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

/// `text` with its control characters (line breaks among them) escaped: a
/// codec named in a message from a peer stays on one line.
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
