//! Multi-task federated learning (`[multitask]`) against an independent
//! computation and against attempts to break what it promises: a task's
//! head moves only with its own sites' training, the body with every
//! site's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use tessera_core::{ParameterSet, ParticipantId};
use tessera_data::Filesystem;
use tessera_engine::{FitTask, Plan, PlanBuild, Site};
use tessera_sim::multitask::{MultitaskData, Sharing, initial_models, train};
use tessera_sim::{SimOptions, load_multitask, simulate, simulate_multitask};

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn setup(rounds: u32) -> (Plan, MultitaskData) {
    let mut plan = Plan::from_file(&examples().join("heart-multitask.toml")).unwrap();
    plan.federation.rounds = rounds;
    let data = load_multitask(&plan, &examples(), &Filesystem).unwrap();
    (plan, data)
}

/// The tensors of the last layer (`dense<last>.*`) and of the others.
fn split(model: &ParameterSet) -> (Vec<f32>, Vec<f32>) {
    let last = model
        .names()
        .last()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let (mut head, mut body) = (Vec::new(), Vec::new());
    for (name, tensor) in model.iter() {
        let into = if name.starts_with(&format!("{last}.")) {
            &mut head
        } else {
            &mut body
        };
        into.extend_from_slice(tensor.data());
    }
    (head, body)
}

/// Flips the training labels of every site of task 0.
fn flipped(data: &MultitaskData) -> MultitaskData {
    let mut data = data.clone();
    for i in 0..data.site_task.len() {
        if data.site_task[i] == 0 {
            let site = data.site_mut(i);
            for y in &mut site.train.y {
                *y = 1 - *y;
            }
        }
    }
    data
}

/// The attack on "heads trained only where their labels exist": change
/// every label of the disease task. After one round the angina head is
/// the same bit for bit (only angina sites trained it) while the shared
/// body and the disease head moved; after two rounds the angina head
/// differs too, through the body its sites trained from; and each task's
/// own federation (no shared body) keeps the angina model whole.
#[test]
fn a_tasks_head_moves_only_with_its_own_sites() {
    let (plan, data) = setup(1);
    let attacked = flipped(&data);
    let run = |plan: &Plan, data: &MultitaskData, sharing| {
        train(plan, data, sharing, &mut |_| {}).unwrap().models
    };
    let before = run(&plan, &data, Sharing::Shared);
    let after = run(&plan, &attacked, Sharing::Shared);
    let (angina_head, angina_body) = split(&before[1]);
    let (attacked_head, attacked_body) = split(&after[1]);
    assert_eq!(angina_head, attacked_head, "the angina head moved");
    assert_ne!(angina_body, attacked_body, "the body is not shared");
    assert_ne!(split(&before[0]).0, split(&after[0]).0);
    assert_eq!(split(&before[0]).1, angina_body, "one body");

    let (plan, _) = setup(2);
    let before = run(&plan, &data, Sharing::Shared);
    let after = run(&plan, &attacked, Sharing::Shared);
    assert_ne!(split(&before[1]).0, split(&after[1]).0);
    let before = run(&plan, &data, Sharing::PerTask);
    let after = run(&plan, &attacked, Sharing::PerTask);
    assert_eq!(before[1], after[1], "a task's own federation saw another's");
    assert_ne!(before[0], after[0]);
}

/// One round against a plain loop in f64: every site trains its task's
/// initial model alone; the body moves by the mean of all sites' body
/// changes weighted by rows, each head by the mean of its own sites'.
#[test]
fn one_round_is_the_weighted_mean_of_the_sites_changes() {
    let (plan, data) = setup(1);
    let initial = initial_models(&plan, &data).unwrap();
    let names = data.names();
    let mut changes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let t = data.site_task[i];
        let learner = plan
            .learner(data.tasks[0].n_features(), data.tasks[t].task.n_classes())
            .unwrap();
        let mut site = Site::new(
            ParticipantId::new(name),
            learner,
            plan.local_training(),
            plan.seed,
        );
        let task = FitTask {
            round: 1,
            global: Arc::new(initial[t].clone()),
            instructions: Default::default(),
            deadline: None,
        };
        let update = site.fit(&task, &data.site(i).train).unwrap();
        changes.push((t, update.n_examples as f64, split(&update.delta)));
    }
    let trained = train(&plan, &data, Sharing::Shared, &mut |_| {})
        .unwrap()
        .models;
    let mean = |parts: &[(f64, &Vec<f32>)]| -> Vec<f64> {
        let total: f64 = parts.iter().map(|(w, _)| w).sum();
        (0..parts[0].1.len())
            .map(|k| parts.iter().map(|(w, v)| w * f64::from(v[k])).sum::<f64>() / total)
            .collect()
    };
    let bodies: Vec<(f64, &Vec<f32>)> = changes.iter().map(|(_, w, (_, b))| (*w, b)).collect();
    let body_change = mean(&bodies);
    for (t, model) in trained.iter().enumerate() {
        let heads: Vec<(f64, &Vec<f32>)> = changes
            .iter()
            .filter(|(task, _, _)| *task == t)
            .map(|(_, w, (h, _))| (*w, h))
            .collect();
        let head_change = mean(&heads);
        let (head0, body0) = split(&initial[t]);
        let (head, body) = split(model);
        for (k, v) in body.iter().enumerate() {
            let want = f64::from(body0[k]) + body_change[k];
            assert!(
                (f64::from(*v) - want).abs() < 1e-5,
                "body {k}: {v} != {want}"
            );
        }
        for (k, v) in head.iter().enumerate() {
            let want = f64::from(head0[k]) + head_change[k];
            assert!(
                (f64::from(*v) - want).abs() < 1e-5,
                "head {k}: {v} != {want}"
            );
        }
    }
}

/// The report compares the three ways on the same rows, per task and per
/// site; figures are accuracies, and every site is counted once.
#[test]
fn the_report_gives_each_task_and_site_three_ways() {
    let (plan, data) = setup(3);
    let mut seen = 0;
    let (report, models) = simulate_multitask(&plan, &data, &mut |_| seen += 1).unwrap();
    assert_eq!(seen, 3);
    assert_eq!(report.rounds.len(), 3);
    assert_eq!(models.len(), 2);
    assert_eq!(report.tasks.len(), 2);
    assert_eq!(report.tasks[0].sites, ["cleveland", "va"]);
    assert_eq!(report.tasks[1].sites, ["hungarian", "switzerland"]);
    assert_eq!(report.per_site.len(), 4);
    assert_eq!(report.tasks[0].shared.tested_sites, 2);
    assert_eq!(report.local.tested_sites, 4);
    for (name, site) in &report.per_site {
        for v in [site.shared, site.separate, site.local] {
            assert!((0.0..=1.0).contains(&v.unwrap()), "{name}: {v:?}");
        }
        assert!(site.test_rows > 0, "{name}");
    }
    let mean = |of: fn(&tessera_sim::multitask::SiteResult) -> Option<f64>| {
        report
            .per_site
            .values()
            .map(|s| of(s).unwrap())
            .sum::<f64>()
            / 4.0
    };
    assert!((report.shared.mean_site_accuracy - mean(|s| s.shared)).abs() < 1e-12);
    assert!((report.separate.mean_site_accuracy - mean(|s| s.separate)).abs() < 1e-12);
    assert!((report.local.mean_site_accuracy - mean(|s| s.local)).abs() < 1e-12);
    // Each task's sites alone are not its federation.
    assert_ne!(report.separate, report.local);
    // Every task's target is out of every task's features.
    for task in &data.tasks {
        for target in ["num", "exang"] {
            assert!(!task.feature_names.iter().any(|f| f == target), "{target}");
        }
        assert_eq!(task.feature_names, data.tasks[0].feature_names);
    }
}

/// A task whose sites send nothing (here: no training rows) keeps its
/// head, and its model still takes the shared body's change: the body
/// stays one.
#[test]
fn a_task_without_updates_keeps_its_head_and_the_one_body() {
    let (plan, mut data) = setup(3);
    for i in 0..data.names.len() {
        if data.site_task[i] == 0 {
            let site = data.site_mut(i);
            site.train = tessera_data::Dataset::empty(site.train.n_features());
        }
    }
    let initial = initial_models(&plan, &data).unwrap();
    let trained = train(&plan, &data, Sharing::Shared, &mut |_| {}).unwrap();
    assert_eq!(split(&trained.models[0]).0, split(&initial[0]).0);
    assert_eq!(split(&trained.models[0]).1, split(&trained.models[1]).1);
    assert_ne!(split(&trained.models[0]).1, split(&initial[0]).1);
    assert!(trained.rounds.iter().all(|r| r.accepted == 2));
}

/// Planted tasks that share what they read: every row's features x (20
/// of them) make one latent h = w.x; task a's sites have only
/// `ya = [h > 0]`, task b's only `yb = [|h| > 0.7]` (the other column
/// empty), four sites each, about 50 training and 50 test rows a site.
/// The body shared by all eight sites learns w from twice the rows: over
/// seeds 1-5 it beats each task's own federation and every site alone.
#[test]
fn tasks_that_read_alike_gain_from_the_shared_body() {
    let dir = std::env::temp_dir().join(format!("tessera-multitask-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut shared, mut separate, mut local, mut wins) = (0.0, 0.0, 0.0, 0);
    for seed in 1..=5 {
        let (plan, data) = planted(&dir, seed);
        let (report, _) = simulate_multitask(&plan, &data, &mut |_| {}).unwrap();
        let (s, p, l) = (
            report.shared.mean_site_accuracy,
            report.separate.mean_site_accuracy,
            report.local.mean_site_accuracy,
        );
        println!("seed {seed}: shared {s:.4}, separate {p:.4}, alone {l:.4}");
        shared += s / 5.0;
        separate += p / 5.0;
        local += l / 5.0;
        wins += usize::from(s > p && s > l);
    }
    println!("mean: shared {shared:.4}, separate {separate:.4}, alone {local:.4}; {wins} of 5");
    assert!(shared > separate + 0.02, "{shared} against {separate}");
    assert!(shared > local + 0.05, "{shared} against {local}");
    assert!(wins >= 4, "{wins}");
    std::fs::remove_dir_all(&dir).ok();
}

fn planted(dir: &Path, seed: u64) -> (Plan, MultitaskData) {
    let mut rng = tessera_core::SeededRng::derived(seed, &[77]);
    let d = 20;
    let w: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    let norm = w.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut csv = String::from("site");
    for j in 0..d {
        csv.push_str(&format!(",x{j}"));
    }
    csv.push_str(",ya,yb\n");
    for site in 0..8 {
        for _ in 0..100 {
            let x: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            let h = w.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>() / norm;
            let (name, ya, yb) = if site < 4 {
                (
                    format!("a{site}"),
                    u8::from(h > 0.0).to_string(),
                    String::new(),
                )
            } else {
                let yb = u8::from(h.abs() > 0.7).to_string();
                (format!("b{}", site - 4), String::new(), yb)
            };
            csv.push_str(&name);
            for v in &x {
                csv.push_str(&format!(",{v:.4}"));
            }
            csv.push_str(&format!(",{ya},{yb}\n"));
        }
    }
    std::fs::write(dir.join("planted.csv"), csv).unwrap();
    let plan = Plan::from_toml(
        &format!(
            r#"name = "planted-multitask"
seed = {seed}

[data]
path = "planted.csv"
site_column = "site"

[data.schema]
target = "ya"

[data.split]
test_fraction = 0.5

[model]
kind = "mlp"
hidden = [8]

[training]
steps = 20
batch_size = 8
optimizer = "sgd"
lr = 0.1

[federation]
rounds = 20

[[multitask.tasks]]
name = "a"
target = "ya"
sites = ["a0", "a1", "a2", "a3"]

[[multitask.tasks]]
name = "b"
target = "yb"
sites = ["b0", "b1", "b2", "b3"]
"#
        ),
        "planted",
    )
    .unwrap();
    let data = load_multitask(&plan, dir, &Filesystem).unwrap();
    (plan, data)
}

/// Plans and data that cannot work are refused, each saying why.
#[test]
fn multitask_that_cannot_work_is_refused() {
    let (plan, data) = setup(1);
    let e = simulate(&plan, &data.tasks[0], &SimOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("simulate_multitask"), "{e}");

    let mut small = plan.clone();
    small.simulation.max_memory_gb = Some(1e-9);
    let e = simulate_multitask(&small, &data, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_memory_gb"), "{e}");

    let mut logistic = plan.clone();
    logistic.model.kind = tessera_learn::ModelKind::Logistic;
    let e = logistic.validate().unwrap_err().to_string();
    assert!(e.contains("kind = \"mlp\""), "{e}");

    let mut unknown = plan.clone();
    unknown.multitask.as_mut().unwrap().tasks[1]
        .sites
        .push("lausanne".into());
    let e = load_multitask(&unknown, &examples(), &Filesystem)
        .unwrap_err()
        .to_string();
    assert!(e.contains("names site 'lausanne'"), "{e}");

    let mut missing = plan.clone();
    missing.multitask.as_mut().unwrap().tasks[1].sites.pop();
    let e = load_multitask(&missing, &examples(), &Filesystem)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'switzerland' is in no task"), "{e}");

    let mut column = plan.clone();
    column.multitask.as_mut().unwrap().tasks[1].target = "nonsense".into();
    let e = load_multitask(&column, &examples(), &Filesystem)
        .unwrap_err()
        .to_string();
    assert!(e.contains("target 'nonsense' is not"), "{e}");
}

/// A site with both tasks' labels is in both: one participant per task
/// (`SITE/TASK`), each training its task's model on that task's rows and
/// reported apart; the body takes both its changes.
#[test]
fn a_site_in_two_tasks_trains_both_heads() {
    let mut plan = Plan::from_file(&examples().join("heart-multitask.toml")).unwrap();
    plan.federation.rounds = 2;
    plan.multitask.as_mut().unwrap().tasks[1]
        .sites
        .push("cleveland".into());
    let data = load_multitask(&plan, &examples(), &Filesystem).unwrap();
    assert_eq!(
        data.names,
        [
            "cleveland/disease",
            "cleveland/angina",
            "hungarian",
            "switzerland",
            "va"
        ]
    );
    assert_ne!(data.site(0).train.y, data.site(1).train.y, "one target");
    // Without a membership file each task would split the site's rows by
    // its own draw.
    let mut random = plan.clone();
    random.data.split.membership = None;
    let e = load_multitask(&random, &examples(), &Filesystem)
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs [data.split.membership]"), "{e}");
    let (report, _) = simulate_multitask(&plan, &data, &mut |_| {}).unwrap();
    assert_eq!(report.per_site.len(), 5);
    assert_eq!(report.per_site["cleveland/angina"].task, "angina");
    assert_eq!(
        report.tasks[1].sites,
        ["cleveland/angina", "hungarian", "switzerland"]
    );
    // Without cleveland's angina rows the angina head is another.
    let (one, data_one) = setup(2);
    let without = train(&one, &data_one, Sharing::Shared, &mut |_| {}).unwrap();
    let with = train(&plan, &data, Sharing::Shared, &mut |_| {}).unwrap();
    assert_ne!(split(&without.models[1]).0, split(&with.models[1]).0);
}
