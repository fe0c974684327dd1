//! Local DP-SGD as a wrapper around any strategy's local part: the site's
//! key, its count of trainings, the DP event of each; every training the
//! wrapped part asks of the model runs privately.

use tessera_aggregate::{AggregateError, Instructions, LocalAlgorithm, LocalFit};
use tessera_core::{
    CoreError, FitStats, GradientTerm, LocalDp, LocalModel, ParameterSet, SeededRng,
};
use tessera_learn::{LocalPlan, TrainingConfig};
use tessera_privacy::{DpEvent, PrivacyConfig};

use crate::{EngineError, streams};

/// A key for stream `stream` of training `index`, derived from a site's
/// secret `key`: SHA-256 of a domain label, the key, the stream tag and the
/// index. Independent of the noise, which ChaCha20 draws from `key` itself.
pub(crate) fn secret_stream_key(key: &[u8; 32], stream: u64, index: u32) -> [u8; 32] {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(b"tessera/site-secret-stream/v1");
    hash.update(key);
    hash.update(stream.to_le_bytes());
    hash.update(u64::from(index).to_le_bytes());
    hash.finalize().into()
}

/// Local DP-SGD (the plan's `[privacy]` in `local` mode) over a run of
/// `rounds` rounds. All the randomness of a private training comes from the
/// site's secret key: the Gaussian noise (ChaCha20 keyed with it, a stream
/// per training) and the Poisson batch sampling, so nothing of it derives
/// from the run seed. In deployment the key must be secret and never leave
/// the site (participants draw it from the operating system); the simulator
/// derives it from the run seed, which makes a simulation reproducible and an
/// experiment, not a release.
///
/// It composes with any local part ([`DpSgd::around`]): the wrapped part
/// trains as it would, and each training it asks for runs with DP-SGD.
#[derive(Debug, Clone)]
pub struct DpSgd {
    privacy: PrivacyConfig,
    rounds: u32,
    key: [u8; 32],
    training: TrainingConfig,
    /// How many times this site has trained. Each training takes the next
    /// noise and batch stream of the site's key, never one the coordinator
    /// chooses (a round number sent twice would otherwise give two updates
    /// with the same noise, whose difference is noise-free), and no more
    /// trainings than the plan's rounds, whose spend the site accepted up
    /// front.
    trainings: u32,
    /// The DP event of the last training.
    last_event: Option<DpEvent>,
}

impl DpSgd {
    /// DP-SGD with the plan's `privacy` settings over `rounds` rounds of
    /// `training`, keyed with the site's secret `key`.
    pub fn new(
        privacy: PrivacyConfig,
        rounds: u32,
        key: [u8; 32],
        training: TrainingConfig,
    ) -> Self {
        Self {
            privacy,
            rounds,
            key,
            training,
            trainings: 0,
            last_event: None,
        }
    }

    /// The DP event one round of training on `n_rows` rows is.
    pub fn event(&self, n_rows: usize) -> Result<DpEvent, EngineError> {
        let plan = LocalPlan::plain(&self.training);
        let q = plan.sampling_rate(n_rows);
        let steps = plan.n_steps(n_rows)?;
        Ok(DpEvent {
            sampling_rate: q,
            noise_multiplier: self.privacy.local_noise_multiplier(q, steps, self.rounds)?,
            steps,
        })
    }

    /// The DP event of the last training.
    pub fn last_event(&self) -> Option<DpEvent> {
        self.last_event
    }

    /// The batch generator of training `index`: keyed with SHA-256 of the
    /// site's secret key, `index` (the site's own count of its trainings)
    /// and the `FIT` stream tag, so that nobody without the key (the
    /// coordinator, anyone with the plan and its seed) can tell which rows
    /// were in a batch, and amplification by subsampling holds.
    pub(crate) fn rng(&self, index: u32) -> SeededRng {
        SeededRng::from_key(secret_stream_key(&self.key, streams::FIT, index))
    }

    /// `inner`, trained privately for one round on `n_rows` rows (the
    /// coordinator asked for `round`): takes the site's next training, or
    /// refuses once the site has trained every round of the plan.
    pub fn around<'a>(
        &'a mut self,
        inner: &'a mut dyn LocalAlgorithm,
        n_rows: usize,
        round: u32,
    ) -> Result<Private<'a>, EngineError> {
        let event = self.event(n_rows)?;
        if self.trainings >= self.rounds {
            return Err(EngineError::State(format!(
                "local DP: this site has trained {} times, every round of the plan; \
                 another training would spend privacy beyond what the site accepted \
                 (asked for round {round})",
                self.rounds
            )));
        }
        self.trainings += 1;
        self.last_event = Some(event);
        Ok(Private {
            inner,
            steps: LocalDp {
                noise_multiplier: event.noise_multiplier,
                clip_norm: self.privacy.clip_norm,
                noise_key: self.key,
                stream: u64::from(self.trainings),
            },
            rng: self.rng(self.trainings),
        })
    }
}

/// A local part trained with DP-SGD for one round ([`DpSgd::around`]).
#[derive(Debug)]
pub struct Private<'a> {
    inner: &'a mut dyn LocalAlgorithm,
    steps: LocalDp,
    rng: SeededRng,
}

impl LocalAlgorithm for Private<'_> {
    fn fit(
        &mut self,
        instructions: &Instructions,
        global: &ParameterSet,
        model: &mut dyn LocalModel,
    ) -> Result<LocalFit, AggregateError> {
        let mut model = PrivateModel {
            model,
            steps: &self.steps,
            rng: &mut self.rng,
            trained: false,
        };
        self.inner.fit(instructions, global, &mut model)
    }

    fn round_closed(&mut self, counted: bool) {
        self.inner.round_closed(counted);
    }
}

/// The site's model as the wrapped part sees it under DP-SGD: one private
/// training a round, which is what the site's accounting covers.
struct PrivateModel<'a, 'm> {
    model: &'m mut dyn LocalModel,
    steps: &'a LocalDp,
    rng: &'a mut SeededRng,
    trained: bool,
}

impl LocalModel for PrivateModel<'_, '_> {
    fn parameters(&self) -> &ParameterSet {
        self.model.parameters()
    }

    fn set_parameters(&mut self, parameters: &ParameterSet) -> Result<(), CoreError> {
        self.model.set_parameters(parameters)
    }

    fn n_rows(&self) -> usize {
        self.model.n_rows()
    }

    fn lr(&self) -> f32 {
        self.model.lr()
    }

    fn weight_decay(&self) -> f32 {
        self.model.weight_decay()
    }

    fn train(&mut self, term: Option<&dyn GradientTerm>) -> Result<FitStats, CoreError> {
        if self.trained {
            return Err(CoreError::Invalid(
                "local DP: this strategy's local part trains more than once a round; \
                 the site's privacy accounting covers one DP-SGD training a round"
                    .into(),
            ));
        }
        self.trained = true;
        self.model.train_private(term, self.steps, self.rng)
    }

    fn train_private(
        &mut self,
        _term: Option<&dyn GradientTerm>,
        _dp: &LocalDp,
        _rng: &mut SeededRng,
    ) -> Result<FitStats, CoreError> {
        Err(CoreError::Invalid(
            "local DP: DP-SGD inside DP-SGD (a local part that trains privately on its own)".into(),
        ))
    }
}
