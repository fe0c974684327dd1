//! Compressed models downstream: the model every participant holds is the
//! true global model plus server-side error feedback. After each round the
//! coordinator encodes the change from the held model to the new global
//! model; participants apply the decoded change. What the encoding leaves out
//! stays in the difference and goes down with a later round.

use std::sync::Arc;

use tessera_compress::Codec;
use tessera_core::{ParameterSet, SeededRng};

use crate::{EngineError, streams};

/// The held model and the last change sent.
#[derive(Debug, Clone)]
pub struct Downlink {
    codec: Codec,
    seed: u64,
    round: u32,
    held: Arc<ParameterSet>,
    change: Option<Vec<u8>>,
}

impl Downlink {
    /// Participants start from `initial` (sent whole); `seed` is the run seed.
    pub fn new(codec: Codec, seed: u64, initial: Arc<ParameterSet>) -> Self {
        Self {
            codec,
            seed,
            round: 0,
            held: initial,
            change: None,
        }
    }

    /// After round `round` closed with `global`: encodes the change from the
    /// held model (stochastic rounding from the run seed and the round, so a
    /// restarted coordinator and the simulation encode the same bytes).
    pub fn advance(&mut self, round: u32, global: &ParameterSet) -> Result<(), EngineError> {
        let change = global
            .sub(&self.held)
            .map_err(|e| EngineError::State(format!("model codec: {e}")))?;
        let mut rng = SeededRng::derived(self.seed, &[streams::COMPRESS_DOWN, u64::from(round)]);
        let (bytes, decoded) = tessera_compress::encode_set(&self.codec, &change, None, &mut rng);
        let mut next = self.held.as_ref().clone();
        next.add_scaled(&decoded, 1.0)
            .map_err(|e| EngineError::State(format!("model codec: {e}")))?;
        self.held = Arc::new(next);
        self.change = Some(bytes);
        self.round = round;
        Ok(())
    }

    /// The model participants hold after the last round advanced.
    pub fn held(&self) -> &Arc<ParameterSet> {
        &self.held
    }

    /// The last round advanced (0: none yet).
    pub fn round(&self) -> u32 {
        self.round
    }

    /// The encoding of the change from round `round() - 1`'s model to `round()`'s.
    pub fn change(&self) -> Option<&[u8]> {
        self.change.as_deref()
    }

    /// The codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }
}
