//! A small radix-2 fast Fourier transform over `f64`, for the convolutions
//! of the PLD accountant: real sequences are transformed through a complex
//! transform of half their length.

use std::f64::consts::PI;

/// A complex number.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Complex {
    pub re: f64,
    pub im: f64,
}

impl Complex {
    pub const ONE: Complex = Complex { re: 1.0, im: 0.0 };

    fn new(re: f64, im: f64) -> Self {
        Self { re, im }
    }

    fn add(self, o: Complex) -> Complex {
        Complex::new(self.re + o.re, self.im + o.im)
    }

    fn sub(self, o: Complex) -> Complex {
        Complex::new(self.re - o.re, self.im - o.im)
    }

    pub fn mul(self, o: Complex) -> Complex {
        Complex::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }

    fn conj(self) -> Complex {
        Complex::new(self.re, -self.im)
    }

    fn scale(self, s: f64) -> Complex {
        Complex::new(self.re * s, self.im * s)
    }

    /// `self^n` by repeated squaring.
    pub fn powu(self, mut n: u64) -> Complex {
        let mut base = self;
        let mut acc = Complex::ONE;
        while n > 0 {
            if n & 1 == 1 {
                acc = acc.mul(base);
            }
            n >>= 1;
            if n > 0 {
                base = base.mul(base);
            }
        }
        acc
    }
}

/// `e^{-2πik/n}` for `k < n/2` (`n` a power of two, at least 2): sines and
/// cosines computed for the first octant only, the rest by symmetry.
fn twiddles(n: usize) -> Vec<Complex> {
    let angle = |k: usize| (2.0 * PI * k as f64 / n as f64).sin_cos();
    // (cos, sin) of 2πk/n for k = 0..=n/4.
    let quarter_len = n / 4;
    let mut quarter: Vec<(f64, f64)> = Vec::with_capacity(quarter_len + 1);
    if n.is_multiple_of(8) {
        let eighth = n / 8;
        quarter.extend((0..=eighth).map(|k| {
            let (s, c) = angle(k);
            (c, s)
        }));
        for k in eighth + 1..=quarter_len {
            let (c, s) = quarter[quarter_len - k];
            quarter.push((s, c));
        }
    } else {
        quarter.extend((0..=quarter_len).map(|k| {
            let (s, c) = angle(k);
            (c, s)
        }));
    }
    (0..n / 2)
        .map(|k| {
            let (c, s) = if k <= quarter_len {
                quarter[k]
            } else {
                let (c, s) = quarter[k - quarter_len];
                (-s, c)
            };
            Complex::new(c, -s)
        })
        .collect()
}

/// A transform of real sequences of length `n` (a power of two, at least
/// 2), through a complex transform of length `n/2`.
pub(crate) struct Plan {
    n: usize,
    /// `e^{-2πik/n}`, `k < n/2`.
    base: Vec<Complex>,
    /// For the complex transform of length `m = n/2`, the twiddles of the
    /// stage of span `2h` at `h..2h`: `e^{-2πik/2h}`, `k < h`.
    stages: Vec<Complex>,
}

/// Complex transforms run all stages of spans up to this many values one
/// block at a time, within the cache.
const BLOCK: usize = 1 << 12;

impl Plan {
    /// The plan for length `n`.
    pub fn new(n: usize) -> Self {
        debug_assert!(n.is_power_of_two() && n >= 2);
        let base = twiddles(n);
        let m = n / 2;
        let mut stages = vec![Complex::ONE; m.max(1)];
        let mut half = 1;
        while half < m {
            let stride = n / (2 * half);
            for k in 0..half {
                stages[half + k] = base[k * stride];
            }
            half *= 2;
        }
        Self { n, base, stages }
    }

    /// In-place forward DFT (`X_k = Σ x_j e^{-2πijk/m}`) of `data`, of
    /// length `m = n/2`.
    fn transform(&self, data: &mut [Complex]) {
        let m = data.len();
        debug_assert_eq!(m, self.n / 2);
        if m <= 1 {
            return;
        }
        let bits = m.trailing_zeros();
        for i in 0..m {
            let j = i.reverse_bits() >> (usize::BITS - bits);
            if i < j {
                data.swap(i, j);
            }
        }
        let block = m.min(BLOCK);
        for chunk in data.chunks_exact_mut(block) {
            self.stages(chunk, 2, block);
        }
        self.stages(data, 2 * block, m);
    }

    /// The butterflies of the stages of spans `from..=to`.
    fn stages(&self, data: &mut [Complex], from: usize, to: usize) {
        let mut len = from;
        while len <= to {
            let half = len / 2;
            let twiddles = &self.stages[half..len];
            for span in data.chunks_exact_mut(len) {
                let (a, b) = span.split_at_mut(half);
                for ((x, y), w) in a.iter_mut().zip(b.iter_mut()).zip(twiddles) {
                    let t = y.mul(*w);
                    let u = *x;
                    *x = u.add(t);
                    *y = u.sub(t);
                }
            }
            len *= 2;
        }
    }

    /// The spectrum of `x` zero-padded to `n` (`x.len() <= n`): its DFT at
    /// frequencies `0..=n/2` (the rest follow by conjugate symmetry).
    pub fn forward(&self, x: &[f64]) -> Vec<Complex> {
        let m = self.n / 2;
        debug_assert!(x.len() <= self.n);
        // Pack even samples into the real parts, odd ones into the imaginary.
        let mut z = vec![Complex::default(); m];
        for (zk, pair) in z.iter_mut().zip(x.chunks(2)) {
            *zk = Complex::new(pair[0], pair.get(1).copied().unwrap_or(0.0));
        }
        self.transform(&mut z);
        // X_k = E_k + e^{-2πik/n} O_k, with E_k = (Z_k + conj Z_{m-k}) / 2 and
        // O_k = (Z_k - conj Z_{m-k}) / 2i (indices modulo m).
        let mut bins = vec![Complex::default(); m + 1];
        bins[0] = Complex::new(z[0].re + z[0].im, 0.0);
        bins[m] = Complex::new(z[0].re - z[0].im, 0.0);
        for k in 1..m {
            let zk = z[k];
            let zmk = z[m - k].conj();
            let e = zk.add(zmk).scale(0.5);
            let d = zk.sub(zmk).scale(0.5);
            let o = Complex::new(d.im, -d.re);
            bins[k] = e.add(self.base[k].mul(o));
        }
        bins
    }

    /// The real sequence of length `n` whose spectrum (at `0..=n/2`) is
    /// `bins`.
    pub fn inverse(&self, bins: &[Complex]) -> Vec<f64> {
        let m = self.n / 2;
        debug_assert_eq!(bins.len(), m + 1);
        // Z_k = E_k + i O_k with E_k = (X_k + conj X_{m-k}) / 2 and
        // O_k = (X_k - conj X_{m-k}) e^{2πik/n} / 2; the inverse transform of
        // Z is the conjugate of the forward transform of its conjugate.
        let mut z = vec![Complex::default(); m];
        for (k, zk) in z.iter_mut().enumerate() {
            let xk = bins[k];
            let xmk = bins[m - k].conj();
            let e = xk.add(xmk).scale(0.5);
            let o = xk.sub(xmk).scale(0.5).mul(self.base[k].conj());
            *zk = e.add(Complex::new(-o.im, o.re)).conj();
        }
        self.transform(&mut z);
        let scale = 1.0 / m as f64;
        let mut out = vec![0.0; self.n];
        for (pair, c) in out.chunks_exact_mut(2).zip(&z) {
            pair[0] = c.re * scale;
            pair[1] = -c.im * scale;
        }
        out
    }
}

/// The smallest transform length (a power of two, at least 2) that holds
/// `len` values, or `None` above `max`.
pub(crate) fn transform_len(len: usize, max: usize) -> Option<usize> {
    let n = len.max(2).checked_next_power_of_two()?;
    (n <= max).then_some(n)
}

/// The linear convolution of `a` and `b` (length `a.len() + b.len() - 1`),
/// directly when one is short, by FFT otherwise; `None` when the transform
/// would be longer than `max`.
pub(crate) fn convolve(a: &[f64], b: &[f64], max: usize) -> Option<Vec<f64>> {
    if a.is_empty() || b.is_empty() {
        return Some(Vec::new());
    }
    let len = a.len() + b.len() - 1;
    if a.len().min(b.len()) <= 32 {
        let mut out = vec![0.0; len];
        for (i, &x) in a.iter().enumerate() {
            for (o, &y) in out[i..].iter_mut().zip(b) {
                *o += x * y;
            }
        }
        return Some(out);
    }
    let plan = Plan::new(transform_len(len, max)?);
    let mut fa = plan.forward(a);
    let fb = plan.forward(b);
    for (x, y) in fa.iter_mut().zip(&fb) {
        *x = x.mul(*y);
    }
    let mut out = plan.inverse(&fa);
    out.truncate(len);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_dft(x: &[f64], n: usize) -> Vec<Complex> {
        (0..n)
            .map(|k| {
                x.iter()
                    .enumerate()
                    .fold(Complex::default(), |acc, (j, &v)| {
                        let (s, c) = (-2.0 * PI * ((j * k) % n) as f64 / n as f64).sin_cos();
                        acc.add(Complex::new(c * v, s * v))
                    })
            })
            .collect()
    }

    #[test]
    fn real_spectrum_matches_the_definition_and_inverts() {
        for n in [2usize, 4, 8, 16, 64, 1 << 14] {
            let x: Vec<f64> = (0..n - 1)
                .map(|i| ((i * 7 + 3) % 11) as f64 - 4.5)
                .collect();
            let plan = Plan::new(n);
            let spectrum = plan.forward(&x);
            let naive = naive_dft(&x, n);
            assert_eq!(spectrum.len(), n / 2 + 1);
            for (k, (got, want)) in spectrum.iter().zip(&naive).enumerate() {
                assert!(
                    (got.re - want.re).abs() < 1e-8 && (got.im - want.im).abs() < 1e-8,
                    "n={n} k={k}: {got:?} vs {want:?}"
                );
            }
            let back = plan.inverse(&spectrum);
            for (i, &v) in back.iter().enumerate() {
                let want = x.get(i).copied().unwrap_or(0.0);
                assert!((v - want).abs() < 1e-12, "n={n} i={i}: {v} vs {want}");
            }
        }
    }

    #[test]
    fn fft_convolution_matches_direct() {
        let a: Vec<f64> = (0..100).map(|i| ((i * 13) % 17) as f64 / 17.0).collect();
        let b: Vec<f64> = (0..77).map(|i| ((i * 5) % 9) as f64 / 9.0).collect();
        let fast = convolve(&a, &b, 1 << 20).expect("fits");
        let mut direct = vec![0.0; a.len() + b.len() - 1];
        for (i, x) in a.iter().enumerate() {
            for (j, y) in b.iter().enumerate() {
                direct[i + j] += x * y;
            }
        }
        assert_eq!(fast.len(), direct.len());
        for (f, d) in fast.iter().zip(&direct) {
            assert!((f - d).abs() < 1e-11, "{f} vs {d}");
        }
        assert!(convolve(&a, &b, 128).is_none());
    }

    #[test]
    fn integer_powers() {
        let z = Complex::new(0.6, -0.3);
        let mut want = Complex::ONE;
        for n in 0..20u64 {
            let got = z.powu(n);
            assert!((got.re - want.re).abs() < 1e-15 && (got.im - want.im).abs() < 1e-15);
            want = want.mul(z);
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release -p tessera-privacy --lib fft::timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing only"]
    fn eight_million_points() {
        let n = 1 << 23;
        let x: Vec<f64> = (0..n / 2).map(|i| (i % 7) as f64).collect();
        let t = std::time::Instant::now();
        let plan = Plan::new(n);
        let spectrum = plan.forward(&x);
        let y = plan.inverse(&spectrum);
        let err = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        println!(
            "plan, forward and inverse of 2^23 reals: {:?}, error {err:e}",
            t.elapsed()
        );
        assert!(err < 1e-9);
    }
}
