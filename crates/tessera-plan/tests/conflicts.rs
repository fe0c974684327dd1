//! Validation names every conflict at once, each with its keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use tessera_aggregate::{RobustRule, StrategyKind};
use tessera_plan::{Conflict, Mode, Plan, PlanError, RULES, TopologyKind};
use tessera_privacy::PrivacyMode;

fn conflicts(plan: &Plan) -> Vec<Conflict> {
    match plan.validate() {
        Ok(()) => Vec::new(),
        Err(PlanError::Conflicts(all)) => all,
        Err(other) => panic!("not conflicts: {other}"),
    }
}

#[test]
fn the_default_plan_breaks_no_rule() {
    let plan = Plan::default();
    for rule in RULES {
        assert_eq!((rule.check)(&plan), None, "{}", rule.name);
    }
    assert!(plan.conflicts().is_empty());
}

#[test]
fn rules_have_distinct_names() {
    let names: BTreeSet<&str> = RULES.iter().map(|r| r.name).collect();
    assert_eq!(names.len(), RULES.len());
}

/// A rule across sections broken (secure aggregation with a robust rule
/// that needs every update) and a section's own problem (no rounds): both
/// are reported, each naming its keys, in one message on one line.
#[test]
fn every_conflict_is_reported_with_its_keys() {
    let mut plan = Plan::default();
    plan.secure_aggregation.enabled = true;
    plan.robust.rule = RobustRule::Median;
    plan.federation.rounds = 0;
    let all = conflicts(&plan);
    let keys: Vec<Vec<String>> = all.iter().map(|c| c.keys.clone()).collect();
    assert!(
        keys.contains(&vec!["federation.rounds".to_string()]),
        "{keys:?}"
    );
    assert!(
        keys.contains(&vec![
            "secure_aggregation.enabled".to_string(),
            "robust.rule".to_string()
        ]),
        "{keys:?}"
    );
    let e = plan.validate().unwrap_err().to_string();
    assert!(e.starts_with("plan: "), "{e}");
    assert!(e.contains("federation.rounds must be at least 1"), "{e}");
    assert!(
        e.contains("robust rule 'median' needs every update, but secure aggregation"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    assert_eq!(all.len(), 2, "{all:?}");
}

type Breaks = Box<dyn Fn(&mut Plan)>;

/// Each rule fires on a plan built to break it, and names keys that exist
/// in a plan file.
#[test]
fn each_rule_fires_on_the_plan_it_forbids() {
    let broken: Vec<(&str, Breaks)> = vec![
        (
            "reputation_selection_draws_a_part",
            Box::new(|p: &mut Plan| {
                // Every site is drawn each round: nothing to weigh.
                p.contribution.method = tessera_plan::AttributionMethod::Gtg;
                p.contribution.selection = tessera_plan::Selection::Reputation;
            }),
        ),
        (
            "strategy_state_needs_sync",
            Box::new(|p: &mut Plan| {
                p.federation.strategy = StrategyKind::Scaffold;
                p.federation.mode = Mode::Async;
            }),
        ),
        (
            "local_dp_needs_sync",
            Box::new(|p: &mut Plan| {
                p.privacy.mode = PrivacyMode::Local;
                p.federation.mode = Mode::Async;
            }),
        ),
        (
            "central_dp_needs_mean",
            Box::new(|p: &mut Plan| {
                p.privacy.mode = PrivacyMode::Central;
                p.robust.rule = RobustRule::Median;
            }),
        ),
        (
            "gossip_has_no_server_strategy",
            Box::new(|p: &mut Plan| {
                p.topology.kind = TopologyKind::Gossip;
                p.federation.strategy = StrategyKind::FedAdam;
            }),
        ),
        (
            "external_model_needs_sync_flat_rounds",
            Box::new(|p: &mut Plan| {
                p.model.kind = tessera_learn::ModelKind::External;
                p.federation.mode = Mode::Async;
            }),
        ),
        (
            "personal_strategy_local_dp",
            Box::new(|p: &mut Plan| {
                p.federation.strategy = StrategyKind::Ditto;
                p.privacy.mode = PrivacyMode::Local;
            }),
        ),
        (
            "personal_strategy_external_model",
            Box::new(|p: &mut Plan| {
                p.federation.strategy = StrategyKind::FedPer;
                p.model.kind = tessera_learn::ModelKind::External;
            }),
        ),
        (
            "ifca_runs_plain_rounds",
            Box::new(|p: &mut Plan| {
                p.federation.strategy = StrategyKind::Ifca;
                p.compression.upload = "fp16".parse().unwrap();
            }),
        ),
        (
            "ifca_asks_every_site_every_round",
            Box::new(|p: &mut Plan| {
                p.federation.strategy = StrategyKind::Ifca;
                p.federation.fraction = 0.5;
            }),
        ),
        (
            "ifca_needs_distinct_clusters",
            Box::new(|p: &mut Plan| {
                p.federation.strategy = StrategyKind::Ifca;
                p.model.init = tessera_learn::Init::Zeros;
            }),
        ),
        (
            "qffl_weighs_each_update",
            Box::new(|p: &mut Plan| {
                p.federation.strategy = StrategyKind::Qffl;
                p.secure_aggregation.enabled = true;
            }),
        ),
        (
            "apfl_needs_no_weight_decay",
            Box::new(|p: &mut Plan| {
                p.federation.strategy = StrategyKind::Apfl;
                p.training.optimizer.weight_decay = 0.01;
            }),
        ),
        (
            "meta_strategy_local_dp",
            Box::new(|p: &mut Plan| {
                p.federation.strategy = StrategyKind::PerFedAvg;
                p.privacy.mode = PrivacyMode::Local;
            }),
        ),
        (
            "meta_strategy_external_model",
            Box::new(|p: &mut Plan| {
                p.federation.strategy = StrategyKind::PerFedAvg;
                p.model.kind = tessera_learn::ModelKind::External;
            }),
        ),
        (
            "new_sites_need_builtin_model",
            Box::new(|p: &mut Plan| {
                p.personalization.new_sites = vec!["a".into()];
                p.model.kind = tessera_learn::ModelKind::External;
            }),
        ),
        (
            "fine_tuning_needs_builtin",
            Box::new(|p: &mut Plan| {
                p.personalization.finetune_epochs = 2;
                p.model.kind = tessera_learn::ModelKind::External;
            }),
        ),
        (
            "fedper_needs_a_shared_body",
            Box::new(|p: &mut Plan| {
                p.federation.strategy = StrategyKind::FedPer;
                p.model.kind = tessera_learn::ModelKind::Logistic;
            }),
        ),
        (
            "robust_rule_needs_sync",
            Box::new(|p: &mut Plan| {
                p.robust.rule = RobustRule::Median;
                p.federation.mode = Mode::Async;
            }),
        ),
        (
            "multitask_runs_plain_rounds",
            Box::new(|p: &mut Plan| {
                p.multitask = Some(Default::default());
                p.federation.strategy = StrategyKind::FedProx;
            }),
        ),
        (
            "multitask_reads_each_tasks_rows_alike",
            Box::new(|p: &mut Plan| {
                p.multitask = Some(Default::default());
            }),
        ),
        (
            "multitask_shares_a_body",
            Box::new(|p: &mut Plan| {
                p.multitask = Some(Default::default());
                p.model.kind = tessera_learn::ModelKind::Logistic;
            }),
        ),
    ];
    for (name, breaks) in broken {
        let mut plan = Plan::default();
        breaks(&mut plan);
        let table = toml::Value::try_from(&plan).unwrap();
        let rule = RULES.iter().find(|r| r.name == name).expect(name);
        let conflict = (rule.check)(&plan).unwrap_or_else(|| panic!("{name} did not fire"));
        assert!(conflicts(&plan).contains(&conflict), "{name}");
        for key in &conflict.keys {
            let section = key.split('.').next().unwrap();
            assert!(table.get(section).is_some(), "{name}: {key}");
        }
    }
}

fn set(plan: &Plan, settings: &[&str]) -> Result<Plan, PlanError> {
    let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
    plan.with_settings(&settings)
}

/// `--set` reaches nested keys, an empty value gives a key back its
/// default, and a key or value the plan does not take is refused naming the
/// setting that brought it (not only the field).
#[test]
fn settings_name_the_key_they_cannot_set() {
    let plan = Plan::default();
    let changed = set(
        &plan,
        &[
            "data.synthetic.sites=4",
            "privacy.site_metrics=clear",
            "training.steps=3",
            "training.epochs=",
        ],
    )
    .unwrap();
    assert_eq!(changed.data.synthetic.as_ref().unwrap().sites, 4);
    assert_eq!(changed.training.steps, Some(3));
    assert_eq!(changed.training.epochs, None);
    for (bad, says) in [
        (
            "federation.roundz=3",
            "--set 'federation.roundz=3': unknown field `roundz`",
        ),
        ("federation.rounds=many", "--set 'federation.rounds=many': "),
        ("privacy.mode=loud", "--set 'privacy.mode=loud': "),
    ] {
        let e = set(&plan, &["federation.rounds=3", bad])
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
    // Two settings that each cannot work: both are reported.
    let e = set(&plan, &["federation.rounds=0", "simulation.dropout=1"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("federation.rounds must be at least 1"), "{e}");
    assert!(
        e.contains("simulation.dropout must be in [0, 1), got 1"),
        "{e}"
    );
}

/// q-FFL needs each update seen alone with its site's loss shown: every
/// setting that hides one, or that the weights would not survive, is
/// refused by its rule; with none of them the rule is quiet.
#[test]
fn qffl_is_refused_wherever_an_update_is_not_seen_alone() {
    let qffl = || {
        let mut p = Plan::default();
        p.federation.strategy = StrategyKind::Qffl;
        p.privacy.site_metrics = tessera_privacy::SiteMetrics::Clear;
        p
    };
    let rule = RULES
        .iter()
        .find(|r| r.name == "qffl_weighs_each_update")
        .unwrap();
    assert_eq!((rule.check)(&qffl()), None);
    let breaks: Vec<Breaks> = vec![
        Box::new(|p: &mut Plan| p.secure_aggregation.enabled = true),
        Box::new(|p: &mut Plan| p.privacy.mode = PrivacyMode::Central),
        Box::new(|p: &mut Plan| p.privacy.mode = PrivacyMode::Local),
        Box::new(|p: &mut Plan| {
            p.privacy.site_metrics = tessera_privacy::SiteMetrics::AggregateOnly
        }),
        Box::new(|p: &mut Plan| p.robust.rule = RobustRule::Median),
        Box::new(|p: &mut Plan| p.federation.weighting = tessera_plan::Weighting::Equal),
        Box::new(|p: &mut Plan| p.model.kind = tessera_learn::ModelKind::External),
    ];
    for (k, brk) in breaks.iter().enumerate() {
        let mut p = qffl();
        brk(&mut p);
        assert!((rule.check)(&p).is_some(), "break {k}");
    }
}

/// A plan file that is only valid with a setting reads with it: the
/// settings are applied before the plan is checked, not after.
#[test]
fn a_setting_can_make_a_plan_file_valid() {
    let mut plan = Plan::default();
    plan.contribution.method = tessera_plan::AttributionMethod::Gtg;
    let text = toml::to_string(&plan).unwrap();
    let refused = Plan::from_toml(&text, "p.toml").unwrap_err().to_string();
    assert!(refused.contains("site_metrics"), "{refused}");
    let read =
        Plan::from_toml_with(&text, "p.toml", &["privacy.site_metrics=clear".into()]).unwrap();
    assert_eq!(
        read.privacy.site_metrics,
        tessera_privacy::SiteMetrics::Clear
    );
    // Still checked after the settings.
    let refused = Plan::from_toml_with(&text, "p.toml", &["federation.rounds=2".into()])
        .unwrap_err()
        .to_string();
    assert!(refused.contains("site_metrics"), "{refused}");
}
