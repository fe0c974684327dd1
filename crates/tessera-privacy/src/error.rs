use thiserror::Error;

/// Why a privacy computation or release was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PrivacyError {
    /// A setting is out of range.
    #[error("privacy: {0}")]
    Invalid(String),
    /// A release would spend more than a budget allows.
    #[error(
        "{scope} privacy budget exceeded: {what} would bring the spend to epsilon \
         {would_spend:.4} at delta {delta:e}, {over:.4} over the budget of {budget}"
    )]
    BudgetExceeded {
        /// `run` or `participant 'NAME'`.
        scope: String,
        /// The budget's epsilon.
        budget: f64,
        /// The delta at which epsilons are measured.
        delta: f64,
        /// What was asked for (`round 7`, `the plan's 50 rounds`).
        what: String,
        /// The epsilon it would reach.
        would_spend: f64,
        /// `would_spend - budget`.
        over: f64,
    },
}
