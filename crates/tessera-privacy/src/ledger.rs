//! Budgets and the ledger of releases.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Accountant, AccountantKind, DpEvent, PrivacyError};

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
    /// data behind it), `local` (one participant's DP-SGD) or another
    /// release of one participant's data (`cross_silo`).
    pub kind: String,
    /// For local events, whose.
    pub participant: Option<String>,
    /// The mechanism.
    pub event: DpEvent,
    /// The run's epsilon after this release.
    pub run_epsilon: f64,
}

/// Every DP event of a run, the spend they add up to, and the budgets they
/// may not exceed; epsilons by the accountant chosen at creation (RDP unless
/// [`Ledger::with_accountant`] says otherwise).
#[derive(Debug, Clone)]
pub struct Ledger {
    budgets: Budgets,
    spend: Spend,
    entries: Vec<LedgerEntry>,
}

/// What has been spent: the central releases, and the total of each
/// participant that also trained locally with DP.
#[derive(Debug, Clone)]
struct Spend {
    central: Accountant,
    /// Central releases plus the participant's own local ones. Kept whole,
    /// so that each total's epsilon (with PLD, an FFT) is computed once per
    /// change, not once per question.
    participants: BTreeMap<String, Accountant>,
}

impl Spend {
    fn new(kind: AccountantKind) -> Self {
        Self {
            central: Accountant::new(kind),
            participants: BTreeMap::new(),
        }
    }

    fn compose_central(&mut self, event: &DpEvent) -> Result<(), PrivacyError> {
        self.central.compose(event)?;
        for total in self.participants.values_mut() {
            total.compose(event)?;
        }
        Ok(())
    }

    fn compose_local(&mut self, participant: &str, event: &DpEvent) -> Result<(), PrivacyError> {
        event.validate()?;
        let total = match self.participants.get_mut(participant) {
            Some(total) => total,
            None => self
                .participants
                .entry(participant.to_string())
                .or_insert_with(|| self.central.clone()),
        };
        total.compose(event)
    }

    fn participant_epsilon(&self, participant: &str, delta: f64) -> f64 {
        self.participants
            .get(participant)
            .unwrap_or(&self.central)
            .epsilon(delta)
    }

    fn run_epsilon(&self, delta: f64) -> f64 {
        self.participants
            .values()
            .map(|total| total.epsilon(delta))
            .fold(self.central.epsilon(delta), f64::max)
    }
}

impl Ledger {
    /// An empty ledger, kept by the RDP accountant.
    pub fn new(budgets: Budgets) -> Self {
        Self::with_accountant(budgets, AccountantKind::Rdp)
    }

    /// An empty ledger, kept by the accountant of `kind`.
    pub fn with_accountant(budgets: Budgets, kind: AccountantKind) -> Self {
        Self {
            budgets,
            spend: Spend::new(kind),
            entries: Vec::new(),
        }
    }

    /// The accountant that computes its epsilons.
    pub fn accountant(&self) -> AccountantKind {
        self.spend.central.kind()
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
        self.spend
            .participant_epsilon(participant, self.budgets.delta)
    }

    /// The run's epsilon: the largest spend of any participant (the central
    /// releases alone when none trained locally with DP).
    pub fn run_epsilon(&self) -> f64 {
        self.spend.run_epsilon(self.budgets.delta)
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
        self.checked(what, central, local, participants).map(|_| ())
    }

    /// Checks, before any training, that participants whose DP-SGD takes
    /// the events in `planned` each round (by name) stay within every
    /// budget over `rounds` rounds; an event whose steps over the run
    /// overflow is refused.
    pub fn check_local_run(
        &self,
        rounds: u32,
        planned: &[(String, DpEvent)],
    ) -> Result<(), PrivacyError> {
        let mut run = Vec::with_capacity(planned.len());
        for (name, event) in planned {
            let steps = event.steps.checked_mul(u64::from(rounds)).ok_or_else(|| {
                PrivacyError::Invalid(format!(
                    "'{name}': {} DP-SGD steps a round over {rounds} rounds overflow",
                    event.steps
                ))
            })?;
            run.push((name.clone(), DpEvent { steps, ..*event }));
        }
        self.check(
            &format!("the plan's {rounds} rounds of DP-SGD"),
            &[],
            &run,
            &[],
        )
    }

    /// Checks that `remaining` more central rounds at noise multiplier `z`
    /// stay within every budget, so that no work is done that could not be
    /// released.
    pub fn check_central_run(&self, remaining: u32, z: f64) -> Result<(), PrivacyError> {
        let events = vec![crate::PrivacyConfig::round_event(z); remaining as usize];
        self.check(
            &format!("the plan's {remaining} remaining rounds at noise multiplier {z:.4}"),
            &events,
            &[],
            &[],
        )
    }

    /// The spend after `central` and `local`, if within every budget.
    fn checked(
        &self,
        what: &str,
        central: &[DpEvent],
        local: &[(String, DpEvent)],
        participants: &[String],
    ) -> Result<Spend, PrivacyError> {
        let mut after = self.spend.clone();
        for event in central {
            after.compose_central(event)?;
        }
        for (participant, event) in local {
            after.compose_local(participant, event)?;
        }
        let delta = self.budgets.delta;
        let mut names: Vec<&String> = participants.iter().collect();
        names.extend(after.participants.keys());
        names.extend(self.budgets.participants.keys());
        names.sort();
        names.dedup();
        for name in names {
            if let Some(&budget) = self.budgets.participants.get(name.as_str()) {
                let spend = after.participant_epsilon(name, delta);
                if spend > budget {
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
        }
        if let Some(budget) = self.budgets.run {
            let spend = after.run_epsilon(delta);
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
        Ok(after)
    }

    /// Records a central release after checking it against the budgets.
    pub fn record_central(
        &mut self,
        release: u32,
        event: DpEvent,
        participants: &[String],
    ) -> Result<&LedgerEntry, PrivacyError> {
        self.spend = self.checked(&format!("round {release}"), &[event], &[], participants)?;
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
        self.record_participant(
            release,
            "local",
            &format!("round {release} at '{participant}'"),
            participant,
            event,
        )
    }

    /// Records a release of one participant's data of another `kind` than
    /// DP-SGD (for example `cross_silo`: the noisy answers of a cross-silo
    /// feature) after checking it; `what` names it in a refusal.
    pub fn record_participant(
        &mut self,
        release: u32,
        kind: &str,
        what: &str,
        participant: &str,
        event: DpEvent,
    ) -> Result<&LedgerEntry, PrivacyError> {
        let owned = participant.to_string();
        self.spend = self.checked(
            what,
            &[],
            &[(owned.clone(), event)],
            std::slice::from_ref(&owned),
        )?;
        self.entries.push(LedgerEntry {
            release,
            kind: kind.into(),
            participant: Some(owned),
            event,
            run_epsilon: self.run_epsilon(),
        });
        Ok(self.entries.last().expect("just pushed"))
    }

    /// Replays an entry read back from storage, without checks.
    pub fn restore(&mut self, entry: LedgerEntry) -> Result<(), PrivacyError> {
        match &entry.participant {
            None => self.spend.compose_central(&entry.event)?,
            Some(p) => self.spend.compose_local(p, &entry.event)?,
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

    #[test]
    fn a_local_run_is_checked_over_all_its_rounds() {
        let mut budgets = Budgets {
            delta: 1e-5,
            run: None,
            participants: BTreeMap::new(),
        };
        budgets.participants.insert("a".into(), 10.0);
        let ledger = Ledger::new(budgets);
        let round = DpEvent {
            sampling_rate: 0.1,
            noise_multiplier: 1.0,
            steps: 10,
        };
        let one = vec![("a".to_string(), round)];
        ledger.check_local_run(1, &one).expect("one round fits");
        let e = ledger
            .check_local_run(100, &one)
            .expect_err("a hundred do not");
        assert!(
            e.to_string().starts_with(
                "participant 'a' privacy budget exceeded: the plan's 100 rounds of DP-SGD"
            ),
            "{e}"
        );
        let whole = DpEvent {
            steps: 1000,
            ..round
        };
        assert!(ledger.check("x", &[], &[("a".into(), whole)], &[]).is_err());
        let endless = vec![(
            "a".to_string(),
            DpEvent {
                steps: u64::MAX,
                ..round
            },
        )];
        let e = ledger.check_local_run(2, &endless).expect_err("overflows");
        assert!(e.to_string().contains("overflow"), "{e}");
    }

    #[test]
    fn the_pld_ledger_spends_less_and_says_so() {
        let budgets = Budgets {
            delta: 1e-5,
            run: Some(2.8),
            participants: BTreeMap::new(),
        };
        let everyone = vec!["a".to_string(), "b".to_string()];
        let mut rdp = Ledger::new(budgets.clone());
        let mut pld = Ledger::with_accountant(budgets, AccountantKind::Pld);
        assert_eq!(rdp.accountant(), AccountantKind::Rdp);
        assert_eq!(pld.accountant(), AccountantKind::Pld);
        let mut rounds = [0u32; 2];
        for (ledger, rounds) in [&mut rdp, &mut pld].into_iter().zip(&mut rounds) {
            for round in 1..=30 {
                match ledger.record_central(round, event(5.79), &everyone) {
                    Ok(entry) => assert!(entry.run_epsilon <= 2.8),
                    Err(e) => {
                        assert!(
                            e.to_string().starts_with("run privacy budget exceeded"),
                            "{e}"
                        );
                        assert!(e.to_string().contains(&format!("round {round}")), "{e}");
                        break;
                    }
                }
                *rounds = round;
            }
        }
        // At sigma 5.79 (dp_accounting): 13 rounds spend 2.765 by RDP, 14
        // 2.882; 15 spend 2.764 by PLD, 16 2.867.
        assert_eq!(rounds, [13, 15], "{rounds:?}");
        let (r, p) = (rdp.run_epsilon(), pld.run_epsilon());
        assert!(
            (r - 2.7652).abs() < 1e-3 && (p - 2.7639).abs() < 3e-3,
            "{r} {p}"
        );
    }

    #[test]
    fn restoring_a_pld_ledger_gives_the_same_spend() {
        let mut budgets = Budgets {
            delta: 1e-5,
            run: None,
            participants: BTreeMap::new(),
        };
        budgets.participants.insert("a".into(), 10.0);
        let mut ledger = Ledger::with_accountant(budgets.clone(), AccountantKind::Pld);
        let everyone = vec!["a".to_string(), "b".to_string()];
        let local = DpEvent {
            sampling_rate: 0.05,
            noise_multiplier: 1.2,
            steps: 20,
        };
        for round in 1..=3 {
            ledger
                .record_central(round, event(4.0), &everyone)
                .expect("within budget");
            ledger
                .record_local(round, "a", local)
                .expect("within budget");
        }
        let mut restored = Ledger::with_accountant(budgets, AccountantKind::Pld);
        for entry in ledger.entries() {
            restored.restore(entry.clone()).expect("valid");
        }
        for who in ["a", "b"] {
            let (x, y) = (
                ledger.participant_epsilon(who),
                restored.participant_epsilon(who),
            );
            assert!((x - y).abs() <= 1e-9 * x, "{who}: {x} vs {y}");
        }
        assert!(ledger.participant_epsilon("a") > ledger.participant_epsilon("b"));
        assert_eq!(ledger.run_epsilon(), ledger.participant_epsilon("a"));
        // The last entry's run epsilon is the run's.
        let last = ledger.entries().last().expect("entries").run_epsilon;
        assert_eq!(last, ledger.run_epsilon());
    }
}
