//! The one error type of the crate: every refusal names what was wrong.

use thiserror::Error;

/// Why an identifier list, a configuration or a received message was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PsiError {
    /// A field of a received message has the wrong number of bytes.
    #[error("{what}: expected {expected} bytes, got {got}")]
    WrongLength {
        /// The message field.
        what: &'static str,
        /// The number of bytes its declared count implies.
        expected: usize,
        /// The number of bytes it holds.
        got: usize,
    },
    /// An element of a received message is not a valid ristretto255 encoding.
    #[error("{what}: element {index} is not a valid ristretto255 point encoding")]
    InvalidPoint {
        /// The message field.
        what: &'static str,
        /// The element's position in that field.
        index: usize,
    },
    /// A list (received or local) is longer than the agreed bound.
    #[error(
        "{what}: {got} elements exceed the agreed bound of {bound}; raise max_elements in the configuration both sites use if this many are expected"
    )]
    TooManyElements {
        /// The list.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The agreed bound.
        bound: usize,
    },
    /// A received message does not follow the protocol.
    #[error("{what}: {detail}")]
    Malformed {
        /// The message or field.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The two parties run different modes.
    #[error(
        "mode mismatch: this party runs {ours}, the message was made for {theirs}; both sites must agree on one mode"
    )]
    ModeMismatch {
        /// This party's mode.
        ours: String,
        /// The mode the message carries.
        theirs: String,
    },
    /// An identifier normalises to the empty string.
    #[error("identifier {index} is empty after normalisation (only whitespace and separators)")]
    EmptyIdentifier {
        /// The identifier's position in the input list.
        index: usize,
    },
    /// A value to be summed exceeds the agreed bound.
    #[error(
        "value {value} of row {index} exceeds the agreed bound {bound} (after adding the values of repeated identifiers)"
    )]
    ValueTooLarge {
        /// The row (first occurrence of the identifier) in the input list.
        index: usize,
        /// The value.
        value: u64,
        /// The agreed bound.
        bound: u64,
    },
    /// A list of tokens holds one token more than once.
    #[error(
        "{what}: a token occurs more than once; prepare the identifiers with `prepare` or `prepare_with_values`, which deduplicate"
    )]
    DuplicateTokens {
        /// The list.
        what: &'static str,
    },
    /// A list (received or local) is shorter than the agreed minimum.
    #[error(
        "{what}: {got} elements are fewer than the agreed minimum of {min}: so small a query would reveal single values of the other site"
    )]
    TooFewElements {
        /// The list.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The agreed minimum.
        min: usize,
    },
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The operating system's random source failed.
    #[error("the operating system's random source failed: {0}")]
    Randomness(String),
}
