//! The participant's side of a round.

use std::mem::Discriminant;

use tessera_aggregate::{Instructions, LocalAlgorithm, LocalOutcome};
use tessera_compress::{Codec, ErrorFeedback};
use tessera_core::{ParameterSet, ParticipantId, SeededRng, Update, tag};
use tessera_data::Dataset;
use tessera_learn::{Evaluation, Learner, LocalDp, LocalPlan, TrainingConfig};
use tessera_privacy::{DpEvent, PrivacyConfig};

use crate::{EngineError, FitTask, streams};

/// A key for stream `stream` of round `round`, derived from a site's secret
/// `key`: SHA-256 of a domain label, the key, the stream tag and the round.
/// Independent of the noise, which ChaCha20 draws from `key` itself.
fn secret_stream_key(key: &[u8; 32], stream: u64, round: u32) -> [u8; 32] {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(b"tessera/site-secret-stream/v1");
    hash.update(key);
    hash.update(stream.to_le_bytes());
    hash.update(u64::from(round).to_le_bytes());
    hash.finalize().into()
}

/// One participant: its model, its training rows, and what it keeps between
/// rounds (its strategy's local part). Turns a [`FitTask`] into an
/// [`Update`] the same way in simulation and deployment.
pub struct Site {
    id: ParticipantId,
    learner: Box<dyn Learner>,
    training: TrainingConfig,
    seed: u64,
    /// The strategy's local part and its state (SCAFFOLD's control
    /// variate), with the kind of instructions it was made for.
    local: Option<(Discriminant<Instructions>, Box<dyn LocalAlgorithm>)>,
    /// Local DP-SGD: the plan's settings, the run's rounds, the secret key
    /// of the noise and of the batch sampling.
    local_dp: Option<(PrivacyConfig, u32, [u8; 32])>,
    /// With local DP: how many times this site has trained. Each training
    /// takes the next noise and batch stream of the site's key, never one
    /// the coordinator chooses (a round number sent twice would otherwise
    /// give two updates with the same noise, whose difference is noise-free),
    /// and no more trainings than the plan's rounds, whose spend the site
    /// accepted up front.
    dp_trainings: u32,
    /// The DP event of the last local training.
    last_event: Option<DpEvent>,
    /// Error feedback: what earlier compressed updates left out.
    feedback: Option<ErrorFeedback>,
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
            learner,
            training,
            seed,
            local: None,
            local_dp: None,
            dp_trainings: 0,
            last_event: None,
            feedback: None,
            feedback_before: None,
        }
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
        let mut site = Site::new(id, learner, plan.local_training(), plan.seed);
        let compression = &plan.compression;
        if compression.error_feedback
            && compression.upload_codecs().iter().any(|c| !c.is_identity())
        {
            site = site.with_error_feedback();
        }
        if plan.privacy.mode == tessera_privacy::PrivacyMode::Local {
            site = site.with_local_dp(plan.privacy.clone(), plan.federation.rounds, secret_key()?);
        }
        Ok(site)
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

    /// Trains with DP-SGD (the plan's `[privacy]` in `local` mode) over a
    /// run of `rounds` rounds. All the randomness of local training then
    /// comes from `noise_key`: the Gaussian noise (ChaCha20 keyed with it,
    /// a stream per round) and the Poisson batch sampling (see
    /// [`Site::fit`]), so nothing of it derives from the run seed. In
    /// deployment the key must be secret and never leave the site
    /// (participants draw it from the operating system); the simulator
    /// derives it from the run seed, which makes a simulation reproducible
    /// and an experiment, not a release.
    pub fn with_local_dp(
        mut self,
        privacy: PrivacyConfig,
        rounds: u32,
        noise_key: [u8; 32],
    ) -> Self {
        self.local_dp = Some((privacy, rounds, noise_key));
        self
    }

    /// With local DP: the DP event one round of training on `n_rows` rows is.
    pub fn local_dp_event(&self, n_rows: usize) -> Result<Option<DpEvent>, EngineError> {
        let Some((privacy, rounds, _)) = &self.local_dp else {
            return Ok(None);
        };
        let plan = LocalPlan::plain(&self.training);
        let q = plan.sampling_rate(n_rows);
        let steps = plan.n_steps(n_rows)?;
        Ok(Some(DpEvent {
            sampling_rate: q,
            noise_multiplier: privacy.local_noise_multiplier(q, steps, *rounds)?,
            steps,
        }))
    }

    /// The DP event of the last local training, with local DP.
    pub fn last_dp_event(&self) -> Option<DpEvent> {
        self.last_event
    }

    /// The participant's id.
    pub fn id(&self) -> &ParticipantId {
        &self.id
    }

    /// Local training steps a round takes on `n_rows` rows.
    pub fn n_steps(&self, n_rows: usize) -> Result<u64, EngineError> {
        Ok(LocalPlan::plain(&self.training).n_steps(n_rows)?)
    }

    /// The generator of a local training: with local DP, keyed with SHA-256
    /// of the site's secret key, `index` (the site's own count of its
    /// trainings) and the `FIT` stream tag, so that nobody without the key
    /// (the coordinator, anyone with the plan and its seed) can tell which
    /// rows were in a batch, and amplification by subsampling holds; without
    /// DP, the public stream `derive_seed(run seed, [FIT, index, site])` with
    /// `index` the round.
    pub(crate) fn fit_rng(&self, index: u32) -> SeededRng {
        match &self.local_dp {
            Some((_, _, key)) => SeededRng::from_key(secret_stream_key(key, streams::FIT, index)),
            None => SeededRng::derived(
                self.seed,
                &[streams::FIT, u64::from(index), tag(self.id.as_str())],
            ),
        }
    }

    /// Runs the task on `train`: start from the global parameters, train
    /// locally with the strategy's additions, return the change. With local
    /// DP, batch sampling and noise come from the site's secret key only.
    pub fn fit(&mut self, task: &FitTask, train: &Dataset) -> Result<Update, EngineError> {
        let global = task.global.as_ref();
        self.learner.set_parameters(global)?;
        let event = self.local_dp_event(train.n_rows())?;
        // The stream of this training: the round without DP (public), the
        // site's own count of trainings with it.
        let stream = match &self.local_dp {
            Some((_, rounds, _)) => {
                if self.dp_trainings >= *rounds {
                    return Err(EngineError::State(format!(
                        "local DP: this site has trained {rounds} times, every round of the plan; \
                         another training would spend privacy beyond what the site accepted \
                         (asked for round {})",
                        task.round
                    )));
                }
                self.dp_trainings += 1;
                self.dp_trainings
            }
            None => task.round,
        };
        self.last_event = event;
        let mut rng = self.fit_rng(stream);
        let instructions = &task.instructions;
        let kind = std::mem::discriminant(instructions);
        let local = match &mut self.local {
            Some((made_for, local)) if *made_for == kind => local,
            slot => &mut slot.insert((kind, instructions.local_algorithm())).1,
        };
        let term = local.begin(instructions, global)?;
        let plan = LocalPlan {
            training: &self.training,
            term: term.as_deref(),
            dp: match (&self.local_dp, event) {
                (Some((privacy, _, key)), Some(event)) => Some(LocalDp {
                    noise_multiplier: event.noise_multiplier,
                    clip_norm: privacy.clip_norm,
                    noise_key: *key,
                    stream: u64::from(stream),
                }),
                _ => None,
            },
        };
        let stats = self.learner.fit(train, &plan, &mut rng)?;
        let delta = self.learner.parameters().sub(global)?;
        drop(term);
        let aux = local.finish(
            instructions,
            &LocalOutcome {
                global,
                delta: &delta,
                stats,
                lr: self.training.optimizer.lr,
            },
        )?;
        Ok(Update {
            delta,
            n_examples: train.n_rows() as u64,
            aux,
            stats,
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
        if let Some((_, local)) = self.local.as_mut() {
            local.round_closed(update_counted);
        }
    }

    /// Evaluates `parameters` on `rows`.
    pub fn evaluate(
        &mut self,
        parameters: &ParameterSet,
        rows: &Dataset,
    ) -> Result<Evaluation, EngineError> {
        self.learner.set_parameters(parameters)?;
        Ok(self.learner.evaluate(rows)?)
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
}
