//! Gaussian noise from a cryptographically secure generator.
//!
//! Floating-point caveat: the samples are Box–Muller transforms of 53-bit
//! uniforms from ChaCha20, computed in `f64` and added to `f32` values.
//! Mironov (2012) showed that the low-order bits of textbook floating-point
//! samplers can leak the unnoised value; this sampler does not claim to close
//! that channel (a discrete Gaussian on a fixed-point grid would). It is
//! adequate against an adversary who sees the released model, rounded to
//! `f32`, for the noise levels DP-FedAvg uses, but it is not a proof-grade
//! sampler.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// Standard normal samples from ChaCha20 keyed with a 256-bit secret.
#[derive(Debug, Clone)]
pub struct GaussianNoise {
    rng: ChaCha20Rng,
    spare: Option<f64>,
}

impl GaussianNoise {
    /// A generator keyed with `key`, on stream `stream` (for example the
    /// round number), so each release has its own independent noise.
    pub fn new(key: [u8; 32], stream: u64) -> Self {
        let mut rng = ChaCha20Rng::from_seed(key);
        rng.set_stream(stream);
        Self { rng, spare: None }
    }

    fn uniform_open(&mut self) -> f64 {
        // (0, 1]: never 0, so the logarithm is finite.
        ((self.rng.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// One standard normal sample.
    pub fn standard_normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let radius = (-2.0 * self.uniform_open().ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * self.uniform_open();
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }

    /// Adds `N(0, std²)` to each value.
    pub fn perturb(&mut self, values: &mut [f32], std: f64) {
        for v in values {
            *v = (f64::from(*v) + std * self.standard_normal()) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_have_unit_variance_and_zero_mean() {
        let mut noise = GaussianNoise::new([7; 32], 3);
        let n = 200_000;
        let samples: Vec<f64> = (0..n).map(|_| noise.standard_normal()).collect();
        let mean = samples.iter().sum::<f64>() / n as f64;
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: 1/sqrt(n) ≈ 0.0022 for the mean, sqrt(2/n) ≈ 0.0032 for the variance.
        assert!(mean.abs() < 0.011, "mean {mean}");
        assert!((var - 1.0).abs() < 0.016, "variance {var}");
        let beyond_two = samples.iter().filter(|x| x.abs() > 2.0).count() as f64 / n as f64;
        assert!((beyond_two - 0.0455).abs() < 0.003, "{beyond_two}");
    }

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<f64> = {
            let mut g = GaussianNoise::new([1; 32], 1);
            (0..4).map(|_| g.standard_normal()).collect()
        };
        let b: Vec<f64> = {
            let mut g = GaussianNoise::new([1; 32], 2);
            (0..4).map(|_| g.standard_normal()).collect()
        };
        let again: Vec<f64> = {
            let mut g = GaussianNoise::new([1; 32], 1);
            (0..4).map(|_| g.standard_normal()).collect()
        };
        assert_ne!(a, b);
        assert_eq!(a, again);
    }
}
