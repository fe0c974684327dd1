use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// Derives an independent 64-bit seed from a base seed and a path of tags, for
/// example `(run seed, round, site)`. Stable across platforms and releases: the
/// mixing is SplitMix64's finaliser, and string tags go through [`tag`].
pub fn derive_seed(base: u64, tags: &[u64]) -> u64 {
    let mut h = splitmix(base ^ 0x5851_f42d_4c95_7f2d);
    for &t in tags {
        h = splitmix(h ^ splitmix(t.wrapping_add(0x9e37_79b9_7f4a_7c15)));
    }
    h
}

/// 256 derived bits: `derive_seed(base, tags ++ [i])` for `i` in 0..4, little
/// endian. Keys and public seeds of 32 bytes come from here.
pub fn derive_key(base: u64, tags: &[u64]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut path = tags.to_vec();
    path.push(0);
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        if let Some(last) = path.last_mut() {
            *last = i as u64;
        }
        chunk.copy_from_slice(&derive_seed(base, &path).to_le_bytes());
    }
    out
}

/// A stable 64-bit tag for a string (FNV-1a), for use with [`derive_seed`].
pub fn tag(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seeded random generator (ChaCha8) with the few distributions Tessera
/// needs, implemented here so that streams never change with a dependency's
/// release: the same seed gives the same numbers on every platform.
#[derive(Debug, Clone)]
pub struct SeededRng {
    inner: ChaCha8Rng,
}

impl SeededRng {
    /// A generator from a 64-bit seed.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A generator for a derived stream, `derive_seed(base, tags)`.
    pub fn derived(base: u64, tags: &[u64]) -> Self {
        Self::new(derive_seed(base, tags))
    }

    /// A generator keyed with 256 bits: ChaCha8 with `key` as its key. From a
    /// secret key (never from a run seed) its numbers cannot be recomputed by
    /// anyone who lacks the key, as a [`SeededRng::new`] stream can be by
    /// anyone who knows the seed.
    pub fn from_key(key: [u8; 32]) -> Self {
        Self {
            inner: ChaCha8Rng::from_seed(key),
        }
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[low, high)`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next_f64()
    }

    /// Uniform integer in `0..n` without bias (Lemire's method); `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no values");
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// A random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }

    /// `true` with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// Standard normal (Marsaglia's polar method).
    pub fn normal(&mut self) -> f64 {
        loop {
            let u = 2.0 * self.next_f64() - 1.0;
            let v = 2.0 * self.next_f64() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                return u * (-2.0 * s.ln() / s).sqrt();
            }
        }
    }

    /// Normal with the given mean and standard deviation.
    pub fn gaussian(&mut self, mean: f64, std_dev: f64) -> f64 {
        mean + std_dev * self.normal()
    }

    /// Gamma with shape `shape` (> 0) and scale 1 (Marsaglia and Tsang 2000;
    /// shapes below 1 by `Gamma(shape + 1) * U^(1/shape)`).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        assert!(shape > 0.0, "gamma needs a positive shape");
        if shape < 1.0 {
            let u = 1.0 - self.next_f64(); // in (0, 1]
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = 1.0 - self.next_f64();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// A draw from the symmetric Dirichlet distribution with `k` components
    /// and concentration `alpha` (normalised gamma draws).
    pub fn dirichlet(&mut self, k: usize, alpha: f64) -> Vec<f64> {
        let draws: Vec<f64> = (0..k).map(|_| self.gamma(alpha)).collect();
        let total: f64 = draws.iter().sum();
        if total > 0.0 {
            draws.iter().map(|g| g / total).collect()
        } else {
            // Every draw underflowed (tiny alpha): all mass on one component.
            let mut out = vec![0.0; k];
            if k > 0 {
                out[self.below(k as u64) as usize] = 1.0;
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn derive_key_is_four_derived_seeds() {
        let key = derive_key(42, &[9, 3]);
        for i in 0..4u64 {
            let word = derive_seed(42, &[9, 3, i]).to_le_bytes();
            assert_eq!(&key[8 * i as usize..8 * (i as usize + 1)], &word);
        }
        assert_ne!(derive_key(42, &[9, 3]), derive_key(42, &[9, 4]));
    }

    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| SeededRng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(derive_seed(1, &[2, 3]), derive_seed(1, &[3, 2]));
        assert_ne!(derive_seed(1, &[2]), derive_seed(2, &[2]));
        assert_ne!(tag("cleveland"), tag("hungarian"));
    }

    #[test]
    fn keyed_generators_depend_on_every_bit_of_the_key() {
        let draw = |key: [u8; 32]| -> Vec<u64> {
            let mut rng = SeededRng::from_key(key);
            (0..4).map(|_| rng.next_u64()).collect()
        };
        let mut flipped = [7u8; 32];
        flipped[31] ^= 1;
        assert_eq!(draw([7; 32]), draw([7; 32]));
        assert_ne!(draw([7; 32]), draw(flipped));
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut rng = SeededRng::new(3);
        let mut p = rng.permutation(100);
        p.sort_unstable();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn moments_of_distributions() {
        let mut rng = SeededRng::new(11);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[rng.below(7) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }

    /// Gamma(a) has mean a and variance a; Dirichlet components sum to 1
    /// with mean 1/k.
    #[test]
    fn gamma_and_dirichlet_moments() {
        let mut rng = SeededRng::new(5);
        for shape in [0.1, 0.5, 1.0, 3.0] {
            let n = 100_000;
            let xs: Vec<f64> = (0..n).map(|_| rng.gamma(shape)).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            // Standard error of the mean is sqrt(a / n); of the variance about sqrt(6 a^2 ... ) / sqrt(n).
            assert!(
                (mean - shape).abs() < 5.0 * (shape / n as f64).sqrt(),
                "{shape}: mean {mean}"
            );
            assert!(
                (var - shape).abs() < 0.05 * shape + 0.02,
                "{shape}: var {var}"
            );
        }
        let mut first = 0.0;
        for _ in 0..20_000 {
            let p = rng.dirichlet(4, 0.5);
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            first += p[0] / 20_000.0;
        }
        assert!((first - 0.25).abs() < 0.01, "{first}");
    }
}
