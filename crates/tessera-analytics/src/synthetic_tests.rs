//! The synthetic release against the table it came from: marginals and
//! correlations kept where the budget allows, a level one row holds never
//! released, settings and rows out of shape refused.

use super::*;

fn settings(epsilon: f64) -> SynthSettings {
    SynthSettings {
        epsilon,
        delta: 1e-5,
        correlations: true,
        missing: vec!["?".into(), String::new()],
    }
}

fn key(k: u8) -> [u8; 32] {
    [k; 32]
}

/// `n` rows: x ~ N(50, 10); y = 0.8 x' + 0.6 e (standardised, then
/// shifted to 100 + 20 y), whole ages; a level column (A 60%, B 30%, C
/// 10%); a unique identifier; one row in 20 with x missing.
fn table(n: usize, seed: u64) -> Vec<Vec<String>> {
    let mut rng = SeededRng::new(seed);
    (0..n)
        .map(|i| {
            let a = rng.normal();
            let b = 0.8 * a + 0.6 * rng.normal();
            let level = match rng.next_f64() {
                u if u < 0.6 => "A",
                u if u < 0.9 => "B",
                _ => "C",
            };
            vec![
                if i % 20 == 0 {
                    "?".into()
                } else {
                    format!("{:.0}", 50.0 + 10.0 * a)
                },
                format!("{:.3}", 100.0 + 20.0 * b),
                level.into(),
                format!("patient-{i:05}-{}", rng.next_u64()),
            ]
        })
        .collect()
}

const COLUMNS: [SynthColumn; 4] = [
    SynthColumn::Numeric,
    SynthColumn::Numeric,
    SynthColumn::Categorical(None),
    SynthColumn::Categorical(None),
];

fn column(rows: &[Vec<String>], c: usize) -> Vec<f64> {
    rows.iter()
        .filter_map(|r| r[c].parse::<f64>().ok())
        .collect()
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn the_normal_functions_match_published_values() {
    assert!((phi(1.96) - 0.975_002_1).abs() < 1e-6);
    assert!((phi(-1.0) - 0.158_655_3).abs() < 1e-6);
    assert!((probit(0.975) - 1.959_964).abs() < 1e-6);
    assert!((probit(0.001) + 3.090_232).abs() < 1e-5);
    for p in [0.01, 0.2, 0.5, 0.77, 0.999] {
        assert!((phi(probit(p)) - p).abs() < 1e-6, "{p}");
    }
}

#[test]
fn marginals_and_correlations_survive_at_a_generous_budget() {
    let rows = table(3000, 1);
    let model = SynthModel::release(&COLUMNS, &rows, &settings(4.0), key(1)).unwrap();
    assert_eq!(model.events.len(), 3, "count, marginals, correlations");
    let corr = model.correlations.as_ref().unwrap();
    assert!(corr[0][1] > 0.65 && corr[0][1] < 0.95, "{corr:?}");
    let synthetic = model.sample(3000, &mut SeededRng::new(9));
    let (x, y) = (column(&rows, 0), column(&synthetic, 0));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        (mean(&x) - mean(&y)).abs() < 2.0,
        "{} vs {}",
        mean(&x),
        mean(&y)
    );
    // Whole numbers stay whole; the missing share stays near 5%.
    assert!(y.iter().filter(|v| v.fract() == 0.0).count() as f64 > 0.95 * y.len() as f64);
    let missing = synthetic.iter().filter(|r| r[0] == "?").count() as f64 / 3000.0;
    assert!((missing - 0.05).abs() < 0.02, "{missing}");
    // The pair's correlation, in the sample (rows with both present).
    let both: Vec<(f64, f64)> = synthetic
        .iter()
        .filter_map(|r| Some((r[0].parse::<f64>().ok()?, r[1].parse::<f64>().ok()?)))
        .collect();
    let (a, b): (Vec<f64>, Vec<f64>) = both.into_iter().unzip();
    let r = pearson(&a, &b);
    assert!(r > 0.55, "sample correlation {r}");
    // Level shares within three points; the identifiers never appear.
    for (level, share) in [("A", 0.6), ("B", 0.3), ("C", 0.1)] {
        let got = synthetic.iter().filter(|r| r[2] == level).count() as f64 / 3000.0;
        assert!((got - share).abs() < 0.03, "{level}: {got}");
    }
    for r in &synthetic {
        assert!(!r[3].starts_with("patient-"), "{r:?}");
    }
}

#[test]
fn a_small_budget_releases_marginals_only() {
    let rows = table(60, 2);
    let model = SynthModel::release(&COLUMNS, &rows, &settings(0.5), key(2)).unwrap();
    assert_eq!(model.events.len(), 2, "count, marginals");
    assert!(model.correlations.is_none());
    assert_eq!(model.sample(5, &mut SeededRng::new(1)).len(), 5);
}

#[test]
fn a_level_one_row_holds_is_never_released() {
    // Over many keys, at a large epsilon: the unique identifiers stay out.
    for k in 0..20 {
        let rows = table(200, 3);
        let model = SynthModel::release(&COLUMNS, &rows, &settings(8.0), key(k)).unwrap();
        let Marginal::Categorical { levels } = &model.marginals[3] else {
            panic!("categorical")
        };
        assert!(
            levels.iter().all(|(l, _)| !l.starts_with("patient-")),
            "{levels:?}"
        );
    }
}

#[test]
fn a_level_the_plan_lists_twice_is_counted_once() {
    let columns = [SynthColumn::Categorical(Some(vec![
        "1".into(),
        "1.0".into(),
        "2".into(),
        "1".into(),
    ]))];
    let rows: Vec<Vec<String>> = (0..50).map(|i| vec![format!("{}", 1 + i % 2)]).collect();
    let model = SynthModel::release(&columns, &rows, &settings(1.0), key(5)).unwrap();
    let Marginal::Categorical { levels } = &model.marginals[0] else {
        panic!("categorical")
    };
    let names: Vec<&str> = levels.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(names, ["?", "1", "2", "(undeclared)"]);
}

#[test]
fn bad_settings_and_ragged_rows_are_refused() {
    let rows = table(10, 4);
    for bad in [0.0, -1.0, f64::NAN] {
        let err = SynthModel::release(&COLUMNS, &rows, &settings(bad), key(0)).unwrap_err();
        assert!(err.to_string().contains("epsilon"), "{err}");
    }
    let mut ragged = rows.clone();
    ragged[3].pop();
    let err = SynthModel::release(&COLUMNS, &ragged, &settings(1.0), key(0)).unwrap_err();
    assert!(err.to_string().contains("row 4 has 3 fields"), "{err}");
}
