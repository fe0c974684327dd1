//! What a site takes home from a run: the final global model as a
//! self-describing model file (with this site's standardisation), and a
//! report of that model on the site's own test rows against a model the
//! site trains alone, with the privacy this site spent.
//!
//! The model is the last one the coordinator asked this site to evaluate
//! (every round's model is evaluated, so after the last round it is the
//! final global model). The local-only baseline is the simulator's
//! (`simulate --baselines`): the plan's initial model trained on the site's
//! training rows with the plan's `[baselines]` training, by default its
//! local training for as many epochs as all rounds together give
//! (`Plan::baseline_training`), regularised and early-stopped on held-out
//! training rows (`tessera_engine::baseline`), batches from the run seed's
//! baseline stream, without DP (the baseline never leaves the site).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;
use tessera_core::ParameterSet;
use tessera_data::{Agreement, Dataset, ScaleScope, Scaler};
use tessera_engine::baseline::{BaselineChoice, fit_baseline};
use tessera_engine::model_file::{ModelFile, RunInfo, Standardization, plan_hash};
use tessera_engine::report::{DepartmentAccuracy, SiteMetrics, site_metrics};
use tessera_engine::{Departments, Levels, Plan, PlanBuild};
use tessera_privacy::{DpEvent, Ledger, PrivacyMode};

use crate::ParticipantError;

/// What a participant keeps during a run for its results.
pub(crate) struct Takeaway {
    agreement: Agreement,
    scaler: Scaler,
    /// The last global model evaluated here, and its round.
    model: Option<(u32, Arc<ParameterSet>)>,
    /// Under an aggregator: its last regional model, which it has its
    /// sites evaluate once the run is over (`TaskHeader.regional_model`).
    regional: Option<Arc<ParameterSet>>,
    /// With local DP: this site's own ledger.
    ledger: Option<Ledger>,
    /// Rounds (or attempts) trained; a repeated task is the same release.
    trained: BTreeSet<u32>,
    /// The round after which an earlier process of this run saved the
    /// personal state this one restored.
    pub(crate) restored: Option<u32>,
    /// `[personalization] department`: this site's rows by department.
    departments: Option<Departments>,
    /// Whether the plan's topology is hierarchical (only then may a task
    /// carry a regional model).
    hierarchical: bool,
    /// Continual learning: the model this site continued from.
    continual: Option<crate::continual::SiteContinual>,
    /// The hash of the coordinator's plan, where this site reads its data
    /// otherwise (a multi-task site, with its task's target): its model
    /// files name the run's plan, as the simulator's do.
    run_plan_hash: Option<String>,
}

impl Takeaway {
    pub(crate) fn new(plan: &Plan, agreement: Agreement, scaler: Scaler) -> Self {
        Self {
            agreement,
            scaler,
            model: None,
            regional: None,
            ledger: (plan.privacy.mode == PrivacyMode::Local).then(|| plan.privacy.ledger()),
            trained: BTreeSet::new(),
            restored: None,
            departments: None,
            hierarchical: plan.topology.kind == tessera_engine::TopologyKind::Hierarchical,
            continual: None,
            run_plan_hash: None,
        }
    }

    /// The hash of the run's plan (`Some` where this site's plan reads its
    /// data otherwise than the coordinator's).
    pub(crate) fn with_run_plan_hash(mut self, hash: Option<String>) -> Self {
        self.run_plan_hash = hash;
        self
    }

    /// Continual learning: the model this site continued from, which its
    /// report evaluates beside the final one.
    pub(crate) fn with_continual(
        mut self,
        continual: Option<crate::continual::SiteContinual>,
    ) -> Self {
        self.continual = continual;
        self
    }

    /// With `[personalization] department`: this site's rows (`data`) by
    /// department; refused when the plan's column cannot name them.
    pub(crate) fn with_departments(
        mut self,
        plan: &Plan,
        data: &tessera_data::SiteData,
    ) -> Result<Self, tessera_engine::EngineError> {
        self.departments = Departments::of(plan, &self.agreement, data)?;
        Ok(self)
    }

    /// The site evaluated round `round`'s model: a global one, or its
    /// aggregator's regional model (`regional`).
    pub(crate) fn evaluated(&mut self, round: u32, regional: bool, model: &Arc<ParameterSet>) {
        if regional && !self.hierarchical {
            tracing::warn!(
                round,
                "a task marked as a regional model in a run without regions: ignored"
            );
        } else if regional {
            self.regional = Some(Arc::clone(model));
        } else if self.model.as_ref().is_none_or(|(r, _)| *r <= round) {
            self.model = Some((round, Arc::clone(model)));
        }
    }

    /// The last model evaluated here, and its round.
    pub(crate) fn last_model(&self) -> Option<(u32, Arc<ParameterSet>)> {
        self.model.clone()
    }

    /// The site trained for `round`, with local DP's `event`.
    /// With local DP: `site`'s epsilon over its trainings (its own ledger),
    /// and that epsilon's delta.
    pub(crate) fn local_epsilon(&self, site: &str) -> Option<(f64, f64)> {
        self.ledger
            .as_ref()
            .map(|l| (l.participant_epsilon(site), l.budgets().delta))
    }

    /// The first round this process trained.
    pub(crate) fn first_training(&self) -> Option<u32> {
        self.trained.first().copied()
    }

    /// Rounds (or attempts) this site trained.
    pub(crate) fn trainings(&self) -> usize {
        self.trained.len()
    }

    pub(crate) fn trained(&mut self, site: &str, round: u32, event: Option<DpEvent>) {
        if !self.trained.insert(round) {
            return;
        }
        if let (Some(ledger), Some(event)) = (self.ledger.as_mut(), event)
            && let Err(e) = ledger.record_local(round, site, event)
        {
            tracing::warn!(round, error = %e, "this site's own privacy ledger refused a training");
        }
    }
}

/// This site's own model from the final `global` one (or, under an
/// aggregator, from its `regional` one), made as the simulator makes it
/// (`Site::personalized`), and its departments' figures where the plan
/// names departments (or why they could not be made: the site's own
/// model stands without them).
fn personal_and_departments(
    plan: &Plan,
    own: &mut tessera_engine::Site,
    (global, regional): (&ParameterSet, Option<&ParameterSet>),
    (train, test): (&Dataset, &Dataset),
    departments: Option<(&Departments, &Agreement)>,
) -> Result<(ParameterSet, Departmental), tessera_engine::EngineError> {
    let personal = own.personalized(plan, regional.unwrap_or(global), train)?;
    let Some((departments, agreement)) = departments else {
        return Ok((personal, Ok(BTreeMap::new())));
    };
    // The plan's initial model, which each department's local-only model
    // trains from (as the site's own baseline does).
    let initial = plan
        .learner(agreement.feature_names().len(), agreement.classes.len())?
        .parameters()
        .clone();
    let levels = Levels {
        initial: &initial,
        global,
        regional,
        site: &personal,
    };
    let departments = departments
        .accuracies(own, plan, (train, test), levels)
        .map_err(|e| e.to_string());
    Ok((personal, departments))
}

/// What a site has at the end of a run.
pub struct SiteResults {
    /// The site.
    pub site: String,
    /// The coordinator's run id.
    pub run_id: String,
    /// The run's plan.
    pub plan: Arc<Plan>,
    /// The site's training rows, as it trained on them.
    pub train: Arc<Dataset>,
    /// The site's test rows, as it evaluated on them.
    pub test: Arc<Dataset>,
    pub(crate) takeaway: Takeaway,
    /// Under a personalized strategy or fine-tuning: this site's own
    /// model and, with `[personalization] department`, every level on each
    /// department's test rows (or why they could not be made). They never
    /// left the site.
    personal: Option<Result<(ParameterSet, Departmental), String>>,
    /// Under IFCA: the cluster this site took at its last training.
    cluster: Option<usize>,
}

/// Each department's figures: every level on its test rows.
type DepartmentFigures = BTreeMap<String, DepartmentAccuracy>;

/// The departments' figures, or why they could not be made.
type Departmental = Result<DepartmentFigures, String>;

/// One model on the site's test rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// Accuracy, mean log loss, AUC (binary tasks) and the test rows.
    #[serde(flatten)]
    pub metrics: SiteMetrics,
}

/// The local-only baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baseline {
    /// On the site's test rows.
    #[serde(flatten)]
    pub metrics: SiteMetrics,
    /// How it was trained.
    pub training: String,
    /// Its training rows.
    pub n_train: u64,
}

/// The model a continued run started from, at this site.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Continued {
    /// Its file.
    pub from: String,
    /// Elastic weight consolidation's lambda, with this site's own
    /// importance (`None`: plain continued training here).
    pub ewc_lambda: Option<f32>,
    /// On this site's test rows: what the final global model is compared
    /// with.
    #[serde(flatten)]
    pub before: SiteMetrics,
}

/// The privacy this site spent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrivacySpent {
    /// The plan's mode: off, central or local.
    pub mode: String,
    /// With local DP: this site's epsilon over its trainings (its own ledger).
    pub local_epsilon: Option<f64>,
    /// The delta of the epsilon.
    pub delta: Option<f64>,
    /// Trainings this site ran (each a DP release under local DP).
    pub trainings: usize,
    /// What this site cannot see from here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A site's report: the global model against its local-only baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteReport {
    /// The site.
    pub site: String,
    /// The run.
    pub run_id: String,
    /// The plan's name and hash.
    pub plan: String,
    /// SHA-256 of the plan (as in the model file).
    pub plan_hash: String,
    /// The round whose global model this is.
    pub model_round: u32,
    /// The final global model on this site's test rows.
    pub global: Figures,
    /// This site's personalized model (a personalized strategy's, or
    /// fine-tuned), on the same test rows; absent where the plan does not
    /// personalize. It never left the site.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub personalized: Option<Figures>,
    /// Under an aggregator: its last regional model, which this site's
    /// personalized model is fine-tuned from, on the same test rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regional: Option<Figures>,
    /// Under IFCA: the cluster this site took at its last training (from
    /// 0); its personalized model is that cluster's model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<usize>,
    /// Under a personalized strategy, when this process did not train from
    /// the first round and restored no saved state (a late join, or a
    /// restart without its `--local-state` file): the first round it
    /// trained, from which its personal model is made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub personal_from_round: Option<u32>,
    /// With `[personalization] department`: the global model, this site's
    /// model and each department's (this site's fine-tuned on the
    /// department's training rows) on each department's test rows, by
    /// department. Never sent anywhere.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub departments: DepartmentFigures,
    /// Continual learning (`--continue-from`): the model this site
    /// continued from, on the same test rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continued: Option<Continued>,
    /// A model trained on this site's rows alone, on the same test rows.
    pub local_baseline: Baseline,
    /// Global accuracy minus the baseline's (`null` without test rows).
    pub gain: Option<f64>,
    /// The privacy this site spent.
    pub privacy: PrivacySpent,
}

impl SiteResults {
    /// The results of the run `ready` ended, at `site`; with a plan that
    /// personalizes, the site's own model is made here, as the simulator
    /// makes it (`Site::personalized`).
    pub(crate) fn of(site: String, ready: crate::Ready) -> SiteResults {
        let plan = ready.plan;
        let cluster = ready.site.as_ref().and_then(tessera_engine::Site::cluster);
        let personal = match (plan.personalizes(), ready.site, ready.takeaway.last_model()) {
            (true, Some(mut own), Some((_, global))) => Some(
                personal_and_departments(
                    &plan,
                    &mut own,
                    (&global, ready.takeaway.regional.as_deref()),
                    (&ready.train, &ready.test),
                    ready
                        .takeaway
                        .departments
                        .as_ref()
                        .map(|d| (d, &ready.takeaway.agreement)),
                )
                .map_err(|e| e.to_string()),
            ),
            (true, _, _) => Some(Err(
                "the run ended before this site trained and evaluated a model".to_string(),
            )),
            (false, _, _) => None,
        };
        SiteResults {
            site,
            run_id: ready.run_id,
            plan,
            train: ready.train,
            test: ready.test,
            takeaway: ready.takeaway,
            personal,
            cluster,
        }
    }

    /// This site's personalized model, where the plan personalizes, and
    /// its departments' figures.
    fn personal_figures(&self) -> Result<Option<&(ParameterSet, Departmental)>, ParticipantError> {
        match &self.personal {
            None => Ok(None),
            Some(Ok(personal)) => Ok(Some(personal)),
            Some(Err(why)) => Err(ParticipantError::Local(format!(
                "this site's personalized model: {why}"
            ))),
        }
    }

    /// This site's personalized model, where the plan personalizes.
    fn personal(&self) -> Result<Option<&ParameterSet>, ParticipantError> {
        Ok(self.personal_figures()?.map(|(parameters, _)| parameters))
    }

    /// With `[personalization] department`: every level on each of this
    /// site's departments' test rows, by department (empty otherwise).
    pub fn departments(&self) -> Result<DepartmentFigures, ParticipantError> {
        match self.personal_figures()? {
            None => Ok(BTreeMap::new()),
            Some((_, Ok(departments))) => Ok(departments.clone()),
            Some((_, Err(why))) => Err(ParticipantError::Local(format!(
                "this site's departments: {why}"
            ))),
        }
    }

    /// The final global model (the one it serves: under IFCA the cluster
    /// of the largest share, under multi-task the body and this site's
    /// task's head) and its round.
    fn model(&self) -> Result<(u32, Cow<'_, ParameterSet>), ParticipantError> {
        let (round, global) = self.takeaway.model.as_ref().ok_or_else(|| {
            ParticipantError::Local(
                "the run ended before this site evaluated any global model".into(),
            )
        })?;
        let served = self.plan.served_to(global, &self.site);
        let served = served.map_err(|e| ParticipantError::Local(e.to_string()))?;
        Ok((*round, served))
    }

    /// The final global model as a model file, with this site's
    /// standardisation (the statistics it applied to its rows).
    pub fn model_file(&self) -> Result<ModelFile, ParticipantError> {
        let (round, parameters) = self.model()?;
        self.file_of(round, parameters.into_owned(), "")
    }

    /// This site's personalized model as a model file (`None` where the
    /// plan does not personalize), with this site's standardisation.
    pub fn personal_model_file(&self) -> Result<Option<ModelFile>, ParticipantError> {
        let Some(parameters) = self.personal()? else {
            return Ok(None);
        };
        let (round, _) = self.model()?;
        self.file_of(round, parameters.clone(), ", personalized")
            .map(Some)
    }

    /// This site's own importance of the final global model's parameters
    /// (the diagonal Fisher information on up to 1,000 of its training rows,
    /// the largest scaled to 1, as the simulator's `--site-importance-out`
    /// measures it) as a model file: for a later run at this site with
    /// `--ewc-lambda`. Refused under a plan with DP, which does not account
    /// for it; it never leaves the site.
    pub fn importance_file(&self) -> Result<ModelFile, ParticipantError> {
        let local = |e: String| ParticipantError::Local(format!("--importance-out: {e}"));
        if self.plan.privacy.mode != PrivacyMode::Off {
            return Err(local(format!(
                "the importance is a statistic of this site's rows without noise, which the \
                 plan's {:?} DP does not account for",
                self.plan.privacy.mode
            )));
        }
        if !self.plan.compression.download.is_identity() {
            return Err(local(
                "under a download codec ([compression] download) this site holds the final \
                 model only approximately"
                    .into(),
            ));
        }
        let (round, parameters) = self.model()?;
        let mut model = self
            .plan
            .learner(
                self.takeaway.agreement.feature_names().len(),
                self.takeaway.agreement.classes.len(),
            )
            .map_err(|e| local(e.to_string()))?;
        model
            .set_parameters(&parameters)
            .map_err(|e| local(e.to_string()))?;
        let importance = tessera_engine::continual::site_importance(model.as_ref(), &self.train)
            .map_err(|e| local(e.to_string()))?;
        self.file_of(
            round,
            importance,
            ", importance (diagonal Fisher information on this site's rows, largest 1)",
        )
    }

    fn file_of(
        &self,
        round: u32,
        parameters: ParameterSet,
        what: &str,
    ) -> Result<ModelFile, ParticipantError> {
        let config = self.plan.data.standardize.clone();
        let source = if !config.enabled {
            "none".to_string()
        } else if config.scope == ScaleScope::Federation {
            "federation".to_string()
        } else {
            format!("site:{}", self.site)
        };
        let standardization = Standardization {
            config,
            source: Some(source),
            mean: Some(self.takeaway.scaler.mean.clone()),
            scale: Some(self.takeaway.scaler.scale.clone()),
        };
        let mut file = ModelFile::new(
            &self.plan,
            &self.takeaway.agreement,
            standardization,
            RunInfo {
                id: Some(self.run_id.clone()),
                written_by: format!("participant {}{what}", self.site),
            },
            round,
            parameters,
        )
        .map_err(|e| ParticipantError::Local(e.to_string()))?;
        if let Some(hash) = &self.takeaway.run_plan_hash {
            file.header.plan.hash = hash.clone();
        }
        // A continued run names the model it continued from as the parent:
        // this site checked the run starts from it (the agreement's digest).
        if let Some(continual) = &self.takeaway.continual {
            file.header.lineage.parent = format!(
                "{}, parameters sha256 {} (this site's --continue-from, the run's initial model)",
                continual.from,
                tessera_engine::model_file::parameters_sha256(&continual.anchor)
            );
        }
        Ok(file)
    }

    /// The final global model's round and its figures on this site's test rows.
    pub fn global(&self) -> Result<(u32, SiteMetrics), ParticipantError> {
        let (round, parameters) = self.model()?;
        Ok((round, self.evaluate(&parameters)?))
    }

    /// Continual learning: the model this site continued from, on its
    /// test rows (`None` without `--continue-from`).
    pub fn continued(&self) -> Result<Option<Continued>, ParticipantError> {
        let Some(continual) = &self.takeaway.continual else {
            return Ok(None);
        };
        Ok(Some(Continued {
            from: continual.from.clone(),
            ewc_lambda: continual.ewc.as_ref().map(|(lambda, _)| *lambda),
            before: self.evaluate(&continual.anchor)?,
        }))
    }

    /// This site's personalized model on its test rows (`None` where the
    /// plan does not personalize).
    pub fn personalized(&self) -> Result<Option<SiteMetrics>, ParticipantError> {
        self.personal()?.map(|p| self.evaluate(p)).transpose()
    }

    fn evaluate(&self, parameters: &ParameterSet) -> Result<SiteMetrics, ParticipantError> {
        let local = |e: tessera_learn::LearnError| ParticipantError::Local(e.to_string());
        let (n_features, n_classes) = (
            self.takeaway.agreement.feature_names().len(),
            self.takeaway.agreement.classes.len(),
        );
        let mut model = self
            .plan
            .learner(n_features, n_classes)
            .map_err(|e| ParticipantError::Local(e.to_string()))?;
        model.set_parameters(parameters).map_err(local)?;
        Ok(site_metrics(&model.evaluate(&self.test).map_err(local)?))
    }

    /// The report: the global model and the local-only baseline on this
    /// site's test rows, and the privacy spent.
    pub fn report(&self) -> Result<SiteReport, ParticipantError> {
        let local = |e: tessera_learn::LearnError| ParticipantError::Local(e.to_string());
        let (round, global) = self.global()?;
        let plan = &self.plan;
        let (n_features, n_classes) = (
            self.takeaway.agreement.feature_names().len(),
            self.takeaway.agreement.classes.len(),
        );
        let training = plan.baseline_training();
        let initial = plan
            .learner(n_features, n_classes)
            .map_err(|e| ParticipantError::Local(e.to_string()))?;
        let (baseline, choice) = fit_baseline(
            plan,
            initial.as_ref(),
            &self.train,
            &self.takeaway.scaler.scale,
            &self.takeaway.agreement.indicators(),
            &self.site,
        )
        .map_err(local)?;
        let baseline = site_metrics(&baseline.evaluate(&self.test).map_err(local)?);
        let ledger = self.takeaway.ledger.as_ref();
        let privacy = PrivacySpent {
            mode: format!("{:?}", plan.privacy.mode).to_lowercase(),
            local_epsilon: ledger.map(|l| l.participant_epsilon(&self.site)),
            delta: ledger.map(|l| l.budgets().delta),
            trainings: self.takeaway.trained.len(),
            note: (plan.privacy.mode == PrivacyMode::Central).then(|| {
                "central DP: the coordinator's releases protect every site alike; see \
                 `tessera privacy --db` at the coordinator"
                    .to_string()
            }),
        };

        Ok(SiteReport {
            site: self.site.clone(),
            run_id: self.run_id.clone(),
            plan: plan.name.clone(),
            plan_hash: plan_hash(plan),
            model_round: round,
            gain: global.accuracy.zip(baseline.accuracy).map(|(g, b)| g - b),
            global: Figures { metrics: global },
            personalized: self.personalized()?.map(|metrics| Figures { metrics }),
            // A department that failed leaves the rest of the report whole.
            departments: self.departments().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the report goes without departments");
                BTreeMap::new()
            }),
            regional: self
                .takeaway
                .regional
                .as_deref()
                .map(|r| self.evaluate(r).map(|metrics| Figures { metrics }))
                .transpose()?,
            cluster: self.cluster,
            personal_from_round: self.takeaway.first_training().filter(|&first| {
                first > 1
                    && plan.federation.strategy.needs().personal
                    && self.takeaway.restored.is_none()
            }),
            continued: self.continued()?,
            local_baseline: Baseline {
                metrics: baseline,
                training: format!(
                    "the plan's initial model trained on this site's training rows alone \
                     ({}; batch size {}, as `simulate --baselines`)",
                    choice.as_ref().map_or_else(
                        || match (training.epochs, training.steps) {
                            (_, Some(steps)) => format!("{steps} steps"),
                            (Some(epochs), None) => format!("{epochs} epochs"),
                            (None, None) => "the plan's local training".to_string(),
                        },
                        BaselineChoice::describe
                    ),
                    training.batch_size
                ),
                n_train: self.train.n_rows() as u64,
            },
            privacy,
        })
    }
}
