//! Fuzz harness for the coordinator's message handlers: random sequences of
//! calls into a [`Federation`] on the bundled heart plan (and variants of it:
//! clear site metrics, asynchronous rounds, SCAFFOLD, federation-scope
//! standardisation, secure aggregation, central DP, compression), in a
//! temporary SQLite file.
//!
//! Four honest participants (the heart sites, with the offers their real data
//! gives) take the protocol's next step when the sequence says so, so that
//! rounds open and close; between their steps come hostile calls: joins with
//! other names, versions and capabilities, offers of kinds, levels and
//! statistics that lie, updates with extreme counts, NaN losses and NaN or
//! huge values, evaluations that do not add up, heartbeats, withdrawals and
//! secure-aggregation steps for any round, time-driven `advance`, and
//! restarts of the coordinator from its database. What the gRPC layer checks
//! before calling the federation (site names of at most 128 bytes, an
//! update's layout being the model's, a withdrawal's reason of at most 1000
//! bytes) holds here too. Each case asserts only that nothing panics and that
//! the federation reopens from its database.
//!
//! cargo-fuzz needs a nightly toolchain, so this is proptest-driven. By
//! default it runs 500 sequences (a few seconds in a debug build); run
//! longer with `PROPTEST_CASES` (about 200 sequences a second in a debug
//! build), e.g. for about three minutes:
//!
//! ```text
//! PROPTEST_CASES=40000 cargo test -p tessera-coordinator --test fuzz
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, Once, PoisonError};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::Config;
use tessera_coordinator::{Federation, Store, TaskView};
use tessera_core::{FitStats, ParameterSet, Update};
use tessera_data::{Filesystem, agree_kinds, agree_vocabulary, read_local_sites};
use tessera_engine::Plan;
use tessera_engine::report::RunReport;
use tessera_proto::pb::{self, sec_agg_request::Step};
use tessera_proto::{CAPABILITIES, convert};
use tessera_secagg::EVALUATION_ROUND;

/// Cases when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 500;

/// proptest's default configuration (which reads `PROPTEST_CASES`), with
/// fewer cases than its 256 when the variable is not set.
fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    config
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The plan variants: the heart plan's text with settings changed.
static PLANS: LazyLock<Vec<(Plan, String)>> = LazyLock::new(|| {
    let heart = std::fs::read_to_string(examples().join("fed-heart-disease.toml")).unwrap();
    // The heart plan with `replace`ments, and `extra` tables at its end.
    let variant = |replace: &[(&str, &str)], extra: &str| {
        let mut text = heart.clone();
        for (from, to) in replace {
            assert!(text.contains(from), "{from}");
            text = text.replace(from, to);
        }
        text.push_str(extra);
        let plan = Plan::from_toml(&text, "fuzz").unwrap();
        (plan, text)
    };
    let clear = "\n[privacy]\nsite_metrics = \"clear\"\n";
    let federation = |settings: &'static str| ("[federation]\n", settings);
    vec![
        variant(&[], ""),
        variant(&[], clear),
        variant(&[("rounds = 15", "rounds = 3")], clear),
        variant(
            &[federation(
                "[federation]\nmode = \"async\"\nbuffer_size = 2\nmax_staleness = 3\n",
            )],
            clear,
        ),
        variant(
            &[federation(
                "[federation]\nquorum = 3\ndeadline_seconds = 0.05\n",
            )],
            clear,
        ),
        variant(
            &[("strategy = \"fedavg\"", "strategy = \"scaffold\"")],
            clear,
        ),
        variant(
            &[(
                "[data.standardize]\n",
                "[data.standardize]\nscope = \"federation\"\n",
            )],
            clear,
        ),
        variant(&[], "\n[secure_aggregation]\nenabled = true\n"),
        variant(
            &[],
            "\n[privacy]\nmode = \"central\"\nepsilon = 8.0\ndelta = 1e-5\nclip_norm = 1.0\n\
             site_metrics = \"clear\"\n",
        ),
        variant(
            &[],
            &format!("{clear}\n[compression]\nupload = \"topk:0.5+q8\"\ndownload = \"q8\"\n"),
        ),
        variant(
            &[],
            &format!("{clear}\n[robust]\nrule = \"median\"\nnorm_bound = 10.0\n"),
        ),
    ]
});

/// An honest site: its name and the offers its real rows give.
struct Honest {
    name: String,
    kinds: pb::KindsOffer,
    levels: pb::LevelsOffer,
}

struct Sites {
    sites: Vec<Honest>,
    features: usize,
}

static SITES: LazyLock<Sites> = LazyLock::new(|| {
    let plan = &PLANS[0].0;
    let mut local = read_local_sites(&plan.data, &examples(), &Filesystem).unwrap();
    let kinds_offers: Vec<_> = local.iter().map(|s| s.kinds_offer()).collect();
    let kinds = agree_kinds(&plan.data, &kinds_offers).unwrap();
    let levels: Vec<_> = local
        .iter_mut()
        .map(|s| s.levels_offer(&plan.data, &kinds).unwrap())
        .collect();
    let agreement = agree_vocabulary(&plan.data, &kinds, &levels).unwrap();
    let sites = kinds_offers
        .iter()
        .zip(&levels)
        .map(|(k, l)| Honest {
            name: k.site.clone(),
            kinds: convert::kinds_offer_to_pb(k),
            levels: convert::levels_offer_to_pb(l),
        })
        .collect();
    Sites {
        sites,
        features: agreement.feature_names().len(),
    }
});

/// Who makes a call.
#[derive(Debug, Clone)]
enum Who {
    /// One of the four heart sites.
    Site(usize),
    /// Anyone else (at most 128 bytes, as the gRPC layer allows).
    Name(String),
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        6 => (0usize..4).prop_map(Who::Site),
        1 => prop_oneof![
            Just(String::new()),
            Just("Cleveland".to_string()),
            Just("cleveland ".to_string()),
            Just("site-01".to_string()),
            Just("a\nb".to_string()),
            Just("é".repeat(64)),
            ".{0,40}",
        ]
        .prop_map(|s| Who::Name(tessera_proto::cut(&s, tessera_proto::MAX_SITE_NAME).to_string())),
    ]
}

fn name(who: &Who) -> String {
    match who {
        Who::Site(i) => SITES.sites[*i].name.clone(),
        Who::Name(n) => n.clone(),
    }
}

/// A round number relative to the round the honest sites are in.
#[derive(Debug, Clone)]
enum Round {
    Current,
    Offset(i8),
    Evaluation,
    Any(u32),
}

fn round() -> impl Strategy<Value = Round> {
    prop_oneof![
        4 => Just(Round::Current),
        2 => (-3i8..4).prop_map(Round::Offset),
        1 => Just(Round::Evaluation),
        1 => prop_oneof![Just(0u32), Just(u32::MAX), Just(EVALUATION_ROUND), any::<u32>()]
            .prop_map(Round::Any),
    ]
}

fn special_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(30),
        Just(85),
        Just(104),
        Just(199),
        Just(1000),
        Just(u64::from(u32::MAX)),
        Just(tessera_data::MAX_DECLARED_ROWS),
        Just(tessera_data::MAX_DECLARED_ROWS + 1),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn special_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0f64),
        Just(-0.0),
        Just(0.5),
        Just(1.0),
        Just(-1.0),
        Just(27.64),
        Just(1e308),
        Just(-1e308),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        Just(1e-300),
        Just(f64::from(f32::MAX)),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        any::<f64>(),
    ]
}

/// The values of an update's delta.
#[derive(Debug, Clone, Copy)]
enum Values {
    Zeros,
    Small,
    Nan,
    Infinite,
    Huge,
    Mixed,
}

fn values() -> impl Strategy<Value = Values> {
    prop_oneof![
        3 => Just(Values::Small),
        1 => Just(Values::Zeros),
        1 => Just(Values::Nan),
        1 => Just(Values::Infinite),
        1 => Just(Values::Huge),
        1 => Just(Values::Mixed),
    ]
}

fn delta(global: &ParameterSet, values: Values, salt: u64) -> ParameterSet {
    let mut d = global.zeros_like();
    for (k, v) in d.values_mut().enumerate() {
        let small = ((k as u64 ^ salt) % 17) as f32 * 0.01 - 0.08;
        *v = match values {
            Values::Zeros => 0.0,
            Values::Small => small,
            Values::Nan => f32::NAN,
            Values::Infinite => f32::INFINITY,
            Values::Huge => f32::MAX,
            Values::Mixed => [small, f32::NAN, f32::NEG_INFINITY, -f32::MAX, 1e-45][k % 5],
        };
    }
    d
}

/// A secure-aggregation step with arbitrary contents.
fn step() -> impl Strategy<Value = Option<Step>> {
    let bytes = |max: usize| prop::collection::vec(any::<u8>(), 0..max);
    let share = (0u32..6, bytes(100)).prop_map(|(peer, data)| pb::SecAggShare { peer, data });
    prop::option::of(prop_oneof![
        any::<u32>().prop_map(Step::Poll),
        (bytes(40), bytes(40), bytes(80)).prop_map(|(c, s, sig)| Step::Keys(pb::SecAggKeys {
            c_public: c,
            s_public: s,
            signature: sig,
        })),
        prop::collection::vec(share.clone(), 0..6)
            .prop_map(|shares| Step::Shares(pb::SecAggShares { shares })),
        (
            prop::collection::vec(any::<u32>(), 0..40),
            special_u64(),
            special_f64(),
            special_u64()
        )
            .prop_map(|(values, n_examples, loss, n_steps)| Step::Masked(
                pb::SecAggMasked {
                    values,
                    n_examples,
                    mean_train_loss: loss,
                    n_steps,
                }
            )),
        (
            prop::collection::vec(share.clone(), 0..4),
            prop::collection::vec(share, 0..4)
        )
            .prop_map(|(seed_shares, key_shares)| Step::Unmask(pb::SecAggUnmask {
                seed_shares,
                key_shares,
            })),
        bytes(80).prop_map(|signature| Step::View(pb::SecAggView { signature })),
    ])
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just("not 0".to_string()),
        Just(String::new()),
        ".{0,8}",
    ]
}

/// One call.
#[derive(Debug, Clone)]
enum Op {
    /// An honest site takes the protocol's next step.
    Honest(usize),
    Join {
        who: Who,
        major: u32,
        minor: u32,
        capabilities: Vec<String>,
    },
    OfferKinds {
        who: Who,
        columns: Vec<String>,
        text: Vec<bool>,
    },
    /// The site's real levels offer with other declared row counts.
    OfferRows {
        who: Who,
        train: u64,
        test: u64,
    },
    OfferLevels {
        who: Who,
        levels: Vec<Vec<String>>,
        classes: Vec<String>,
        train_classes: Vec<String>,
        train: u64,
        test: u64,
    },
    OfferStatistics {
        who: Who,
        n: u64,
        mean: Vec<f64>,
        m2: Vec<f64>,
    },
    TaskFor {
        who: Who,
        held: Option<u32>,
    },
    SubmitUpdate {
        who: Who,
        round: Round,
        n_examples: u64,
        n_steps: u64,
        loss: f64,
        values: Values,
        control: bool,
    },
    SubmitEvaluation {
        who: Who,
        round: Round,
        n_examples: u64,
        loss_sum: f64,
        n_correct: u64,
        auc: Option<f64>,
        histogram: Vec<(u32, u64, u64)>,
    },
    Heartbeat {
        who: Who,
        round: Round,
    },
    Withdraw {
        who: Who,
        round: Round,
        reason: String,
        leaving: bool,
    },
    Secure {
        who: Who,
        round: Round,
        step: Option<Step>,
    },
    Advance,
    /// The coordinator restarts from its database.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let capabilities = prop_oneof![
        Just(
            CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
        ),
        prop::collection::vec(
            prop_oneof![
                prop::sample::select(CAPABILITIES).prop_map(str::to_string),
                ".{0,10}"
            ],
            0..12
        ),
    ];
    let columns = prop::collection::vec(
        prop_oneof![
            prop::sample::select(
                &[
                    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang",
                    "oldpeak", "num", "slope", "ca", "thal"
                ][..]
            )
            .prop_map(str::to_string),
            ".{0,8}",
        ],
        0..16,
    );
    prop_oneof![
        12 => (0usize..4).prop_map(Op::Honest),
        1 => (who(), prop_oneof![Just(1u32), any::<u32>()], prop_oneof![Just(6u32), 0u32..10, any::<u32>()], capabilities)
            .prop_map(|(who, major, minor, capabilities)| Op::Join { who, major, minor, capabilities }),
        1 => (who(), columns, prop::collection::vec(any::<bool>(), 0..16))
            .prop_map(|(who, columns, text)| Op::OfferKinds { who, columns, text }),
        1 => (who(), special_u64(), special_u64())
            .prop_map(|(who, train, test)| Op::OfferRows { who, train, test }),
        1 => (
            who(),
            prop::collection::vec(prop::collection::vec(level(), 0..6), 0..14),
            prop::collection::vec(level(), 0..4),
            prop::collection::vec(level(), 0..4),
            special_u64(),
            special_u64(),
        )
            .prop_map(|(who, levels, classes, train_classes, train, test)| Op::OfferLevels {
                who, levels, classes, train_classes, train, test,
            }),
        1 => (
            who(),
            special_u64(),
            prop_oneof![
                3 => Just(None),
                1 => prop::collection::vec(special_f64(), 0..16).prop_map(Some),
            ],
            prop_oneof![
                3 => Just(None),
                1 => prop::collection::vec(special_f64(), 0..16).prop_map(Some),
            ],
            special_f64(),
        )
            .prop_map(|(who, n, mean, m2, fill)| {
                let features = SITES.features;
                Op::OfferStatistics {
                    who,
                    n,
                    mean: mean.unwrap_or_else(|| vec![fill.clamp(-1e30, 1e30); features]),
                    m2: m2.unwrap_or_else(|| vec![fill.abs().min(1e30); features]),
                }
            }),
        2 => (who(), prop::option::of(prop_oneof![0u32..20, any::<u32>()]))
            .prop_map(|(who, held)| Op::TaskFor { who, held }),
        3 => (who(), round(), special_u64(), special_u64(), special_f64(), values(), any::<bool>())
            .prop_map(|(who, round, n_examples, n_steps, loss, values, control)| Op::SubmitUpdate {
                who, round, n_examples, n_steps, loss, values, control,
            }),
        2 => (
            who(),
            round(),
            special_u64(),
            special_f64(),
            special_u64(),
            prop::option::of(special_f64()),
            prop::collection::vec((prop_oneof![0u32..1100, any::<u32>()], special_u64(), special_u64()), 0..5),
        )
            .prop_map(|(who, round, n_examples, loss_sum, n_correct, auc, histogram)| Op::SubmitEvaluation {
                who, round, n_examples, loss_sum, n_correct, auc, histogram,
            }),
        1 => (who(), round()).prop_map(|(who, round)| Op::Heartbeat { who, round }),
        1 => (who(), round(), ".{0,40}", any::<bool>())
            .prop_map(|(who, round, reason, leaving)| Op::Withdraw { who, round, reason, leaving }),
        2 => (who(), round(), step()).prop_map(|(who, round, step)| Op::Secure { who, round, step }),
        2 => Just(Op::Advance),
        1 => Just(Op::Reopen),
    ]
}

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
                    };
                    let _ = f.submit_evaluation(name, &report);
                }
                Ok(TaskView::Wait | TaskView::Finished) | Err(_) => {}
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
    let store = Store::open(&db.0).unwrap();
    match Federation::open(plan.clone(), text, store, liveness) {
        Ok(f) => f,
        Err(e) => panic!("the federation does not open from its database: {e}"),
    }
}

/// Runs `ops` against a new federation of plan variant `plan`.
fn check(plan: usize, liveness: Duration, ops: &[Op]) -> RunReport {
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

fn liveness() -> impl Strategy<Value = Duration> {
    prop_oneof![
        3 => Just(Duration::from_secs(3600)),
        1 => Just(Duration::ZERO),
        1 => Just(Duration::from_millis(1)),
    ]
}

/// Every variant opens, and on the variants whose rounds need no secure
/// aggregation, honest sites alone finish rounds.
#[test]
fn honest_sites_finish_rounds() {
    for (k, (plan, _)) in PLANS.iter().enumerate() {
        let ops: Vec<Op> = (0..400).map(|i| Op::Honest(i % 4)).collect();
        let rounds = check(k, Duration::from_secs(3600), &ops).rounds.len();
        let secure = plan.secure_aggregation.enabled
            || plan.privacy.site_metrics == tessera_privacy::SiteMetrics::AggregateOnly;
        if !secure {
            assert!(rounds >= 2, "variant {k}: {rounds} rounds");
        }
    }
}

/// A case that runs this long is taken for a hang: its input is printed and
/// the process aborts (proptest cannot stop a case that never returns).
const HANG: Duration = Duration::from_secs(60);

/// The case running now, when it began and its input.
static RUNNING: Mutex<Option<(Instant, String)>> = Mutex::new(None);

/// Watches the running case until it returns.
struct Watch;

impl Watch {
    fn start(input: String) -> Watch {
        static WATCHDOG: Once = Once::new();
        WATCHDOG.call_once(|| {
            std::thread::spawn(|| {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some((began, input)) = running.as_ref()
                        && began.elapsed() > HANG
                    {
                        eprintln!("a case has run for more than {HANG:?}: {input}");
                        std::process::abort();
                    }
                }
            });
        });
        *RUNNING.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), input));
        Watch
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

proptest! {
    #![proptest_config(config())]

    /// Random sequences of honest and hostile calls.
    #[test]
    fn random_calls(
        plan in 0..PLANS.len(),
        liveness in liveness(),
        warm_up in prop_oneof![1 => Just(0usize), 3 => 12usize..80],
        ops in prop::collection::vec(op(), 1..120),
    ) {
        // Mostly, the honest sites first agree and train a while.
        let ops: Vec<Op> = (0..warm_up).map(|i| Op::Honest(i % 4)).chain(ops).collect();
        let _watch = Watch::start(format!("plan {plan}, liveness {liveness:?}, ops {ops:?}"));
        check(plan, liveness, &ops);
    }
}
