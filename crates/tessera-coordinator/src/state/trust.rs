//! The trust boundary: every number a participant reports is checked against
//! what the coordinator can know before anything uses it.
//!
//! A site declares its training and test row counts in its levels offer
//! (`declared-rows`, protocol 1.6); they are fixed for the run and bounded
//! by [`MAX_DECLARED_ROWS`]. Then:
//!
//! - an update's example count is at least 1 and at most the declared
//!   training rows; its step count at most what the plan's local training
//!   takes on that many rows; its train loss finite and not negative;
//! - an evaluation's row count is at most the declared test rows, its loss
//!   at most [`MAX_ROW_LOSS`] a row (the clip of evaluation probabilities);
//! - feature statistics count at most the declared training rows, with
//!   means and squared deviations that `f32` data can give;
//! - under secure aggregation, the unmasked sums of counts and steps are at
//!   most the survivors' declared totals (one site's own count is hidden).
//!
//! A violation refuses that message, with the reason in the audit log and
//! the `tessera_refused_reports_total` counter; it never stops the
//! coordinator. Declared counts themselves can only be bounded, not
//! verified: a site that declares more rows than it has gains that weight
//! in every mean (see ARCHITECTURE.md, "trust boundary").

use tessera_core::Update;
use tessera_data::{FeatureStatistics, MAX_DECLARED_ROWS};
use tessera_learn::Evaluation;
use tessera_proto::pb;

use super::Federation;

/// Column-kinds offers whose columns differ from the layout most sites
/// offer (ties: the layout of the first site by name), each with the reason
/// its site hears.
pub(super) fn odd_kinds_offers(offers: &[tessera_data::KindsOffer]) -> Vec<(String, String)> {
    use std::collections::BTreeSet;
    let set_of = |o: &tessera_data::KindsOffer| o.columns.iter().cloned().collect::<BTreeSet<_>>();
    let mut sorted: Vec<&tessera_data::KindsOffer> = offers.iter().collect();
    sorted.sort_by(|a, b| a.site.cmp(&b.site));
    let mut best: Option<(BTreeSet<String>, usize)> = None;
    for o in &sorted {
        let set = set_of(o);
        let count = sorted.iter().filter(|p| set_of(p) == set).count();
        if best.as_ref().is_none_or(|(_, n)| count > *n) {
            best = Some((set, count));
        }
    }
    let Some((layout, agreeing)) = best else {
        return Vec::new();
    };
    let list = |names: Vec<&String>| {
        tessera_proto::shown(
            &names
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            300,
        )
        .into_owned()
    };
    sorted
        .iter()
        .filter(|o| set_of(o) != layout)
        .map(|o| {
            let own = set_of(o);
            let extra: Vec<&String> = own.difference(&layout).collect();
            let missing: Vec<&String> = layout.difference(&own).collect();
            (
                o.site.clone(),
                format!(
                    "'{}' offers other feature columns than {agreeing} other site(s): only here: \
                     [{}]; missing here: [{}]. Fix this site's data (or mark the columns \
                     `type = \"ignore\"` in the plan) and join again",
                    o.site,
                    list(extra),
                    list(missing)
                ),
            )
        })
        .collect()
}

/// The largest log loss one evaluated row can add: `-ln(1e-12)`, rounded up.
pub const MAX_ROW_LOSS: f64 = 27.64;

/// Rows a site declared at agreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Declared {
    pub train: u64,
    pub test: u64,
}

impl Declared {
    /// The counts of a levels offer, if they are within bounds.
    pub(super) fn of(offer: &pb::LevelsOffer) -> Result<Self, String> {
        if offer.train_rows == 0 {
            return Err(
                "the levels offer declares no training rows (participants of protocol \
                 1.6 and later declare their row counts)"
                    .into(),
            );
        }
        for (what, rows) in [("training", offer.train_rows), ("test", offer.test_rows)] {
            if rows > MAX_DECLARED_ROWS {
                return Err(format!(
                    "the levels offer declares {rows} {what} rows; at most {MAX_DECLARED_ROWS} \
                     are accepted"
                ));
            }
        }
        Ok(Self {
            train: offer.train_rows,
            test: offer.test_rows,
        })
    }
}

impl Federation {
    /// Records `site`'s declared row counts with the offer that declared
    /// them (`bytes`, stored under `step`) the first time; the same counts
    /// again change nothing; other counts are refused (audited as
    /// `action`): they are fixed for the run, since they bound every count
    /// the site reports.
    pub(super) fn declare(
        &mut self,
        site: &str,
        declared: Declared,
        step: crate::store::AgreementStep,
        action: &str,
        bytes: &[u8],
    ) -> Result<(), super::Refusal> {
        match self.declared.get(site) {
            Some(before) if *before != declared => {
                let reason = format!(
                    "'{site}' declared {} training and {} test rows before; the counts are fixed \
                     for the run",
                    before.train, before.test
                );
                self.refuse_report(site, action, &reason);
                Err(super::Refusal::Invalid(reason))
            }
            Some(_) => Ok(()),
            None => {
                self.store
                    .put_offer(&self.run.id, step, site, bytes)
                    .map_err(super::unavailable)?;
                self.declared.insert(site.to_string(), declared);
                Ok(())
            }
        }
    }

    /// What `site` declared, or why nothing it reports can be checked.
    /// The sum (saturating) over `sites` of `what` each declared.
    fn declared_total(
        &self,
        sites: &[&str],
        what: impl Fn(Declared) -> u64,
    ) -> Result<u64, String> {
        sites.iter().try_fold(0u64, |total, site| {
            Ok(total.saturating_add(what(self.declared_by(site)?)))
        })
    }

    pub(super) fn declared_by(&self, site: &str) -> Result<Declared, String> {
        self.declared.get(site).copied().ok_or_else(|| {
            format!("'{site}' has not declared its row counts (offer the levels first)")
        })
    }

    /// The most optimiser steps the plan's local training takes on `rows`.
    pub(super) fn max_steps(&self, rows: u64) -> u64 {
        let training = self.plan.local_training();
        tessera_learn::LocalPlan::plain(&training)
            .n_steps(usize::try_from(rows).unwrap_or(usize::MAX))
            .unwrap_or(u64::MAX)
    }

    /// Checks an update's reported numbers against `site`'s declaration and
    /// the plan.
    pub(super) fn check_update(&self, site: &str, update: &Update) -> Result<(), String> {
        let declared = self.declared_by(site)?;
        if update.n_examples == 0 || update.n_examples > declared.train {
            return Err(format!(
                "the update claims {} training examples; '{site}' declared {} training rows",
                update.n_examples, declared.train
            ));
        }
        let max_steps = self.max_steps(declared.train);
        if update.stats.n_steps > max_steps {
            return Err(format!(
                "the update claims {} optimiser steps; the plan's local training takes at most \
                 {max_steps} on {} rows",
                update.stats.n_steps, declared.train
            ));
        }
        let loss = update.stats.mean_train_loss;
        if !(loss.is_finite() && loss >= 0.0) {
            return Err(format!(
                "the update's train loss {loss:e} is not a finite loss"
            ));
        }
        Ok(())
    }

    /// Checks an evaluation's counts against `site`'s declared test rows.
    pub(super) fn check_evaluation(&self, site: &str, e: &Evaluation) -> Result<(), String> {
        let declared = self.declared_by(site)?;
        if e.n_examples > declared.test {
            return Err(format!(
                "the evaluation counts {} rows; '{site}' declared {} test rows",
                e.n_examples, declared.test
            ));
        }
        if e.loss_sum > e.n_examples as f64 * MAX_ROW_LOSS {
            return Err(format!(
                "the evaluation's loss {:e} is more than {MAX_ROW_LOSS} a row over {} rows",
                e.loss_sum, e.n_examples
            ));
        }
        if let Some(h) = &e.histogram {
            let counted = h
                .bins
                .iter()
                .try_fold(0u64, |n, &(_, p, q)| n.checked_add(p)?.checked_add(q));
            if counted.is_none_or(|c| c > e.n_examples) {
                return Err(format!(
                    "the evaluation's histogram counts more than its {} rows",
                    e.n_examples
                ));
            }
        }
        Ok(())
    }

    /// Checks feature statistics against `site`'s declared training rows
    /// and what `f32` data can give.
    pub(super) fn check_statistics(
        &self,
        site: &str,
        stats: &FeatureStatistics,
    ) -> Result<(), String> {
        let declared = self.declared_by(site)?;
        if stats.n == 0 || stats.n > declared.train {
            return Err(format!(
                "the statistics count {} rows; '{site}' declared {} training rows",
                stats.n, declared.train
            ));
        }
        let largest = f64::from(f32::MAX);
        // Squared deviations of n values within [-largest, largest].
        let most_m2 = stats.n as f64 * (2.0 * largest) * (2.0 * largest);
        if let Some(j) = stats
            .mean
            .iter()
            .position(|m| !m.is_finite() || m.abs() > largest)
        {
            return Err(format!(
                "the statistics' mean of feature {j} ({:e}) is beyond any f32 value",
                stats.mean[j]
            ));
        }
        if let Some(j) = stats
            .m2
            .iter()
            .position(|v| !(v.is_finite() && *v >= 0.0 && *v <= most_m2))
        {
            return Err(format!(
                "the statistics' squared deviations of feature {j} ({:e}) are impossible for {} \
                 f32 values",
                stats.m2[j], stats.n
            ));
        }
        Ok(())
    }

    /// Checks the unmasked sums of a secure round's counts and steps
    /// against what its `survivors` declared together.
    pub(super) fn check_secure_sums(
        &self,
        survivors: &[&str],
        n_examples: u64,
        n_steps: u64,
    ) -> Result<(), String> {
        let rows = self.declared_total(survivors, |d| d.train)?;
        let steps = self.declared_total(survivors, |d| self.max_steps(d.train))?;
        if n_examples > rows {
            return Err(format!(
                "the {} survivors' summed example count {n_examples} is more than the {rows} \
                 training rows they declared",
                survivors.len()
            ));
        }
        if n_steps > steps {
            return Err(format!(
                "the {} survivors' summed step count {n_steps} is more than the plan allows \
                 ({steps})",
                survivors.len()
            ));
        }
        Ok(())
    }

    /// Checks the unmasked sum of a secure round's evaluations against the
    /// test rows its `survivors` declared.
    pub(super) fn check_secure_evaluation(
        &self,
        survivors: &[&str],
        n_examples: u64,
        loss_sum: f64,
    ) -> Result<(), String> {
        let rows = self.declared_total(survivors, |d| d.test)?;
        if n_examples > rows {
            return Err(format!(
                "the {} sites' summed evaluation counts {n_examples} rows, more than the {rows} \
                 test rows they declared",
                survivors.len()
            ));
        }
        if loss_sum > n_examples as f64 * MAX_ROW_LOSS {
            return Err(format!(
                "the summed evaluation's loss {loss_sum:e} is more than {MAX_ROW_LOSS} a row"
            ));
        }
        Ok(())
    }

    /// A refused report: audited with its reason and counted; the caller
    /// answers the site with the same reason.
    pub(super) fn refuse_report(&self, site: &str, action: &str, reason: &str) {
        metrics::counter!(crate::telemetry::names::REFUSED_REPORTS, "kind" => action.to_string())
            .increment(1);
        let shown = tessera_proto::shown(reason, super::MAX_AUDIT_DETAIL);
        tracing::warn!(%site, %action, reason = %shown, "report refused");
        self.audit(site, action, "rejected", reason);
    }
}
