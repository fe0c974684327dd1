use thiserror::Error;

/// Errors of model construction, parameter exchange and training.
#[derive(Debug, Error)]
pub enum LearnError {
    /// The model description cannot work with this data.
    #[error("{0}")]
    Config(String),
    /// Parameters given to a model do not fit its layout.
    #[error("parameters do not fit the model: {0}")]
    Parameters(#[from] tessera_core::CoreError),
    /// Training diverged.
    #[error(
        "training diverged at step {step}: the loss is not finite (try a smaller learning rate)"
    )]
    Diverged {
        /// The step at which a non-finite loss appeared.
        step: u64,
    },
    /// Rows do not match the model.
    #[error("data has {actual} features, the model expects {expected}")]
    FeatureCount {
        /// Features the model was built for.
        expected: usize,
        /// Features in the data.
        actual: usize,
    },
}
