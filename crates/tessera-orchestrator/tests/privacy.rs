//! The privacy book on virtual time, with no process, store or network:
//! spend against an independent accountant, budgets, hostile reports, and
//! where central DP runs in a tree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use tessera_engine::{DpCohort, GroupConfig, TopologyConfig, TopologyKind, Tree};
use tessera_learn::TrainingConfig;
use tessera_orchestrator::privacy::{LedgerRow, LocalReport, Place, PrivacyBook};
use tessera_orchestrator::{Effect, Timestamp};
use tessera_privacy::{
    AccountantKind, CentralRelease, DpEvent, LedgerEntry, PrivacyConfig, PrivacyError, PrivacyMode,
    RdpAccountant, SiteMetrics,
};

const ROUNDS: u32 = 5;

/// Batches of 16 rows, two passes a round.
fn training() -> TrainingConfig {
    TrainingConfig {
        epochs: Some(2),
        batch_size: 16,
        ..TrainingConfig::default()
    }
}

fn local(noise_multiplier: Option<f64>, epsilon: Option<f64>) -> PrivacyConfig {
    PrivacyConfig {
        mode: PrivacyMode::Local,
        noise_multiplier,
        epsilon,
        clip_norm: 0.5,
        site_metrics: SiteMetrics::Clear,
        ..PrivacyConfig::default()
    }
}

fn book(config: &PrivacyConfig) -> PrivacyBook {
    PrivacyBook::new(config, ROUNDS, training()).expect("a valid book")
}

/// What a site with `rows` rows reports when it follows the plan.
fn honest(rows: u64) -> LocalReport {
    LocalReport {
        n_examples: rows,
        steps: 2 * rows.div_ceil(16),
    }
}

fn rows_of(effects: &[Effect<LedgerRow>]) -> Vec<LedgerRow> {
    effects
        .iter()
        .map(|e| match e {
            Effect::Persist(row) => row.clone(),
            other => panic!("expected a row to persist, got {other:?}"),
        })
        .collect()
}

#[test]
fn local_spend_adds_up_to_what_an_independent_accountant_computes() {
    let config = local(Some(1.1), None);
    let mut book = book(&config);
    let sites = [("a", 100u64), ("b", 400u64)];
    let mut accountants: BTreeMap<&str, RdpAccountant> = BTreeMap::new();
    let mut fresh = || RdpAccountant::new();
    let mut clock = Timestamp::ZERO;
    for round in 1..=ROUNDS {
        for (site, rows) in sites {
            clock = clock.plus(std::time::Duration::from_millis(250));
            let report = honest(rows);
            book.check_local(round, site, report)
                .expect("within budget");
            let persisted = rows_of(&book.record_local(clock, round, site, report));
            assert_eq!(persisted.len(), 1);
            let row = &persisted[0];
            // The event is the plan's: batch over rows, the plan's steps and noise.
            let q = 16.0 / rows as f64;
            let event = DpEvent {
                sampling_rate: q,
                noise_multiplier: 1.1,
                steps: report.steps,
            };
            assert_eq!(row.entry.event, event);
            assert_eq!(row.entry.participant.as_deref(), Some(site));
            assert_eq!(row.entry.kind, "local");
            assert_eq!(
                row.recorded_micros, clock.0,
                "stamped with the time it was told"
            );
            assert!((row.noise_std - 1.1 * 0.5 / (q * rows as f64)).abs() < 1e-15);
            accountants
                .entry(site)
                .or_insert_with(&mut fresh)
                .compose(&event)
                .unwrap();
            // Recorded once: the same release again adds nothing.
            assert!(book.record_local(clock, round, site, report).is_empty());
            book.check_local(round, site, report)
                .expect("already counted");
        }
    }
    let ledger = book.local_ledger().expect("local DP");
    assert_eq!(ledger.entries().len(), 2 * ROUNDS as usize);
    let mut largest = 0.0f64;
    for (site, accountant) in &accountants {
        let independent = accountant.epsilon(1e-5);
        let kept = ledger.participant_epsilon(site);
        assert!(
            (kept - independent).abs() <= 1e-12 * independent,
            "{site}: the book says {kept}, the accountant {independent}"
        );
        largest = largest.max(independent);
    }
    // 'a' samples 16 of 100 rows, 'b' 16 of 400: 'a' spends more.
    assert!(ledger.participant_epsilon("a") > ledger.participant_epsilon("b"));
    assert!((ledger.run_epsilon() - largest).abs() <= 1e-12 * largest);
    let last = ledger.entries().last().unwrap().run_epsilon;
    assert!((last - largest).abs() <= 1e-12 * largest);
    let report = book.local_report().expect("a local report");
    assert_eq!(report.noise_multiplier, 1.1);
    assert_eq!(report.ledger.len(), 2 * ROUNDS as usize);
}

#[test]
fn a_calibrated_run_spends_its_target_and_a_restart_resumes_the_spend() {
    let config = local(None, Some(3.0));
    let mut first = book(&config);
    first
        .forecast_local(&[("a".into(), 100), ("b".into(), 250)])
        .expect("the plan's rounds fit its own target");
    let mut rows = Vec::new();
    for round in 1..=ROUNDS {
        for (site, n) in [("a", 100), ("b", 250)] {
            rows.extend(rows_of(&first.record_local(
                Timestamp(u64::from(round)),
                round,
                site,
                honest(n),
            )));
        }
    }
    let spent = first.local_ledger().unwrap().run_epsilon();
    assert!(spent <= 3.0 && spent > 2.99, "{spent}");
    let mut resumed = book(&config);
    resumed.restore(&rows).expect("valid rows");
    let again = resumed.local_ledger().unwrap();
    assert_eq!(again.entries().len(), rows.len());
    assert!((again.run_epsilon() - spent).abs() <= 1e-12 * spent);
    // The run's budget is the target: one more round refuses.
    let refused = resumed
        .check_local(ROUNDS + 1, "a", honest(100))
        .expect_err("past the run's budget");
    assert!(
        refused
            .to_string()
            .starts_with("run privacy budget exceeded: round 6 at 'a'"),
        "{refused}"
    );
}

#[test]
fn a_release_past_a_budget_is_refused_names_the_budget_and_is_not_recorded() {
    let mut config = local(Some(0.8), None);
    config.participant_budgets.insert("a".into(), 4.0);
    let mut book = book(&config);
    // The whole run is refused up front for 'a'; 'b' has no budget.
    let e = book
        .forecast_local(&[("a".into(), 64), ("b".into(), 64)])
        .expect_err("a's budget is too small for the plan");
    let message = e.to_string();
    assert!(
        message
            .starts_with("participant 'a' privacy budget exceeded: the plan's 5 rounds of DP-SGD"),
        "{message}"
    );
    assert!(message.contains("over the budget of 4"), "{message}");
    // Round by round, the release that would pass it is refused.
    let mut refused_at = None;
    for round in 1..=ROUNDS {
        match book.check_local(round, "a", honest(64)) {
            Ok(()) => {
                assert_eq!(
                    rows_of(&book.record_local(Timestamp(0), round, "a", honest(64))).len(),
                    1
                );
            }
            Err(e) => {
                let m = e.to_string();
                assert!(
                    m.starts_with(&format!(
                        "participant 'a' privacy budget exceeded: round {round} at 'a'"
                    )),
                    "{m}"
                );
                refused_at = Some(round);
                break;
            }
        }
    }
    let round = refused_at.expect("the budget runs out within the plan");
    let ledger = book.local_ledger().unwrap();
    assert_eq!(
        ledger.entries().len() as u32,
        round - 1,
        "nothing refused is recorded"
    );
    assert!(ledger.participant_epsilon("a") <= 4.0);
    // 'b' has no budget of its own and no run budget binds: it goes on.
    book.check_local(round, "b", honest(64))
        .expect("no budget for b");
}

#[test]
fn hostile_reports_are_refused_before_they_count() {
    let config = local(Some(1.0), None);
    let book = book(&config);
    let cases = [
        (
            LocalReport {
                n_examples: 0,
                steps: 0,
            },
            "0 training rows",
        ),
        (
            LocalReport {
                n_examples: 100,
                steps: u64::MAX,
            },
            "DP-SGD steps",
        ),
        (
            LocalReport {
                n_examples: 100,
                steps: 15,
            },
            "the plan's local training takes at most 14",
        ),
    ];
    for (report, expected) in cases {
        let e = book
            .check_local(1, "mallory", report)
            .expect_err(&format!("{report:?} was accepted"));
        assert!(matches!(e, PrivacyError::Invalid(_)), "{e:?}");
        assert!(e.to_string().contains(expected), "{report:?}: {e}");
    }
    book.check_local(1, "mallory", honest(100))
        .expect("the honest report passes");
    // Fewer steps than the plan's (training cut short) are accounted as reported.
    let short = LocalReport {
        n_examples: 100,
        steps: 3,
    };
    book.check_local(1, "mallory", short)
        .expect("within the plan");
    assert_eq!(book.local_event(short).unwrap().unwrap().steps, 3);
    // Steps the plan allows but whose run would overflow the accountant.
    let endless = TrainingConfig {
        steps: Some(u64::MAX / 2),
        epochs: None,
        ..training()
    };
    let huge = PrivacyBook::new(&config, ROUNDS, endless).unwrap();
    let e = huge
        .check_local(
            1,
            "a",
            LocalReport {
                n_examples: 100,
                steps: u64::MAX / 2,
            },
        )
        .expect_err("the run's steps overflow");
    assert!(e.to_string().contains("overflow"), "{e}");
    // Recording a hostile report (a driver that skipped the check) is fatal,
    // never a row.
    let mut book = book;
    let effects = book.record_local(
        Timestamp(1),
        1,
        "mallory",
        LocalReport {
            n_examples: 0,
            steps: 0,
        },
    );
    assert!(
        matches!(effects.as_slice(), [Effect::Fatal(_)]),
        "{effects:?}"
    );
    assert!(book.local_ledger().unwrap().entries().is_empty());
    // Rows read back damaged (NaN noise, a negative sampling rate) are refused.
    for event in [
        DpEvent {
            sampling_rate: 0.1,
            noise_multiplier: f64::NAN,
            steps: 1,
        },
        DpEvent {
            sampling_rate: -0.5,
            noise_multiplier: 1.0,
            steps: 1,
        },
        DpEvent {
            sampling_rate: 0.1,
            noise_multiplier: -1.0,
            steps: 1,
        },
    ] {
        let row = LedgerRow {
            entry: LedgerEntry {
                release: 1,
                kind: "local".into(),
                participant: Some("a".into()),
                event,
                run_epsilon: 0.0,
            },
            delta: 1e-5,
            clip_norm: 0.5,
            next_clip_norm: 0.5,
            noise_std: 0.0,
            updates: 1,
            recorded_micros: 0,
        };
        assert!(book.restore(&[row]).is_err(), "{event:?} restored");
    }
    // A plan whose noise is not a finite positive number accounts for nothing.
    let nan = local(Some(f64::NAN), None);
    let bad = PrivacyBook::new(&nan, ROUNDS, training()).unwrap();
    assert!(bad.check_local(1, "a", honest(100)).is_err());
}

#[test]
fn without_local_dp_reports_are_not_accounted() {
    let mut book = book(&PrivacyConfig::default());
    assert!(book.local_ledger().is_none());
    book.check_local(
        1,
        "a",
        LocalReport {
            n_examples: 0,
            steps: u64::MAX,
        },
    )
    .expect("no local DP: nothing to check");
    assert!(
        book.record_local(Timestamp(0), 1, "a", honest(10))
            .is_empty()
    );
    assert!(book.local_report().is_none());
}

fn central(noise_multiplier: f64, budget: Option<f64>) -> PrivacyConfig {
    PrivacyConfig {
        mode: PrivacyMode::Central,
        noise_multiplier: Some(noise_multiplier),
        budget,
        site_metrics: SiteMetrics::Clear,
        ..PrivacyConfig::default()
    }
}

fn tree(groups: &[(&str, &[&str])], sites: &[&str]) -> Tree {
    let config = TopologyConfig {
        kind: TopologyKind::Hierarchical,
        groups: groups
            .iter()
            .map(|(name, members)| GroupConfig {
                name: (*name).into(),
                members: members.iter().map(|m| (*m).into()).collect(),
            })
            .collect(),
        ..TopologyConfig::default()
    };
    let sites: Vec<String> = sites.iter().map(|s| (*s).into()).collect();
    Tree::build(&config, &sites).expect("a valid tree")
}

#[test]
fn central_dp_runs_at_the_aggregators_whose_members_are_sites() {
    let book = book(&central(5.0, None));
    assert_eq!(
        book.central_cohort(Place::Flat { participants: 7 }),
        Some(DpCohort::Sampled(7))
    );
    // root -> {north, south}; north -> {east, west}; east, west, south hold sites.
    let t = tree(
        &[
            ("north", &["east", "west"]),
            ("east", &["a", "b", "c"]),
            ("west", &["d", "e"]),
            ("south", &["f", "g", "h", "i"]),
        ],
        &["a", "b", "c", "d", "e", "f", "g", "h", "i"],
    );
    book.check_tree(&t)
        .expect("every site is in an aggregator of sites");
    let mut noised = BTreeMap::new();
    for (node, n) in t.nodes.iter().enumerate() {
        noised.insert(
            n.name.clone(),
            book.central_cohort(Place::Node { tree: &t, node }),
        );
    }
    let root = t.nodes[0].name.clone();
    assert_eq!(noised[&root], None, "the root adds no noise");
    assert_eq!(
        noised["north"], None,
        "nor does an aggregator of aggregators"
    );
    assert_eq!(noised["east"], Some(DpCohort::Everyone(3)));
    assert_eq!(noised["west"], Some(DpCohort::Everyone(2)));
    assert_eq!(noised["south"], Some(DpCohort::Everyone(4)));
    assert_eq!(
        book.central_cohort(Place::Node { tree: &t, node: 99 }),
        None
    );
    // A root that holds a site, or an aggregator of sites and aggregators,
    // cannot run central DP.
    let mixed = tree(&[("north", &["a", "b"])], &["a", "b", "c"]);
    let e = book.check_tree(&mixed).expect_err("the root holds c");
    assert!(
        e.to_string()
            .contains("every site belongs to an aggregator"),
        "{e}"
    );
    let both = tree(
        &[("north", &["a", "south"]), ("south", &["b", "c"])],
        &["a", "b", "c"],
    );
    let e = book.check_tree(&both).expect_err("north holds both");
    assert!(e.to_string().contains("'north' holds both"), "{e}");
    // Without central DP nothing is noised anywhere, and any tree will do.
    for config in [PrivacyConfig::default(), local(Some(1.0), None)] {
        let plain = self::book(&config);
        assert_eq!(plain.central_cohort(Place::Flat { participants: 3 }), None);
        for node in 0..t.nodes.len() {
            assert_eq!(plain.central_cohort(Place::Node { tree: &t, node }), None);
        }
        plain.check_tree(&mixed).expect("no central DP");
    }
}

#[test]
fn the_central_forecast_refuses_rounds_past_the_budget_and_counts_those_closed() {
    let z = 3.0;
    let per_round = {
        let mut a = RdpAccountant::new();
        a.compose(&PrivacyConfig::round_event(z)).unwrap();
        a.epsilon(1e-5)
    };
    // A budget for about three of the five rounds.
    let mut three = RdpAccountant::new();
    for _ in 0..3 {
        three.compose(&PrivacyConfig::round_event(z)).unwrap();
    }
    let budget = three.epsilon(1e-5) * 1.0001;
    assert!(budget > per_round);
    let book = book(&central(z, Some(budget)));
    let e = book
        .forecast_central(&[])
        .expect_err("five rounds do not fit");
    let message = e.to_string();
    assert!(
        message.starts_with(
            "run privacy budget exceeded: the plan's 5 remaining rounds at noise multiplier 3.0000"
        ),
        "{message}"
    );
    // Two rounds closed (restored from the store): three remain, and fit.
    let entry = |release| LedgerEntry {
        release,
        kind: "central".into(),
        participant: None,
        event: PrivacyConfig::round_event(z),
        run_epsilon: 0.0,
    };
    let e = book
        .forecast_central(&[entry(1)])
        .expect_err("four remaining rounds on top of one do not fit");
    assert!(
        e.to_string().contains("the plan's 4 remaining rounds"),
        "{e}"
    );
    // Three closed with two to go would be five: refused; with a run of
    // three rounds in all the same budget holds.
    let short = PrivacyBook::new(&central(z, Some(budget)), 3, training()).unwrap();
    short.forecast_central(&[]).expect("three rounds fit");
    short
        .forecast_central(&[entry(1), entry(2)])
        .expect("one more fits");
    // The row a release leaves carries the release's figures and the time.
    let release = CentralRelease {
        clip_norm: 0.5,
        next_clip_norm: 0.45,
        noise_std: 0.01,
        unclipped: 3,
        updates: 4,
    };
    let row = book.central_release(Timestamp(42), &release, &entry(1));
    assert_eq!(row.entry, entry(1));
    assert_eq!(row.recorded_micros, 42);
    assert_eq!(
        (
            row.clip_norm,
            row.next_clip_norm,
            row.noise_std,
            row.updates
        ),
        (0.5, 0.45, 0.01, 4)
    );
    assert_eq!(row.delta, 1e-5);
}

#[test]
fn metrics_releases_are_charged_to_their_own_budget_until_it_is_spent() {
    for accountant in [AccountantKind::Rdp, AccountantKind::Pld] {
        let config = PrivacyConfig {
            site_metrics: SiteMetrics::Dp,
            metrics_epsilon: Some(1.0),
            accountant,
            ..PrivacyConfig::default()
        };
        let mut book = book(&config);
        let z = book.metrics().expect("DP metrics").noise_multiplier();
        let mut independent = tessera_privacy::Accountant::new(accountant);
        for _ in 0..ROUNDS {
            let epsilon = book.release_metrics().unwrap().expect("within the budget");
            assert_eq!(book.take_metrics_released(), Some(epsilon));
            assert_eq!(book.take_metrics_released(), None, "taken once");
            independent
                .compose(&DpEvent {
                    sampling_rate: 1.0,
                    noise_multiplier: z,
                    steps: 1,
                })
                .unwrap();
            let expected = independent.epsilon(1e-5);
            assert!(
                (epsilon - expected).abs() <= 1e-9 * expected,
                "{epsilon} {expected}"
            );
        }
        let e = book
            .release_metrics()
            .expect_err("one release past the plan's rounds");
        assert!(
            e.to_string().starts_with("metrics privacy budget exceeded"),
            "{e}"
        );
        assert_eq!(book.take_metrics_released(), None, "nothing released");
        let report = book.metrics_report(false).unwrap();
        assert_eq!(report.releases, ROUNDS);
        // A restart charges what the records say was released.
        let mut resumed = self::book(&config);
        resumed.restore_metrics(ROUNDS).unwrap();
        assert_eq!(
            resumed.metrics_report(true).unwrap().epsilon,
            report.epsilon
        );
        assert!(resumed.release_metrics().is_err());
    }
    let mut none = book(&PrivacyConfig::default());
    assert_eq!(none.release_metrics().unwrap(), None);
    assert!(none.metrics_report(true).is_none());
}
