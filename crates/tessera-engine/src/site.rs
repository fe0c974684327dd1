//! The participant's side of a round.

use tessera_aggregate::{LocalAlgorithm, LocalPart};
use tessera_compress::{Codec, ErrorFeedback};
use tessera_core::{
    CoreError, FitStats, GradientTerm, LocalDp, LocalModel, ParameterSet, ParticipantId, SeededRng,
    Update, tag,
};
use tessera_data::Dataset;
use tessera_learn::{Evaluation, LearnError, Learner, LocalPlan, TrainingConfig};
use tessera_privacy::{DpEvent, PrivacyConfig};

use crate::{DpSgd, EngineError, ExternalLearner, FitTask, external, streams};

/// One participant: its model, its training rows, and what it keeps between
/// rounds (its strategy's local part, DP-SGD's count of trainings). Turns a
/// [`FitTask`] into an [`Update`] the same way in simulation and deployment.
/// Its model is a built-in learner trained on the rows it is given, or an
/// [`ExternalLearner`] that holds its own rows ([`Site::external`]).
pub struct Site {
    id: ParticipantId,
    model: Model,
    /// (Shared: a simulation holds a million sites with the same settings.)
    training: std::sync::Arc<TrainingConfig>,
    seed: u64,
    /// The strategy's local part and its state (SCAFFOLD's control
    /// variate), made from the instructions the site receives.
    local: LocalPart,
    /// Local DP-SGD around the local part, keyed with the site's secret.
    /// (This and the error feedback are boxed: most sites have neither,
    /// and a simulation holds a million sites.)
    dp: Option<Box<DpSgd>>,
    /// Error feedback: what earlier compressed updates left out.
    feedback: Option<Box<ErrorFeedback>>,
    /// Continual learning: the pull toward an earlier model added to every
    /// local training.
    elastic: Option<std::sync::Arc<crate::continual::Elastic>>,
    /// Error feedback as it was before the last round's update was encoded,
    /// so that encoding that round's update again (a retry after a lost
    /// connection) gives the same bytes and counts the residual once.
    feedback_before: Option<Box<(u32, ErrorFeedback)>>,
}

impl Site {
    /// A participant training `learner` with `training` settings; `seed` is the run seed.
    pub fn new(
        id: ParticipantId,
        learner: Box<dyn Learner>,
        training: TrainingConfig,
        seed: u64,
    ) -> Self {
        Self {
            id,
            model: Model::BuiltIn(learner),
            training: std::sync::Arc::new(training),
            seed,
            local: LocalPart::default(),
            dp: None,
            feedback: None,
            elastic: None,
            feedback_before: None,
        }
    }

    /// Continual learning: every local training from now on adds the pull
    /// toward an earlier model (`None`: no pull).
    pub fn set_elastic(&mut self, elastic: Option<std::sync::Arc<crate::continual::Elastic>>) {
        self.elastic = elastic;
    }

    /// The site `plan` sets up, the same in simulation, at a participant and
    /// at a gossip peer: the plan's local training and run seed; error
    /// feedback when an upload codec compresses; with local DP, DP-SGD keyed
    /// with the site's secret key, which `secret_key` draws only then (from
    /// the operating system in deployment, derived in simulation).
    pub fn of_plan<E>(
        plan: &crate::Plan,
        id: ParticipantId,
        learner: Box<dyn Learner>,
        secret_key: impl FnOnce() -> Result<[u8; 32], E>,
    ) -> Result<Self, E> {
        let mut site =
            Site::new(id, learner, plan.local_training(), plan.seed).of_compression(plan);
        if plan.privacy.mode == tessera_privacy::PrivacyMode::Local {
            site = site.with_local_dp(plan.privacy.clone(), plan.federation.rounds, secret_key()?);
        }
        Ok(site)
    }

    /// A participant whose local training and evaluation `learner` does on
    /// rows of its own (the rows [`Site::fit`] and [`Site::evaluate`] are
    /// given are not used), set up as `plan` says: its local training
    /// settings (passed on to the learner), run seed and error feedback.
    ///
    /// With local DP the learner runs DP-SGD itself, with the noise
    /// multiplier, clipping norm, sampling rate and step bound it is given,
    /// and reports the steps it took; the site accounts them as a built-in
    /// site does, which needs its `train_rows` (the sampling rate is the
    /// batch size over them) and a secret key, which `secret_key` draws only
    /// then (the seed each training hands the learner derives from it).
    pub fn external(
        plan: &crate::Plan,
        id: ParticipantId,
        learner: Box<dyn ExternalLearner>,
        train_rows: Option<usize>,
        secret_key: impl FnOnce() -> Result<[u8; 32], EngineError>,
    ) -> Result<Self, EngineError> {
        let local_dp = plan.privacy.mode == tessera_privacy::PrivacyMode::Local;
        if local_dp && train_rows.is_none_or(|n| n == 0) {
            return Err(EngineError::State(format!(
                "site '{id}': local DP accounts each training by the site's rows (its \
                 sampling rate is the batch size over them), so a site with an external \
                 learner must declare its training rows under local DP"
            )));
        }
        let mut site = Self {
            id,
            model: Model::External {
                learner,
                train_rows,
            },
            training: std::sync::Arc::new(plan.local_training()),
            seed: plan.seed,
            local: LocalPart::default(),
            dp: None,
            feedback: None,
            elastic: None,
            feedback_before: None,
        };
        if local_dp {
            site = site.with_local_dp(plan.privacy.clone(), plan.federation.rounds, secret_key()?);
        }
        Ok(site.of_compression(plan))
    }

    /// Error feedback when the plan's upload codec compresses.
    fn of_compression(self, plan: &crate::Plan) -> Self {
        let compression = &plan.compression;
        if compression.error_feedback
            && compression.upload_codecs().iter().any(|c| !c.is_identity())
        {
            self.with_error_feedback()
        } else {
            self
        }
    }

    /// Keeps what a compressed update leaves out and adds it to the next one.
    pub fn with_error_feedback(mut self) -> Self {
        self.feedback = Some(Box::new(ErrorFeedback::new()));
        self
    }
    /// Compresses `update`'s delta with `codec` for `round`: returns the
    /// bytes that travel and leaves in `update` what the coordinator will
    /// decode from them. `shared_seed` makes random-k pick the coordinates
    /// every participant of the round picks (secure aggregation). Encoding the
    /// same round again starts from the residual the first encoding started
    /// from, so a retried upload sends the same bytes.
    pub fn encode_update(
        &mut self,
        update: &mut Update,
        codec: &Codec,
        round: u32,
        shared_seed: Option<u64>,
    ) -> Vec<u8> {
        let mut rng = SeededRng::derived(
            self.seed,
            &[streams::COMPRESS, u64::from(round), tag(self.id.as_str())],
        );
        let values: Vec<f32> = update.delta.values().collect();
        let seed = shared_seed.unwrap_or_else(|| rng.next_u64());
        let mut encode = |v: &[f32]| codec.encode_with_seed(v, seed, &mut rng);
        if let Some(feedback) = self.feedback.as_mut() {
            match self.feedback_before.as_deref() {
                Some((r, before)) if *r == round => **feedback = before.clone(),
                _ => self.feedback_before = Some(Box::new((round, (**feedback).clone()))),
            }
        }
        let encoded = match self.feedback.as_mut() {
            Some(feedback) => feedback.encode_with(&values, &mut encode),
            None => encode(&values),
        };
        for (d, v) in update.delta.values_mut().zip(&encoded.decoded) {
            *d = *v;
        }
        encoded.bytes
    }

    /// Trains with DP-SGD ([`DpSgd`], the plan's `[privacy]` in `local`
    /// mode) over a run of `rounds` rounds, around whatever local part the
    /// strategy has. All the randomness of local training then comes from
    /// `noise_key`, nothing of it from the run seed: see [`DpSgd`].
    pub fn with_local_dp(
        mut self,
        privacy: PrivacyConfig,
        rounds: u32,
        noise_key: [u8; 32],
    ) -> Self {
        self.dp = Some(Box::new(DpSgd::new(
            privacy,
            rounds,
            noise_key,
            TrainingConfig::clone(&self.training),
        )));
        self
    }

    /// With local DP: the DP event one round of training on `n_rows` rows is.
    pub fn local_dp_event(&self, n_rows: usize) -> Result<Option<DpEvent>, EngineError> {
        self.dp.as_ref().map(|dp| dp.event(n_rows)).transpose()
    }

    /// The DP event of the last local training, with local DP.
    pub fn last_dp_event(&self) -> Option<DpEvent> {
        self.dp.as_deref().and_then(DpSgd::last_event)
    }

    /// The participant's id.
    pub fn id(&self) -> &ParticipantId {
        &self.id
    }

    /// Local training steps a round takes on `n_rows` rows.
    pub fn n_steps(&self, n_rows: usize) -> Result<u64, EngineError> {
        Ok(LocalPlan::plain(&self.training).n_steps(n_rows)?)
    }

    /// Runs the task on `train`: the strategy's local part trains the site's
    /// model from the global parameters and returns the change (and the
    /// auxiliary sum its strategy asked for). With local DP the local part
    /// is wrapped in DP-SGD, whose batch sampling and noise come from the
    /// site's secret key only; without it, batches come from the public
    /// stream `derive_seed(run seed, [FIT, round, site])`.
    pub fn fit(&mut self, task: &FitTask, train: &Dataset) -> Result<Update, EngineError> {
        let mut made = None;
        let learner = match &mut self.model {
            Model::BuiltIn(learner) => learner,
            Model::OnDemand(shared) => made.insert(shared.make()),
            Model::External {
                learner,
                train_rows,
            } => {
                let site = external::ExternalSite {
                    learner: learner.as_mut(),
                    train_rows: *train_rows,
                    training: &self.training,
                };
                return external::fit(site, &mut self.local, self.dp.as_deref_mut(), task);
            }
        };
        let mut model = SiteModel {
            learner: learner.as_mut(),
            rows: train,
            elastic: self.elastic.as_deref(),
            training: &self.training,
            rng: public_rng(self.seed, task.round, &self.id),
            failure: None,
        };
        let mut private;
        let local: &mut dyn LocalAlgorithm = match &mut self.dp {
            Some(dp) => {
                private = dp.around(&mut self.local, train.n_rows(), task.round)?;
                &mut private
            }
            None => &mut self.local,
        };
        let fit = local.fit(&task.instructions, task.global.as_ref(), &mut model);
        // A learner's own error keeps its kind (divergence, a bad setting).
        let fit = match (fit, model.failure) {
            (Err(_), Some(failure)) => return Err(failure.into()),
            (fit, _) => fit?,
        };
        Ok(Update {
            delta: fit.delta,
            n_examples: train.n_rows() as u64,
            aux: fit.aux,
            stats: fit.stats,
        })
    }

    /// The norm of the error-feedback residual (0 without error feedback).
    pub fn residual_norm(&self) -> f64 {
        self.feedback.as_deref().map_or(0.0, ErrorFeedback::norm)
    }

    /// Tells the site how its last update fared: only an update that counted
    /// in a completed round moves its local part's state (SCAFFOLD keeps the
    /// server's `c` equal to the mean of the sites' `c_i`).
    pub fn round_closed(&mut self, update_counted: bool) {
        self.local.round_closed(update_counted);
    }

    /// The site's personal model after its last training (Ditto's personal
    /// model, FedPer's `global` body with the site's head); `None` under a
    /// strategy without one, or before the first training.
    pub fn personal_parameters(&self, global: &ParameterSet) -> Option<ParameterSet> {
        self.local.personal(global)
    }

    /// The cluster the site took at its last training (IFCA).
    pub fn cluster(&self) -> Option<usize> {
        self.local.cluster()
    }

    /// What the site's local part must keep across a restart of its
    /// process (a personalized strategy's personal model), with the name
    /// of the instructions it belongs to.
    pub fn local_state(&self) -> Option<(&'static str, ParameterSet)> {
        self.local.saved_state()
    }

    /// Takes back state an earlier process saved ([`Site::local_state`]),
    /// when instructions named `name` come.
    pub fn restore_local_state(&mut self, name: String, state: ParameterSet) {
        self.local.restore_state(name, state);
    }

    /// The model the site evaluates as its own after the last round of
    /// `plan`: its personal model (or `global` under a strategy without
    /// one), fine-tuned as `[personalization]` says on `finetune_rows`
    /// rows of `train` drawn at random (all by default), with rows and
    /// batches from the public stream of the round after the last. Never leaves the site.
    pub fn personalized(
        &mut self,
        plan: &crate::Plan,
        global: &ParameterSet,
        train: &Dataset,
    ) -> Result<ParameterSet, EngineError> {
        let start = match self.personal_parameters(global) {
            Some(own) => own,
            None => crate::PlanBuild::served(plan, global)?.into_owned(),
        };
        if !plan.personalization.fine_tunes() {
            return Ok(start);
        }
        let round = plan.federation.rounds.saturating_add(1);
        let mut rng = public_rng(self.seed, round, &self.id);
        let few = few_rows(plan, &mut rng, train);
        self.fine_tuned(plan, &start, few.as_ref().unwrap_or(train), rng)
    }

    /// `start` fine-tuned as `[personalization]` says on `rows`, with
    /// batches from `rng`.
    fn fine_tuned(
        &mut self,
        plan: &crate::Plan,
        start: &ParameterSet,
        rows: &Dataset,
        rng: SeededRng,
    ) -> Result<ParameterSet, EngineError> {
        self.trained(start, rows, &plan.finetune_training(), rng)
    }

    /// `start` trained with `training` on `rows`, batches from `rng`
    /// (after the run: the site's learner is free).
    pub(crate) fn trained(
        &mut self,
        start: &ParameterSet,
        rows: &Dataset,
        training: &TrainingConfig,
        mut rng: SeededRng,
    ) -> Result<ParameterSet, EngineError> {
        let mut made = None;
        let Some(learner) = built_in(&mut self.model, &mut made) else {
            return Err(EngineError::State(
                "fine-tuning needs a built-in model".into(),
            ));
        };
        learner.set_parameters(start)?;
        learner.fit(rows, &LocalPlan::plain(training), &mut rng)?;
        let tuned = learner.parameters().clone();
        tuned.check_finite()?;
        Ok(tuned)
    }

    /// The stream `tags` of the run seed.
    pub(crate) fn stream(&self, tags: &[u64]) -> SeededRng {
        SeededRng::derived(self.seed, tags)
    }

    /// The rows of `train` that [`Site::personalized`] fine-tunes on: the
    /// same `finetune_rows` drawn at random, or all of them.
    pub fn finetune_rows(&self, plan: &crate::Plan, train: &Dataset) -> Dataset {
        let round = plan.federation.rounds.saturating_add(1);
        let mut rng = public_rng(self.seed, round, &self.id);
        few_rows(plan, &mut rng, train).unwrap_or_else(|| train.clone())
    }

    /// Under `[contribution]`: this site's rows and mean gradient of its
    /// test loss at `served` (the round's start as served) over the first
    /// `max_rows` of its test `rows`, as the first-order attribution adds
    /// them ([`crate::attribution::site_gradient`]).
    pub fn test_gradient(
        &mut self,
        served: &ParameterSet,
        rows: &Dataset,
        max_rows: usize,
    ) -> Result<(u64, ParameterSet), EngineError> {
        let mut made = None;
        let Some(learner) = built_in(&mut self.model, &mut made) else {
            return Err(EngineError::State(
                "the first-order attribution takes a gradient of the test loss, which an \
                 external model does not give"
                    .into(),
            ));
        };
        learner.set_parameters(served)?;
        crate::attribution::site_gradient(learner.as_ref(), rows, max_rows)
    }

    /// Evaluates `parameters` on `rows`.
    pub fn evaluate(
        &mut self,
        parameters: &ParameterSet,
        rows: &Dataset,
    ) -> Result<Evaluation, EngineError> {
        if let Model::External { learner, .. } = &mut self.model {
            return external::evaluate(learner.as_mut(), parameters);
        }
        let mut made = None;
        let Some(learner) = built_in(&mut self.model, &mut made) else {
            return Err(EngineError::State("no built-in model".into()));
        };
        learner.set_parameters(parameters)?;
        Ok(learner.evaluate(rows)?)
    }

    /// This site's built-in learner made from `shared` for each use (and
    /// dropped after it) instead of held between uses: every use sets the
    /// learner's values first (training from the round's model, evaluation
    /// of the model given, fine-tuning from its start), so the results are
    /// the same bits, and a simulation of a million sites holds one model,
    /// not a million. A site with an external learner keeps it.
    /// Its local training settings are shared too, where they are the same.
    pub fn learner_on_demand(mut self, shared: &SharedLearner) -> Self {
        if matches!(self.model, Model::BuiltIn(_)) {
            self.model = Model::OnDemand(shared.clone());
        }
        if *self.training == *shared.training {
            self.training = std::sync::Arc::clone(&shared.training);
        }
        self
    }
}

/// A built-in learner shared by sites that make theirs for each use
/// ([`Site::learner_on_demand`]).
#[derive(Clone)]
pub struct SharedLearner {
    learner: std::sync::Arc<std::sync::Mutex<Box<dyn Learner>>>,
    training: std::sync::Arc<TrainingConfig>,
}

impl SharedLearner {
    /// Shares `learner` (its values do not matter: every use sets them) and
    /// the local `training` settings.
    pub fn new(learner: Box<dyn Learner>, training: TrainingConfig) -> Self {
        Self {
            learner: std::sync::Arc::new(std::sync::Mutex::new(learner)),
            training: std::sync::Arc::new(training),
        }
    }

    fn make(&self) -> Box<dyn Learner> {
        self.learner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone_box()
    }
}

/// `model`'s built-in learner: the one it holds, or one made into `made`
/// (on demand); `None` for an external model.
fn built_in<'a>(
    model: &'a mut Model,
    made: &'a mut Option<Box<dyn Learner>>,
) -> Option<&'a mut Box<dyn Learner>> {
    match model {
        Model::BuiltIn(learner) => Some(learner),
        Model::OnDemand(shared) => Some(made.insert(shared.make())),
        Model::External { .. } => None,
    }
}

/// A site's model: built in (held, or made for each use), or external.
enum Model {
    BuiltIn(Box<dyn Learner>),
    OnDemand(SharedLearner),
    External {
        learner: Box<dyn ExternalLearner>,
        /// The rows it trains on, as the site declared them.
        train_rows: Option<usize>,
    },
}

/// The plan's `finetune_rows` rows of `train` drawn without replacement
/// from `rng`; `None` for all of them.
fn few_rows(plan: &crate::Plan, rng: &mut SeededRng, train: &Dataset) -> Option<Dataset> {
    drawn_rows(rng, train, plan.personalization.finetune_rows?)
}

/// `n` rows of `train` drawn without replacement from `rng` (a partial
/// shuffle); `None` when `train` has no more than `n`.
fn drawn_rows(rng: &mut SeededRng, train: &Dataset, n: usize) -> Option<Dataset> {
    if n >= train.n_rows() {
        return None;
    }
    let mut order: Vec<usize> = (0..train.n_rows()).collect();
    for i in 0..n {
        let left = (order.len() - i) as u64;
        let j = i + usize::try_from(rng.below(left)).unwrap_or(0);
        order.swap(i, j);
    }
    order.truncate(n);
    Some(train.select(&order))
}

/// The generator of a training without DP: the public stream
/// `derive_seed(run seed, [FIT, round, site])`.
fn public_rng(seed: u64, round: u32, id: &ParticipantId) -> SeededRng {
    SeededRng::derived(seed, &[streams::FIT, u64::from(round), tag(id.as_str())])
}

/// The site's learner and rows as its local part drives them. A learner's
/// error reaches the local part as a [`CoreError`] and is kept here with its
/// kind, which [`Site::fit`] returns.
struct SiteModel<'a> {
    learner: &'a mut dyn Learner,
    rows: &'a Dataset,
    /// Continual learning's pull, added to whatever term the local part gives.
    elastic: Option<&'a crate::continual::Elastic>,
    training: &'a TrainingConfig,
    rng: SeededRng,
    failure: Option<LearnError>,
}

impl SiteModel<'_> {
    fn failed(&mut self, error: LearnError) -> CoreError {
        let shown = CoreError::Invalid(error.to_string());
        self.failure = Some(error);
        shown
    }

    fn fit(
        &mut self,
        term: Option<&dyn GradientTerm>,
        dp: Option<LocalDp>,
        rng: Option<&mut SeededRng>,
        meta: Option<f32>,
    ) -> Result<FitStats, CoreError> {
        let both;
        let term: Option<&dyn GradientTerm> = match (term, self.elastic) {
            (Some(term), Some(elastic)) => {
                both = crate::continual::Both(term, elastic);
                Some(&both)
            }
            (None, Some(elastic)) => Some(elastic),
            (term, None) => term,
        };
        let plan = LocalPlan {
            training: self.training,
            term,
            dp,
            meta,
        };
        let rng = match rng {
            Some(rng) => rng,
            None => &mut self.rng,
        };
        let fitted = self.learner.fit(self.rows, &plan, rng);
        fitted.map_err(|e| self.failed(e))
    }
}

impl LocalModel for SiteModel<'_> {
    fn parameters(&self) -> &ParameterSet {
        self.learner.parameters()
    }

    fn set_parameters(&mut self, parameters: &ParameterSet) -> Result<(), CoreError> {
        let set = self.learner.set_parameters(parameters);
        set.map_err(|e| self.failed(e))
    }

    fn n_rows(&self) -> usize {
        self.rows.n_rows()
    }

    fn loss(&mut self, parameters: &ParameterSet) -> Result<f64, CoreError> {
        self.set_parameters(parameters)?;
        let evaluated = self.learner.evaluate(self.rows);
        let e = evaluated.map_err(|e| self.failed(e))?;
        Ok(e.loss_sum / e.n_examples.max(1) as f64)
    }

    fn lr(&self) -> f32 {
        self.training.optimizer.lr
    }

    fn weight_decay(&self) -> f32 {
        self.training.optimizer.weight_decay
    }

    fn train(&mut self, term: Option<&dyn GradientTerm>) -> Result<FitStats, CoreError> {
        self.fit(term, None, None, None)
    }

    fn train_meta(
        &mut self,
        term: Option<&dyn GradientTerm>,
        inner_lr: f32,
    ) -> Result<FitStats, CoreError> {
        self.fit(term, None, None, Some(inner_lr))
    }

    fn gradient(&mut self) -> Result<ParameterSet, CoreError> {
        // A bound on the work: APFL's mixing weight needs a direction, not
        // every row.
        const MAX_ROWS: usize = 4096;
        // Rows drawn at random, not the file's first.
        let drawn = drawn_rows(&mut self.rng, self.rows, MAX_ROWS);
        let rows = drawn.as_ref().unwrap_or(self.rows);
        let taken = self.learner.gradient(rows, MAX_ROWS);
        taken.map(|(_, g)| g).map_err(|e| self.failed(e))
    }

    fn train_private(
        &mut self,
        term: Option<&dyn GradientTerm>,
        dp: &LocalDp,
        rng: &mut SeededRng,
    ) -> Result<FitStats, CoreError> {
        self.fit(term, Some(*dp), Some(rng), None)
    }
}

#[cfg(test)]
mod tests;
