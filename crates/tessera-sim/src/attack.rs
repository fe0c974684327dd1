//! Simulated Byzantine participants: an attack harness for robust aggregation.

use std::fmt;

use tessera_core::{SeededRng, Update};
use tessera_data::Dataset;
use tessera_engine::streams;

/// What malicious participants do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttackKind {
    /// Send the negated update, times `strength`.
    SignFlip,
    /// Send the update times `strength` (model-replacement boosting).
    Scaling,
    /// Send Gaussian noise of standard deviation `strength` per coordinate.
    GaussianNoise,
    /// Train honestly on flipped labels (class c becomes C - 1 - c).
    LabelFlip,
    /// Send the global model back (a change of zero), claiming its
    /// examples: a free rider.
    FreeRider,
}

impl AttackKind {
    /// Every attack.
    pub const ALL: [AttackKind; 5] = [
        AttackKind::SignFlip,
        AttackKind::Scaling,
        AttackKind::GaussianNoise,
        AttackKind::LabelFlip,
        AttackKind::FreeRider,
    ];

    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            AttackKind::SignFlip => "sign_flip",
            AttackKind::Scaling => "scaling",
            AttackKind::GaussianNoise => "gaussian",
            AttackKind::LabelFlip => "label_flip",
            AttackKind::FreeRider => "free_rider",
        }
    }

    /// The default strength: sign flip ×4, scaling ×100, noise σ = 1.
    pub fn default_strength(self) -> f64 {
        match self {
            AttackKind::SignFlip => 4.0,
            AttackKind::Scaling => 100.0,
            AttackKind::GaussianNoise => 1.0,
            AttackKind::LabelFlip | AttackKind::FreeRider => 1.0,
        }
    }
}

impl fmt::Display for AttackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AttackKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AttackKind::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = AttackKind::ALL.iter().map(|a| a.as_str()).collect();
                format!(
                    "unknown attack '{s}' (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// An attack by `malicious` of the sites (chosen by the run seed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attack {
    /// What they do.
    pub kind: AttackKind,
    /// How many sites are malicious.
    pub malicious: usize,
    /// The attack's strength (see [`AttackKind`]).
    pub strength: f64,
}

impl Attack {
    /// Which of `n_sites` sites are malicious (indices, sorted).
    pub fn choose(&self, n_sites: usize, seed: u64) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n_sites).collect();
        SeededRng::derived(seed, &[streams::ATTACK]).shuffle(&mut all);
        all.truncate(self.malicious.min(n_sites));
        all.sort_unstable();
        all
    }

    /// A malicious site's training data.
    pub fn poison(&self, train: &Dataset, n_classes: usize) -> Option<Dataset> {
        (self.kind == AttackKind::LabelFlip).then(|| Dataset {
            x: train.x.clone(),
            y: train
                .y
                .iter()
                .map(|&c| (n_classes as u32).saturating_sub(1).saturating_sub(c))
                .collect(),
        })
    }

    /// What a malicious site sends instead of its honest `update`.
    pub fn corrupt(&self, update: &mut Update, seed: u64, round: u32, site: usize) {
        let s = self.strength as f32;
        match self.kind {
            AttackKind::SignFlip => update.delta.values_mut().for_each(|v| *v *= -s),
            AttackKind::Scaling => update.delta.values_mut().for_each(|v| *v *= s),
            AttackKind::GaussianNoise => {
                let mut rng =
                    SeededRng::derived(seed, &[streams::ATTACK, u64::from(round), site as u64]);
                update
                    .delta
                    .values_mut()
                    .for_each(|v| *v = (rng.normal() * self.strength) as f32);
            }
            AttackKind::LabelFlip => {}
            AttackKind::FreeRider => update.delta.values_mut().for_each(|v| *v = 0.0),
        }
    }
}
