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
    training: TrainingConfig,
    seed: u64,
    /// The strategy's local part and its state (SCAFFOLD's control
    /// variate), made from the instructions the site receives.
    local: LocalPart,
    /// Local DP-SGD around the local part, keyed with the site's secret.
    dp: Option<DpSgd>,
    /// Error feedback: what earlier compressed updates left out.
    feedback: Option<ErrorFeedback>,
    /// Continual learning: the pull toward an earlier model added to every
    /// local training.
    elastic: Option<std::sync::Arc<crate::continual::Elastic>>,
    /// Error feedback as it was before the last round's update was encoded,
    /// so that encoding that round's update again (a retry after a lost
    /// connection) gives the same bytes and counts the residual once.
    feedback_before: Option<(u32, ErrorFeedback)>,
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
            training,
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
            training: plan.local_training(),
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
        self.feedback = Some(ErrorFeedback::new());
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
            match &self.feedback_before {
                Some((r, before)) if *r == round => *feedback = before.clone(),
                _ => self.feedback_before = Some((round, feedback.clone())),
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
        self.dp = Some(DpSgd::new(
            privacy,
            rounds,
            noise_key,
            self.training.clone(),
        ));
        self
    }

    /// With local DP: the DP event one round of training on `n_rows` rows is.
    pub fn local_dp_event(&self, n_rows: usize) -> Result<Option<DpEvent>, EngineError> {
        self.dp.as_ref().map(|dp| dp.event(n_rows)).transpose()
    }

    /// The DP event of the last local training, with local DP.
    pub fn last_dp_event(&self) -> Option<DpEvent> {
        self.dp.as_ref().and_then(DpSgd::last_event)
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
        let learner = match &mut self.model {
            Model::BuiltIn(learner) => learner,
            Model::External {
                learner,
                train_rows,
            } => {
                let site = external::ExternalSite {
                    learner: learner.as_mut(),
                    train_rows: *train_rows,
                    training: &self.training,
                };
                return external::fit(site, &mut self.local, self.dp.as_mut(), task);
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
        self.feedback.as_ref().map_or(0.0, ErrorFeedback::norm)
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
        let start = self
            .personal_parameters(global)
            .unwrap_or_else(|| global.clone());
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
        let Model::BuiltIn(learner) = &mut self.model else {
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

    /// Evaluates `parameters` on `rows`.
    pub fn evaluate(
        &mut self,
        parameters: &ParameterSet,
        rows: &Dataset,
    ) -> Result<Evaluation, EngineError> {
        match &mut self.model {
            Model::BuiltIn(learner) => {
                learner.set_parameters(parameters)?;
                Ok(learner.evaluate(rows)?)
            }
            Model::External { learner, .. } => external::evaluate(learner.as_mut(), parameters),
        }
    }
}

/// A site's model: built in, or external.
enum Model {
    BuiltIn(Box<dyn Learner>),
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
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use tessera_core::{derive_key, derive_seed};
    use tessera_learn::{ModelConfig, ModelKind, Network};
    use tessera_privacy::PrivacyMode;

    use super::*;
    use crate::dp_sgd::secret_stream_key;
    use tessera_aggregate::PlainLocal;

    const SEED: u64 = 42;
    const ROWS: usize = 200;
    const BATCH: usize = 10;

    fn training() -> TrainingConfig {
        TrainingConfig {
            steps: Some(20),
            batch_size: BATCH,
            ..TrainingConfig::default()
        }
    }

    /// The generator of `site`'s training `index`: keyed under local DP,
    /// the public stream without.
    impl Site {
        fn fit_rng(&self, index: u32) -> SeededRng {
            match &self.dp {
                Some(dp) => dp.rng(index),
                None => public_rng(self.seed, index, &self.id),
            }
        }
    }

    fn site(key: Option<[u8; 32]>) -> Site {
        let model = Network::new(&ModelConfig::of_kind(ModelKind::Mlp), 6, 3, 1).unwrap();
        let site = Site::new(ParticipantId::new("a"), Box::new(model), training(), SEED);
        match key {
            Some(key) => {
                let privacy = PrivacyConfig {
                    mode: PrivacyMode::Local,
                    noise_multiplier: Some(1.0),
                    ..PrivacyConfig::default()
                };
                site.with_local_dp(privacy, 5, key)
            }
            None => site,
        }
    }

    /// The Poisson batches DP-SGD draws from `rng` (as `tessera-learn`
    /// draws them: each row with probability batch / rows, in row order).
    fn batches(mut rng: SeededRng) -> Vec<Vec<usize>> {
        let q = BATCH as f64 / ROWS as f64;
        (0..20)
            .map(|_| (0..ROWS).filter(|_| rng.next_f64() < q).collect())
            .collect()
    }

    /// Every generator someone with the plan and its seed can build for
    /// site `a`'s round `round`.
    fn public_guesses(round: u32) -> Vec<SeededRng> {
        let id = tag("a");
        let simulation_key = derive_key(derive_seed(SEED, &[id]), &[streams::DP_NOISE]);
        vec![
            SeededRng::derived(SEED, &[streams::FIT, u64::from(round), id]),
            SeededRng::derived(SEED, &[streams::FIT, u64::from(round)]),
            SeededRng::new(SEED),
            SeededRng::from_key(simulation_key),
            SeededRng::from_key(secret_stream_key(&[0; 32], streams::FIT, round)),
        ]
    }

    #[test]
    fn secret_keys_draw_batches_the_seed_cannot_recompute() {
        let (key_a, key_b) = ([0x5a; 32], [0xa5; 32]);
        for round in 1..=3 {
            let a = batches(site(Some(key_a)).fit_rng(round));
            let b = batches(site(Some(key_b)).fit_rng(round));
            assert_ne!(
                a, b,
                "round {round}: same seed, different keys, same batches"
            );
            // The attack: recompute site a's batches from what the plan gives.
            for (i, guess) in public_guesses(round).into_iter().enumerate() {
                let guessed = batches(guess);
                assert_ne!(
                    guessed, a,
                    "round {round}: guess {i} recomputes the batches"
                );
                let shared = guessed
                    .iter()
                    .zip(&a)
                    .map(|(g, s)| g.iter().filter(|r| s.contains(r)).count())
                    .sum::<usize>();
                let drawn = a.iter().map(Vec::len).sum::<usize>();
                // Independent draws share about q of the rows (a twentieth).
                assert!(shared * 4 < drawn, "guess {i}: {shared} of {drawn} rows");
            }
            // The key holder draws the same batches again.
            assert_eq!(a, batches(site(Some(key_a)).fit_rng(round)));
            assert_ne!(a, batches(site(Some(key_a)).fit_rng(round + 1)));
        }
        // Without local DP the stream is the public one the first guess builds.
        assert_eq!(
            batches(site(None).fit_rng(2)),
            batches(public_guesses(2).remove(0))
        );
    }

    #[test]
    fn dp_sgd_updates_follow_the_key_not_the_seed() {
        let (rows, task) = rows_and_task();
        let fit = |key| site(Some(key)).fit(&task, &rows).unwrap().delta;
        assert_eq!(fit([1; 32]), fit([1; 32]));
        assert_ne!(fit([1; 32]), fit([2; 32]));
    }

    fn rows_and_task() -> (Dataset, FitTask) {
        let x = ndarray::Array2::from_shape_fn((ROWS, 6), |(i, j)| {
            ((i * 7 + j * 3) % 11) as f32 / 11.0
        });
        let y = (0..ROWS).map(|i| (i % 3) as u32).collect();
        let rows = Dataset { x, y };
        let global = {
            let model = Network::new(&ModelConfig::of_kind(ModelKind::Mlp), 6, 3, 1).unwrap();
            Arc::new(model.parameters().clone())
        };
        let task = FitTask {
            round: 1,
            global,
            instructions: Default::default(),
            deadline: None,
        };
        (rows, task)
    }

    /// A coordinator that sends the same round (and model) twice gets two
    /// updates with different noise and batches, so their difference is not
    /// noise-free; and a site stops after the plan's rounds (5 here).
    #[test]
    fn a_round_asked_twice_takes_fresh_noise_and_trainings_stop_at_the_plans_rounds() {
        let (rows, task) = rows_and_task();
        let mut s = site(Some([1; 32]));
        let first = s.fit(&task, &rows).unwrap().delta;
        let again = s.fit(&task, &rows).unwrap().delta;
        assert_ne!(first, again);
        for _ in 2..5 {
            s.fit(&task, &rows).unwrap();
        }
        let e = s.fit(&task, &rows).unwrap_err().to_string();
        assert!(e.contains("every round of the plan"), "{e}");
    }

    /// A local part that trains twice a round (as a personalised method that
    /// keeps a model of its own would): the second training starts from the
    /// first one's result.
    #[derive(Debug, Default)]
    struct TwoTrainings;

    impl LocalAlgorithm for TwoTrainings {
        fn fit(
            &mut self,
            _instructions: &tessera_aggregate::Instructions,
            global: &ParameterSet,
            model: &mut dyn LocalModel,
        ) -> Result<tessera_aggregate::LocalFit, tessera_aggregate::AggregateError> {
            model.set_parameters(global)?;
            model.train(None)?;
            let stats = model.train(None)?;
            Ok(tessera_aggregate::LocalFit {
                delta: model.parameters().sub(global)?,
                aux: None,
                stats,
            })
        }
    }

    fn model<'a>(
        learner: &'a mut dyn Learner,
        rows: &'a Dataset,
        t: &'a TrainingConfig,
    ) -> SiteModel<'a> {
        SiteModel {
            learner,
            rows,
            elastic: None,
            training: t,
            rng: public_rng(SEED, 1, &ParticipantId::new("a")),
            failure: None,
        }
    }

    /// DP-SGD wraps any local part: FedProx's term still pulls toward the
    /// global model under DP-SGD (same key, same batches and noise, another
    /// update), and the update still follows the key.
    #[test]
    fn dp_sgd_wraps_the_strategys_local_part() {
        let (rows, plain) = rows_and_task();
        let proximal = FitTask {
            instructions: tessera_aggregate::Instructions::Proximal { mu: 5.0 },
            ..plain.clone()
        };
        let fit = |key, task: &FitTask| site(Some(key)).fit(task, &rows).unwrap().delta;
        let dp_only = fit([1; 32], &plain);
        let dp_prox = fit([1; 32], &proximal);
        assert_ne!(dp_only, dp_prox, "the proximal term was lost under DP-SGD");
        assert_eq!(dp_prox, fit([1; 32], &proximal));
        assert_ne!(dp_prox, fit([2; 32], &proximal));
        // The pull shrinks the step: the proximal update is the shorter one.
        assert!(dp_prox.l2_norm() < dp_only.l2_norm());
    }

    /// The site's privacy accounting covers one DP-SGD training a round: a
    /// local part that trains twice is refused under DP and runs without it.
    #[test]
    fn a_local_part_that_trains_twice_is_refused_under_dp_sgd() {
        let (rows, task) = rows_and_task();
        let t = training();
        let Model::BuiltIn(mut learner) = site(None).model else {
            unreachable!("a built-in site")
        };
        let once = {
            let mut m = model(learner.as_mut(), &rows, &t);
            PlainLocal
                .fit(&task.instructions, &task.global, &mut m)
                .unwrap()
                .delta
        };
        let twice = {
            let mut m = model(learner.as_mut(), &rows, &t);
            TwoTrainings
                .fit(&task.instructions, &task.global, &mut m)
                .unwrap()
                .delta
        };
        assert_ne!(once, twice);
        let privacy = PrivacyConfig {
            mode: PrivacyMode::Local,
            noise_multiplier: Some(1.0),
            ..PrivacyConfig::default()
        };
        let mut dp = DpSgd::new(privacy, 5, [1; 32], t.clone());
        let mut inner = TwoTrainings;
        let mut private = dp.around(&mut inner, ROWS, 1).unwrap();
        let mut m = model(learner.as_mut(), &rows, &t);
        let e = private
            .fit(&task.instructions, &task.global, &mut m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trains more than once a round"), "{e}");
    }

    mod fedrep;
}
