use serde::{Deserialize, Serialize};

use crate::ParameterSet;

/// What a participant returns after local training in one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// New local parameters minus the global parameters the round started from.
    pub delta: ParameterSet,
    /// Number of training examples behind the update (the FedAvg weight).
    pub n_examples: u64,
    /// The auxiliary sum the strategy asked for, shaped like `delta` and
    /// summed over the round beside it (`Strategy::aux_sum` in
    /// tessera-aggregate names it: SCAFFOLD's control-variate change).
    pub aux: Option<ParameterSet>,
    /// What local training observed.
    pub stats: FitStats,
}

/// Local training statistics that travel with an update.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct FitStats {
    /// Optimiser steps taken.
    pub n_steps: u64,
    /// Mean training loss over the steps taken.
    pub mean_train_loss: f64,
    /// The mean loss of the round's global model on the site's training
    /// rows, measured before training, where the strategy asks for it
    /// (q-FFL weighs each update by it); `None` otherwise.
    #[serde(default)]
    pub start_loss: Option<f64>,
}

impl Update {
    /// Bytes the update takes on the wire: its tensors plus a fixed 32-byte envelope.
    pub fn wire_len(&self) -> usize {
        32 + self.delta.wire_len() + self.aux.as_ref().map_or(0, ParameterSet::wire_len)
    }

    /// Bytes the update takes on the wire when its delta travels as
    /// `delta_bytes` bytes of a compressed encoding (one length-delimited field).
    pub fn wire_len_compressed(&self, delta_bytes: usize) -> usize {
        32 + 1
            + crate::varint_len(delta_bytes as u64)
            + delta_bytes
            + self.aux.as_ref().map_or(0, ParameterSet::wire_len)
    }
}
