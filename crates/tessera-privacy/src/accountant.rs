//! Composition of DP events into one (epsilon, delta) figure, and noise
//! calibration.

use serde::{Deserialize, Serialize};

use crate::{PrivacyError, rdp};

/// One release of a sampled Gaussian mechanism, repeated `steps` times: a
/// round of DP-FedAvg (`sampling_rate` the chance a participant is in the
/// cohort, one step), or a participant's DP-SGD steps in a round
/// (`sampling_rate` the Poisson rate of its batches).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpEvent {
    /// Poisson sampling rate, in `[0, 1]`.
    pub sampling_rate: f64,
    /// Noise standard deviation over L2 sensitivity.
    pub noise_multiplier: f64,
    /// Repetitions.
    pub steps: u64,
}

impl DpEvent {
    /// Checks the event's numbers.
    pub fn validate(&self) -> Result<(), PrivacyError> {
        if !(0.0..=1.0).contains(&self.sampling_rate) {
            return Err(PrivacyError::Invalid(format!(
                "sampling rate {} is not in [0, 1]",
                self.sampling_rate
            )));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            return Err(PrivacyError::Invalid(format!(
                "noise multiplier {} is not a finite non-negative number",
                self.noise_multiplier
            )));
        }
        Ok(())
    }
}

/// Rényi DP accountant: the sum over composed events of their RDP curves,
/// converted to epsilon at a delta on demand.
#[derive(Debug, Clone, PartialEq)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
}

impl Default for RdpAccountant {
    fn default() -> Self {
        Self::new()
    }
}

impl RdpAccountant {
    /// An accountant with nothing spent, over [`rdp::default_orders`].
    pub fn new() -> Self {
        let orders = rdp::default_orders();
        let rdp = vec![0.0; orders.len()];
        Self { orders, rdp }
    }

    /// Adds `event`.
    pub fn compose(&mut self, event: &DpEvent) -> Result<(), PrivacyError> {
        event.validate()?;
        if event.steps == 0 {
            return Ok(());
        }
        let one = rdp::poisson_subsampled_gaussian(
            event.sampling_rate,
            event.noise_multiplier,
            &self.orders,
        );
        for (total, r) in self.rdp.iter_mut().zip(one) {
            *total += r * event.steps as f64;
        }
        Ok(())
    }

    /// Adds everything another accountant has spent.
    pub fn compose_all(&mut self, other: &RdpAccountant) {
        for (total, r) in self.rdp.iter_mut().zip(&other.rdp) {
            *total += r;
        }
    }

    /// Epsilon spent at `delta`.
    pub fn epsilon(&self, delta: f64) -> f64 {
        rdp::epsilon(&self.orders, &self.rdp, delta).0
    }

    /// Epsilon spent at `delta`, and the Rényi order that gives it.
    pub fn epsilon_and_order(&self, delta: f64) -> (f64, f64) {
        rdp::epsilon(&self.orders, &self.rdp, delta)
    }
}

/// Epsilon at `delta` of `event` alone.
pub fn epsilon_of(event: &DpEvent, delta: f64) -> Result<f64, PrivacyError> {
    let mut accountant = RdpAccountant::new();
    accountant.compose(event)?;
    Ok(accountant.epsilon(delta))
}

/// The smallest noise multiplier (to 0.1%) for which `steps` releases at
/// `sampling_rate` spend at most `epsilon` at `delta`.
pub fn calibrate_noise_multiplier(
    sampling_rate: f64,
    steps: u64,
    epsilon: f64,
    delta: f64,
) -> Result<f64, PrivacyError> {
    if !(epsilon.is_finite() && epsilon > 0.0) {
        return Err(PrivacyError::Invalid(format!(
            "target epsilon {epsilon} must be positive"
        )));
    }
    if !(delta > 0.0 && delta < 1.0) {
        return Err(PrivacyError::Invalid(format!(
            "delta {delta} must be in (0, 1)"
        )));
    }
    let spend = |sigma: f64| {
        epsilon_of(
            &DpEvent {
                sampling_rate,
                noise_multiplier: sigma,
                steps,
            },
            delta,
        )
    };
    let (mut low, mut high) = (0.01f64, 1.0f64);
    while spend(high)? > epsilon {
        high *= 2.0;
        if high > 1e6 {
            return Err(PrivacyError::Invalid(format!(
                "no noise multiplier below 1e6 reaches epsilon {epsilon} in {steps} steps"
            )));
        }
    }
    while high / low > 1.001 {
        let mid = (low * high).sqrt();
        if spend(mid)? > epsilon {
            low = mid;
        } else {
            high = mid;
        }
    }
    Ok(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composition_is_additive() {
        let event = DpEvent {
            sampling_rate: 0.1,
            noise_multiplier: 1.1,
            steps: 7,
        };
        let mut once = RdpAccountant::new();
        once.compose(&event).expect("valid");
        let mut seven = RdpAccountant::new();
        for _ in 0..7 {
            seven
                .compose(&DpEvent { steps: 1, ..event })
                .expect("valid");
        }
        let (a, b) = (once.epsilon(1e-5), seven.epsilon(1e-5));
        assert!((a - b).abs() <= 1e-12 * a);
    }

    #[test]
    fn calibration_reaches_the_target() {
        let sigma = calibrate_noise_multiplier(1.0, 20, 3.0, 1e-5).expect("calibrates");
        let eps = epsilon_of(
            &DpEvent {
                sampling_rate: 1.0,
                noise_multiplier: sigma,
                steps: 20,
            },
            1e-5,
        )
        .expect("valid");
        assert!(eps <= 3.0 && eps > 2.99, "{eps} with sigma {sigma}");
    }

    #[test]
    fn bad_events_are_refused() {
        let mut a = RdpAccountant::new();
        assert!(
            a.compose(&DpEvent {
                sampling_rate: 1.5,
                noise_multiplier: 1.0,
                steps: 1
            })
            .is_err()
        );
        assert!(
            a.compose(&DpEvent {
                sampling_rate: 0.5,
                noise_multiplier: f64::NAN,
                steps: 1
            })
            .is_err()
        );
    }
}
