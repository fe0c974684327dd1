//! Runs a case: a temporary database, the honest sites' driver that takes
//! the protocol's next step or makes a hostile call, and the restarts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tessera_coordinator::{Federation, SqliteStore, TaskView};
use tessera_core::{FitStats, Update};
use tessera_engine::Plan;
use tessera_engine::report::RunReport;
use tessera_proto::CAPABILITIES;
use tessera_proto::pb;
use tessera_secagg::EVALUATION_ROUND;

use crate::ops::{Op, Round, Values, Who, delta, name};
use crate::{PLANS, SITES};

/// A database file that is removed when the case ends.
struct Db(PathBuf);

impl Db {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!(
            "tessera-fuzz-{}-{}.db",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        Db(path)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The honest sites' progress, and the round they are in.
#[derive(Default)]
struct Driver {
    joined: [bool; 4],
    kinds: [bool; 4],
    levels: [bool; 4],
    statistics: [bool; 4],
    held: [Option<u32>; 4],
    round: u32,
    salt: u64,
}

fn hello(site: &str) -> pb::Hello {
    pb::Hello {
        major: tessera_proto::MAJOR,
        minor: tessera_proto::MINOR,
        capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        site: site.to_string(),
        ..Default::default()
    }
}

impl Driver {
    fn round(&self, round: &Round) -> u32 {
        match round {
            Round::Current => self.round,
            Round::Offset(d) => self.round.wrapping_add_signed(i32::from(*d)),
            Round::Evaluation => self.round | EVALUATION_ROUND,
            Round::Any(r) => *r,
        }
    }

    /// Site `i`'s next step of the protocol, as a participant takes it.
    fn honest(&mut self, f: &mut Federation, plan: &Plan, i: usize) {
        let site = &SITES.sites[i];
        let name = site.name.as_str();
        if !self.joined[i] {
            self.joined[i] = f.join(name, &hello(name)).is_ok();
        } else if !self.kinds[i] {
            self.kinds[i] = f.offer_kinds(name, site.kinds.clone()).is_ok();
        } else if !self.levels[i] {
            self.levels[i] = f.offer_levels(name, site.levels.clone()).is_ok();
        } else if plan.data.standardize.scope == tessera_data::ScaleScope::Federation
            && !self.statistics[i]
        {
            let stats = pb::FeatureStatistics {
                n: site.levels.train_rows,
                mean: vec![0.5; SITES.features],
                m2: vec![2.0; SITES.features],
            };
            self.statistics[i] = f.offer_statistics(name, stats).is_ok();
        } else {
            match f.task_for(name, self.held[i]) {
                Ok(TaskView::Fit {
                    header,
                    global,
                    tensors,
                    ..
                }) => {
                    self.round = header.round;
                    self.held[i] = Some(header.round);
                    self.salt += 1;
                    let update = Update {
                        delta: delta(&global, Values::Small, self.salt),
                        n_examples: site.levels.train_rows,
                        aux: tensors.map(|c| c.zeros_like()),
                        stats: FitStats {
                            n_steps: 1,
                            mean_train_loss: 0.6,
                            start_loss: None,
                        },
                    };
                    let _ = f.submit_update(name, header.round, &update);
                }
                Ok(TaskView::Evaluate { header, .. }) => {
                    self.round = header.round;
                    self.held[i] = Some(header.round);
                    let n = site.levels.test_rows;
                    let report = pb::EvaluationReport {
                        site: name.to_string(),
                        round: header.round,
                        n_examples: n,
                        loss_sum: n as f64 * 0.5,
                        n_correct: n / 2,
                        auc: Some(0.75),
                        histogram: Vec::new(),
                        sites: Vec::new(),
                        ..Default::default()
                    };
                    let _ = f.submit_evaluation(name, &report);
                }
                Ok(
                    TaskView::Wait
                    | TaskView::Finished
                    | TaskView::Analyze { .. }
                    | TaskView::Rollout { .. }
                    | TaskView::RolloutOver { .. },
                )
                | Err(_) => {}
            }
        }
    }

    fn run(&mut self, f: &mut Federation, plan: &Plan, op: &Op) {
        match op {
            Op::Honest(i) => self.honest(f, plan, *i),
            Op::Join {
                who,
                major,
                minor,
                capabilities,
            } => {
                let site = name(who);
                let hello = pb::Hello {
                    major: *major,
                    minor: *minor,
                    capabilities: capabilities.clone(),
                    site: site.clone(),
                    ..Default::default()
                };
                let _ = f.join(&site, &hello);
            }
            Op::OfferKinds { who, columns, text } => {
                let mut text = text.clone();
                // Mostly as long as the columns, to pass the first check.
                if columns.len() % 4 != 0 {
                    text.resize(columns.len(), false);
                }
                let offer = pb::KindsOffer {
                    columns: columns.clone(),
                    text,
                };
                let _ = f.offer_kinds(&name(who), offer);
            }
            Op::OfferRows { who, train, test } => {
                let mut offer = match who {
                    Who::Site(i) => SITES.sites[*i].levels.clone(),
                    Who::Name(_) => SITES.sites[0].levels.clone(),
                };
                offer.train_rows = *train;
                offer.test_rows = *test;
                let _ = f.offer_levels(&name(who), offer);
            }
            Op::OfferLevels {
                who,
                levels,
                classes,
                train_classes,
                train,
                test,
            } => {
                let offer = pb::LevelsOffer {
                    levels: levels
                        .iter()
                        .map(|l| pb::ColumnLevels { levels: l.clone() })
                        .collect(),
                    classes: classes.clone(),
                    train_classes: train_classes.clone(),
                    train_rows: *train,
                    test_rows: *test,
                };
                let _ = f.offer_levels(&name(who), offer);
            }
            Op::OfferStatistics { who, n, mean, m2 } => {
                let stats = pb::FeatureStatistics {
                    n: *n,
                    mean: mean.clone(),
                    m2: m2.clone(),
                };
                let _ = f.offer_statistics(&name(who), stats);
            }
            Op::TaskFor { who, held } => {
                if let Ok(TaskView::Fit { header, .. } | TaskView::Evaluate { header, .. }) =
                    f.task_for(&name(who), *held)
                {
                    self.round = header.round;
                }
            }
            Op::SubmitUpdate {
                who,
                round,
                n_examples,
                n_steps,
                loss,
                values,
                control,
            } => {
                // The gRPC layer admits only updates with the model's layout,
                // with a control delta only when the run has them.
                let Some((global, needs_control)) = f.update_layout() else {
                    return;
                };
                self.salt += 1;
                let update = Update {
                    delta: delta(&global, *values, self.salt),
                    n_examples: *n_examples,
                    aux: (*control && needs_control)
                        .then(|| delta(&global, *values, self.salt + 1)),
                    stats: FitStats {
                        n_steps: *n_steps,
                        mean_train_loss: *loss,
                        start_loss: None,
                    },
                };
                let _ = f.submit_update(&name(who), self.round(round), &update);
            }
            Op::SubmitEvaluation {
                who,
                round,
                n_examples,
                loss_sum,
                n_correct,
                auc,
                histogram,
                sites,
            } => {
                let site = name(who);
                let report = pb::EvaluationReport {
                    site: site.clone(),
                    round: self.round(round),
                    n_examples: *n_examples,
                    loss_sum: *loss_sum,
                    n_correct: *n_correct,
                    auc: *auc,
                    histogram: histogram
                        .iter()
                        .map(|&(bin, positives, negatives)| pb::HistogramBin {
                            bin,
                            positives,
                            negatives,
                        })
                        .collect(),
                    sites: sites
                        .iter()
                        .map(
                            |(site, n_examples, loss_sum, n_correct)| pb::EvaluationReport {
                                site: site.clone(),
                                round: self.round(round),
                                n_examples: *n_examples,
                                loss_sum: *loss_sum,
                                n_correct: *n_correct,
                                ..Default::default()
                            },
                        )
                        .collect(),
                    ..Default::default()
                };
                let _ = f.submit_evaluation(&site, &report);
            }
            Op::Heartbeat { who, round } => {
                let _ = f.heartbeat(&name(who), self.round(round));
            }
            Op::Withdraw {
                who,
                round,
                reason,
                leaving,
            } => {
                let reason = tessera_proto::withdraw_reason(reason);
                let _ = f.withdraw(&name(who), self.round(round), reason, *leaving);
            }
            Op::Secure { who, round, step } => {
                let _ = f.secure_step(&name(who), self.round(round), step.clone());
            }
            Op::Advance => f.advance(),
            Op::Reopen => {}
        }
    }
}

fn open(plan: &Plan, text: &str, db: &Db, liveness: Duration) -> Federation {
    let store = SqliteStore::open(&db.0).unwrap();
    match Federation::open(plan.clone(), text, store, liveness) {
        Ok(f) => f,
        Err(e) => panic!("the federation does not open from its database: {e}"),
    }
}

/// Runs `ops` against a new federation of plan variant `plan`.
pub(crate) fn check(plan: usize, liveness: Duration, ops: &[Op]) -> RunReport {
    let (plan, text) = &PLANS[plan];
    let db = Db::new();
    let mut f = open(plan, text, &db, liveness);
    let mut driver = Driver::default();
    for op in ops {
        if let Op::Reopen = op {
            let _ = f.report();
            drop(f);
            f = open(plan, text, &db, liveness);
        } else {
            driver.run(&mut f, plan, op);
        }
    }
    let _ = f.is_finished();
    let _ = f.version();
    let _ = f.heartbeat_interval();
    f.report()
}
