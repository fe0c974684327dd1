//! Privacy loss distribution (PLD) accounting of the Poisson-subsampled
//! Gaussian mechanism under the add-or-remove-one neighbouring relation.
//!
//! [`PldAccountant`] follows Google's `dp_accounting` `PLDAccountant` with
//! its defaults; `tests/reference/` holds reference values from
//! `dp_accounting` 0.6.0 (and the command that produced them), which the
//! tests require to 1e-3 relative in epsilon (the largest difference is
//! below 1e-7):
//!
//! * **Two distributions.** Adding and removing one record give different
//!   privacy losses once sampled (`q < 1`): *remove* compares
//!   `(1 - q) N(0, σ²) + q N(-1, σ²)` against `N(0, σ²)`, *add* compares
//!   `N(0, σ²)` against `(1 - q) N(0, σ²) + q N(1, σ²)`. Both are composed
//!   and the larger epsilon is reported; at `q = 1` they coincide and one is
//!   kept.
//! * **Pessimistic connect-the-dots discretisation** (Doroshenko, Ghazi,
//!   Kamath, Kumar and Manurangsi 2022, Algorithm 1): the losses are put on
//!   the grid `k · 1e-4`, `k` from the floor of the smallest loss considered
//!   to the ceiling of the largest, with the masses that make the discrete
//!   distribution's hockey-stick divergence `δ(ε)` equal to the mechanism's
//!   exact one at every grid point, and at least the exact one between grid
//!   points. Its deltas, so its epsilons, are upper bounds: the
//!   discretisation is never optimistic. (Second differences of `δ` that
//!   rounding makes negative are set to 0, which adds about 1e-8 of mass, as
//!   in `dp_accounting`.)
//! * **Tail truncation**, pessimistic too: the noise is considered between
//!   the points where the Gaussian's tail mass is `e^-50 / 2`; what lies
//!   beyond the largest loss considered counts as mass at an infinite loss,
//!   what lies below the smallest is moved up onto it. Each composition
//!   drops at most `1e-15` of probability from each tail the same way: the
//!   lower tail's onto the smallest loss kept, the upper tail's to infinity.
//! * **Composition** of `n` equal steps by raising the distribution's
//!   discrete Fourier transform to the `n`th power (output range bounded by
//!   Chernoff bounds, as `dp_accounting` does), and of different events
//!   one after another by FFT convolution; the FFT is this crate's radix-2
//!   one, real sequences transformed at half length.
//!
//! Where ours differs (none of it optimistic):
//!
//! * Events with the same sampling rate and noise multiplier are merged
//!   into one (their steps added) and composed at once, as one
//!   self-composition, when an epsilon is asked for; the result is cached
//!   until the next composition. Composition is commutative, so this changes
//!   nothing but rounding.
//! * When a distribution would need a transform of more than 2²³ points
//!   (epsilons in the hundreds, or noise multipliers far below 0.5), the
//!   discretisation interval is doubled until it fits: a coarser pessimistic
//!   grid, still an upper bound.
//!   [`PldAccountant::value_discretization_interval`] tells which interval
//!   was used. If no interval fits, or a loss overflows, the epsilon is
//!   infinite.
//! * Noise multipliers above `1e100` count as `1e100`, and sampling rates
//!   below `1e-200` (but above 0) as `1e-200`.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::{DpEvent, PrivacyError};

mod composed;
mod gaussian;
mod pmf;
#[cfg(test)]
mod tests;

use composed::Composed;

/// The grid spacing of the privacy losses, `dp_accounting`'s default.
pub const VALUE_DISCRETIZATION_INTERVAL: f64 = 1e-4;

/// The probability mass that a composition may move out of each tail
/// (pessimistically), `dp_accounting`'s default.
pub const TAIL_MASS_TRUNCATION: f64 = 1e-15;

/// The standard normal quantile of `e^-50 / 2`: the noise is considered
/// within this many standard deviations (`dp_accounting`'s
/// `log_mass_truncation_bound = -50`).
const Z_TRUNCATION: f64 = -9.745474864965935;

/// The most grid points of any distribution (and so the longest real FFT).
const MAX_GRID_LEN: usize = 1 << 23;

/// How many times the discretisation interval may be doubled.
const MAX_DOUBLINGS: u32 = 64;

const SIGMA_CAP: f64 = 1e100;
const Q_FLOOR: f64 = 1e-200;

/// Privacy loss distribution accountant of Poisson-subsampled Gaussian
/// mechanisms (see the [module documentation](self)): tighter than
/// [`RdpAccountant`](crate::RdpAccountant), at the cost of FFTs over up to
/// millions of grid points when an epsilon is asked for.
#[derive(Clone, Default)]
pub struct PldAccountant {
    /// The composed events, equal mechanisms merged.
    events: Vec<DpEvent>,
    /// Whether a mechanism without noise was composed.
    non_private: bool,
    /// The composed distributions, built on demand.
    composed: OnceLock<Arc<Composed>>,
}

impl fmt::Debug for PldAccountant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PldAccountant")
            .field("events", &self.events)
            .field("non_private", &self.non_private)
            .finish_non_exhaustive()
    }
}

impl PartialEq for PldAccountant {
    fn eq(&self, other: &Self) -> bool {
        self.events == other.events && self.non_private == other.non_private
    }
}

impl PldAccountant {
    /// An accountant with nothing spent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `event`. A sampling rate or a number of steps of 0 adds nothing;
    /// a noise multiplier of 0 (with both positive) makes every epsilon
    /// infinite.
    pub fn compose(&mut self, event: &DpEvent) -> Result<(), PrivacyError> {
        event.validate()?;
        self.add(event);
        Ok(())
    }

    /// Adds everything another accountant has spent.
    pub fn compose_all(&mut self, other: &PldAccountant) {
        self.non_private |= other.non_private;
        for event in &other.events {
            self.add(event);
        }
        self.composed = OnceLock::new();
    }

    fn add(&mut self, event: &DpEvent) {
        if event.steps == 0 || event.sampling_rate == 0.0 {
            return;
        }
        self.composed = OnceLock::new();
        if event.noise_multiplier == 0.0 {
            self.non_private = true;
            return;
        }
        match self.events.iter_mut().find(|e| {
            e.sampling_rate == event.sampling_rate && e.noise_multiplier == event.noise_multiplier
        }) {
            Some(e) => e.steps = e.steps.saturating_add(event.steps),
            None => self.events.push(*event),
        }
    }

    /// The composed events, those of equal sampling rate and noise
    /// multiplier merged into one.
    pub fn events(&self) -> &[DpEvent] {
        &self.events
    }

    fn spent_nothing(&self) -> bool {
        self.events.is_empty() && !self.non_private
    }

    fn composed(&self) -> &Composed {
        self.composed
            .get_or_init(|| Arc::new(Composed::of(&self.events)))
    }

    /// Epsilon spent at `delta` (0 when `delta >= 1`; infinite when
    /// `delta <= 0` or NaN, unless nothing was spent).
    pub fn epsilon(&self, delta: f64) -> f64 {
        if self.spent_nothing() || delta >= 1.0 {
            return 0.0;
        }
        if self.non_private || delta.is_nan() || delta <= 0.0 {
            return f64::INFINITY;
        }
        self.composed().epsilon(delta)
    }

    /// Delta spent at `epsilon`: the composed distribution's hockey-stick
    /// divergence (1 for a NaN epsilon).
    pub fn delta(&self, epsilon: f64) -> f64 {
        if self.spent_nothing() {
            return 0.0;
        }
        if self.non_private || epsilon.is_nan() {
            return 1.0;
        }
        self.composed().delta(epsilon)
    }

    /// The discretisation interval of the composed distribution:
    /// [`VALUE_DISCRETIZATION_INTERVAL`] unless the grid had to be coarsened
    /// to fit (see the [module documentation](self)).
    pub fn value_discretization_interval(&self) -> f64 {
        if self.spent_nothing() || self.non_private {
            return VALUE_DISCRETIZATION_INTERVAL;
        }
        match self.composed() {
            Composed::Pld { d, .. } => *d,
            Composed::Unbounded => VALUE_DISCRETIZATION_INTERVAL,
        }
    }
}
