//! Why an update did not count.

/// Why an update did not count.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// No round is open, or it is another round.
    WrongRound {
        /// The round the update is for.
        got: u32,
        /// The open round, if any.
        open: Option<u32>,
    },
    /// The sender is not in this round's cohort.
    NotInCohort,
    /// The sender already submitted, dropped out, or was cut off.
    NotPending,
    /// The update arrived after the deadline.
    Late,
    /// The update is malformed: wrong layout, non-finite, out of range.
    Invalid(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::WrongRound {
                got,
                open: Some(open),
            } => write!(f, "update for round {got}, round {open} is open"),
            Rejection::WrongRound { got, open: None } => {
                write!(f, "update for round {got}, no round is open")
            }
            Rejection::NotInCohort => f.write_str("sender is not in this round's cohort"),
            Rejection::NotPending => f.write_str("sender already submitted or left this round"),
            Rejection::Late => f.write_str("update arrived after the round's deadline"),
            Rejection::Invalid(reason) => write!(f, "invalid update: {reason}"),
        }
    }
}
