//! A rollout's comparison in the clear (site metrics `"clear"`): each
//! canary's sums, checked as they come, and the decision on their pool.

use serde_json::json;
use tessera_analytics::ab::{ArmSums, compare, paired};
use tessera_proto::pb;

use super::{RolloutState, Sums, describe, promotes};
use crate::CoordinatorError;

/// The most rows one site may say it scored.
const MAX_ROWS: u64 = 1_000_000_000;
/// The most loss per row a report may carry: `-ln 1e-7` (the floor of a
/// probability, as scoring applies it) is about 16.1.
const MAX_LOSS_PER_ROW: f64 = 17.0;

/// The report's model (0: candidate, 1: production) and sums, or why
/// they are refused.
pub(super) fn check_report(
    rollout: &RolloutState,
    site: &str,
    report: &pb::EvaluationReport,
) -> Result<(usize, Sums), String> {
    if rollout.decision.is_some() {
        return Err("the rollout has decided: no more scores are taken".into());
    }
    if rollout.summed.is_some() {
        return Err(
            "the plan keeps site metrics as sums only: a canary's comparison is summed \
             securely, never taken in the clear"
                .into(),
        );
    }
    if !rollout.canaries.contains(site) {
        return Err(format!(
            "site '{site}' did not opt in as a canary: its scores are not asked for"
        ));
    }
    let spec = &rollout.spec;
    let index = match report.round {
        v if v == spec.candidate.version => 0,
        v if v == spec.production.version => 1,
        v => {
            return Err(format!(
                "version {v} is neither the candidate ({}) nor production ({})",
                spec.candidate.version, spec.production.version
            ));
        }
    };
    let only = match (report.candidate_only_right, report.production_only_right) {
        (None, None) => None,
        (Some(b), Some(c)) if index == 0 => Some((b, c)),
        _ if index == 1 => {
            return Err("production's score carries no rows one model alone got right".into());
        }
        _ => return Err("the rows each model alone got right come as a pair".into()),
    };
    let sums = Sums {
        n: report.n_examples,
        correct: report.n_correct,
        loss_sum: report.loss_sum,
        only,
    };
    if !(1..=MAX_ROWS).contains(&sums.n) {
        return Err(format!(
            "{} rows scored (1 to {MAX_ROWS} are taken)",
            sums.n
        ));
    }
    if sums.correct > sums.n {
        return Err(format!("{} rows right of {} scored", sums.correct, sums.n));
    }
    if let Some((b, c)) = only
        && (b > sums.correct || c > sums.n - sums.correct)
    {
        return Err(format!(
            "the candidate alone right on {b} rows and production alone on {c}, with the \
             candidate right on {} of {} rows",
            sums.correct, sums.n
        ));
    }
    let most = MAX_LOSS_PER_ROW * sums.n as f64;
    if !(sums.loss_sum.is_finite() && (0.0..=most).contains(&sums.loss_sum)) {
        return Err(format!(
            "a loss sum of {} over {} rows (0 to {most} are taken)",
            sums.loss_sum, sums.n
        ));
    }
    let before = rollout.scores.get(site).copied().unwrap_or_default();
    if let Some(other) = before[1 - index]
        && other.n != sums.n
    {
        return Err(format!(
            "{} rows scored with one model and {} with the other: both are scored on the same \
             test rows",
            sums.n, other.n
        ));
    }
    // Both scores in: the candidate's rows right less production's are
    // the rows the candidate alone got right less those production alone did.
    let (candidate, production) = match index {
        0 => (Some(sums), before[1]),
        _ => (before[0], Some(sums)),
    };
    if let (Some(cand), Some(prod)) = (candidate, production)
        && let Some((b, c)) = cand.only
        && i128::from(cand.correct) - i128::from(prod.correct) != i128::from(b) - i128::from(c)
    {
        return Err(format!(
            "the candidate right on {} rows and production on {}, but alone right on {b} and \
             {c}: the counts do not agree",
            cand.correct, prod.correct
        ));
    }
    if let Some(earlier) = before[index]
        && earlier != sums
    {
        return Err(format!(
            "version {} was already scored here, with other sums",
            report.round
        ));
    }
    if !report.sites.is_empty() || report.auc.is_some() || !report.histogram.is_empty() {
        return Err("a canary's score is its sums only".into());
    }
    Ok((index, sums))
}

/// Promote or not, the decision in words, and its evidence (JSON), from
/// the sites that are canaries now (`None`: none of them scored).
pub(super) fn decide(
    rollout: &RolloutState,
) -> Result<Option<(bool, String, String)>, CoordinatorError> {
    let spec = &rollout.spec;
    let mut per_site = serde_json::Map::new();
    let (mut candidate, mut production) = (ArmSums::default(), ArmSums::default());
    let (mut loss_c, mut loss_p) = (0.0, 0.0);
    // The paired counts, while every site counted sent them.
    let mut paired_counts = Some((0u64, 0u64, 0u64, 0u64));
    for (site, scores) in &rollout.scores {
        // A site that rejoined without opting in no longer counts.
        let ([Some(c), Some(p)], true) = (scores, rollout.canaries.contains(site)) else {
            continue;
        };
        candidate.n += c.n as f64;
        candidate.correct += c.correct as f64;
        production.n += p.n as f64;
        production.correct += p.correct as f64;
        loss_c += c.loss_sum;
        loss_p += p.loss_sum;
        // Each site's counts are at most 10^9, and the sites far fewer
        // than 10^9: the sums fit.
        paired_counts = match (paired_counts, c.only) {
            (Some((n, right, b, only_p)), Some((cb, cc))) => {
                Some((n + c.n, right + p.correct, b + cb, only_p + cc))
            }
            _ => None,
        };
        per_site.insert(
            site.clone(),
            json!({
                "rows": c.n,
                "candidate_correct": c.correct,
                "production_correct": p.correct,
                "candidate_only_right": c.only.map(|o| o.0),
                "production_only_right": c.only.map(|o| o.1),
                "candidate_loss_sum": c.loss_sum,
                "production_loss_sum": p.loss_sum,
            }),
        );
    }
    let sites = per_site.len();
    if sites == 0 {
        return Ok(None);
    }
    // Both models scored the same rows: the paired interval where every
    // site sent the rows one model alone got right (1.21), the unpaired
    // (wider) one otherwise.
    let comparison = match paired_counts {
        Some((n, right, b, c)) => paired(n, right, b, c),
        None => compare(&production, &candidate, 0.0),
    }
    .map_err(CoordinatorError::Config)?;
    let interval = if paired_counts.is_some() {
        "paired"
    } else {
        "unpaired"
    };
    let promote = promotes(&comparison, spec.max_drop);
    let rows = candidate.n as u64;
    let text = describe(
        spec,
        &comparison,
        promote,
        &format!("{sites} canary site(s)' {rows}"),
        interval,
    );
    let evidence = json!({
        "decision": if promote { "promoted" } else { "rolled back" },
        "candidate_version": spec.candidate.version,
        "production_version": spec.production.version,
        "canary_sites": per_site.keys().collect::<Vec<_>>(),
        "rows": rows,
        "candidate_accuracy": comparison.accuracy_b,
        "production_accuracy": comparison.accuracy_a,
        "difference": comparison.difference,
        "ci95": [comparison.ci95.0, comparison.ci95.1],
        "interval": interval,
        "candidate_only_right": paired_counts.map(|p| p.2),
        "production_only_right": paired_counts.map(|p| p.3),
        "candidate_mean_loss": loss_c / candidate.n,
        "production_mean_loss": loss_p / production.n,
        "max_drop": spec.max_drop,
        "per_site": per_site,
    });
    Ok(Some((promote, text, evidence.to_string())))
}
