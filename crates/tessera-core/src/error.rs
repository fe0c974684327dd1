use thiserror::Error;

/// Errors raised when parameter sets or tensors are malformed or do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    /// A tensor's data length does not equal the product of its shape.
    #[error("tensor shape {shape:?} needs {expected} values, got {actual}")]
    ShapeDataMismatch {
        /// The declared shape.
        shape: Vec<usize>,
        /// The number of values the shape implies.
        expected: usize,
        /// The number of values supplied.
        actual: usize,
    },
    /// A parameter set holds the same tensor name twice.
    #[error("duplicate tensor name '{0}'")]
    DuplicateName(String),
    /// Two parameter sets that must share a layout do not.
    #[error("parameter layout mismatch: {0}")]
    LayoutMismatch(String),
    /// A setting is out of its range.
    #[error("{0}")]
    Invalid(String),
    /// A value is NaN or infinite.
    #[error("tensor '{name}' holds a non-finite value at index {index}")]
    NonFinite {
        /// Tensor name.
        name: String,
        /// Flat index of the first non-finite value.
        index: usize,
    },
}
