//! The evaluations of an asynchronous run's steps: each committed step's
//! model is evaluated by the sites as they next ask for work, while newer
//! steps go on. A step's evaluation closes once every live site answered,
//! or when a newer step is taken (with what came).

use std::collections::{BTreeMap, BTreeSet};

use tessera_engine::report::RoundRecord;
use tessera_learn::Evaluation;

/// The step evaluations under way, and the newest step each site evaluated.
#[derive(Debug, Clone, Default)]
pub struct StepEvaluations {
    open: BTreeMap<u32, (Box<RoundRecord>, BTreeMap<String, Evaluation>)>,
    evaluated: BTreeMap<String, u32>,
}

/// A step whose evaluation closed: its record and what came, by site.
pub type ClosedStep = (Box<RoundRecord>, BTreeMap<String, Evaluation>);

impl StepEvaluations {
    /// Step `step` was taken: its model is evaluated from now on.
    pub fn open(&mut self, step: u32, record: RoundRecord) {
        self.open.insert(step, (Box::new(record), BTreeMap::new()));
    }

    /// A resumed run's step `step` still being evaluated, with what came.
    pub fn resume(
        &mut self,
        step: u32,
        record: RoundRecord,
        received: BTreeMap<String, Evaluation>,
    ) {
        for site in received.keys() {
            self.seen(site, step);
        }
        self.open.insert(step, (Box::new(record), received));
    }

    /// Whether `site` should evaluate step `step` now: its evaluation is
    /// under way and the site has not evaluated it (or a newer one).
    pub fn asks(&self, site: &str, step: u32) -> bool {
        step > self.evaluated.get(site).copied().unwrap_or(0) && self.open.contains_key(&step)
    }

    /// `site` answered for step `step` (in time or not).
    pub fn seen(&mut self, site: &str, step: u32) {
        let seen = self.evaluated.entry(site.to_string()).or_insert(0);
        *seen = (*seen).max(step);
    }

    /// Whether step `step`'s evaluation is under way.
    pub fn is_open(&self, step: u32) -> bool {
        self.open.contains_key(&step)
    }

    /// Takes `site`'s evaluation of step `step`; false when that
    /// evaluation has closed (the answer came too late to count).
    pub fn receive(&mut self, site: &str, step: u32, evaluation: Evaluation) -> bool {
        self.seen(site, step);
        match self.open.get_mut(&step) {
            Some((_, received)) => {
                received.insert(site.to_string(), evaluation);
                true
            }
            None => false,
        }
    }

    /// The steps under way older than `step`, oldest first.
    pub fn older_than(&self, step: u32) -> Vec<u32> {
        self.open.keys().copied().filter(|v| *v < step).collect()
    }

    /// The steps every site of `live` has evaluated, oldest first.
    pub fn complete(&self, live: &BTreeSet<String>) -> Vec<u32> {
        self.open
            .iter()
            .filter(|(_, (_, received))| live.iter().all(|s| received.contains_key(s)))
            .map(|(v, _)| *v)
            .collect()
    }

    /// Closes step `step`'s evaluation.
    pub fn close(&mut self, step: u32) -> Option<ClosedStep> {
        self.open.remove(&step)
    }
}
