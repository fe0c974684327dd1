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
