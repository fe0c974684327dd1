//! The calls a case makes, as proptest strategies: who calls, for which
//! round, with which counts, values and secure-aggregation steps.

use proptest::prelude::*;
use tessera_core::ParameterSet;
use tessera_proto::CAPABILITIES;
use tessera_proto::pb::{self, sec_agg_request::Step};
use tessera_secagg::EVALUATION_ROUND;

use crate::SITES;

/// Who makes a call.
#[derive(Debug, Clone)]
pub(crate) enum Who {
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

pub(crate) fn name(who: &Who) -> String {
    match who {
        Who::Site(i) => SITES.sites[*i].name.clone(),
        Who::Name(n) => n.clone(),
    }
}

/// A round number relative to the round the honest sites are in.
#[derive(Debug, Clone)]
pub(crate) enum Round {
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
pub(crate) enum Values {
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

pub(crate) fn delta(global: &ParameterSet, values: Values, salt: u64) -> ParameterSet {
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
pub(crate) enum Op {
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
        /// Sites below, as an aggregator's evaluation names them (protocol
        /// 1.9): name, rows, loss, right predictions.
        sites: Vec<(String, u64, f64, u64)>,
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

pub(crate) fn op() -> impl Strategy<Value = Op> {
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
            prop::collection::vec(("site[0-9]|[a-z]{0,3}|.{0,4}", special_u64(), special_f64(), special_u64()), 0..4),
        )
            .prop_map(|(who, round, n_examples, loss_sum, n_correct, auc, histogram, sites)| Op::SubmitEvaluation {
                who, round, n_examples, loss_sum, n_correct, auc, histogram, sites,
            }),
        1 => (who(), round()).prop_map(|(who, round)| Op::Heartbeat { who, round }),
        1 => (who(), round(), ".{0,40}", any::<bool>())
            .prop_map(|(who, round, reason, leaving)| Op::Withdraw { who, round, reason, leaving }),
        2 => (who(), round(), step()).prop_map(|(who, round, step)| Op::Secure { who, round, step }),
        2 => Just(Op::Advance),
        1 => Just(Op::Reopen),
    ]
}
