//! Client-level central DP (DP-FedAvg, McMahan et al. 2018) with fixed or
//! adaptive clipping (Andrew et al. 2021).
//!
//! Each update is clipped to L2 norm `C` and counts with weight 1, so one
//! participant changes the sum by at most `C`; Gaussian noise of standard
//! deviation `z C` goes on the sum, which is then divided by the number of
//! updates (treated as public, as in DP-FedAvg with a fixed-size cohort).
//! With adaptive clipping the participants' "my update was within `C`" bits
//! are summed with their own noise (standard deviation `sigma_b`) and `C`
//! moves geometrically toward the target quantile; to keep the total noise
//! multiplier at `z`, the updates' noise multiplier becomes
//! `z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)` (Andrew et al., Theorem 1).

use serde::{Deserialize, Serialize};
use tessera_core::ParameterSet;

use crate::{GaussianNoise, PrivacyError};

/// Adaptive clipping settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveClipping {
    /// The share of updates meant to fall within the clipping norm.
    #[serde(default = "default_quantile")]
    pub target_quantile: f64,
    /// Step of the geometric update of the clipping norm.
    #[serde(default = "default_clip_lr")]
    pub learning_rate: f64,
    /// Noise standard deviation on the count of unclipped updates (default:
    /// the expected cohort size over 20, Andrew et al.'s choice).
    #[serde(default)]
    pub count_stddev: Option<f64>,
}

fn default_quantile() -> f64 {
    0.5
}
fn default_clip_lr() -> f64 {
    0.2
}

impl Default for AdaptiveClipping {
    fn default() -> Self {
        Self {
            target_quantile: default_quantile(),
            learning_rate: default_clip_lr(),
            count_stddev: None,
        }
    }
}

/// What one DP round released.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CentralRelease {
    /// The clipping norm this round used.
    pub clip_norm: f64,
    /// Noise standard deviation on each coordinate of the mean update.
    pub noise_std: f64,
    /// The clipping norm for the next round.
    pub next_clip_norm: f64,
    /// Updates that were within the clipping norm.
    pub unclipped: u64,
    /// Updates in the release.
    pub updates: u64,
}

/// The central DP mechanism of a run.
#[derive(Debug, Clone)]
pub struct CentralDp {
    noise_multiplier: f64,
    delta_noise_multiplier: f64,
    count_stddev: f64,
    adaptive: Option<AdaptiveClipping>,
    clip_norm: f64,
    key: [u8; 32],
    /// The fixed denominator of every release: the plan's expected cohort.
    expected_cohort: u64,
}

impl CentralDp {
    /// A mechanism with total noise multiplier `noise_multiplier` (what the
    /// accountant counts), initial clipping norm `clip_norm`, optional
    /// adaptive clipping for cohorts of about `expected_cohort`, and the
    /// secret noise key.
    pub fn new(
        noise_multiplier: f64,
        clip_norm: f64,
        adaptive: Option<AdaptiveClipping>,
        expected_cohort: usize,
        key: [u8; 32],
    ) -> Result<Self, PrivacyError> {
        if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
            return Err(PrivacyError::Invalid(format!(
                "noise multiplier {noise_multiplier} must be positive"
            )));
        }
        if !(clip_norm.is_finite() && clip_norm > 0.0) {
            return Err(PrivacyError::Invalid(format!(
                "clipping norm {clip_norm} must be positive"
            )));
        }
        let (delta_noise_multiplier, count_stddev) = match &adaptive {
            None => (noise_multiplier, 0.0),
            Some(a) => {
                if !(a.target_quantile > 0.0 && a.target_quantile < 1.0) {
                    return Err(PrivacyError::Invalid(format!(
                        "target quantile {} must be in (0, 1)",
                        a.target_quantile
                    )));
                }
                if !(a.learning_rate.is_finite() && a.learning_rate > 0.0) {
                    return Err(PrivacyError::Invalid(format!(
                        "clipping learning rate {} must be positive",
                        a.learning_rate
                    )));
                }
                let sb = a
                    .count_stddev
                    .unwrap_or(expected_cohort.max(1) as f64 / 20.0);
                let rest = noise_multiplier.powi(-2) - (2.0 * sb).powi(-2);
                if !(sb > 0.0 && rest > 0.0) {
                    return Err(PrivacyError::Invalid(format!(
                        "adaptive clipping: with noise multiplier {noise_multiplier}, the count noise \
                         {sb} leaves nothing for the updates (it must exceed {:.4}); raise \
                         count_stddev or the noise multiplier",
                        1.0 / (2.0 * noise_multiplier)
                    )));
                }
                (rest.powf(-0.5), sb)
            }
        };
        Ok(Self {
            noise_multiplier,
            delta_noise_multiplier,
            count_stddev,
            adaptive,
            clip_norm,
            key,
            expected_cohort: expected_cohort.max(1) as u64,
        })
    }

    /// The total noise multiplier (what the accountant counts).
    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    /// The noise multiplier on the updates' sum.
    pub fn delta_noise_multiplier(&self) -> f64 {
        self.delta_noise_multiplier
    }

    /// The current clipping norm.
    pub fn clip_norm(&self) -> f64 {
        self.clip_norm
    }

    /// Sets the clipping norm (resuming a run).
    pub fn set_clip_norm(&mut self, clip_norm: f64) {
        self.clip_norm = clip_norm;
    }

    /// Clips `delta` to the clipping norm in place; true when it was within.
    pub fn clip(&self, delta: &mut ParameterSet) -> bool {
        clip_to_norm(delta, self.clip_norm)
    }

    /// Turns round `round`'s mean of `updates` clipped updates into a private
    /// release: the sum plus Gaussian noise of `z C`, divided by the fixed
    /// expected cohort size (not by `updates`: how many took part is itself
    /// data under the add-or-remove-one relation the accountant assumes, so
    /// the release is `(sum + noise) / expected`, post-processing of a
    /// Gaussian sum of sensitivity `C`; a round with fewer updates than
    /// expected moves the model less). Moves the clipping norm.
    pub fn release(
        &mut self,
        round: u32,
        mean: &mut ParameterSet,
        updates: u64,
        unclipped: u64,
    ) -> CentralRelease {
        let n = self.expected_cohort as f64;
        // The mean of `updates` times updates/expected: the sum over the fixed denominator.
        let scale = updates as f64 / n;
        if updates != self.expected_cohort {
            for tensor in mean.tensors_mut() {
                for v in tensor.data_mut() {
                    *v = (f64::from(*v) * scale) as f32;
                }
            }
        }
        let clip_norm = self.clip_norm;
        let noise_std = self.delta_noise_multiplier * clip_norm / n;
        let mut noise = GaussianNoise::new(self.key, u64::from(round));
        for tensor in mean.tensors_mut() {
            noise.perturb(tensor.data_mut(), noise_std);
        }
        if let Some(a) = &self.adaptive {
            let noisy_share = (unclipped as f64 + self.count_stddev * noise.standard_normal()) / n;
            self.clip_norm =
                clip_norm * (-a.learning_rate * (noisy_share - a.target_quantile)).exp();
        }
        CentralRelease {
            clip_norm,
            noise_std,
            next_clip_norm: self.clip_norm,
            unclipped,
            updates,
        }
    }
}

/// Scales `values` down to L2 norm `bound` if above it; true when it was within.
pub fn clip_to_norm(values: &mut ParameterSet, bound: f64) -> bool {
    let norm = values.l2_norm();
    if norm <= bound {
        return true;
    }
    let scale = (bound / norm) as f32;
    for v in values.values_mut() {
        *v *= scale;
    }
    false
}

#[cfg(test)]
mod tests {
    use tessera_core::Tensor;

    use super::*;

    fn set(values: Vec<f32>) -> ParameterSet {
        let mut p = ParameterSet::new();
        p.push(
            "w",
            Tensor::new(vec![values.len()], values).expect("tensor"),
        )
        .expect("push");
        p
    }

    #[test]
    fn clipping_bounds_the_norm_and_keeps_the_direction() {
        let mut p = set(vec![3.0, 4.0]);
        assert!(!clip_to_norm(&mut p, 1.0));
        let v: Vec<f32> = p.values().collect();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        let mut q = set(vec![0.3, 0.4]);
        assert!(clip_to_norm(&mut q, 1.0));
        assert_eq!(q.values().collect::<Vec<_>>(), vec![0.3, 0.4]);
    }

    #[test]
    fn noise_has_the_stated_standard_deviation() {
        let mut dp = CentralDp::new(2.0, 0.5, None, 10, [3; 32]).expect("valid");
        let mut mean = set(vec![0.0; 100_000]);
        let r = dp.release(1, &mut mean, 10, 10);
        assert!((r.noise_std - 0.1).abs() < 1e-12);
        let n = mean.n_values() as f64;
        let var = mean.values().map(|v| f64::from(v).powi(2)).sum::<f64>() / n;
        assert!((var.sqrt() - 0.1).abs() < 0.002, "{}", var.sqrt());
    }

    #[test]
    fn a_release_divides_by_the_expected_cohort_not_by_who_came() {
        // Expected 4; 2 came with mean 0.8: the sum 1.6 over 4, noise z C / 4.
        let mut dp = CentralDp::new(2.0, 1.0, None, 4, [5; 32]).expect("valid");
        let mut mean = set(vec![0.8; 50_000]);
        let r = dp.release(1, &mut mean, 2, 2);
        assert!((r.noise_std - 0.5).abs() < 1e-12);
        let n = mean.n_values() as f64;
        let average = mean.values().map(f64::from).sum::<f64>() / n;
        assert!((average - 0.4).abs() < 0.01, "{average}");
        // A full cohort is the plain mean.
        let mut full = set(vec![0.8; 50_000]);
        dp.release(2, &mut full, 4, 4);
        let average = full.values().map(f64::from).sum::<f64>() / n;
        assert!((average - 0.8).abs() < 0.01, "{average}");
    }

    #[test]
    fn adaptive_clipping_moves_toward_the_quantile() {
        let adaptive = AdaptiveClipping {
            count_stddev: Some(10.0),
            ..AdaptiveClipping::default()
        };
        let mut dp = CentralDp::new(1.0, 1.0, Some(adaptive), 1_000_000, [1; 32]).expect("valid");
        let mut mean = set(vec![0.0]);
        // Every update was within (the count's noise, 10 in 10^6, is negligible):
        // the norm shrinks by exp(-0.2 * 0.5).
        let r = dp.release(1, &mut mean, 1_000_000, 1_000_000);
        assert!((r.next_clip_norm - (-0.1f64).exp()).abs() < 1e-4);
        // None was within: it grows.
        let r = dp.release(2, &mut mean, 1_000_000, 0);
        assert!(r.next_clip_norm > r.clip_norm);
        // The count's noise costs noise on the updates.
        let dp = CentralDp::new(1.0, 1.0, Some(AdaptiveClipping::default()), 100, [1; 32])
            .expect("valid");
        let expected = (1.0f64 - 0.01).powf(-0.5);
        assert!((dp.delta_noise_multiplier() - expected).abs() < 1e-12);
        let tiny = AdaptiveClipping {
            count_stddev: Some(0.1),
            ..AdaptiveClipping::default()
        };
        assert!(CentralDp::new(1.0, 1.0, Some(tiny), 4, [1; 32]).is_err());
    }
}
