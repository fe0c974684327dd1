//! The evaluation round: after a round (or an asynchronous step) closes,
//! the sites it names evaluate its model; the round collects their
//! evaluations, gives up on a site that goes silent or misses the deadline,
//! and closes once every site still waited for has answered. Then the
//! round's record takes its metrics from what was seen of the evaluations
//! ([`completed`]), in deployment and in simulation alike.

use std::collections::{BTreeMap, BTreeSet};

use tessera_core::Timestamp;
use tessera_engine::report::{EvaluationView, RoundRecord};
use tessera_learn::Evaluation;

/// An evaluation that this round does not wait for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("evaluation for round {got} from '{site}', evaluating round {round}")]
pub struct NotAsked {
    /// The round being evaluated.
    pub round: u32,
    /// The round the evaluation was for.
    pub got: u32,
    /// Who sent it.
    pub site: String,
}

/// The evaluation of one round's model.
#[derive(Debug, Clone)]
pub struct EvaluationRound {
    round: u32,
    until: Timestamp,
    targets: BTreeSet<String>,
    received: BTreeMap<String, Evaluation>,
}

impl EvaluationRound {
    /// The evaluation of round `round`'s model by `targets`, waiting for
    /// them until `until`.
    pub fn open(round: u32, targets: BTreeSet<String>, until: Timestamp) -> Self {
        Self::resumed(round, targets, BTreeMap::new(), until)
    }

    /// As [`EvaluationRound::open`], with the evaluations already `received`
    /// (a resumed run's, or those of an asynchronous step).
    pub fn resumed(
        round: u32,
        targets: BTreeSet<String>,
        received: BTreeMap<String, Evaluation>,
        until: Timestamp,
    ) -> Self {
        Self {
            round,
            until,
            targets,
            received,
        }
    }

    /// The round whose model is evaluated.
    pub fn round(&self) -> u32 {
        self.round
    }

    /// When the round stops waiting.
    pub fn until(&self) -> Timestamp {
        self.until
    }

    /// The sites still counted on (those given up on are not).
    pub fn targets(&self) -> &BTreeSet<String> {
        &self.targets
    }

    /// The evaluations received, by site.
    pub fn received(&self) -> &BTreeMap<String, Evaluation> {
        &self.received
    }

    /// Waits for `targets` again, until `until` (the model to evaluate came
    /// late, as an aggregator's does from its parent).
    pub fn rewait(&mut self, targets: BTreeSet<String>, until: Timestamp) {
        self.targets = targets;
        self.until = until;
    }

    /// Whether `site` still owes an evaluation.
    pub fn awaits(&self, site: &str) -> bool {
        self.targets.contains(site) && !self.received.contains_key(site)
    }

    /// Checks that an evaluation of `round` from `site` is one this round
    /// waits for (before it is stored).
    pub fn check(&self, site: &str, round: u32) -> Result<(), NotAsked> {
        if round == self.round && self.targets.contains(site) {
            Ok(())
        } else {
            Err(NotAsked {
                round: self.round,
                got: round,
                site: site.to_string(),
            })
        }
    }

    /// Takes `site`'s evaluation of `round`.
    pub fn receive(
        &mut self,
        site: &str,
        round: u32,
        evaluation: Evaluation,
    ) -> Result<(), NotAsked> {
        self.check(site, round)?;
        self.received.insert(site.to_string(), evaluation);
        Ok(())
    }

    /// At `now`, gives up on the sites that have not answered and are
    /// `stale` or past the deadline; returns them, in name order.
    pub fn give_up(&mut self, now: Timestamp, stale: impl Fn(&str) -> bool) -> Vec<String> {
        let missing: Vec<String> = self
            .targets
            .iter()
            .filter(|s| !self.received.contains_key(*s) && (stale(s) || now >= self.until))
            .cloned()
            .collect();
        for site in &missing {
            self.targets.remove(site);
        }
        missing
    }

    /// Whether every site still counted on has answered.
    pub fn is_complete(&self) -> bool {
        self.targets.iter().all(|s| self.received.contains_key(s))
    }

    /// The evaluations received, in site order: names and evaluations.
    pub fn results(&self) -> (Vec<String>, Vec<Evaluation>) {
        self.received
            .iter()
            .map(|(s, e)| (s.clone(), e.clone()))
            .unzip()
    }
}

/// `record` with the metrics of what was seen of its model's evaluations
/// (`view`), and its wall time.
pub fn completed(record: &RoundRecord, view: &EvaluationView, seconds: f64) -> RoundRecord {
    record.evaluated(view, seconds)
}
