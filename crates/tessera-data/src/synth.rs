//! The FedProx Synthetic(alpha, beta) generator (Li et al., MLSys 2020, §5.1).

use std::io::Write;

use tessera_core::SeededRng;

/// Parameters of Synthetic(alpha, beta). `alpha` and `beta` are variances.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Number of sites.
    pub sites: usize,
    /// Rows per site.
    pub rows_per_site: usize,
    /// Features per row (D).
    pub features: usize,
    /// Classes (2: the binary variant; 10 with D = 60: the original).
    pub classes: usize,
    /// Variance of the per-site model mean u_k: how much site models differ.
    pub alpha: f64,
    /// Variance of the per-site feature mean B_k: how much site inputs differ.
    pub beta: f64,
    /// Seed.
    pub seed: u64,
    /// Departments within each site (0: none, the paper's data). With
    /// some, each row belongs to one, drawn uniformly, named in a
    /// `department` column, and its label follows the site's model shifted
    /// by the department's own.
    pub departments: usize,
    /// Variance of each entry of a department's shift of its site's
    /// `W_k` and `b_k`: how much departments differ within a site.
    pub department_variance: f64,
}

/// Writes the data as CSV with columns `site`, `x0..x{D-1}`, `y`; sites are
/// named `site0`, `site1`, ...
///
/// For site k: u_k ~ N(0, alpha); W_k (C x D) and b_k (C) entries ~ N(u_k, 1);
/// B_k ~ N(0, beta); v_k entries ~ N(B_k, 1); x ~ N(v_k, diag(j^-1.2)) for
/// j = 1..D; y = argmax(W_k x + b_k).
///
/// With departments (a `department` column after `site`, levels `dept0`,
/// `dept1`, ...): department m of site k shifts W_k and b_k by S_km and
/// s_km, entries ~ N(0, department_variance), drawn after the site's own;
/// each row's department is drawn uniformly before its x, and y =
/// argmax((W_k + S_km) x + b_k + s_km). Without departments the rows are
/// the paper's, bit for bit.
pub fn write_synthetic(config: &SynthConfig, out: &mut dyn Write) -> std::io::Result<()> {
    let (d, c) = (config.features, config.classes);
    let mut rng = SeededRng::new(config.seed);
    let sd: Vec<f64> = (1..=d).map(|j| (j as f64).powf(-1.2).sqrt()).collect();
    let departments = config.departments;
    write!(out, "site")?;
    if departments > 0 {
        write!(out, ",department")?;
    }
    for j in 0..d {
        write!(out, ",x{j}")?;
    }
    writeln!(out, ",y")?;
    let mut x = vec![0.0f64; d];
    let mut line = String::new();
    for k in 0..config.sites {
        let u = rng.gaussian(0.0, config.alpha.sqrt());
        let w: Vec<f64> = (0..c * d).map(|_| rng.gaussian(u, 1.0)).collect();
        let b: Vec<f64> = (0..c).map(|_| rng.gaussian(u, 1.0)).collect();
        let big_b = rng.gaussian(0.0, config.beta.sqrt());
        let v: Vec<f64> = (0..d).map(|_| rng.gaussian(big_b, 1.0)).collect();
        let shift_sd = config.department_variance.sqrt();
        // Each department's shift of W_k (C x D entries) then of b_k (C).
        let shifts: Vec<Vec<f64>> = (0..departments)
            .map(|_| {
                (0..c * d + c)
                    .map(|_| rng.gaussian(0.0, shift_sd))
                    .collect()
            })
            .collect();
        for _ in 0..config.rows_per_site {
            let department = (departments > 0)
                .then(|| usize::try_from(rng.below(departments as u64)).unwrap_or(0));
            let shift = department.and_then(|m| shifts.get(m));
            let shifted = |i: usize| shift.map_or(0.0, |s| s[i]);
            for j in 0..d {
                x[j] = v[j] + rng.normal() * sd[j];
            }
            let label = (0..c)
                .map(|class| {
                    let row = (0..d)
                        .map(|j| (w[class * d + j] + shifted(class * d + j)) * x[j])
                        .sum::<f64>();
                    b[class] + shifted(c * d + class) + row
                })
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |best, (i, score)| {
                    if score > best.1 { (i, score) } else { best }
                })
                .0;
            line.clear();
            use std::fmt::Write as _;
            let _ = write!(line, "site{k}");
            if let Some(m) = department {
                let _ = write!(line, ",dept{m}");
            }
            for value in &x {
                let _ = write!(line, ",{value}");
            }
            let _ = writeln!(line, ",{label}");
            out.write_all(line.as_bytes())?;
        }
    }
    Ok(())
}

/// Most rows [`write_wide`] writes.
pub const MAX_WIDE_ROWS: usize = 5_000_000;

/// Most bytes of rows [`write_wide`] holds ([`wide_bytes`]): it keeps them
/// all to set the intercept before writing any.
pub const MAX_WIDE_BYTES: usize = 2 << 30;

/// Bytes [`write_wide`] holds for `rows` rows of `numeric` measurements
/// (`f32`) and `coded` codes (`u32`), with each row's log-odds (`f64`).
pub fn wide_bytes(rows: usize, numeric: usize, coded: usize) -> usize {
    rows.saturating_mul(
        numeric
            .saturating_mul(4)
            .saturating_add(coded.saturating_mul(4))
            .saturating_add(8),
    )
}

/// Wide, sparse tabular data with a rare positive class: a few coded
/// columns of many levels each (diagnosis or procedure codes), long-tailed
/// and used differently at each site, beside a few measurements, as
/// hospital encounter tables are.
#[derive(Debug, Clone, PartialEq)]
pub struct WideConfig {
    /// Number of sites.
    pub sites: usize,
    /// Rows per site.
    pub rows_per_site: usize,
    /// Numeric columns (`x0`, `x1`, ...).
    pub numeric: usize,
    /// Coded columns (`c0`, `c1`, ...).
    pub coded: usize,
    /// Levels of each coded column (`c0_0` ... `c0_{L-1}`).
    pub levels: usize,
    /// The share of positive rows the intercept is set to.
    pub positive_rate: f64,
    /// Variance of a site's shift of the log-odds (how different the
    /// sites' base rates are).
    pub alpha: f64,
    /// Variance of a site's tilt of each code's frequency (log scale) and
    /// of its numeric columns' means (how different the sites' inputs are).
    pub beta: f64,
    /// Seed.
    pub seed: u64,
}

/// Writes [`WideConfig`]'s data as CSV with columns `site`, `x0..`,
/// `c0..`, `y` (0 or 1); sites are named `site0`, `site1`, ...
///
/// Each level `l` of a coded column has frequency proportional to
/// `(l + 1)^-1.1` (a long tail: most levels rare) times the site's tilt
/// `exp(N(0, beta))`, and an effect on the log-odds drawn from
/// N(0, 0.8^2); each of the D numeric columns a weight from N(0, 1/D) (so
/// together they weigh about as much as one coded column), values
/// N(m_k, 1) with the site's mean m_k ~ N(0, beta). A row's log-odds is
/// the intercept plus its site's shift (N(0, alpha)), its codes' effects
/// and its weighted measurements; the intercept is set (by bisection, over
/// all rows) so that the mean probability is `positive_rate`, and each
/// label is drawn with its row's probability.
pub fn write_wide(config: &WideConfig, out: &mut dyn Write) -> std::io::Result<()> {
    let (d, k) = (config.numeric, config.coded);
    let levels = config.levels.max(1);
    let mut rng = SeededRng::new(config.seed);
    let effects: Vec<f64> = (0..k * levels).map(|_| rng.gaussian(0.0, 0.8)).collect();
    let weights: Vec<f64> = (0..d)
        .map(|_| rng.gaussian(0.0, (1.0 / d.max(1) as f64).sqrt()))
        .collect();
    let base: Vec<f64> = (0..levels).map(|l| ((l + 1) as f64).powf(-1.1)).collect();
    let rows = config.sites.saturating_mul(config.rows_per_site);
    let mut x: Vec<f32> = Vec::with_capacity(rows.saturating_mul(d));
    let mut codes: Vec<u32> = Vec::with_capacity(rows.saturating_mul(k));
    let mut logits: Vec<f64> = Vec::with_capacity(rows);
    for _ in 0..config.sites {
        let shift = rng.gaussian(0.0, config.alpha.sqrt());
        let means: Vec<f64> = (0..d)
            .map(|_| rng.gaussian(0.0, config.beta.sqrt()))
            .collect();
        // Each coded column's cumulative frequencies at this site.
        let cumulative: Vec<Vec<f64>> = (0..k)
            .map(|_| {
                let mut total = 0.0;
                base.iter()
                    .map(|p| {
                        total += p * rng.gaussian(0.0, config.beta.sqrt()).exp();
                        total
                    })
                    .collect()
            })
            .collect();
        for _ in 0..config.rows_per_site {
            let mut logit = shift;
            for j in 0..d {
                let v = rng.gaussian(means[j], 1.0);
                x.push(v as f32);
                logit += weights[j] * f64::from(v as f32);
            }
            for (c, cum) in cumulative.iter().enumerate() {
                let total = cum.last().copied().unwrap_or(1.0);
                let u = rng.next_f64() * total;
                let level = cum.partition_point(|&t| t <= u).min(levels - 1);
                codes.push(level as u32);
                logit += effects[c * levels + level];
            }
            logits.push(logit);
        }
    }
    // The intercept: the mean probability rises with it.
    let mean_p = |b: f64| {
        logits
            .iter()
            .map(|l| 1.0 / (1.0 + (-(l + b)).exp()))
            .sum::<f64>()
            / rows.max(1) as f64
    };
    let (mut low, mut high) = (-60.0f64, 60.0f64);
    for _ in 0..100 {
        let mid = (low + high) / 2.0;
        if mean_p(mid) < config.positive_rate {
            low = mid;
        } else {
            high = mid;
        }
    }
    let intercept = (low + high) / 2.0;
    write!(out, "site")?;
    for j in 0..d {
        write!(out, ",x{j}")?;
    }
    for c in 0..k {
        write!(out, ",c{c}")?;
    }
    writeln!(out, ",y")?;
    let mut line = String::new();
    for (i, logit) in logits.iter().enumerate() {
        use std::fmt::Write as _;
        line.clear();
        let _ = write!(line, "site{}", i / config.rows_per_site.max(1));
        for v in &x[i * d..(i + 1) * d] {
            let _ = write!(line, ",{v}");
        }
        for (c, level) in codes[i * k..(i + 1) * k].iter().enumerate() {
            let _ = write!(line, ",c{c}_{level}");
        }
        let positive = rng.bernoulli(1.0 / (1.0 + (-(logit + intercept)).exp()));
        let _ = writeln!(line, ",{}", u8::from(positive));
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate(config: &SynthConfig) -> String {
        let mut out = Vec::new();
        write_synthetic(config, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn shape_and_determinism() {
        let config = SynthConfig {
            sites: 3,
            rows_per_site: 50,
            features: 5,
            classes: 10,
            alpha: 0.5,
            beta: 0.5,
            seed: 1,
            departments: 0,
            department_variance: 0.0,
        };
        let a = generate(&config);
        assert_eq!(a, generate(&config));
        let lines: Vec<&str> = a.lines().collect();
        assert_eq!(lines[0], "site,x0,x1,x2,x3,x4,y");
        assert_eq!(lines.len(), 1 + 150);
        assert!(lines[1..].iter().all(|l| l.split(',').count() == 7));
        let labels: Vec<usize> = lines[1..]
            .iter()
            .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
            .collect();
        assert!(labels.iter().all(|&y| y < 10));
    }

    #[test]
    fn feature_variance_follows_the_power_law() {
        // Within one site x_j - v_j ~ N(0, j^-1.2): check the spread of x0 and x9.
        let config = SynthConfig {
            sites: 1,
            rows_per_site: 20_000,
            features: 10,
            classes: 2,
            alpha: 1.0,
            beta: 1.0,
            seed: 9,
            departments: 0,
            department_variance: 0.0,
        };
        let text = generate(&config);
        let column = |j: usize| -> Vec<f64> {
            text.lines()
                .skip(1)
                .map(|l| l.split(',').nth(1 + j).unwrap().parse().unwrap())
                .collect()
        };
        for j in [0usize, 9] {
            let v = column(j);
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
            let expected = ((j + 1) as f64).powf(-1.2);
            assert!(
                (var / expected - 1.0).abs() < 0.05,
                "feature {j}: variance {var}, expected {expected}"
            );
        }
    }
}

#[cfg(test)]
mod wide_tests {
    use super::*;

    #[test]
    fn wide_rows_have_their_codes_their_rate_and_a_long_tail() {
        let config = WideConfig {
            sites: 5,
            rows_per_site: 4000,
            numeric: 3,
            coded: 2,
            levels: 200,
            positive_rate: 0.11,
            alpha: 0.25,
            beta: 0.25,
            seed: 7,
        };
        let mut out = Vec::new();
        write_wide(&config, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut again = Vec::new();
        write_wide(&config, &mut again).unwrap();
        assert_eq!(text.as_bytes(), &again[..]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "site,x0,x1,x2,c0,c1,y");
        assert_eq!(lines.len(), 1 + 20_000);
        assert!(lines[1].starts_with("site0,") && lines[20_000].starts_with("site4,"));
        let fields: Vec<Vec<&str>> = lines[1..].iter().map(|l| l.split(',').collect()).collect();
        // About 11% positives (binomial spread over 20,000 rows: 0.002).
        let positives = fields.iter().filter(|f| f[6] == "1").count() as f64 / 20_000.0;
        assert!((positives - 0.11).abs() < 0.01, "{positives}");
        assert!(fields.iter().all(|f| f[6] == "0" || f[6] == "1"));
        // Codes are c0_0..c0_199; the commonest level is far commoner than
        // the median one, and most levels appear.
        let mut counts = vec![0usize; 200];
        for f in &fields {
            let level: usize = f[4].strip_prefix("c0_").unwrap().parse().unwrap();
            counts[level] += 1;
        }
        let seen = counts.iter().filter(|&&c| c > 0).count();
        let mut sorted = counts.clone();
        sorted.sort_unstable();
        assert!(
            seen > 150 && sorted[199] > 20 * sorted[100].max(1),
            "{seen} {sorted:?}"
        );
    }
}
