//! Conversions between wire messages and Tessera's types. From the wire,
//! every conversion validates.

use tessera_core::FitStats;
use tessera_data::{Agreement, ColumnKinds, Encoding, KindsOffer, LevelsOffer};
use tessera_learn::{Evaluation, HISTOGRAM_BINS, ScoreHistogram};

use crate::ProtoError;
use crate::pb;

mod external;
mod instructions;
pub use external::{
    ExternalAgreement, ExternalOffer, MAX_OFFERED_TENSORS, MAX_OFFERED_VALUES, MAX_TENSOR_NAME,
    external_agreement_from_pb, external_agreement_to_pb, external_offer_from_pb,
    external_offer_to_pb,
};
pub use instructions::{instructions_from_pb, instructions_to_pb};

fn same_length(what: &str, a: usize, b: usize) -> Result<(), ProtoError> {
    if a == b {
        Ok(())
    } else {
        Err(ProtoError::Malformed(format!(
            "{what}: {a} names but {b} flags"
        )))
    }
}

/// A kinds offer on the wire.
pub fn kinds_offer_to_pb(offer: &KindsOffer) -> pb::KindsOffer {
    pb::KindsOffer {
        columns: offer.columns.clone(),
        text: offer.text.clone(),
    }
}

/// A kinds offer from `site`.
pub fn kinds_offer_from_pb(site: &str, offer: pb::KindsOffer) -> Result<KindsOffer, ProtoError> {
    same_length("kinds offer", offer.columns.len(), offer.text.len())?;
    Ok(KindsOffer {
        site: site.to_string(),
        columns: offer.columns,
        text: offer.text,
    })
}

/// Agreed kinds on the wire.
pub fn kinds_to_pb(kinds: &ColumnKinds) -> pb::ColumnKinds {
    pb::ColumnKinds {
        columns: kinds.columns.clone(),
        categorical: kinds.categorical.clone(),
    }
}

/// Agreed kinds from the wire.
pub fn kinds_from_pb(kinds: pb::ColumnKinds) -> Result<ColumnKinds, ProtoError> {
    same_length("column kinds", kinds.columns.len(), kinds.categorical.len())?;
    Ok(ColumnKinds {
        columns: kinds.columns,
        categorical: kinds.categorical,
    })
}

/// A levels offer on the wire.
pub fn levels_offer_to_pb(offer: &LevelsOffer) -> pb::LevelsOffer {
    pb::LevelsOffer {
        levels: offer
            .levels
            .iter()
            .map(|l| pb::ColumnLevels { levels: l.clone() })
            .collect(),
        classes: offer.classes.clone(),
        train_classes: offer.train_classes.clone(),
        train_rows: offer.train_rows,
        test_rows: offer.test_rows,
    }
}

/// A levels offer from `site`.
pub fn levels_offer_from_pb(site: &str, offer: pb::LevelsOffer) -> LevelsOffer {
    LevelsOffer {
        site: site.to_string(),
        levels: offer.levels.into_iter().map(|l| l.levels).collect(),
        classes: offer.classes,
        train_classes: offer.train_classes,
        train_rows: offer.train_rows,
        test_rows: offer.test_rows,
    }
}

/// The agreement on the wire.
pub fn agreement_to_pb(agreement: &Agreement) -> pb::Agreement {
    pb::Agreement {
        columns: agreement.columns.clone(),
        encodings: agreement
            .encodings
            .iter()
            .map(|e| match e {
                Encoding::Numeric => pb::Encoding::default(),
                Encoding::OneHot { levels, drop_first } => pb::Encoding {
                    one_hot: true,
                    levels: levels.clone(),
                    drop_first: *drop_first,
                },
            })
            .collect(),
        classes: agreement.classes.clone(),
        initial_model_sha256: String::new(),
        task_classes: Vec::new(),
    }
}

/// The agreement from the wire.
pub fn agreement_from_pb(agreement: pb::Agreement) -> Result<Agreement, ProtoError> {
    same_length(
        "agreement",
        agreement.columns.len(),
        agreement.encodings.len(),
    )?;
    if agreement.classes.len() < 2 {
        return Err(ProtoError::Malformed(
            "agreement with fewer than two classes".into(),
        ));
    }
    Ok(Agreement {
        columns: agreement.columns,
        encodings: agreement
            .encodings
            .into_iter()
            .map(|e| {
                if e.one_hot {
                    Encoding::OneHot {
                        levels: e.levels,
                        drop_first: e.drop_first,
                    }
                } else {
                    Encoding::Numeric
                }
            })
            .collect(),
        classes: agreement.classes,
    })
}

/// Feature statistics on the wire.
pub fn statistics_to_pb(stats: &tessera_data::FeatureStatistics) -> pb::FeatureStatistics {
    pb::FeatureStatistics {
        n: stats.n,
        mean: stats.mean.clone(),
        m2: stats.m2.clone(),
    }
}

/// Feature statistics from the wire, checked against the feature count.
pub fn statistics_from_pb(
    stats: pb::FeatureStatistics,
    n_features: usize,
) -> Result<tessera_data::FeatureStatistics, ProtoError> {
    if stats.mean.len() != n_features || stats.m2.len() != n_features {
        return Err(ProtoError::Malformed(format!(
            "statistics for {} features, the agreement has {n_features}",
            stats.mean.len()
        )));
    }
    if stats.mean.iter().chain(&stats.m2).any(|v| !v.is_finite())
        || stats.m2.iter().any(|v| *v < 0.0)
    {
        return Err(ProtoError::Malformed(
            "statistics hold non-finite or negative values".into(),
        ));
    }
    Ok(tessera_data::FeatureStatistics {
        n: stats.n,
        mean: stats.mean,
        m2: stats.m2,
    })
}

/// An evaluation on the wire.
pub fn evaluation_to_pb(site: &str, round: u32, e: &Evaluation) -> pb::EvaluationReport {
    pb::EvaluationReport {
        site: site.to_string(),
        round,
        n_examples: e.n_examples,
        loss_sum: e.loss_sum,
        n_correct: e.n_correct,
        auc: e.auc,
        histogram: e
            .histogram
            .as_ref()
            .map(|h| {
                h.bins
                    .iter()
                    .map(|&(bin, positives, negatives)| pb::HistogramBin {
                        bin,
                        positives,
                        negatives,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        sites: Vec::new(),
        candidate_only_right: None,
        production_only_right: None,
    }
}

/// An evaluation from the wire, checked for consistency.
pub fn evaluation_from_pb(report: &pb::EvaluationReport) -> Result<Evaluation, ProtoError> {
    if report.n_correct > report.n_examples {
        return Err(ProtoError::Malformed(format!(
            "evaluation: {} correct of {} examples",
            report.n_correct, report.n_examples
        )));
    }
    if !(report.loss_sum.is_finite() && report.loss_sum >= 0.0) {
        return Err(ProtoError::Malformed(format!(
            "evaluation: loss {} is not a finite sum",
            report.loss_sum
        )));
    }
    if report.auc.is_some_and(|a| !(0.0..=1.0).contains(&a)) {
        return Err(ProtoError::Malformed(
            "evaluation: AUC outside [0, 1]".into(),
        ));
    }
    if report.candidate_only_right.is_some() || report.production_only_right.is_some() {
        return Err(ProtoError::Malformed(
            "evaluation: only a canary's score of a rollout's candidate carries the rows one \
             model alone got right"
                .into(),
        ));
    }
    let mut bins = Vec::with_capacity(report.histogram.len());
    let mut counted = 0u64;
    for b in &report.histogram {
        if b.bin as usize >= HISTOGRAM_BINS
            || bins.last().is_some_and(|&(last, _, _)| last >= b.bin)
        {
            return Err(ProtoError::Malformed(
                "evaluation: histogram bins out of order or range".into(),
            ));
        }
        counted = counted
            .checked_add(b.positives)
            .and_then(|c| c.checked_add(b.negatives))
            .ok_or_else(|| ProtoError::Malformed("evaluation: histogram counts overflow".into()))?;
        bins.push((b.bin, b.positives, b.negatives));
    }
    if !bins.is_empty() && counted != report.n_examples {
        return Err(ProtoError::Malformed(format!(
            "evaluation: histogram counts {counted} examples, report says {}",
            report.n_examples
        )));
    }
    Ok(Evaluation {
        n_examples: report.n_examples,
        loss_sum: report.loss_sum,
        n_correct: report.n_correct,
        auc: report.auc,
        histogram: (!bins.is_empty()).then_some(ScoreHistogram { bins }),
    })
}

/// The most sites one aggregator's evaluation may name (`sites`).
pub const MAX_SITE_EVALUATIONS: usize = 100_000;

/// An aggregator's evaluation (`site`, round `round`, `pooled`) with the
/// evaluation of each site below it (protocol 1.9, `site-evaluations`).
pub fn evaluation_with_sites_to_pb(
    site: &str,
    round: u32,
    pooled: &Evaluation,
    sites: &[(String, Evaluation)],
) -> pb::EvaluationReport {
    pb::EvaluationReport {
        sites: sites
            .iter()
            .map(|(name, e)| evaluation_to_pb(name, round, e))
            .collect(),
        ..evaluation_to_pb(site, round, pooled)
    }
}

/// The sites' evaluations an aggregator's `report` carries (empty from a
/// site), each checked as [`evaluation_from_pb`] checks one, and checked
/// against the report: at most [`MAX_SITE_EVALUATIONS`], named (at most 128
/// bytes, no control characters) and each once, of the report's round,
/// without sites of their own, their rows, right predictions and histogram
/// counts adding up to the report's exactly and their losses to its loss.
pub fn site_evaluations_from_pb(
    report: &pb::EvaluationReport,
) -> Result<Vec<(String, Evaluation)>, ProtoError> {
    let malformed = |m: String| ProtoError::Malformed(format!("evaluation's sites: {m}"));
    if report.sites.len() > MAX_SITE_EVALUATIONS {
        return Err(malformed(format!(
            "{} sites, more than {MAX_SITE_EVALUATIONS}",
            report.sites.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(report.sites.len());
    for entry in &report.sites {
        let name = &entry.site;
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(malformed(format!(
                "a site name must have 1 to 128 bytes and no control characters (got {:?})",
                tessera_core::shown(name, 140)
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(malformed(format!("'{name}' is named twice")));
        }
        if entry.round != report.round {
            return Err(malformed(format!(
                "'{name}' evaluated round {}, the report is of round {}",
                entry.round, report.round
            )));
        }
        if !entry.sites.is_empty() {
            return Err(malformed(format!("'{name}' carries sites of its own")));
        }
        let e = evaluation_from_pb(entry).map_err(|e| malformed(format!("'{name}': {e}")))?;
        out.push((name.clone(), e));
    }
    if out.is_empty() {
        return Ok(out);
    }
    let sum = |f: fn(&Evaluation) -> u64| {
        out.iter()
            .try_fold(0u64, |n, (_, e)| n.checked_add(f(e)))
            .ok_or_else(|| malformed("counts overflow".into()))
    };
    let rows = sum(|e| e.n_examples)?;
    let correct = sum(|e| e.n_correct)?;
    if rows != report.n_examples || correct != report.n_correct {
        return Err(malformed(format!(
            "they count {correct} right of {rows} rows; the report, {} of {}",
            report.n_correct, report.n_examples
        )));
    }
    let loss: f64 = out.iter().map(|(_, e)| e.loss_sum).sum();
    if (loss - report.loss_sum).abs() > 1e-9 * report.loss_sum.abs().max(1.0) {
        return Err(malformed(format!(
            "their losses add up to {loss}; the report says {}",
            report.loss_sum
        )));
    }
    let pooled = evaluation_from_pb(report)?;
    let summed = Evaluation::pool(out.iter().map(|(_, e)| e));
    if summed.histogram != pooled.histogram {
        return Err(malformed(
            "their score histograms do not add up to the report's".into(),
        ));
    }
    Ok(out)
}

/// Training statistics from an update header, checked.
pub fn fit_stats_from_pb(header: &pb::UpdateHeader) -> Result<FitStats, ProtoError> {
    if !header.mean_train_loss.is_finite() {
        return Err(ProtoError::Malformed(format!(
            "update: training loss {} is not finite",
            header.mean_train_loss
        )));
    }
    if let Some(loss) = header.start_loss
        && !loss.is_finite()
    {
        return Err(ProtoError::Malformed(format!(
            "update: start loss {loss} is not finite"
        )));
    }
    Ok(FitStats {
        n_steps: header.n_steps,
        mean_train_loss: header.mean_train_loss,
        start_loss: header.start_loss,
    })
}

/// The most seconds of local training an update may report: a week.
pub const MAX_TRAIN_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// The seconds of local training an update's header reports (none when it
/// reports none), refused unless finite and within [0, [`MAX_TRAIN_SECONDS`]].
pub fn train_seconds_from_pb(header: &pb::UpdateHeader) -> Result<Option<f64>, ProtoError> {
    match header.train_seconds {
        Some(s) if !(0.0..=MAX_TRAIN_SECONDS).contains(&s) => Err(ProtoError::Malformed(format!(
            "update: training seconds {} outside [0, {MAX_TRAIN_SECONDS}]",
            tessera_core::value(s)
        ))),
        // -0 reads as 0.
        seconds => Ok(seconds.map(|s| s + 0.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_training_seconds_are_bounded() {
        let header = |s: Option<f64>| pb::UpdateHeader {
            train_seconds: s,
            ..Default::default()
        };
        assert_eq!(train_seconds_from_pb(&header(None)).ok(), Some(None));
        assert_eq!(
            train_seconds_from_pb(&header(Some(0.25))).ok(),
            Some(Some(0.25))
        );
        for bad in [-1.0, f64::NAN, f64::INFINITY, MAX_TRAIN_SECONDS * 2.0] {
            let e = train_seconds_from_pb(&header(Some(bad))).unwrap_err();
            assert!(e.to_string().contains("training seconds"), "{e}");
        }
    }

    #[test]
    fn an_aggregators_site_evaluations_must_add_up_to_its_own() {
        let site = |n: u64, loss: f64, right: u64, bins: Vec<(u32, u64, u64)>| Evaluation {
            n_examples: n,
            loss_sum: loss,
            n_correct: right,
            auc: None,
            histogram: Some(ScoreHistogram { bins }),
        };
        let sites = vec![
            ("a".to_string(), site(2, 0.5, 1, vec![(3, 1, 0), (9, 0, 1)])),
            ("b".to_string(), site(3, 1.25, 3, vec![(3, 2, 1)])),
        ];
        let pooled = Evaluation::pool(sites.iter().map(|(_, e)| e));
        let wire = evaluation_with_sites_to_pb("east", 4, &pooled, &sites);
        let back = site_evaluations_from_pb(&wire).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].0, "b");
        assert_eq!(back[1].1.n_examples, 3);
        // A site's own report has none.
        assert!(
            site_evaluations_from_pb(&evaluation_to_pb("a", 4, &sites[0].1))
                .unwrap()
                .is_empty()
        );
        let refused = |wire: pb::EvaluationReport, what: &str| {
            let err = site_evaluations_from_pb(&wire).unwrap_err().to_string();
            assert!(err.contains(what), "{err} (expected {what})");
        };
        let mut lie = wire.clone();
        lie.sites[0].n_examples = 1;
        lie.sites[0].histogram = vec![pb::HistogramBin {
            bin: 3,
            positives: 1,
            negatives: 0,
        }];
        refused(lie, "right of 4 rows");
        let mut lie = wire.clone();
        lie.sites[0].loss_sum = 0.25;
        refused(lie, "losses add up to 1.5");
        let mut lie = wire.clone();
        lie.sites[1].site = "a".into();
        refused(lie, "'a' is named twice");
        let mut lie = wire.clone();
        lie.sites[1].site = "b\nforged".into();
        refused(lie, "no control characters");
        let mut lie = wire.clone();
        lie.sites[0].round = 3;
        refused(lie, "evaluated round 3");
        let mut lie = wire.clone();
        lie.sites[0].sites = vec![wire.sites[1].clone()];
        refused(lie, "carries sites of its own");
        let mut lie = wire.clone();
        lie.sites[0].histogram[0].bin = 4;
        lie.sites[0].histogram.swap(0, 0);
        refused(lie, "score histograms do not add up");
        let mut lie = wire.clone();
        lie.sites[0].n_examples = u64::MAX;
        lie.sites[0].histogram.clear();
        lie.sites[1].histogram.clear();
        refused(lie, "overflow");
        let mut lie = wire;
        let many = lie.sites[0].clone();
        lie.sites = (0..=MAX_SITE_EVALUATIONS)
            .map(|i| pb::EvaluationReport {
                site: format!("s{i}"),
                ..many.clone()
            })
            .collect();
        refused(lie, "more than 100000");
    }

    #[test]
    fn evaluations_round_trip_and_lies_are_caught() {
        let e = Evaluation {
            n_examples: 3,
            loss_sum: 1.5,
            n_correct: 2,
            auc: Some(0.5),
            histogram: Some(ScoreHistogram {
                bins: vec![(3, 1, 0), (700, 1, 1)],
            }),
        };
        let wire = evaluation_to_pb("s", 2, &e);
        assert_eq!(evaluation_from_pb(&wire).unwrap(), e);
        let mut lie = wire.clone();
        lie.n_correct = 9;
        assert!(evaluation_from_pb(&lie).is_err());
        let mut lie = wire.clone();
        lie.n_examples = 4;
        assert!(
            evaluation_from_pb(&lie)
                .unwrap_err()
                .to_string()
                .contains("histogram counts 3")
        );
        let mut lie = wire;
        lie.histogram.reverse();
        assert!(evaluation_from_pb(&lie).is_err());
    }

    #[test]
    fn agreement_round_trips() {
        let a = Agreement {
            columns: vec!["age".into(), "cp".into()],
            encodings: vec![
                Encoding::Numeric,
                Encoding::OneHot {
                    levels: vec!["1".into(), "2".into()],
                    drop_first: true,
                },
            ],
            classes: vec!["0".into(), "not 0".into()],
        };
        assert_eq!(agreement_from_pb(agreement_to_pb(&a)).unwrap(), a);
        let mut bad = agreement_to_pb(&a);
        bad.encodings.pop();
        assert!(agreement_from_pb(bad).is_err());
    }
}
