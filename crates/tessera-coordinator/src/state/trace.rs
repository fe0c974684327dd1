//! The round's trace: one span a round, from the moment it opens until its
//! evaluation closes, with an `evaluation` span inside it; tasks handed out,
//! updates and evaluations received, and the aggregation are its children.
//! Each task carries its context to the participant (`tessera_proto::trace`),
//! whose spans then join the same trace. The spans follow the federation's
//! phase after each step, so every way a round opens or ends (a resumed
//! run, an aggregator's relayed round, a round that misses its quorum) is
//! covered by one rule. An asynchronous run's "round" is the step being
//! filled: its span opens when the step before it is taken and closes when
//! it is, holding the tasks handed out and the updates whose upload began
//! meanwhile (a step taken by updates already in flight may hold none;
//! each update links to its upload, in the trace of the task it came from).

use tracing::Span;

use super::{Federation, Phase};

/// The open round's span and, while it is evaluated, its evaluation's.
#[derive(Default)]
pub(super) struct RoundTrace {
    round: Option<(u32, Span)>,
    evaluation: Option<Span>,
    /// An aggregator's: the span of the parent's task, parent of the
    /// round it opens for it (none: rounds are roots).
    parent: Option<Span>,
}

impl RoundTrace {
    /// Follows the federation to `round` (none: no round in progress),
    /// `evaluating` it or not: spans open and close accordingly.
    fn follow(&mut self, round: Option<u32>, evaluating: bool) {
        let Some(round) = round else {
            self.evaluation = None;
            self.round = None;
            return;
        };
        if self.round.as_ref().map(|(r, _)| *r) != Some(round) {
            // The previous round's spans close before the next one opens.
            self.evaluation = None;
            let span = tracing::info_span!(parent: None, "round", round);
            // Under the parent's task in the trace only: that task's span
            // closes when its call ends, not with this round (and taken, it
            // is not held here past the round it began).
            if let Some(task) = self.parent.take() {
                tessera_proto::trace::under(&span, &task);
            }
            self.round = Some((round, span));
        }
        if !evaluating {
            self.evaluation = None;
        } else if self.evaluation.is_none()
            && let Some((_, span)) = &self.round
        {
            self.evaluation = Some(tracing::info_span!(parent: span, "evaluation", round));
        }
    }

    /// The round's span (a disabled span when no round is in progress).
    fn span(&self) -> Span {
        self.round
            .as_ref()
            .map_or_else(Span::none, |(_, span)| span.clone())
    }
}

impl Federation {
    /// An aggregator: the rounds it opens from now on belong to the trace
    /// of `parent`, the span of its parent's task.
    pub(super) fn trace_under(&mut self, parent: Span) {
        self.trace.parent = Some(parent);
    }

    /// The span of the round in progress, parent of what a call does for
    /// it; a disabled span between rounds.
    pub fn round_span(&self) -> Span {
        self.trace.span()
    }

    /// Closes the round's spans (the coordinator stops): the collector
    /// gets the round as far as it went.
    pub fn close_trace(&mut self) {
        self.trace = RoundTrace::default();
    }

    /// Opens and closes the round's spans to match the phase.
    pub(super) fn follow_trace(&mut self) {
        let (round, evaluating) = match &self.phase {
            // A run stopped here records nothing more of its round.
            _ if self.fatal.is_some() || self.aborted.is_some() => (None, false),
            Phase::Training if self.training.is_async() => {
                let filling = self.training.buffered().filter(|b| !b.is_finished());
                (filling.map(|b| b.current().1 + 1), false)
            }
            Phase::Training => (self.training.rounds().and_then(|e| e.open_round()), false),
            Phase::Evaluating { evaluation, .. } => (Some(evaluation.round()), true),
            Phase::Agreeing | Phase::Finished => (None, false),
        };
        self.trace.follow(round, evaluating);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_span_lasts_from_opening_through_evaluation() {
        let mut trace = RoundTrace::default();
        trace.follow(Some(1), false);
        assert_eq!(trace.round.as_ref().map(|(r, _)| *r), Some(1));
        assert!(trace.evaluation.is_none());
        trace.follow(Some(1), true);
        assert!(trace.evaluation.is_some());
        // The next round replaces both.
        trace.follow(Some(2), false);
        assert_eq!(trace.round.as_ref().map(|(r, _)| *r), Some(2));
        assert!(trace.evaluation.is_none());
        trace.follow(None, false);
        assert!(trace.round.is_none());
    }

    /// An aggregator's round opened after the parent's task span has gone
    /// everywhere else: the round opens (no span is cloned from a closed
    /// one), and the task span is not kept.
    #[test]
    fn a_round_under_a_parent_task_opens_after_the_task_span_is_gone() {
        let recorded = tracing_subscriber::registry();
        tracing::subscriber::with_default(recorded, || {
            let mut trace = RoundTrace {
                parent: Some(tracing::info_span!("task")),
                ..RoundTrace::default()
            };
            trace.follow(Some(1), false);
            assert!(trace.parent.is_none());
            assert!(trace.round.as_ref().is_some_and(|(_, s)| !s.is_disabled()));
            trace.follow(Some(1), true);
            trace.follow(None, false);
        });
    }
}
