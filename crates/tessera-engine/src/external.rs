//! External learners: a site whose model and rows live outside Tessera (a
//! Python model, say) and which does its own local training. The site's
//! strategy part, compression, error feedback and everything after the
//! update stay Tessera's; the learner only trains from the global
//! parameters and evaluates them. Every number it returns is checked here
//! before anything uses it.

use std::collections::BTreeMap;

use tessera_aggregate::{Instructions, LocalAlgorithm};
use tessera_core::{
    CoreError, FitStats, GradientTerm, LocalDp, LocalModel, ParameterSet, SeededRng, Update,
};
use tessera_learn::{Evaluation, LocalPlan, TrainingConfig};
use thiserror::Error;

use crate::{DpSgd, EngineError, FitTask};

/// The most examples one site may report for one call (2^40, about 10^12).
pub const MAX_EXAMPLES: u64 = 1 << 40;

/// Named numbers a learner reports beside its result.
pub type Metrics = BTreeMap<String, f64>;

/// What an external learner is told for one round's local training.
///
/// The strategy's part is one rule for every strategy: add
/// `proximal_mu * (w - global) + correction` to every gradient (FedProx:
/// `mu` and no correction; SCAFFOLD: no `mu`, the correction `c - c_i`;
/// FedDyn: `alpha` and the correction `-g_i`; FedAvg and the server
/// optimisers: nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct FitConfig {
    /// The round, from 1.
    pub round: u32,
    /// The strategy's instructions by name: `plain`, `fedprox`, `scaffold`, `feddyn`.
    pub strategy: &'static str,
    /// The weight of the pull toward the global parameters (0 without one).
    pub proximal_mu: f32,
    /// The constant the strategy adds to every gradient, shaped like the
    /// parameters (SCAFFOLD's `c - c_i`, FedDyn's `-g_i`); `None` for the others.
    pub correction: Option<ParameterSet>,
    /// The plan's learning rate for local training (SCAFFOLD derives the
    /// site's control variate from it and the steps the learner reports).
    pub lr: f32,
    /// The plan's batch size.
    pub batch_size: usize,
    /// The plan's local epochs a round, when it counts epochs.
    pub epochs: Option<u64>,
    /// The plan's local steps a round, when it counts steps.
    pub steps: Option<u64>,
    /// Local DP: the DP-SGD the learner must run (`None` without local DP).
    pub dp: Option<DpFit>,
}

/// The DP-SGD an external learner runs under local DP, as the site's
/// accounting assumes it: every step draws a Poisson batch (each row with
/// probability `sampling_rate`), clips each example's gradient to
/// `clip_norm` and adds Gaussian noise of standard deviation
/// `noise_multiplier * clip_norm` to their sum; at most `max_steps` steps.
/// The learner reports the steps it took (`n_steps`); its example count must
/// be the site's declared training rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpFit {
    /// Noise standard deviation over the clipping norm.
    pub noise_multiplier: f64,
    /// Per-example gradient norm bound.
    pub clip_norm: f64,
    /// Each row's probability of being in a step's batch.
    pub sampling_rate: f64,
    /// The most steps the site accounted for.
    pub max_steps: u64,
    /// A seed for the learner's batches and noise, from the site's secret key
    /// (a fresh one each training; never the run seed).
    pub seed: u64,
}

/// What an external learner is told when it evaluates the global model
/// (nothing yet; a struct so that it can grow).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvaluateConfig {}

/// What an external learner's local training returned, unchecked.
#[derive(Debug, Clone, PartialEq)]
pub struct FitResult {
    /// The trained parameters (not the change).
    pub parameters: ParameterSet,
    /// The training examples behind them (the FedAvg weight).
    pub n_examples: i64,
    /// Optional: `n_steps` (optimiser steps, required under SCAFFOLD) and
    /// `loss` or `train_loss` (the mean training loss).
    pub metrics: Metrics,
}

/// What an external learner's evaluation returned, unchecked.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluateResult {
    /// The mean loss over the rows evaluated.
    pub loss: f64,
    /// The rows evaluated.
    pub n_examples: i64,
    /// `accuracy` (a share in [0, 1]) or `n_correct` (rows predicted
    /// right), one of them required; `auc` optional.
    pub metrics: Metrics,
}

/// A site's own model and rows, trained and evaluated outside Tessera.
/// Calls come one at a time for one learner; they may come from any thread.
pub trait ExternalLearner: Send {
    /// The model's parameters as they start (the federation's layout: names,
    /// order and shapes).
    fn parameters(&mut self) -> Result<ParameterSet, ExternalError>;

    /// One round's local training from `global`, as `config` says.
    fn fit(
        &mut self,
        global: &ParameterSet,
        config: &FitConfig,
    ) -> Result<FitResult, ExternalError>;

    /// Evaluates `global` on the site's test rows.
    fn evaluate(
        &mut self,
        global: &ParameterSet,
        config: &EvaluateConfig,
    ) -> Result<EvaluateResult, ExternalError>;

    /// Whether calls into different learners gain from running on several
    /// threads at once. A learner whose every call takes one process-wide
    /// lock (Python's GIL) says no, and a simulator calls such sites one at
    /// a time on one thread, which spares a thread hand-off per call.
    fn parallel(&self) -> bool {
        true
    }
}

/// Why an external learner's call did not give a usable result.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ExternalError {
    /// The learner itself failed (an exception in its code).
    #[error("{call} failed: {message}")]
    Failed {
        /// The call: `get_parameters`, `fit` or `evaluate`.
        call: &'static str,
        /// What the learner said.
        message: String,
    },
    /// The learner returned something Tessera refuses.
    #[error("{call} returned {what}")]
    Refused {
        /// The call: `get_parameters`, `fit` or `evaluate`.
        call: &'static str,
        /// What was wrong, and what is expected.
        what: String,
    },
}

impl ExternalError {
    /// The learner failed in `call`.
    pub fn failed(call: &'static str, message: impl Into<String>) -> Self {
        Self::Failed {
            call,
            message: message.into(),
        }
    }

    /// `call` returned something unusable, as `what` says.
    pub fn refused(call: &'static str, what: impl Into<String>) -> Self {
        Self::Refused {
            call,
            what: what.into(),
        }
    }
}

/// Checks a learner's initial parameters: at least one value, all finite.
pub fn check_initial(parameters: &ParameterSet) -> Result<(), ExternalError> {
    const CALL: &str = "get_parameters";
    if parameters.n_values() == 0 {
        return Err(ExternalError::refused(
            CALL,
            "no parameters (no values at all)",
        ));
    }
    parameters
        .check_finite()
        .map_err(|e| ExternalError::refused(CALL, e.to_string()))
}

/// Checks parameters a call returned against the layout of `global`.
fn check_parameters(
    call: &'static str,
    global: &ParameterSet,
    parameters: &ParameterSet,
) -> Result<(), ExternalError> {
    global.check_same_layout(parameters).map_err(|e| {
        ExternalError::refused(
            call,
            format!("parameters of another layout than the global model's: {e}"),
        )
    })?;
    parameters
        .check_finite()
        .map_err(|e| ExternalError::refused(call, e.to_string()))
}

/// An example count: not negative, at most [`MAX_EXAMPLES`].
fn check_count(call: &'static str, n: i64) -> Result<u64, ExternalError> {
    let n = u64::try_from(n)
        .map_err(|_| ExternalError::refused(call, format!("a negative example count ({n})")))?;
    if n > MAX_EXAMPLES {
        return Err(ExternalError::refused(
            call,
            format!("an example count of {n}, more than the {MAX_EXAMPLES} a site may report"),
        ));
    }
    Ok(n)
}

/// Every metric finite.
fn check_metrics(call: &'static str, metrics: &Metrics) -> Result<(), ExternalError> {
    match metrics.iter().find(|(_, v)| !v.is_finite()) {
        Some((name, v)) => Err(ExternalError::refused(
            call,
            format!("metric '{name}' = {v}, not a finite number"),
        )),
        None => Ok(()),
    }
}

/// A metric that must be a whole number of at least 0 when present.
fn count_metric(
    call: &'static str,
    metrics: &Metrics,
    name: &str,
) -> Result<Option<u64>, ExternalError> {
    match metrics.get(name) {
        None => Ok(None),
        Some(&v) if v >= 0.0 && v.fract() == 0.0 && v <= MAX_EXAMPLES as f64 => Ok(Some(v as u64)),
        Some(v) => Err(ExternalError::refused(
            call,
            format!("metric '{name}' = {v}, not a whole number from 0 to {MAX_EXAMPLES}"),
        )),
    }
}

/// Checks what a learner's training returned against `global`: the
/// trained parameters, their example count, the statistics it reported
/// (`n_steps` required, at least 1, where `needs_steps` says why).
pub fn check_fit(
    global: &ParameterSet,
    fit: &FitResult,
    needs_steps: Option<&str>,
) -> Result<(u64, FitStats), ExternalError> {
    const CALL: &str = "fit";
    check_parameters(CALL, global, &fit.parameters)?;
    let n = check_count(CALL, fit.n_examples)?;
    if n == 0 {
        return Err(ExternalError::refused(
            CALL,
            "n_examples = 0: an update must come from at least one training example",
        ));
    }
    check_metrics(CALL, &fit.metrics)?;
    let n_steps = count_metric(CALL, &fit.metrics, "n_steps")?;
    if let Some(why) = needs_steps.filter(|_| n_steps.is_none_or(|s| s == 0)) {
        return Err(ExternalError::refused(
            CALL,
            format!("no metric 'n_steps' of at least 1: {why}, so fit must report them"),
        ));
    }
    let loss = fit.metrics.get("loss").or(fit.metrics.get("train_loss"));
    Ok((
        n,
        FitStats {
            n_steps: n_steps.unwrap_or(0),
            mean_train_loss: loss.copied().unwrap_or(0.0),
            start_loss: None,
        },
    ))
}

/// Checks what a learner's evaluation returned and makes it an
/// [`Evaluation`]: `loss_sum = loss * n`, rows right from `n_correct` or
/// from `accuracy * n` (rounded).
pub fn check_evaluation(result: &EvaluateResult) -> Result<Evaluation, ExternalError> {
    const CALL: &str = "evaluate";
    if !(result.loss.is_finite() && result.loss >= 0.0) {
        return Err(ExternalError::refused(
            CALL,
            format!("loss = {}, not a finite number of at least 0", result.loss),
        ));
    }
    let n = check_count(CALL, result.n_examples)?;
    check_metrics(CALL, &result.metrics)?;
    let n_correct = match (
        count_metric(CALL, &result.metrics, "n_correct")?,
        result.metrics.get("accuracy"),
    ) {
        (Some(k), _) => k,
        (None, Some(&a)) if (0.0..=1.0).contains(&a) => (a * n as f64).round() as u64,
        (None, Some(a)) => {
            return Err(ExternalError::refused(
                CALL,
                format!("metric 'accuracy' = {a}, not a share in [0, 1]"),
            ));
        }
        (None, None) => {
            return Err(ExternalError::refused(
                CALL,
                "no accuracy: its metrics need 'accuracy' (a share in [0, 1]) or 'n_correct'",
            ));
        }
    };
    if n_correct > n {
        return Err(ExternalError::refused(
            CALL,
            format!("{n_correct} rows right of {n} evaluated"),
        ));
    }
    let auc = match result.metrics.get("auc") {
        Some(&a) if (0.0..=1.0).contains(&a) => Some(a),
        Some(a) => {
            return Err(ExternalError::refused(
                CALL,
                format!("metric 'auc' = {a}, not in [0, 1]"),
            ));
        }
        None => None,
    };
    Ok(Evaluation {
        n_examples: n,
        loss_sum: result.loss * n as f64,
        n_correct,
        auc,
        histogram: None,
    })
}

/// The local training an external learner is asked for, before the
/// strategy's part is added: round and the plan's settings.
fn base_config(round: u32, instructions: &Instructions, training: &TrainingConfig) -> FitConfig {
    FitConfig {
        round,
        strategy: instructions.name(),
        proximal_mu: match instructions {
            Instructions::Proximal { mu } => *mu,
            Instructions::FedDyn { alpha } => *alpha,
            Instructions::Plain
            | Instructions::Scaffold { .. }
            | Instructions::Ditto { .. }
            | Instructions::FedPer { .. }
            | Instructions::FedRep { .. }
            | Instructions::PerFedAvg { .. }
            | Instructions::Apfl { .. }
            | Instructions::Ifca { .. }
            | Instructions::Multitask { .. }
            | Instructions::Qffl { .. } => 0.0,
        },
        correction: None,
        lr: training.optimizer.lr,
        batch_size: training.batch_size,
        epochs: training.epochs,
        steps: training.steps,
        dp: None,
    }
}

/// An external site's learner and what the site knows of it.
pub(crate) struct ExternalSite<'a> {
    pub learner: &'a mut dyn ExternalLearner,
    /// The rows it trains on, as the site declared them.
    pub train_rows: Option<usize>,
    /// The plan's local training.
    pub training: &'a TrainingConfig,
}

/// One round of an external site: the strategy's local part (kept by the
/// site between rounds) drives the learner as it drives a built-in model;
/// with local DP, wrapped in the site's DP-SGD, which takes the site's next
/// training (and refuses once it has trained every round of the plan).
pub(crate) fn fit(
    site: ExternalSite<'_>,
    local: &mut dyn LocalAlgorithm,
    dp: Option<&mut DpSgd>,
    task: &FitTask,
) -> Result<Update, EngineError> {
    let mut model = ExternalModel {
        learner: site.learner,
        config: base_config(task.round, &task.instructions, site.training),
        constant_term: matches!(
            task.instructions,
            Instructions::Scaffold { .. } | Instructions::FedDyn { .. }
        ),
        current: task.global.as_ref().clone(),
        n_examples: 0,
        train_rows: site.train_rows,
        training: site.training,
        failure: None,
    };
    let mut private;
    let local: &mut dyn LocalAlgorithm = match dp {
        Some(dp) => {
            let rows = site.train_rows.ok_or_else(|| {
                EngineError::State("local DP: the site declared no training rows".into())
            })?;
            private = dp.around(local, rows, task.round)?;
            &mut private
        }
        None => local,
    };
    let fit = local.fit(&task.instructions, task.global.as_ref(), &mut model);
    let fit = match (fit, model.failure) {
        (Err(_), Some(failure)) => return Err(failure.into()),
        (fit, _) => fit?,
    };
    Ok(Update {
        delta: fit.delta,
        n_examples: model.n_examples,
        aux: fit.aux,
        stats: fit.stats,
    })
}

/// Evaluates `global` with an external learner, checked.
pub(crate) fn evaluate(
    learner: &mut dyn ExternalLearner,
    global: &ParameterSet,
) -> Result<Evaluation, EngineError> {
    let result = learner.evaluate(global, &EvaluateConfig::default())?;
    Ok(check_evaluation(&result)?)
}

/// An external learner as a strategy's local part sees it: it sets the
/// global parameters, trains once (the learner's `fit`) and reads the result.
struct ExternalModel<'a> {
    learner: &'a mut dyn ExternalLearner,
    config: FitConfig,
    /// Whether the strategy's term has a constant part to send (SCAFFOLD, FedDyn).
    constant_term: bool,
    current: ParameterSet,
    n_examples: u64,
    train_rows: Option<usize>,
    training: &'a TrainingConfig,
    failure: Option<ExternalError>,
}

impl ExternalModel<'_> {
    fn failed(&mut self, error: ExternalError) -> CoreError {
        let shown = CoreError::Invalid(error.to_string());
        self.failure = Some(error);
        shown
    }
}

impl LocalModel for ExternalModel<'_> {
    fn parameters(&self) -> &ParameterSet {
        &self.current
    }

    fn set_parameters(&mut self, parameters: &ParameterSet) -> Result<(), CoreError> {
        self.current.check_same_layout(parameters)?;
        self.current = parameters.clone();
        Ok(())
    }

    fn n_rows(&self) -> usize {
        usize::try_from(self.n_examples).unwrap_or(usize::MAX)
    }

    fn lr(&self) -> f32 {
        self.config.lr
    }

    fn weight_decay(&self) -> f32 {
        // The learner's optimiser is its own.
        0.0
    }

    fn train(&mut self, term: Option<&dyn GradientTerm>) -> Result<FitStats, CoreError> {
        self.train_with(term, None)
    }

    fn train_private(
        &mut self,
        term: Option<&dyn GradientTerm>,
        dp: &LocalDp,
        rng: &mut SeededRng,
    ) -> Result<FitStats, CoreError> {
        let Some(rows) = self.train_rows else {
            return Err(CoreError::Invalid(
                "local DP: the site declared no training rows".into(),
            ));
        };
        let plan = LocalPlan::plain(self.training);
        let max_steps = plan
            .n_steps(rows)
            .map_err(|e| CoreError::Invalid(e.to_string()))?;
        let dp = DpFit {
            noise_multiplier: dp.noise_multiplier,
            clip_norm: dp.clip_norm,
            sampling_rate: plan.sampling_rate(rows),
            max_steps,
            seed: rng.next_u64(),
        };
        self.train_with(term, Some((dp, rows)))
    }
}

impl ExternalModel<'_> {
    /// One call of the learner's `fit`, checked; under local DP (`dp`, with
    /// the site's declared rows) its example count must be those rows and
    /// its steps reported, from 1 to the bound the site accounted for.
    fn train_with(
        &mut self,
        term: Option<&dyn GradientTerm>,
        dp: Option<(DpFit, usize)>,
    ) -> Result<FitStats, CoreError> {
        let mut config = self.config.clone();
        config.dp = dp.map(|(dp, _)| dp);
        if let Some(term) = term.filter(|_| self.constant_term) {
            // The term's value at the start: its constant part (the
            // proximal part is zero there and travels as `proximal_mu`).
            term.check(&self.current)?;
            let mut correction = self.current.zeros_like();
            term.add(&mut correction, &self.current);
            config.correction = Some(correction);
        }
        let result = match self.learner.fit(&self.current, &config) {
            Ok(result) => result,
            Err(e) => return Err(self.failed(e)),
        };
        let needs_steps = if dp.is_some() {
            Some("local DP accounts the DP-SGD steps the learner took")
        } else if config.strategy == "scaffold" {
            Some(
                "SCAFFOLD derives the site's control variate from the optimiser steps taken \
                 (and config's lr)",
            )
        } else {
            None
        };
        let checked =
            check_fit(&self.current, &result, needs_steps).and_then(|(n, stats)| match dp {
                Some((dp, rows)) => check_private(&dp, rows, n, &stats).map(|()| (n, stats)),
                None => Ok((n, stats)),
            });
        match checked {
            Ok((n, stats)) => {
                self.current = result.parameters;
                self.n_examples = n;
                Ok(stats)
            }
            Err(e) => Err(self.failed(e)),
        }
    }
}

/// Checks a private training's report against what the site accounted
/// for: its example count is the site's declared rows (a larger one would
/// understate the sampling rate), its steps at most the bound.
fn check_private(dp: &DpFit, rows: usize, n: u64, stats: &FitStats) -> Result<(), ExternalError> {
    const CALL: &str = "fit";
    if n != rows as u64 {
        return Err(ExternalError::refused(
            CALL,
            format!(
                "n_examples = {n} under local DP, where the site declared {rows} training \
                 rows: its privacy is accounted with a sampling rate of batch size over \
                 those rows, so fit must train on them and report them"
            ),
        ));
    }
    if stats.n_steps > dp.max_steps {
        return Err(ExternalError::refused(
            CALL,
            format!(
                "n_steps = {} under local DP, more than the {} DP-SGD steps the site \
                 accounted for (config's dp_max_steps); its update would spend privacy \
                 beyond the site's budget",
                stats.n_steps, dp.max_steps
            ),
        ));
    }
    Ok(())
}
