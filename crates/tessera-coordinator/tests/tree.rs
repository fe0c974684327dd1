//! The root of a hierarchy, in process: its members are aggregators, whose
//! evaluations carry each site's below them (protocol 1.9). The root
//! reports every site, and refuses an aggregator that names a site not
//! below it in the plan's tree, whose sites do not add up to its own
//! evaluation, or a site of a flat run that claims to speak for others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Db, SITES, hello};
use tessera_coordinator::{Federation, Refusal, TaskView};
use tessera_core::{FitStats, Update};
use tessera_engine::Plan;
use tessera_learn::{Evaluation, ScoreHistogram};
use tessera_proto::{convert, pb};

/// The heart plan as a tree: east above cleveland and hungarian, west above
/// switzerland and va.
fn tree_plan() -> (Plan, String) {
    let mut text =
        std::fs::read_to_string(common::examples().join("fed-heart-disease.toml")).unwrap();
    text = text.replace("min_participants = 4", "min_participants = 2");
    text.push_str(
        "\n[privacy]\nsite_metrics = \"clear\"\n\n[topology]\nkind = \"hierarchical\"\n\n\
         [[topology.groups]]\nname = \"east\"\nmembers = [\"cleveland\", \"hungarian\"]\n\n\
         [[topology.groups]]\nname = \"west\"\nmembers = [\"switzerland\", \"va\"]\n",
    );
    let plan = Plan::from_toml(&text, "tree").unwrap();
    (plan, text)
}

/// East (with cleveland's offers) and west (with va's) join and agree; each
/// trains round 1; the round closes and its evaluation opens.
fn to_first_evaluation(f: &mut Federation) -> u32 {
    let members = [("east", &SITES[0]), ("west", &SITES[3])];
    for (name, _) in members {
        f.join(name, &hello(name)).unwrap();
    }
    for (name, site) in members {
        f.offer_kinds(name, site.kinds.clone()).unwrap();
    }
    for (name, site) in members {
        f.offer_levels(name, site.levels.clone()).unwrap();
    }
    f.advance();
    let mut round = 0;
    for (name, site) in members {
        let Ok(TaskView::Fit { header, global, .. }) = f.task_for(name, None) else {
            panic!("{name} has no training task");
        };
        round = header.round;
        let update = Update {
            delta: global.zeros_like(),
            n_examples: site.levels.train_rows,
            aux: None,
            stats: FitStats {
                n_steps: 1,
                mean_train_loss: 0.6,
                start_loss: None,
            },
        };
        f.submit_update(name, round, &update).unwrap();
    }
    f.advance();
    round
}

fn evaluation(n: u64, right: u64, loss: f64, bin: u32) -> Evaluation {
    Evaluation {
        n_examples: n,
        loss_sum: loss,
        n_correct: right,
        auc: None,
        histogram: Some(ScoreHistogram {
            bins: vec![(bin, n / 2, n - n / 2)],
        }),
    }
}

/// `member`'s evaluation of `round` naming `sites` (name, rows, right, loss).
fn from_aggregator(
    member: &str,
    round: u32,
    sites: &[(&str, u64, u64, f64)],
) -> pb::EvaluationReport {
    let sites: Vec<(String, Evaluation)> = sites
        .iter()
        .enumerate()
        .map(|(i, &(name, n, right, loss))| {
            (name.to_string(), evaluation(n, right, loss, i as u32 * 100))
        })
        .collect();
    let pooled = Evaluation::pool(sites.iter().map(|(_, e)| e));
    convert::evaluation_with_sites_to_pb(member, round, &pooled, &sites)
}

#[track_caller]
fn refused(result: Result<(), Refusal>, cause: &str) {
    match result {
        Err(Refusal::Invalid(message)) => assert!(message.contains(cause), "{message}"),
        other => panic!("not refused as invalid ({cause}): {other:?}"),
    }
}

#[test]
fn the_root_of_a_tree_reports_each_site_its_aggregators_name() {
    let plan = tree_plan();
    let db = Db::new();
    let mut f = db.open(&plan);
    let round = to_first_evaluation(&mut f);

    // West names a site of east's: refused, and nothing of west's is counted.
    refused(
        f.submit_evaluation(
            "west",
            &from_aggregator("west", round, &[("cleveland", 10, 6, 4.0)]),
        ),
        "'cleveland', which is not below 'west'",
    );
    // East's sites do not add up to its own evaluation.
    let mut lie = from_aggregator(
        "east",
        round,
        &[("cleveland", 10, 6, 4.0), ("hungarian", 8, 8, 1.0)],
    );
    lie.n_correct = 15;
    refused(
        f.submit_evaluation("east", &lie),
        "they count 14 right of 18 rows",
    );
    // An aggregator's evaluation naming itself as a site below: refused too.
    refused(
        f.submit_evaluation(
            "east",
            &from_aggregator("east", round, &[("east", 10, 6, 4.0)]),
        ),
        "'east', which is not below 'east'",
    );
    let run = f.run_id().to_string();
    assert!(f.store().evaluations(&run, round).unwrap().is_empty());

    f.submit_evaluation(
        "east",
        &from_aggregator(
            "east",
            round,
            &[("cleveland", 10, 6, 4.0), ("hungarian", 8, 8, 1.0)],
        ),
    )
    .unwrap();
    f.submit_evaluation(
        "west",
        &from_aggregator(
            "west",
            round,
            &[("switzerland", 4, 1, 3.0), ("va", 6, 3, 2.0)],
        ),
    )
    .unwrap();
    f.advance();
    let report = f.report();
    let record = &report.rounds[0];
    assert_eq!(record.n_test, 28);
    // Each site's, not each aggregator's: the mean of four sites' accuracy.
    let mean = (0.6 + 1.0 + 0.25 + 0.5) / 4.0;
    assert!(
        (record.mean_site_accuracy - mean).abs() < 1e-12,
        "{record:?}"
    );
    let per_site = &report.final_metrics.per_site;
    let names: Vec<&str> = per_site.keys().map(String::as_str).collect();
    assert_eq!(names, ["cleveland", "hungarian", "switzerland", "va"]);
    assert_eq!(per_site["va"].n_test, 6);
    // The topology: each aggregator's sites and the model's accuracy on them.
    let topology = report.topology.expect("the root's report has its topology");
    assert_eq!(topology.kind, "hierarchical");
    let east = &topology.regions["east"];
    assert_eq!(east.sites, ["cleveland", "hungarian"]);
    assert_eq!(east.accuracy, None, "the root never holds regional models");
    assert!((east.global_accuracy - 14.0 / 18.0).abs() < 1e-12);
    assert!((topology.regions["west"].global_accuracy - 0.4).abs() < 1e-12);
}

#[test]
fn a_site_of_a_flat_run_cannot_speak_for_other_sites() {
    let plan = common::plan("");
    let db = Db::new();
    let mut f = db.open(&plan);
    common::agree(&mut f);
    let updates: Vec<_> = (0..SITES.len()).map(|i| common::train(&mut f, i)).collect();
    for (site, (round, update)) in SITES.iter().zip(&updates) {
        f.submit_update(&site.name, *round, update).unwrap();
    }
    f.advance();
    let round = updates[0].0;
    let first = SITES[0].name.as_str();
    refused(
        f.submit_evaluation(
            first,
            &from_aggregator(first, round, &[("hungarian", 10, 6, 4.0)]),
        ),
        "only an aggregator of a hierarchical run sends",
    );
}
