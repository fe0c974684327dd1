//! Personalized strategies and fine-tuning in simulation, on
//! Synthetic(0.5, 0.5) (12 sites of 200 rows, each with a model of its own
//! drawn around a shared one), an MLP 60-16-10.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use tessera_aggregate::StrategyKind;
use tessera_data::{FederatedData, Filesystem};
use tessera_engine::report::RunReport;
use tessera_engine::{Plan, TopologyKind};
use tessera_privacy::{PrivacyMode, SiteMetrics};
use tessera_sim::{SimOptions, initial_model, simulate};

fn setup(strategy: StrategyKind, finetune_epochs: u64) -> (Plan, FederatedData) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut plan = Plan::from_file(&dir.join("synthetic-hierarchical.toml")).unwrap();
    plan.topology.kind = TopologyKind::Flat;
    plan.model.kind = tessera_learn::ModelKind::Mlp;
    plan.model.hidden = vec![16];
    plan.federation.rounds = 10;
    plan.federation.strategy = strategy;
    plan.personalization.finetune_epochs = finetune_epochs;
    plan.privacy.site_metrics = SiteMetrics::Clear;
    plan.data.synthetic.as_mut().unwrap().sites = 12;
    let data = tessera_data::load(&plan.data, &dir, &Filesystem).unwrap();
    (plan, data)
}

fn run(plan: &Plan, data: &FederatedData) -> RunReport {
    simulate(plan, data, &SimOptions::default(), &mut |_| {}).unwrap()
}

#[test]
fn dittos_global_model_is_fedavgs_bit_for_bit_and_each_site_keeps_its_own() {
    let (plan, data) = setup(StrategyKind::FedAvg, 0);
    let fedavg = run(&plan, &data);
    assert!(fedavg.personalization.is_none());
    let (plan, data) = setup(StrategyKind::Ditto, 0);
    let ditto = run(&plan, &data);
    // The personal models never reach the server: the global model is FedAvg's.
    assert_eq!(ditto.final_parameters, fedavg.final_parameters);
    let p = ditto.personalization.as_ref().unwrap();
    assert_eq!((p.strategy.as_str(), p.sites), ("ditto", 12));
    for (name, site) in &p.per_site {
        let global = fedavg.final_metrics.per_site[name].accuracy.unwrap();
        assert_eq!(site.global, global, "{name}");
        assert!(site.local_only.is_some(), "{name}");
    }
    let differ = p
        .per_site
        .values()
        .filter(|s| s.personalized != s.global)
        .count();
    assert!(differ >= 3, "{differ} of 12 sites' personal models differ");
    // Lambda moves the personal models between local training (0) and
    // the global model (large): far from the global model at 0.01, close
    // at 4 (lr 0.2: a step pulls 80% of the way back each time).
    let gap = |lambda: f32| {
        let mut plan = plan.clone();
        plan.strategies.insert(
            "ditto".into(),
            tessera_aggregate::StrategyConfig {
                lambda: Some(lambda),
                ..Default::default()
            },
        );
        let p = run(&plan, &data).personalization.unwrap();
        let gaps: Vec<f64> = p
            .per_site
            .values()
            .map(|s| (s.personalized - s.global).abs())
            .collect();
        gaps.iter().sum::<f64>() / gaps.len() as f64
    };
    let (loose, tight) = (gap(0.01), gap(4.0));
    println!("ditto: mean |personal - global| accuracy {loose:.4} at lambda 0.01, {tight:.4} at 4");
    assert!(
        tight < loose / 2.0,
        "lambda 4: {tight}, lambda 0.01: {loose}"
    );
    // The same plan and seed give the same report.
    assert_eq!(run(&plan, &data).personalization.as_ref(), Some(p));
}

#[test]
fn fedpers_global_head_never_moves_and_its_body_does() {
    let (plan, data) = setup(StrategyKind::FedPer, 0);
    let initial = initial_model(&plan, &data).unwrap().parameters().clone();
    let report = run(&plan, &data);
    let last = report.final_parameters;
    for name in ["dense1.weight", "dense1.bias"] {
        assert_eq!(last.get(name), initial.get(name), "{name}");
    }
    assert_ne!(last.get("dense0.weight"), initial.get("dense0.weight"));
    let p = report.personalization.unwrap();
    // The global head is the untrained one; each site's own head is not.
    assert!(
        p.mean_personalized > p.mean_global + 0.3,
        "personalized {} against global {}",
        p.mean_personalized,
        p.mean_global
    );
}

#[test]
fn fedreps_head_and_body_train_in_turn_and_its_global_head_never_moves() {
    let (mut plan, data) = setup(StrategyKind::FedRep, 0);
    // Adam with weight decay (holding under both is asserted bit for bit in
    // tessera-engine's site tests; here the whole run).
    plan.training.optimizer.optimizer = tessera_learn::OptimizerKind::Adam;
    plan.training.optimizer.lr = 0.01;
    plan.training.optimizer.weight_decay = 0.01;
    plan.strategies.insert(
        "fedrep".into(),
        tessera_aggregate::StrategyConfig {
            head_passes: Some(3),
            ..Default::default()
        },
    );
    let initial = initial_model(&plan, &data).unwrap().parameters().clone();
    let report = run(&plan, &data);
    for name in ["dense1.weight", "dense1.bias"] {
        assert_eq!(
            report.final_parameters.get(name),
            initial.get(name),
            "{name}"
        );
    }
    assert_ne!(
        report.final_parameters.get("dense0.weight"),
        initial.get("dense0.weight")
    );
    let p = report.personalization.as_ref().unwrap();
    assert_eq!(p.strategy, "fedrep");
    assert!(
        p.mean_personalized > p.mean_global + 0.3,
        "personalized {} against global {}",
        p.mean_personalized,
        p.mean_global
    );
    // Training in turn is not FedPer's joint training.
    plan.federation.strategy = StrategyKind::FedPer;
    let fedper = run(&plan, &data);
    assert_ne!(fedper.final_parameters, report.final_parameters);
    println!(
        "fedrep: personalized {:.4}, global {:.4}, local-only {:.4}; fedper personalized {:.4}",
        p.mean_personalized,
        p.mean_global,
        p.mean_local_only.unwrap_or(f64::NAN),
        fedper.personalization.unwrap().mean_personalized
    );
}

#[test]
fn fine_tuning_adapts_each_site_and_few_shot_uses_the_rows_it_is_given() {
    let (mut plan, data) = setup(StrategyKind::FedAvg, 2);
    let tuned = run(&plan, &data);
    let p = tuned.personalization.as_ref().unwrap();
    assert_eq!((p.finetune_epochs, p.finetune_rows), (2, None));
    assert!(p.mean_personalized > p.mean_global, "{p:?}");
    plan.personalization.finetune_rows = Some(20);
    let few = run(&plan, &data);
    let f = few.personalization.as_ref().unwrap();
    assert_eq!(f.finetune_rows, Some(20));
    // Same global model, different adaptation.
    assert_eq!(few.final_parameters, tuned.final_parameters);
    assert_ne!(f.mean_personalized, p.mean_personalized);
    println!(
        "fine-tuning 2 epochs: all rows {:.4}, 20 rows {:.4}, global {:.4}",
        p.mean_personalized, f.mean_personalized, p.mean_global
    );
    // Fine-tuning's own learning rate: same global model, other adaptation;
    // a rate of 0 or with no fine-tuning is refused.
    plan.personalization.finetune_rows = None;
    plan.personalization.finetune_lr = Some(plan.training.optimizer.lr * 4.0);
    let faster = run(&plan, &data);
    assert_eq!(faster.final_parameters, tuned.final_parameters);
    assert_ne!(
        faster.personalization.as_ref().unwrap().mean_personalized,
        p.mean_personalized
    );
    plan.personalization.finetune_lr = Some(0.0);
    let e = plan.validate().unwrap_err().to_string();
    assert!(e.contains("personalization.finetune_lr = 0"), "{e}");
}

/// Per-FedAvg's meta steps train another global model than FedAvg's, one
/// that a few-shot fine-tuning (20 rows a site) adapts to each site.
#[test]
fn per_fedavg_meta_learns_a_model_that_few_shot_fine_tuning_adapts() {
    let (mut plan, data) = setup(StrategyKind::PerFedAvg, 2);
    plan.personalization.finetune_rows = Some(20);
    let meta = run(&plan, &data);
    let p = meta.personalization.as_ref().unwrap();
    assert_eq!(
        (p.strategy.as_str(), p.finetune_rows),
        ("perfedavg", Some(20))
    );
    assert!(
        p.mean_personalized > p.mean_global + 0.01,
        "adapted {} against global {}",
        p.mean_personalized,
        p.mean_global
    );
    assert_eq!(run(&plan, &data).final_parameters, meta.final_parameters);
    // Another inner step size, another model.
    let mut other = plan.clone();
    other.strategies.insert(
        "perfedavg".into(),
        tessera_aggregate::StrategyConfig {
            alpha: Some(0.1),
            ..Default::default()
        },
    );
    assert_ne!(run(&other, &data).final_parameters, meta.final_parameters);
    plan.federation.strategy = StrategyKind::FedAvg;
    let fedavg = run(&plan, &data);
    assert_ne!(fedavg.final_parameters, meta.final_parameters);
    let f = fedavg.personalization.unwrap();
    println!(
        "20-row fine-tuning: per-fedavg {:.4} (global {:.4}), fedavg {:.4} (global {:.4}), local-only {:.4}",
        p.mean_personalized,
        p.mean_global,
        f.mean_personalized,
        f.mean_global,
        p.mean_local_only.unwrap_or(f64::NAN)
    );
    // Local DP and external learners cannot take meta steps.
    let (mut plan, _) = setup(StrategyKind::PerFedAvg, 2);
    plan.privacy.mode = PrivacyMode::Local;
    let e = plan.validate().unwrap_err().to_string();
    assert!(e.contains("perfedavg takes two batches a step"), "{e}");
}

/// APFL's update is FedAvg's: the global model is FedAvg's bit for bit,
/// and each site's mixture of its own model and the global one is what it
/// is evaluated on.
#[test]
fn apfls_global_model_is_fedavgs_and_each_site_mixes_its_own_in() {
    let (plan, data) = setup(StrategyKind::FedAvg, 0);
    let fedavg = run(&plan, &data);
    let (mut plan, data) = setup(StrategyKind::Apfl, 0);
    let apfl = run(&plan, &data);
    assert_eq!(apfl.final_parameters, fedavg.final_parameters);
    let p = apfl.personalization.as_ref().unwrap();
    assert_eq!(p.strategy, "apfl");
    let differ = p
        .per_site
        .values()
        .filter(|s| s.personalized != s.global)
        .count();
    // Sites whose global accuracy is already 1.0 or whose test rows are few
    // can tie; the others' mixtures score differently.
    assert!(differ >= 4, "{differ} of 12 sites' mixtures differ: {p:?}");
    assert!(
        p.mean_personalized > p.mean_global + 0.03,
        "mixture {} against global {}",
        p.mean_personalized,
        p.mean_global
    );
    println!(
        "apfl: personalized {:.4}, global {:.4}, local-only {:.4}",
        p.mean_personalized,
        p.mean_global,
        p.mean_local_only.unwrap_or(f64::NAN)
    );
    // Another initial mixing weight: the same global model, other mixtures.
    plan.strategies.insert(
        "apfl".into(),
        tessera_aggregate::StrategyConfig {
            alpha: Some(0.9),
            ..Default::default()
        },
    );
    let other = run(&plan, &data);
    assert_eq!(other.final_parameters, fedavg.final_parameters);
    assert_ne!(other.personalization.as_ref(), Some(p));
    // The mixture's training is the personal model's only under plain SGD.
    plan.training.optimizer.optimizer = tessera_learn::OptimizerKind::Adam;
    let e = plan.validate().unwrap_err().to_string();
    assert!(e.contains("apfl needs plain SGD"), "{e}");
}

/// On the hierarchy each site fine-tunes its region's model, and the
/// report has each level (global, regional, site, local-only) per site.
#[test]
fn on_the_hierarchy_each_site_fine_tunes_its_regions_model() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut plan = Plan::from_file(&dir.join("synthetic-hierarchical.toml")).unwrap();
    plan.federation.rounds = 10;
    plan.privacy.site_metrics = SiteMetrics::Clear;
    plan.personalization.finetune_epochs = 1;
    let data = tessera_data::load(&plan.data, &dir, &Filesystem).unwrap();
    let report = run(&plan, &data);
    let p = report.personalization.as_ref().unwrap();
    assert_eq!(p.sites, 47);
    assert!(p.per_site.values().all(|s| s.regional.is_some()));
    let regional = p.mean_regional.unwrap();
    // The regions' models fit their own sites better than the global one.
    assert!(
        regional > p.mean_global,
        "regional {regional}, global {}",
        p.mean_global
    );
    println!(
        "hierarchy: global {:.4}, regional {regional:.4}, site (fine-tuned from its region) {:.4}, \
         local-only {:.4}",
        p.mean_global,
        p.mean_personalized,
        p.mean_local_only.unwrap_or(f64::NAN)
    );
    // Fine-tuning that barely moves leaves each site with its region's
    // model: the site's model starts from it.
    plan.personalization.finetune_lr = Some(1e-9);
    let still = run(&plan, &data);
    for (name, site) in &still.personalization.as_ref().unwrap().per_site {
        assert_eq!(Some(site.personalized), site.regional, "{name}");
    }
}

/// New sites take no part: the global model is, bit for bit, the one the
/// other sites train without them; each new site then adapts it with 20 of
/// its own rows, and is reported against the global model and a model
/// trained on the same 20 rows alone.
#[test]
fn new_sites_take_no_part_and_adapt_the_final_model_with_few_rows() {
    let (mut plan, data) = setup(StrategyKind::FedAvg, 5);
    plan.personalization.finetune_rows = Some(20);
    let new = ["site1", "site4", "site7"];
    plan.personalization.new_sites = new.iter().map(|s| s.to_string()).collect();
    let report = run(&plan, &data);
    let n = report.new_sites.as_ref().unwrap();
    assert_eq!(n.per_site.keys().collect::<Vec<_>>(), new);
    assert_eq!((n.finetune_epochs, n.finetune_rows), (5, Some(20)));
    for site in new {
        assert!(!report.communication.bytes_up_per_site.contains_key(site));
        assert!(
            !report
                .personalization
                .as_ref()
                .unwrap()
                .per_site
                .contains_key(site)
        );
    }
    assert!(report.rounds.iter().all(|r| r.accepted == 9));
    let moved = n.per_site.values().filter(|s| s.personalized != s.global);
    assert!(moved.count() >= 2, "{n:?}");
    assert!(n.per_site.values().all(|s| s.local_only.is_some()));

    // The same run without the new sites in the data at all.
    let mut without = data.clone();
    without.sites.retain(|s| !new.contains(&s.name.as_str()));
    without.summary.retain(|s| !new.contains(&s.site.as_str()));
    let mut alone = plan.clone();
    alone.personalization.new_sites.clear();
    let trained = run(&alone, &without);
    assert_eq!(trained.final_parameters, report.final_parameters);
    assert_eq!(trained.personalization, report.personalization);
    println!(
        "new sites, 20 rows: adapted {:.4}, global {:.4}, alone on the same rows {:.4}",
        n.mean_adapted,
        n.mean_global,
        n.mean_local_only.unwrap_or(f64::NAN)
    );

    // Refused, naming why: a site the data lacks, every site, a name twice.
    let refused = |plan: &Plan| {
        simulate(plan, &data, &SimOptions::default(), &mut |_| {})
            .unwrap_err()
            .to_string()
    };
    plan.personalization.new_sites = vec!["site99".into()];
    assert!(refused(&plan).contains("names 'site99', which the data does not have"));
    plan.personalization.new_sites = data.sites.iter().map(|s| s.name.clone()).collect();
    assert!(refused(&plan).contains("none is left to train"));
    plan.personalization.new_sites = vec!["site1".into(), "site1".into()];
    assert!(refused(&plan).contains("names 'site1' twice"));

    // Federation-scope standardisation: the statistics are the training
    // sites' alone (the new sites take them), as if the data never had the
    // new sites.
    plan.personalization.new_sites = new.iter().map(|s| s.to_string()).collect();
    plan.data.standardize.enabled = true;
    plan.data.standardize.scope = tessera_data::ScaleScope::Federation;
    let data = tessera_data::load(
        &plan.data,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples"),
        &Filesystem,
    )
    .unwrap();
    let federation = run(&plan, &data);
    let mut without = data.clone();
    without.sites.retain(|s| !new.contains(&s.name.as_str()));
    without.summary.retain(|s| !new.contains(&s.site.as_str()));
    let scaler = tessera_data::Scaler::from_statistics(
        &without.federation_statistics(),
        &plan.data.standardize,
        &without.indicators(),
    );
    for site in &mut without.sites {
        site.rescale(scaler.clone());
    }
    let mut alone = plan.clone();
    alone.personalization.new_sites.clear();
    assert_eq!(
        run(&alone, &without).final_parameters,
        federation.final_parameters
    );
    assert_ne!(federation.final_parameters, report.final_parameters);
}

#[test]
fn plans_personalization_cannot_serve_are_refused_naming_why() {
    let refused = |plan: &Plan| plan.validate().unwrap_err().to_string();
    let (mut plan, _) = setup(StrategyKind::FedPer, 0);
    plan.model.kind = tessera_learn::ModelKind::Softmax;
    let e = refused(&plan);
    assert!(e.contains("fedper keeps the model's last 1 layer"), "{e}");
    assert!(e.contains("the model has 1 layer"), "{e}");

    let (mut plan, _) = setup(StrategyKind::Ditto, 0);
    plan.privacy.mode = PrivacyMode::Local;
    let e = refused(&plan);
    assert!(
        e.contains("ditto trains a personal model beside the update"),
        "{e}"
    );

    let (mut plan, _) = setup(StrategyKind::FedAvg, 1);
    plan.model.kind = tessera_learn::ModelKind::External;
    let e = refused(&plan);
    assert!(
        e.contains("fine-tuning after the last round needs a built-in model"),
        "{e}"
    );
    // Gossip fine-tunes each site's own model.
    let (mut plan, _) = setup(StrategyKind::FedAvg, 1);
    plan.topology.kind = TopologyKind::Gossip;
    assert!(plan.validate().is_ok());

    let (mut plan, _) = setup(StrategyKind::FedAvg, 1);
    plan.personalization.finetune_rows = Some(0);
    let e = refused(&plan);
    assert!(e.contains("finetune_rows needs at least 1 row"), "{e}");
}

/// Departments, a level below a site: each department fine-tunes its
/// site's model, and every level is evaluated on each department's test
/// rows. The departments' test rows are the site's, split: each level's
/// accuracy over them, weighted by their rows, is the site's own figure.
#[test]
fn departments_fine_tune_their_sites_model_and_every_level_is_reported_on_each() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut plan = Plan::from_file(&dir.join("synthetic-departments.toml")).unwrap();
    let data = tessera_data::load(&plan.data, &dir, &Filesystem).unwrap();
    let report = run(&plan, &data);
    let p = report.personalization.as_ref().unwrap();
    let d = p.departments.as_ref().unwrap();
    assert_eq!((d.column.as_str(), d.populations), ("department", 188));
    for (name, site) in &p.per_site {
        assert_eq!(site.departments.len(), 4, "{name}");
        let n: u64 = site.departments.values().map(|d| d.n_test).sum();
        assert_eq!(n, site.n_test, "{name}");
        let pooled = |level: &dyn Fn(&tessera_engine::report::DepartmentAccuracy) -> f64| {
            site.departments
                .values()
                .map(|d| level(d) * d.n_test as f64)
                .sum::<f64>()
                / n as f64
        };
        assert!(
            (pooled(&|d| d.site) - site.personalized).abs() < 1e-9,
            "{name}"
        );
        assert!((pooled(&|d| d.global) - site.global).abs() < 1e-9, "{name}");
        let regional = pooled(&|d| d.regional.unwrap());
        assert!((regional - site.regional.unwrap()).abs() < 1e-9, "{name}");
        assert!(
            site.departments
                .values()
                .all(|d| d.n_train > 0 && d.local_only.is_some())
        );
    }
    // Departments differ within a site: their own models fit them better.
    let department = d.mean_department.unwrap();
    assert!(
        department > d.mean_site,
        "{department} against {}",
        d.mean_site
    );
    println!(
        "departments: global {:.4}, regional {:.4}, site {:.4}, department {department:.4}, \
         alone {:.4}",
        d.mean_global,
        d.mean_regional.unwrap(),
        d.mean_site,
        d.mean_local_only.unwrap()
    );
    // A department's model starts from its site's: fine-tuning that
    // barely moves leaves it there.
    plan.personalization.finetune_lr = Some(1e-9);
    let still = run(&plan, &data);
    for (name, site) in &still.personalization.as_ref().unwrap().per_site {
        for (level, d) in &site.departments {
            assert_eq!(d.department, Some(d.site), "{name} {level}");
        }
    }
}

/// On the flat topology departments have no regional level; a column that
/// cannot name departments, and departments without fine-tuning, are
/// refused with the reason.
#[test]
fn departments_on_the_flat_topology_and_what_is_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut plan = Plan::from_file(&dir.join("synthetic-departments.toml")).unwrap();
    plan.topology.kind = TopologyKind::Flat;
    plan.federation.rounds = 5;
    plan.data.synthetic.as_mut().unwrap().sites = 6;
    let data = tessera_data::load(&plan.data, &dir, &Filesystem).unwrap();
    let report = run(&plan, &data);
    let p = report.personalization.as_ref().unwrap();
    assert_eq!(p.departments.as_ref().unwrap().populations, 24);
    assert!(p.departments.as_ref().unwrap().mean_regional.is_none());
    assert!(
        p.per_site
            .values()
            .flat_map(|s| s.departments.values())
            .all(|d| d.regional.is_none() && d.department.is_some())
    );
    plan.personalization.department = Some("x0".into());
    let e = simulate(&plan, &data, &SimOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("personalization.department") && e.contains("is numeric"),
        "{e}"
    );
    use tessera_data::ColumnKind::{Categorical, Numeric};
    for (column, declared) in [
        ("y", None),
        ("site", None),
        ("x1", Some((Numeric, false))),
        ("department", Some((Categorical, true))),
    ] {
        let mut refused = plan.clone();
        refused.personalization.department = Some(column.into());
        if let Some((kind, drop_first)) = declared {
            refused.data.schema.columns.push(tessera_data::ColumnSpec {
                name: column.into(),
                kind,
                levels: None,
                drop_first,
                min: None,
                max: None,
            });
        }
        let e = refused.validate().unwrap_err().to_string();
        assert!(
            e.contains("must name a categorical feature column"),
            "{column}: {e}"
        );
    }
    plan.personalization.finetune_epochs = 0;
    let e = plan.validate().unwrap_err().to_string();
    assert!(
        e.contains("needs a column name and finetune_epochs > 0"),
        "{e}"
    );
}

/// After asynchronous rounds each site fine-tunes the final model (and its
/// departments fine-tune the site's), as after synchronous ones.
#[test]
fn asynchronous_runs_fine_tune_the_final_model_at_each_site() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut plan = Plan::from_file(&dir.join("synthetic-async.toml")).unwrap();
    plan.federation.rounds = 40;
    plan.personalization.finetune_epochs = 5;
    let synthetic = plan.data.synthetic.as_mut().unwrap();
    synthetic.sites = 10;
    synthetic.departments = 2;
    plan.personalization.department = Some("department".into());
    plan.privacy.site_metrics = SiteMetrics::Clear;
    let data = tessera_data::load(&plan.data, &dir, &Filesystem).unwrap();
    let report = run(&plan, &data);
    let p = report.personalization.as_ref().unwrap();
    assert_eq!(p.sites, 10);
    let moved = p
        .per_site
        .values()
        .filter(|s| s.personalized != s.global)
        .count();
    assert!(
        moved >= 5,
        "{moved} of 10 sites' fine-tuned models differ from the global one"
    );
    assert_eq!(p.departments.as_ref().unwrap().populations, 20);
    println!(
        "async: global {:.4}, fine-tuned {:.4}, local-only {:.4}",
        p.mean_global,
        p.mean_personalized,
        p.mean_local_only.unwrap_or(f64::NAN)
    );
}
