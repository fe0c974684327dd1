//! Seeded participant profiles on the virtual clock.

use std::time::Duration;

use serde::Serialize;
use tessera_core::{SeededRng, duration_from_secs, tag};
use tessera_engine::{Range, SimulationConfig, streams};
use tessera_learn::Schedule;

/// Training examples a site with `n_rows` rows processes in one round.
pub(crate) fn examples_per_round(schedule: Schedule, batch_size: usize, n_rows: usize) -> u64 {
    match schedule {
        Schedule::Steps(steps) => steps.saturating_mul(batch_size.min(n_rows.max(1)) as u64),
        Schedule::Epochs(epochs) => epochs.saturating_mul(n_rows as u64),
    }
}

/// How a simulated participant behaves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Profile {
    /// Training examples processed per virtual second.
    pub examples_per_second: f64,
    /// One-way message latency, seconds.
    pub latency_seconds: f64,
    /// Chance of dropping out of a round.
    pub dropout: f64,
    /// Bytes per virtual second each way; `None`: transfers take no time.
    pub bandwidth: Option<f64>,
}

fn draw(rng: &mut SeededRng, range: Range) -> f64 {
    if range.min == range.max {
        return range.min;
    }
    if range.min > 0.0 {
        (range.min.ln() + rng.next_f64() * (range.max.ln() - range.min.ln())).exp()
    } else {
        rng.uniform(range.min, range.max)
    }
}

impl Profile {
    /// The profile of `site` under `config`, drawn from the run seed.
    pub fn draw(config: &SimulationConfig, seed: u64, site: &str) -> Profile {
        let mut rng = SeededRng::derived(seed, &[streams::PROFILE, tag(site)]);
        Profile {
            examples_per_second: draw(&mut rng, config.examples_per_second),
            latency_seconds: draw(&mut rng, config.latency_seconds),
            dropout: config.dropout,
            bandwidth: config
                .bandwidth_bytes_per_second
                .map(|range| draw(&mut rng, range)),
        }
    }

    /// Virtual time to move `bytes` over the site's link.
    pub fn transfer_time(&self, bytes: u64) -> Duration {
        self.bandwidth
            .map_or(Duration::ZERO, |b| duration_from_secs(bytes as f64 / b))
    }

    /// Virtual time to process `examples` training examples.
    pub fn compute_time(&self, examples: u64) -> Duration {
        duration_from_secs(examples as f64 / self.examples_per_second)
    }

    /// One-way latency.
    pub fn latency(&self) -> Duration {
        duration_from_secs(self.latency_seconds)
    }

    /// Whether this participant drops out of `round`, and when (as a share of its work).
    pub fn drops_out(&self, seed: u64, round: u32, site: &str) -> Option<f64> {
        if self.dropout <= 0.0 {
            return None;
        }
        let mut rng = SeededRng::derived(seed, &[streams::DROPOUT, u64::from(round), tag(site)]);
        rng.bernoulli(self.dropout).then(|| rng.next_f64())
    }
}
