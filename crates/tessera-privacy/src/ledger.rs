//! Budgets and the ledger of releases.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{DpEvent, PrivacyError, RdpAccountant};

/// Epsilon budgets, all measured at one delta.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Budgets {
    /// The delta at which every epsilon is measured.
    pub delta: f64,
    /// The run's budget: no release may bring any participant's spend above it.
    pub run: Option<f64>,
    /// Each participant's budget, where the plan names one.
    pub participants: BTreeMap<String, f64>,
}

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The release: a round number.
    pub release: u32,
    /// `central` (DP-FedAvg on the round's aggregate, every participant's
    /// data behind it) or `local` (one participant's DP-SGD).
    pub kind: String,
    /// For local events, whose.
    pub participant: Option<String>,
    /// The mechanism.
    pub event: DpEvent,
    /// The run's epsilon after this release.
    pub run_epsilon: f64,
}

/// Every DP event of a run, the spend they add up to, and the budgets they
/// may not exceed.
#[derive(Debug, Clone)]
pub struct Ledger {
    budgets: Budgets,
    central: RdpAccountant,
    local: BTreeMap<String, RdpAccountant>,
    entries: Vec<LedgerEntry>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new(budgets: Budgets) -> Self {
        Self {
            budgets,
            central: RdpAccountant::new(),
            local: BTreeMap::new(),
            entries: Vec::new(),
        }
    }

    /// The budgets.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[LedgerEntry] {
        &self.entries
    }

    /// A participant's epsilon: the central releases plus its own local ones.
    pub fn participant_epsilon(&self, participant: &str) -> f64 {
        let mut total = self.central.clone();
        if let Some(local) = self.local.get(participant) {
            total.compose_all(local);
        }
        total.epsilon(self.budgets.delta)
    }

    /// The run's epsilon: the largest spend of any participant (the central
    /// releases alone when none trained locally with DP).
    pub fn run_epsilon(&self) -> f64 {
        let central = self.central.epsilon(self.budgets.delta);
        self.local
            .keys()
            .map(|p| self.participant_epsilon(p))
            .fold(central, f64::max)
    }

    /// Checks that `central` events for everyone and `local` events per
    /// participant, added to what is spent, stay within every budget;
    /// `what` names them in the refusal.
    pub fn check(
        &self,
        what: &str,
        central: &[DpEvent],
        local: &[(String, DpEvent)],
        participants: &[String],
    ) -> Result<(), PrivacyError> {
        let mut after = self.clone();
        for event in central {
            after.central.compose(event)?;
        }
        for (participant, event) in local {
            after
                .local
                .entry(participant.clone())
                .or_default()
                .compose(event)?;
        }
        let delta = self.budgets.delta;
        let mut names: Vec<&String> = participants.iter().collect();
        names.extend(after.local.keys());
        names.extend(self.budgets.participants.keys());
        names.sort();
        names.dedup();
        for name in names {
            let spend = after.participant_epsilon(name);
            if let Some(&budget) = self.budgets.participants.get(name.as_str())
                && spend > budget
            {
                return Err(PrivacyError::BudgetExceeded {
                    scope: format!("participant '{name}'"),
                    budget,
                    delta,
                    what: what.to_string(),
                    would_spend: spend,
                    over: spend - budget,
                });
            }
        }
        if let Some(budget) = self.budgets.run {
            let spend = after.run_epsilon();
            if spend > budget {
                return Err(PrivacyError::BudgetExceeded {
                    scope: "run".into(),
                    budget,
                    delta,
                    what: what.to_string(),
                    would_spend: spend,
                    over: spend - budget,
                });
            }
        }
        Ok(())
    }

    /// Records a central release after checking it against the budgets.
    pub fn record_central(
        &mut self,
        release: u32,
        event: DpEvent,
        participants: &[String],
    ) -> Result<&LedgerEntry, PrivacyError> {
        self.check(&format!("round {release}"), &[event], &[], participants)?;
        self.central.compose(&event)?;
        self.entries.push(LedgerEntry {
            release,
            kind: "central".into(),
            participant: None,
            event,
            run_epsilon: self.run_epsilon(),
        });
        Ok(self.entries.last().expect("just pushed"))
    }

    /// Records a participant's local DP-SGD in a release after checking it.
    pub fn record_local(
        &mut self,
        release: u32,
        participant: &str,
        event: DpEvent,
    ) -> Result<&LedgerEntry, PrivacyError> {
        let owned = participant.to_string();
        self.check(
            &format!("round {release} at '{participant}'"),
            &[],
            &[(owned.clone(), event)],
            std::slice::from_ref(&owned),
        )?;
        self.local
            .entry(owned.clone())
            .or_default()
            .compose(&event)?;
        self.entries.push(LedgerEntry {
            release,
            kind: "local".into(),
            participant: Some(owned),
            event,
            run_epsilon: self.run_epsilon(),
        });
        Ok(self.entries.last().expect("just pushed"))
    }

    /// Replays an entry read back from storage, without checks.
    pub fn restore(&mut self, entry: LedgerEntry) -> Result<(), PrivacyError> {
        match &entry.participant {
            None => self.central.compose(&entry.event)?,
            Some(p) => self
                .local
                .entry(p.clone())
                .or_default()
                .compose(&entry.event)?,
        }
        self.entries.push(entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sigma: f64) -> DpEvent {
        DpEvent {
            sampling_rate: 1.0,
            noise_multiplier: sigma,
            steps: 1,
        }
    }

    #[test]
    fn a_release_past_the_run_budget_is_refused_and_not_recorded() {
        let mut ledger = Ledger::new(Budgets {
            delta: 1e-5,
            run: Some(1.0),
            participants: BTreeMap::new(),
        });
        let everyone = vec!["a".to_string(), "b".to_string()];
        let mut refused = None;
        for round in 1..=100 {
            match ledger.record_central(round, event(20.0), &everyone) {
                Ok(_) => {}
                Err(e) => {
                    refused = Some((round, e));
                    break;
                }
            }
        }
        let (round, e) = refused.expect("the budget runs out");
        let message = e.to_string();
        assert!(
            message.starts_with("run privacy budget exceeded"),
            "{message}"
        );
        assert!(message.contains(&format!("round {round}")), "{message}");
        assert_eq!(ledger.entries().len() as u32, round - 1);
        assert!(ledger.run_epsilon() <= 1.0);
    }

    #[test]
    fn participant_budgets_count_their_own_local_steps() {
        let mut budgets = Budgets {
            delta: 1e-5,
            run: None,
            participants: BTreeMap::new(),
        };
        budgets.participants.insert("a".into(), 2.0);
        let mut ledger = Ledger::new(budgets);
        let local = DpEvent {
            sampling_rate: 0.1,
            noise_multiplier: 1.0,
            steps: 1000,
        };
        // 'b' has no budget of its own.
        ledger.record_local(1, "b", local).expect("no budget for b");
        let e = ledger
            .record_local(1, "a", local)
            .expect_err("over a's budget");
        assert!(
            e.to_string()
                .starts_with("participant 'a' privacy budget exceeded")
        );
        assert!(ledger.participant_epsilon("a") < ledger.participant_epsilon("b"));
        assert_eq!(ledger.run_epsilon(), ledger.participant_epsilon("b"));
    }
}
