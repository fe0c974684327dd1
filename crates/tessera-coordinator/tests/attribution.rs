//! Attribution in deployment, at the coordinator: each update must bring
//! its site's test-loss gradient (finite, over no more rows than the site
//! declared and the plan takes), and a closed round's values are the
//! Shapley values of the first-order utility those gradients and updates
//! give, checked here against an enumeration of every order of the sites.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Db, SITES, agree, plan, train};
use tessera_coordinator::{Refusal, UpdateExtras};
use tessera_core::ParameterSet;

fn refused(r: Result<(), Refusal>) -> String {
    match r {
        Err(Refusal::Invalid(reason)) => reason,
        other => panic!("not refused as invalid: {other:?}"),
    }
}

/// Site `i`'s test gradient: a pattern of its own.
fn gradient_of(like: &ParameterSet, i: usize) -> ParameterSet {
    let mut g = like.zeros_like();
    for (k, v) in g.values_mut().enumerate() {
        *v = ((k * (i + 2)) % 5) as f32 * 0.1 - 0.2;
    }
    g
}

#[test]
fn updates_bring_bounded_test_gradients_and_rounds_get_their_shapley_values() {
    let db = Db::new();
    let mut f = db.open(&plan("\n[contribution]\nmethod = \"exact\"\n"));
    agree(&mut f);
    let name = |i: usize| SITES[i].name.as_str();
    let (round, update) = train(&mut f, 0);
    let g = gradient_of(&update.delta, 0);
    // No gradient, rows past what the site declared, a value not finite.
    let with = |gradient: Option<(u64, ParameterSet)>, quality: Option<f64>| UpdateExtras {
        gradient,
        quality,
    };
    let reason = refused(f.submit_update_with(name(0), round, &update, with(None, None)));
    assert!(reason.contains("without its test gradient"), "{reason}");
    let reason = refused(f.submit_update_with(
        name(0),
        round,
        &update,
        with(Some((10_000, g.clone())), None),
    ));
    assert!(reason.contains("claims 10000 rows"), "{reason}");
    let mut nan = g.clone();
    if let Some(v) = nan.values_mut().next() {
        *v = f32::NAN;
    }
    let reason = refused(f.submit_update_with(name(0), round, &update, with(Some((5, nan)), None)));
    assert!(reason.contains("not a finite number"), "{reason}");
    // A quality score outside [0, 1].
    for bad in [1.5, -0.1, f64::NAN] {
        let reason = refused(f.submit_update_with(
            name(0),
            round,
            &update,
            with(Some((5, g.clone())), Some(bad)),
        ));
        assert!(reason.contains("not within [0, 1]"), "{reason}");
    }

    // Each site: its own update (a scaled pattern) and gradient, rows 3 to 12.
    let mut sent = Vec::new();
    for i in 0..4 {
        let (round, mut update) = train(&mut f, i);
        let scale = [1.0f32, -0.5, 2.0, 0.25][i];
        for v in update.delta.values_mut() {
            *v *= scale;
        }
        let rows = 3 * (i as u64 + 1);
        let g = gradient_of(&update.delta, i);
        // Sites 0-2 release a quality score; site 3 none.
        let quality = (i < 3).then_some(0.25 * (i as f64 + 1.0));
        f.submit_update_with(
            name(i),
            round,
            &update,
            with(Some((rows, g.clone())), quality),
        )
        .unwrap();
        sent.push((name(i).to_string(), update, rows, g));
    }
    f.advance();
    let report = f.report().contributions.expect("the round is attributed");
    assert_eq!(report.rounds.len(), 1);
    let got = &report.rounds[0];

    // An independent count: the rows-weighted mean gradient, each update's
    // slope, and each site's mean marginal utility over the 24 orders.
    sent.sort_by(|a, b| a.0.cmp(&b.0));
    let total: u64 = sent.iter().map(|s| s.2).sum();
    let n = sent[0].3.n_values();
    let mean: Vec<f64> = (0..n)
        .map(|k| {
            sent.iter()
                .map(|s| s.2 as f64 / total as f64 * f64::from(s.3.values().nth(k).unwrap()))
                .sum()
        })
        .collect();
    let slopes: Vec<f64> = sent
        .iter()
        .map(|s| {
            -s.1.delta
                .values()
                .zip(&mean)
                .map(|(d, g)| f64::from(d) * g)
                .sum::<f64>()
        })
        .collect();
    let weights: Vec<f64> = sent.iter().map(|s| s.1.n_examples as f64).collect();
    let utility = |set: &[usize]| {
        let w: f64 = set.iter().map(|&i| weights[i]).sum();
        if w == 0.0 {
            0.0
        } else {
            set.iter().map(|&i| weights[i] * slopes[i]).sum::<f64>() / w
        }
    };
    let mut shapley = [0.0f64; 4];
    let mut orders = 0;
    for a in 0..4 {
        for b in 0..4 {
            for c in 0..4 {
                for d in 0..4 {
                    let order = [a, b, c, d];
                    if (0..4).any(|x| !order.contains(&x)) {
                        continue;
                    }
                    orders += 1;
                    for (place, &site) in order.iter().enumerate() {
                        shapley[site] += utility(&order[..=place]) - utility(&order[..place]);
                    }
                }
            }
        }
    }
    assert_eq!(orders, 24);
    let scale = shapley.iter().map(|v| v.abs()).fold(0.0, f64::max);
    assert!(scale > 0.0);
    for (i, s) in sent.iter().enumerate() {
        let want = shapley[i] / 24.0;
        let value = got.values[&s.0];
        assert!(
            (value - want).abs() <= 1e-6 * scale,
            "{}: {value} against {want}",
            s.0
        );
    }
    assert!((got.gain - utility(&[0, 1, 2, 3])).abs() <= 1e-6 * scale);
    // Reputation from the cohorts (every site asked once and counted) and
    // the released quality scores (none for site 3: reputation without it).
    for s in &report.sites {
        assert_eq!(s.reliability, 1.0);
        let i = SITES.iter().position(|x| x.name == s.name).unwrap();
        let quality = (i < 3).then_some(0.25 * (i as f64 + 1.0));
        assert_eq!(s.quality, quality, "{}", s.name);
    }
}

#[test]
fn a_test_gradient_is_refused_where_the_plan_attributes_nothing() {
    let db = Db::new();
    let mut f = db.open(&plan(""));
    agree(&mut f);
    let (round, update) = train(&mut f, 0);
    let g = update.delta.clone();
    let extras = UpdateExtras {
        gradient: Some((1, g)),
        quality: None,
    };
    let reason = refused(f.submit_update_with(SITES[0].name.as_str(), round, &update, extras));
    assert!(reason.contains("attributes nothing"), "{reason}");
    let extras = UpdateExtras {
        gradient: None,
        quality: Some(0.5),
    };
    let reason = refused(f.submit_update_with(SITES[0].name.as_str(), round, &update, extras));
    assert!(reason.contains("does not release"), "{reason}");
    f.submit_update(SITES[0].name.as_str(), round, &update)
        .unwrap();
}

#[test]
fn a_deployed_plan_attributes_by_the_first_order_utility_only() {
    for utility in ["loss", "accuracy", "quadratic"] {
        let db = Db::new();
        let (plan, text) = plan(&format!(
            "\n[contribution]\nmethod = \"gtg\"\nutility = \"{utility}\"\n"
        ));
        let store = tessera_coordinator::SqliteStore::open(&db.path()).unwrap();
        let e = tessera_coordinator::Federation::open(plan, &text, store, common::LIVENESS)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("runs in simulation only"), "{e}");
        assert!(e.contains(utility), "{e}");
    }
}
