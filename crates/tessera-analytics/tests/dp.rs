//! With noise: the error over 1,000 seeded answers is the calibrated
//! Gaussian (Kolmogorov-Smirnov at p > 0.01); budgets are enforced before a
//! query runs and the ledger shows every charge; at epsilon 1 on 20,000 rows
//! histograms are within 1% of the rows and quantiles within 1% in rank.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use tessera_analytics::layout::SCALE;
use tessera_analytics::{Report, Schema, Settings, SiteTable, Values};
use tessera_privacy::{Budgets, Ledger};

fn ask(
    text: &str,
    schema: &Schema,
    sites: &[SiteTable],
    settings: &Settings,
    ledger: &mut Ledger,
    release: u32,
) -> Report {
    tessera_analytics::answer(text, schema, sites, settings, ledger, release)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn value(report: &Report, scope: usize, group: usize, name: &str) -> (f64, f64) {
    let s = report.answers[scope].groups[group]
        .statistics
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name}"));
    (s.values[0], s.errors[0])
}

/// Abramowitz and Stegun 7.1.26 (error below 1.5e-7).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// The Kolmogorov-Smirnov p-value of `samples` against N(0, 1)
/// (asymptotic distribution with Stephens' correction).
fn ks_p_value(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len() as f64;
    let mut d: f64 = 0.0;
    for (i, &x) in samples.iter().enumerate() {
        let f = normal_cdf(x);
        d = d.max((i as f64 + 1.0) / n - f).max(f - i as f64 / n);
    }
    let lambda = (n.sqrt() + 0.12 + 0.11 / n.sqrt()) * d;
    let mut p = 0.0;
    for k in 1..100 {
        let k = f64::from(k);
        p += 2.0 * (-1f64).powf(k - 1.0) * (-2.0 * k * k * lambda * lambda).exp();
    }
    p.clamp(0.0, 1.0)
}

#[test]
fn ks_p_value_tells_a_wrong_scale_apart() {
    // The test's own check: samples of N(0, 1.4^2) fail against N(0, 1).
    let mut noise = tessera_privacy::GaussianNoise::new([7; 32], 0);
    let mut right: Vec<f64> = (0..1000).map(|_| noise.standard_normal()).collect();
    let mut wrong: Vec<f64> = (0..1000).map(|_| 1.4 * noise.standard_normal()).collect();
    assert!(ks_p_value(&mut right) > 0.01);
    assert!(ks_p_value(&mut wrong) < 0.01);
}

#[test]
fn noise_over_1000_seeded_answers_matches_the_calibrated_scale() {
    let (schema, sites) = common::records("fed-heart-disease.toml");
    let query = "SELECT cp, count(*), sum(chol), mean(age), histogram(age, 4) FROM data \
                 GROUP BY cp CLAMP chol 0 700, age 0 120";
    let mut exact_ledger = Ledger::new(Budgets::default());
    let exact = ask(
        query,
        &schema,
        &sites,
        &common::exact(),
        &mut exact_ledger,
        1,
    );
    let runs = 1000;
    let mut count = Vec::with_capacity(runs);
    let mut sum = Vec::with_capacity(runs);
    let mut mean = Vec::with_capacity(runs);
    let mut bin = Vec::with_capacity(runs);
    let mut sigma = 0.0;
    for seed in 0..runs as u64 {
        let mut ledger = Ledger::new(Budgets::default());
        let noisy = ask(
            query,
            &schema,
            &sites,
            &common::noisy(1.0, seed),
            &mut ledger,
            1,
        );
        let release = &noisy.answers[0].release;
        assert!(release.protected);
        sigma = release.noise_std;
        assert!(
            (release.sigma - release.noise_multiplier.unwrap() * release.sensitivity).abs() < 1e-12
        );
        // One row adds 1 (its count), at most 1/2 (sum, and mean: centred
        // values), 1 (a bin): sensitivity sqrt(1 + 1/4 + 1/4 + 1).
        assert!((release.sensitivity - 2.5f64.sqrt()).abs() < 1e-12);
        // Group cp = 4 (the largest): noisy minus exact, over the reported error.
        for (name, out) in [
            ("count(*)", &mut count),
            ("sum(chol)", &mut sum),
            ("mean(age)", &mut mean),
        ] {
            let (got, error) = value(&noisy, 0, 3, name);
            let (want, _) = value(&exact, 0, 3, name);
            assert!(error > 0.0, "{name} carries an error bar");
            out.push((got - want) / error);
        }
        let got = noisy.answers[0].groups[3].statistics[4].values[2];
        let want = exact.answers[0].groups[3].statistics[4].values[2];
        bin.push((got - want) / sigma);
    }
    for (name, samples) in [
        ("count", &mut count),
        ("sum", &mut sum),
        ("mean", &mut mean),
        ("bin", &mut bin),
    ] {
        let p = ks_p_value(samples);
        println!("{name}: KS p = {p:.3} (sigma {sigma:.3})");
        assert!(
            p > 0.01,
            "{name}: errors are not N(0, reported^2): KS p = {p}"
        );
    }
}

#[test]
fn budgets_admit_answers_within_them_and_refuse_the_one_that_would_pass() {
    let (schema, sites) = common::records("fed-heart-disease.toml");
    let query = "SELECT count(*), mean(age) FROM data CLAMP age 0 120";
    let mut ledger = Ledger::new(Budgets {
        delta: 1e-6,
        run: Some(2.5),
        participants: BTreeMap::new(),
    });
    let mut ran = 0u32;
    let refusal = loop {
        match tessera_analytics::answer(
            query,
            &schema,
            &sites,
            &common::noisy(1.0, 1),
            &mut ledger,
            ran + 1,
        ) {
            Ok(report) => {
                assert_eq!(report.ledger.len(), 1);
                assert_eq!(report.ledger[0].kind, "central");
                ran += 1;
                assert!(ran < 100, "the budget never ran out");
            }
            Err(e) => break e.to_string(),
        }
    };
    assert!(
        ran >= 2,
        "{ran} answers within a budget of 2.5 at epsilon 1 each"
    );
    assert!(refusal.contains("run privacy budget exceeded"), "{refusal}");
    assert!(refusal.contains("budget of 2.5"), "{refusal}");
    assert_eq!(
        ledger.entries().len(),
        ran as usize,
        "the refused query charged nothing"
    );
    assert!(ledger.run_epsilon() <= 2.5);
    println!(
        "{ran} answers ran, run epsilon {:.4}; then: {refusal}",
        ledger.run_epsilon()
    );

    // A participant's budget: PER SITE answers charge each site once more.
    let mut ledger = Ledger::new(Budgets {
        delta: 1e-6,
        run: None,
        participants: BTreeMap::from([("va".to_string(), 1.5)]),
    });
    let per_site = "SELECT count(*) FROM data PER SITE";
    let first = ask(
        per_site,
        &schema,
        &sites,
        &common::noisy(1.0, 2),
        &mut ledger,
        1,
    );
    assert_eq!(first.answers.len(), 5);
    assert_eq!(first.ledger.len(), 5, "one central line and one per site");
    let refusal = tessera_analytics::answer(
        per_site,
        &schema,
        &sites,
        &common::noisy(1.0, 3),
        &mut ledger,
        2,
    )
    .unwrap_err()
    .to_string();
    assert!(
        refusal.contains("participant 'va' privacy budget exceeded"),
        "{refusal}"
    );
    assert_eq!(ledger.entries().len(), 5);
}

#[test]
fn small_groups_are_suppressed_by_their_noisy_count() {
    let (schema, sites) = common::records("fed-heart-disease.toml");
    // cp = 4 rows among women under 40: few. With a threshold of 10 on the
    // noisy count, suppression varies with the noise, never a fixed cut on
    // the raw count.
    let query = "SELECT cp, count(*) FROM data WHERE sex = 0 AND age < 40 GROUP BY cp";
    let mut exact_ledger = Ledger::new(Budgets::default());
    let exact = ask(
        query,
        &schema,
        &sites,
        &common::exact(),
        &mut exact_ledger,
        1,
    );
    let raw: Vec<f64> = exact.answers[0]
        .groups
        .iter()
        .map(|g| g.statistics[0].values[0])
        .collect();
    let mut suppressed = [0u32; 4];
    for seed in 0..200 {
        let mut settings = common::noisy(1.0, seed);
        settings.config.min_group = 10.0;
        let mut ledger = Ledger::new(Budgets::default());
        let report = ask(query, &schema, &sites, &settings, &mut ledger, 1);
        for (g, group) in report.answers[0].groups.iter().enumerate() {
            if group.suppressed {
                assert!(group.statistics.is_empty());
                suppressed[g] += 1;
            }
        }
    }
    println!("raw counts {raw:?}, suppressed in {suppressed:?} of 200");
    assert!(
        suppressed.iter().any(|&s| s > 0 && s < 200),
        "some group is suppressed in some runs only: the threshold sees a noisy count"
    );
}

fn column(sites: &[SiteTable], schema: &Schema, name: &str) -> Vec<f64> {
    let (index, _) = schema.column(name).unwrap();
    let mut out = Vec::new();
    for site in sites {
        if let Values::Numeric(v) = &site.columns[index] {
            out.extend(v.iter().copied());
        }
    }
    out
}

#[test]
fn at_epsilon_1_on_20000_rows_histograms_and_quantiles_are_within_1_percent() {
    let (schema, sites) = common::records("analytics-synthetic.toml");
    let rows: usize = sites.iter().map(|s| s.rows).sum();
    assert!(rows >= 10_000, "{rows} rows");
    let x0 = column(&sites, &schema, "x0");
    let x1 = column(&sites, &schema, "x1");
    let histogram = "SELECT histogram(x0, 20) FROM data CLAMP x0 -8 8";
    let quantiles = "SELECT quantile(x1, 0.1), quantile(x1, 0.5), quantile(x1, 0.9), \
                     min(x1), max(x1) FROM data CLAMP x1 -8 8";
    let mut exact_ledger = Ledger::new(Budgets::default());
    let exact = ask(
        histogram,
        &schema,
        &sites,
        &common::exact(),
        &mut exact_ledger,
        1,
    );
    let truth = exact.answers[0].groups[0].statistics[1].values.clone();
    let mut worst_bin: f64 = 0.0;
    let mut worst_rank: f64 = 0.0;
    for seed in 0..10 {
        let mut ledger = Ledger::new(Budgets::default());
        let h = ask(
            histogram,
            &schema,
            &sites,
            &common::noisy(1.0, seed),
            &mut ledger,
            1,
        );
        for (got, want) in h.answers[0].groups[0].statistics[1]
            .values
            .iter()
            .zip(&truth)
        {
            worst_bin = worst_bin.max((got - want).abs() / rows as f64);
        }
        let q = ask(
            quantiles,
            &schema,
            &sites,
            &common::noisy(1.0, seed),
            &mut ledger,
            2,
        );
        for (name, level) in [
            ("quantile(x1, 0.1)", 0.1),
            ("quantile(x1, 0.5)", 0.5),
            ("quantile(x1, 0.9)", 0.9),
        ] {
            let (v, _) = value(&q, 0, 0, name);
            let rank = x1.iter().filter(|&&x| x <= v).count() as f64 / rows as f64;
            worst_rank = worst_rank.max((rank - level).abs());
        }
        let (lo, _) = value(&q, 0, 0, "min(x1)");
        let (hi, _) = value(&q, 0, 0, "max(x1)");
        let below = x1.iter().filter(|&&x| x < lo).count() as f64 / rows as f64;
        let above = x1.iter().filter(|&&x| x > hi).count() as f64 / rows as f64;
        // Min and max sit two rank-noise deviations inside the ends (they
        // share the quantiles' tree: about 0.5% of the rows here).
        assert!(
            below <= 0.02 && above <= 0.02,
            "min/max within 2% in rank: {below} {above}"
        );
    }
    let _ = x0;
    println!(
        "{rows} rows, 10 seeds: worst histogram bin error {:.4}% of the rows, worst quantile \
         rank error {:.4}%",
        100.0 * worst_bin,
        100.0 * worst_rank
    );
    assert!(
        worst_bin <= 0.01,
        "histogram bin off by {worst_bin} of the rows"
    );
    assert!(worst_rank <= 0.01, "quantile off by {worst_rank} in rank");
}

/// The federation's noise is the sum of the sites' shares, of variance
/// `sigma² m / (m - 1)` under secure aggregation; what one site sees once it
/// takes away its own share still has variance `sigma²` or more.
#[test]
fn one_site_knowing_its_share_still_faces_the_calibrated_noise() {
    let (schema, sites) = common::records("fed-heart-disease.toml");
    let m = sites.len();
    assert!(m >= 3, "secure aggregation needs 3 sites");
    let query = "SELECT count(*) FROM data";
    let mut exact_ledger = Ledger::new(Budgets::default());
    let exact = ask(
        query,
        &schema,
        &sites,
        &common::exact(),
        &mut exact_ledger,
        1,
    );
    let truth = exact.answers[0].groups[0].statistics[0].values[0];
    let dim = tessera_analytics::compile(
        &tessera_analytics::parse(query).unwrap(),
        &schema,
        tessera_analytics::layout::Shape {
            quantile_depth: 10,
            sketch_cells: 4096,
            public_levels: false,
        },
    )
    .unwrap()
    .len();
    let runs = 2000;
    let (mut total, mut view) = (Vec::new(), Vec::new());
    let mut sigma = 0.0;
    for seed in 0..runs {
        let settings = common::noisy(1.0, seed);
        let mut ledger = Ledger::new(Budgets::default());
        let report = ask(query, &schema, &sites, &settings, &mut ledger, 1);
        assert!(report.secure_aggregation);
        let release = &report.answers[0].release;
        sigma = release.sigma;
        let noise = report.answers[0].groups[0].statistics[0].values[0] - truth;
        let shares: Vec<f64> = sites
            .iter()
            .map(|s| {
                let share =
                    tessera_analytics::simulated_share(&settings, 1, query, &s.site, m, sigma, dim);
                share[0] as i64 as f64 / SCALE
            })
            .collect();
        assert!(
            (noise - shares.iter().sum::<f64>()).abs() < 1e-6,
            "the answer's noise is the sum of the shares"
        );
        total.push(noise);
        view.push(noise - shares[0]);
        assert!(
            (release.noise_std - sigma * (m as f64 / (m as f64 - 1.0)).sqrt()).abs() < 1e-9,
            "the reported noise std is the actual one"
        );
    }
    let var = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let (total, view) = (var(&total) / (sigma * sigma), var(&view) / (sigma * sigma));
    let want = m as f64 / (m as f64 - 1.0);
    println!("{m} sites: total noise variance {total:.3} sigma², one site's view {view:.3} sigma²");
    assert!(
        (total - want).abs() < 0.1 * want,
        "total noise variance {total} sigma², expected {want}"
    );
    // A 2,000-sample variance is within 10% with overwhelming probability.
    assert!(
        view > 0.9,
        "one site's view has only {view} sigma² of noise"
    );

    // Summed in the clear (two sites), each site adds the full sigma².
    let two = &sites[..2];
    let mut noise = Vec::new();
    let mut exact_ledger = Ledger::new(Budgets::default());
    let truth = ask(query, &schema, two, &common::exact(), &mut exact_ledger, 1).answers[0].groups
        [0]
    .statistics[0]
        .values[0];
    for seed in 0..runs {
        let settings = common::noisy(1.0, seed);
        let mut ledger = Ledger::new(Budgets::default());
        let report = ask(query, &schema, two, &settings, &mut ledger, 1);
        assert!(!report.secure_aggregation);
        let share =
            tessera_analytics::simulated_share(&settings, 1, query, &two[0].site, 2, sigma, dim);
        noise.push(
            report.answers[0].groups[0].statistics[0].values[0]
                - truth
                - share[0] as i64 as f64 / SCALE,
        );
    }
    let one = var(&noise) / (sigma * sigma);
    println!("two sites in the clear: the other site's vector behind {one:.3} sigma²");
    assert!(
        one > 0.9,
        "in the clear a vector is behind only {one} sigma²"
    );
}

#[test]
fn noise_too_large_for_the_fixed_point_is_refused_before_the_query_runs() {
    let (schema, sites) = common::records("fed-heart-disease.toml");
    let query = "SELECT count(*), mean(age), histogram(age, 8) FROM data CLAMP age 0 120";
    let mut ledger = Ledger::new(Budgets::default());
    let refusal = tessera_analytics::answer(
        query,
        &schema,
        &sites,
        &common::noisy(0.01, 1),
        &mut ledger,
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(refusal.contains("epsilon 0.01 "), "{refusal}");
    assert!(refusal.contains("sensitivity"), "{refusal}");
    assert!(refusal.contains("larger epsilon"), "{refusal}");
    assert!(ledger.entries().is_empty(), "nothing charged");
    // A larger epsilon is answered, its noise within the limit.
    let report = ask(
        query,
        &schema,
        &sites,
        &common::noisy(0.05, 1),
        &mut ledger,
        1,
    );
    let sigma = report.answers[0].release.sigma;
    assert!(sigma * SCALE * 9.0 < 2f64.powi(52), "sigma {sigma}");
}
