//! Continual learning at a site. A participant started with
//! `--continue-from` (an earlier run's model file, kept at the site) checks
//! that the run starts from that model (by the SHA-256 the coordinator's
//! agreement names, protocol 1.18, and against round 1's model where it
//! trains round 1); with `--ewc-lambda` it also holds
//! its local training to that model by elastic weight consolidation,
//! weighted by its own importance: the diagonal Fisher information the
//! site measured on its own rows at the end of the earlier run
//! (`--importance-out`). The importance never leaves the site, and no
//! earlier row is kept: the simulator's `--site-importance` runs the same
//! federation bit for bit.

use std::sync::Arc;

use tessera_core::ParameterSet;
use tessera_data::Agreement;
use tessera_engine::Plan;
use tessera_engine::continual::{Elastic, check_continuable};
use tessera_engine::model_file::parameters_sha256;
use tessera_privacy::PrivacyMode;

/// What a site continues from.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteContinual {
    /// The model file, as messages name it.
    pub from: String,
    /// The encoded features the model was trained on, in order.
    pub features: Vec<String>,
    /// Its classes, in order.
    pub classes: Vec<String>,
    /// Its parameters: the run's first model, and what EWC pulls toward.
    pub anchor: ParameterSet,
    /// Elastic weight consolidation: its lambda and this site's own
    /// importance of the anchor's parameters (`None`: only the check).
    pub ewc: Option<(f32, ParameterSet)>,
}

impl SiteContinual {
    /// The pull this site adds to its local training (`None` without EWC),
    /// refused, saying why, where the plan cannot continue or the model
    /// does not fit the agreed features and classes or the plan's model
    /// (`initial`, its parameters as built here).
    pub(crate) fn elastic(
        &self,
        plan: &Plan,
        agreement: &Agreement,
        initial: &ParameterSet,
    ) -> Result<Option<Arc<Elastic>>, String> {
        let from = &self.from;
        check_continuable(plan).map_err(|e| format!("--continue-from {from}: {e}"))?;
        if !plan.compression.download.is_identity() {
            // The site would hold its models only as the codec left them.
            return Err(format!(
                "--continue-from {from}: under a download codec ([compression] download) this \
                 site holds the run's models only approximately; continue on a plan without one"
            ));
        }
        if self.ewc.is_some() && plan.privacy.mode == PrivacyMode::Local {
            // The pull is added outside DP-SGD's clipping and noise, and the
            // importance is a statistic of this site's rows.
            return Err(
                "--ewc-lambda: local DP does not account for the elastic term, whose \
                 importance is a statistic of this site's rows; continue without --ewc-lambda, \
                 or on a plan without local DP"
                    .into(),
            );
        }
        let features = agreement.feature_names();
        if self.features != features {
            return Err(format!(
                "--continue-from {from}: its {} features are not the agreed {} (in order); \
                 continue only on data of the same columns",
                self.features.len(),
                features.len()
            ));
        }
        if self.classes != agreement.classes {
            return Err(format!(
                "--continue-from {from}: a model of the classes {:?}, and the agreed ones are \
                 {:?}",
                self.classes, agreement.classes
            ));
        }
        self.anchor
            .check_same_layout(initial)
            .map_err(|e| format!("--continue-from {from}: not the plan's model: {e}"))?;
        self.anchor
            .check_finite()
            .map_err(|e| format!("--continue-from {from}: {e}"))?;
        let Some((lambda, importance)) = &self.ewc else {
            return Ok(None);
        };
        Elastic::new(*lambda, self.anchor.clone(), importance.clone())
            .map(Some)
            .map_err(|e| format!("--continue-from {from}, --ewc-lambda {lambda}: {e}"))
    }

    /// Refuses a run whose initial model, as the coordinator's agreement
    /// names it (`announced`: its SHA-256, empty where the coordinator does
    /// not say), is not the one this site continues from.
    pub(crate) fn check_start_model(&self, announced: &str) -> Result<(), String> {
        let own = parameters_sha256(&self.anchor);
        if announced.is_empty() {
            return Err(format!(
                "this site continues from {} (--continue-from), and the coordinator does not \
                 say which model the run starts from (a version before protocol 1.18): update \
                 it, or run this site without --continue-from",
                self.from
            ));
        }
        if announced != own {
            return Err(format!(
                "this site continues from {} (--continue-from, sha256 {}), and the run starts \
                 from another model (sha256 {}): start the coordinator with --continue-from the \
                 same model, or this site without it",
                self.from,
                own.get(..12).unwrap_or(&own),
                announced.get(..12).unwrap_or(announced)
            ));
        }
        Ok(())
    }

    /// Refuses a run whose first model (round 1's `global`) is not the one
    /// this site continues from: a coordinator started without
    /// `--continue-from`, or with another file.
    pub(crate) fn check_start(&self, round: u32, global: &ParameterSet) -> Result<(), String> {
        if round == 1 && *global != self.anchor {
            // Said to the coordinator too: the site's path stays here.
            return Err(
                "this site continues from its --continue-from model, and the run's \
                 first model is another: start the coordinator with --continue-from the same \
                 model, or this site without it"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Refuses, before the run, a site asked to measure its importance of the
/// final model (`--importance-out`) where the plan or its rows cannot give
/// it: under DP (which does not account for it), under a download codec
/// (the site holds the final model only approximately), or without
/// training rows.
pub(crate) fn check_importance_out(plan: &Plan, train_rows: usize) -> Result<(), String> {
    let why = if plan.privacy.mode != PrivacyMode::Off {
        "the importance is a statistic of this site's rows without noise, which the plan's DP \
         does not account for"
    } else if !plan.compression.download.is_identity() {
        "under a download codec ([compression] download) this site holds the final model only \
         approximately"
    } else if train_rows == 0 {
        "this site has no training rows to measure it on"
    } else {
        return Ok(());
    };
    Err(format!("--importance-out: {why}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tessera_core::Tensor;

    use super::*;

    fn set(v: &[f32]) -> ParameterSet {
        let mut p = ParameterSet::new();
        p.push("w", Tensor::new(vec![v.len()], v.to_vec()).unwrap())
            .unwrap();
        p
    }

    #[test]
    fn a_run_starting_from_another_model_is_refused_in_its_first_round() {
        let continual = SiteContinual {
            from: "before.model".into(),
            features: vec![],
            classes: vec![],
            anchor: set(&[1.0, 2.0]),
            ewc: None,
        };
        assert!(continual.check_start(1, &set(&[1.0, 2.0])).is_ok());
        let why = continual.check_start(1, &set(&[1.0, 2.5])).unwrap_err();
        assert!(why.contains("first model is another"), "{why}");
        assert!(!why.contains("before.model"), "{why}");
        // Later rounds' models have moved on (a site that joins late): the
        // agreement's digest is what every site checks.
        assert!(continual.check_start(2, &set(&[1.0, 2.5])).is_ok());
        let own = parameters_sha256(&set(&[1.0, 2.0]));
        assert!(continual.check_start_model(&own).is_ok());
        let other = parameters_sha256(&set(&[1.0, 2.5]));
        let why = continual.check_start_model(&other).unwrap_err();
        assert!(why.contains("starts from another model"), "{why}");
        let why = continual.check_start_model("").unwrap_err();
        assert!(why.contains("does not say"), "{why}");
    }

    #[test]
    fn an_importance_the_plan_or_rows_cannot_give_is_refused_before_the_run() {
        let mut plan = Plan::default();
        assert!(check_importance_out(&plan, 10).is_ok());
        let why = check_importance_out(&plan, 0).unwrap_err();
        assert!(why.contains("no training rows"), "{why}");
        plan.privacy.mode = PrivacyMode::Central;
        let why = check_importance_out(&plan, 10).unwrap_err();
        assert!(why.contains("DP"), "{why}");
    }

    #[test]
    fn a_model_of_other_features_classes_or_layout_is_refused() {
        let agreement = Agreement {
            columns: vec!["a".into(), "b".into()],
            encodings: vec![tessera_data::Encoding::Numeric; 2],
            classes: vec!["0".into(), "1".into()],
        };
        let mut plan = Plan::default();
        plan.model.kind = tessera_learn::ModelKind::Logistic;
        let continual = SiteContinual {
            from: "before.model".into(),
            features: agreement.feature_names(),
            classes: agreement.classes.clone(),
            anchor: set(&[0.0, 0.0, 0.0]),
            ewc: Some((1.0, set(&[1.0, 0.5, 0.0]))),
        };
        let fits = continual.elastic(&plan, &agreement, &set(&[9.0, 9.0, 9.0]));
        assert!(fits.unwrap().is_some());
        let other = SiteContinual {
            features: vec!["a".into()],
            ..continual.clone()
        };
        let why = other
            .elastic(&plan, &agreement, &set(&[0.0; 3]))
            .unwrap_err();
        assert!(why.contains("features are not the agreed"), "{why}");
        let other = SiteContinual {
            classes: vec!["0".into()],
            ..continual.clone()
        };
        let why = other
            .elastic(&plan, &agreement, &set(&[0.0; 3]))
            .unwrap_err();
        assert!(why.contains("classes"), "{why}");
        let why = continual
            .elastic(&plan, &agreement, &set(&[0.0; 2]))
            .unwrap_err();
        assert!(why.contains("not the plan's model"), "{why}");
        plan.privacy.mode = PrivacyMode::Local;
        let why = continual
            .elastic(&plan, &agreement, &set(&[0.0; 3]))
            .unwrap_err();
        assert!(why.contains("local DP"), "{why}");
    }
}
