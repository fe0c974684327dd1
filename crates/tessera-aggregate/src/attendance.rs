//! Who a round asked and what came of each: what a strategy's aggregate
//! step sees beside the round's aggregate (Flower's results and failures).

use tessera_core::ParticipantId;

/// Why a cohort member's update did not count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// It left the round (its driver reported a dropout).
    Dropped,
    /// It had not answered when the round's deadline passed.
    TimedOut,
    /// Its update was refused, for this reason.
    Refused(String),
    /// A round replayed after a restart: the store keeps who was asked and
    /// whose update counted, not why the others' did not.
    Unrecorded,
}

/// A closed round's cohort, whose updates counted, and why the others'
/// did not. Every cohort member is either counted or has one failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attendance {
    /// Who was asked, sorted.
    pub cohort: Vec<ParticipantId>,
    /// Whose updates are in the aggregate, sorted.
    pub counted: Vec<ParticipantId>,
    /// The others, sorted by participant, with why.
    pub failures: Vec<(ParticipantId, Failure)>,
}

impl Attendance {
    /// A round replayed from what a store keeps: `cohort` and `counted`;
    /// every other cohort member failed for an unrecorded reason.
    pub fn replayed(mut cohort: Vec<ParticipantId>, mut counted: Vec<ParticipantId>) -> Self {
        cohort.sort();
        cohort.dedup();
        counted.sort();
        counted.dedup();
        let failures = cohort
            .iter()
            .filter(|id| counted.binary_search(id).is_err())
            .map(|id| (id.clone(), Failure::Unrecorded))
            .collect();
        Self {
            cohort,
            counted,
            failures,
        }
    }

    /// Whether every cohort member's update counted.
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_round_lists_everyone_not_counted_as_unrecorded() {
        let id = ParticipantId::new;
        let a = Attendance::replayed(vec![id("c"), id("a"), id("b")], vec![id("b")]);
        assert_eq!(a.cohort, [id("a"), id("b"), id("c")]);
        assert_eq!(
            a.failures,
            [
                (id("a"), Failure::Unrecorded),
                (id("c"), Failure::Unrecorded)
            ]
        );
        assert!(!a.is_complete());
        assert!(Attendance::replayed(vec![id("a")], vec![id("a")]).is_complete());
    }
}
