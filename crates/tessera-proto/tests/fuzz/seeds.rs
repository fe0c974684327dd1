//! The seeds: encodings of real messages of every kind, and the models
//! they carry.

use std::sync::LazyLock;

use prost::Message;
use tessera_core::{ParameterSet, SeededRng, Tensor};
use tessera_proto::pb::{self, update_part::Part};
use tessera_proto::{CAPABILITIES, chunks, encode_parameters, layout_of};

/// The model of the bundled heart plan (logistic regression on 13
/// features), with values that are not all alike.
pub(crate) static MODEL: LazyLock<ParameterSet> = LazyLock::new(|| {
    let mut set = ParameterSet::new();
    let w: Vec<f32> = (0..13).map(|k| (k as f32 - 6.0) * 0.37).collect();
    set.push("w", Tensor::new(vec![13, 1], w).unwrap()).unwrap();
    set.push("b", Tensor::new(vec![1], vec![0.25]).unwrap())
        .unwrap();
    set
});

/// A two-layer model, for chunks that span tensors.
pub(crate) static MLP: LazyLock<ParameterSet> = LazyLock::new(|| {
    let mut set = ParameterSet::new();
    let mut k = 0.0f32;
    for (name, shape) in [
        ("l0.w", vec![13, 8]),
        ("l0.b", vec![8]),
        ("l1.w", vec![8, 3]),
        ("l1.b", vec![3]),
    ] {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                k += 0.125;
                k.sin()
            })
            .collect();
        set.push(name, Tensor::new(shape, data).unwrap()).unwrap();
    }
    set
});

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

const COLUMNS: &[&str] = &[
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "num",
];

fn kinds_offer() -> pb::KindsOffer {
    pb::KindsOffer {
        columns: strings(COLUMNS),
        text: vec![false; COLUMNS.len()],
    }
}

fn column_kinds() -> pb::ColumnKinds {
    let mut categorical = vec![false; COLUMNS.len()];
    categorical[2] = true;
    categorical[6] = true;
    categorical[10] = true;
    pb::ColumnKinds {
        columns: strings(COLUMNS),
        categorical,
    }
}

fn levels_offer() -> pb::LevelsOffer {
    let levels = COLUMNS
        .iter()
        .map(|c| pb::ColumnLevels {
            levels: match *c {
                "cp" => strings(&["1", "2", "3", "4"]),
                "restecg" => strings(&["0", "1", "2"]),
                "num" => strings(&["0", "1", "2", "3", "4"]),
                _ => Vec::new(),
            },
        })
        .collect();
    pb::LevelsOffer {
        levels,
        classes: strings(&["0", "not 0"]),
        train_classes: strings(&["0", "not 0"]),
        train_rows: 199,
        test_rows: 104,
    }
}

fn agreement() -> pb::Agreement {
    let encodings = COLUMNS
        .iter()
        .map(|c| match *c {
            "cp" => pb::Encoding {
                one_hot: true,
                levels: strings(&["1", "2", "3", "4"]),
                drop_first: true,
            },
            "restecg" => pb::Encoding {
                one_hot: true,
                levels: strings(&["0", "1", "2"]),
                drop_first: true,
            },
            _ => pb::Encoding::default(),
        })
        .collect();
    pb::Agreement {
        columns: strings(&COLUMNS[..10]),
        encodings,
        classes: strings(&["0", "not 0"]),
        initial_model_sha256: "ab".repeat(32),
        task_classes: Vec::new(),
    }
}

fn statistics() -> pb::FeatureStatistics {
    pb::FeatureStatistics {
        n: 199,
        mean: (0..13).map(|k| f64::from(k) * 1.5).collect(),
        m2: (0..13).map(|k| f64::from(k) * 10.0 + 0.5).collect(),
    }
}

fn evaluation() -> pb::EvaluationReport {
    pb::EvaluationReport {
        site: "cleveland".into(),
        round: 3,
        n_examples: 104,
        loss_sum: 51.2,
        n_correct: 80,
        auc: Some(0.87),
        histogram: vec![
            pb::HistogramBin {
                bin: 3,
                positives: 10,
                negatives: 40,
            },
            pb::HistogramBin {
                bin: 700,
                positives: 44,
                negatives: 10,
            },
        ],
        sites: Vec::new(),
        ..Default::default()
    }
}

/// An aggregator's evaluation naming its two sites (protocol 1.9).
fn aggregator_evaluation() -> pb::EvaluationReport {
    let mut a = evaluation();
    a.n_examples = 50;
    a.loss_sum = 20.0;
    a.n_correct = 40;
    a.histogram.truncate(1);
    let mut b = evaluation();
    b.n_examples = 54;
    b.loss_sum = 31.2;
    b.n_correct = 40;
    b.histogram.remove(0);
    b.site = "hungarian".into();
    pb::EvaluationReport {
        site: "east".into(),
        sites: vec![a, b],
        ..evaluation()
    }
}

pub(crate) fn update_header(set: &ParameterSet, codec: &str) -> pb::UpdateHeader {
    pb::UpdateHeader {
        site: "hungarian".into(),
        round: 2,
        n_examples: 172,
        has_control: false,
        n_steps: 100,
        mean_train_loss: 0.61,
        layout: layout_of(set),
        codec: codec.into(),
        start_loss: None,
        train_seconds: Some(1.5),
        test_rows: None,
        quality: None,
    }
}

fn task_header() -> pb::TaskHeader {
    pb::TaskHeader {
        round: 4,
        kind: pb::TaskKind::Fit as i32,
        layout: layout_of(&MODEL),
        proximal_mu: Some(0.01),
        has_server_control: false,
        deadline_micros: 1_700_000_000_000_000,
        previous_update_counted: true,
        previous_round: 3,
        upload_codec: "topk:0.5+q8".into(),
        model_round: 3,
        model_delivery: pb::ModelDelivery::Change as i32,
        model_codec: "q8".into(),
        instructions: Some(pb::Instructions {
            kind: Some(pb::instructions::Kind::Proximal(pb::Proximal { mu: 0.01 })),
        }),
        analytics: None,
        regional_model: false,
        rollout: None,
    }
}

/// A canary task of a rollout.
fn canary_header() -> pb::TaskHeader {
    pb::TaskHeader {
        kind: pb::TaskKind::Canary as i32,
        rollout: Some(pb::RolloutTask {
            name: "readmission".into(),
            version: 3,
            bytes: 4096,
            production_version: 2,
            production_bytes: 4000,
            decision: String::new(),
        }),
        ..Default::default()
    }
}

/// The compressed encodings of a model's values under several codecs.
fn compressed(set: &ParameterSet) -> Vec<Vec<u8>> {
    [
        "q8",
        "q4",
        "q2",
        "fp16",
        "topk:0.5+q8",
        "randk:0.25",
        "topk:0.3",
    ]
    .iter()
    .map(|c| {
        let codec: tessera_compress::Codec = c.parse().unwrap();
        tessera_compress::encode_set(&codec, set, None, &mut SeededRng::new(1)).0
    })
    .collect()
}

fn sec_agg_requests() -> Vec<pb::SecAggRequest> {
    use pb::sec_agg_request::Step;
    let steps = vec![
        Step::Poll(1),
        Step::Keys(pb::SecAggKeys {
            c_public: vec![7; 32],
            s_public: vec![9; 32],
            signature: vec![1; 64],
        }),
        Step::Shares(pb::SecAggShares {
            shares: (0..4)
                .map(|p| pb::SecAggShare {
                    peer: p,
                    data: vec![p as u8; 80],
                })
                .collect(),
        }),
        Step::Masked(pb::SecAggMasked {
            values: (0..17).map(|k| k * 0x0101_0101).collect(),
            n_examples: 0,
            mean_train_loss: 0.0,
            n_steps: 0,
        }),
        Step::Unmask(pb::SecAggUnmask {
            seed_shares: vec![pb::SecAggShare {
                peer: 1,
                data: vec![3; 40],
            }],
            key_shares: vec![pb::SecAggShare {
                peer: 2,
                data: vec![4; 40],
            }],
        }),
        Step::View(pb::SecAggView {
            signature: vec![5; 64],
        }),
        Step::Buffer(pb::SecAggBufferJoin { base: 3 }),
        Step::HeKeyShare(pb::HeKeyShare {
            share: vec![0x0a, 4, 1, 2, 3, 4],
            signature: vec![5; 64],
        }),
        Step::HeCommitment(pb::HeCommitment {
            length: 17,
            digest: vec![6; 32],
            signature: vec![5; 64],
        }),
        Step::HeReveal(pb::HeReveal {
            list_signature: vec![5; 64],
            ciphertexts: vec![vec![7; 80]; 2],
            first: 0,
        }),
        Step::HeAnswer(pb::HeAnswer {
            sum_digest: vec![8; 32],
            shares: vec![vec![9; 80]],
            signature: vec![5; 64],
            first: 64,
        }),
        Step::HeFetch(pb::HeFetch { from: 2, first: 64 }),
        Step::HeHolder(true),
        Step::HeKeyCommitment(pb::HeKeyCommitment {
            digest: vec![6; 32],
            signature: vec![5; 64],
        }),
    ];
    steps
        .into_iter()
        .map(|step| pb::SecAggRequest {
            site: "va".into(),
            round: 5,
            step: Some(step),
        })
        .collect()
}

fn sec_agg_replies() -> Vec<pb::SecAggReply> {
    use pb::sec_agg_reply::State;
    [
        State::Wait(true),
        State::Params(pb::SecAggParams {
            id: 2,
            participants: vec![0, 1, 2, 3],
            neighbours: 3,
            threshold: 2,
            graph_seed: vec![8; 32],
            dimension: 17,
            range: 10.0,
            sites: strings(&["cleveland", "hungarian", "switzerland", "va"]),
            certificates: vec![vec![0x30, 0x82, 1, 0]; 4],
            key_holders: vec![0, 4],
            key_holder_sites: strings(&["cleveland", "oslo"]),
            key_holder_certificates: vec![vec![0x30, 0x82, 1, 0]; 2],
        }),
        State::Keys(pb::SecAggNeighbourKeys {
            peers: vec![0, 1],
            keys: vec![
                pb::SecAggKeys {
                    c_public: vec![1; 32],
                    s_public: vec![2; 32],
                    signature: vec![3; 64],
                };
                2
            ],
        }),
        State::Unmask(pb::SecAggUnmaskRequest {
            survivors: vec![0, 1, 3],
            dropped: vec![2],
        }),
        State::Done(true),
        State::Views(pb::SecAggViews {
            views: vec![pb::SecAggSignedView {
                id: 1,
                signature: vec![6; 64],
            }],
        }),
        State::Seat(pb::SecAggSeat {
            round: 2,
            staleness: 1,
        }),
        State::HeKeys(pb::HeKeyShares {
            shares: vec![pb::HeKeyShareFrom {
                from: 4,
                share: vec![0x0a, 1, 0],
                signature: vec![5; 64],
            }],
            commitments: vec![pb::HeKeyCommitmentFrom {
                from: 4,
                digest: vec![6; 32],
                signature: vec![5; 64],
            }],
        }),
        State::HeList(pb::HeList {
            commitments: vec![pb::HeCommitmentFrom {
                from: 1,
                length: 17,
                digest: vec![6; 32],
                signature: vec![5; 64],
            }],
        }),
        State::HeContribution(pb::HeContribution {
            from: 1,
            list_signature: vec![5; 64],
            ciphertexts: vec![vec![7; 80]],
            first: 0,
            total: 1,
            second_polynomials: vec![vec![8; 40]],
            first_digests: vec![vec![9; 32]],
        }),
        State::HeTask(pb::HeHolderTask {
            round: 5,
            stage: 3,
            key_commitments: vec![pb::HeKeyCommitmentFrom {
                from: 4,
                digest: vec![6; 32],
                signature: vec![5; 64],
            }],
        }),
    ]
    .into_iter()
    .map(|state| pb::SecAggReply { state: Some(state) })
    .collect()
}

/// Encodings of real messages of every kind.
pub(crate) static SEEDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let caps: Vec<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
    let mut out: Vec<Vec<u8>> = vec![
        pb::Hello {
            major: 1,
            minor: 6,
            capabilities: caps.clone(),
            site: "cleveland".into(),
            canary: true,
            serving: vec![pb::ServedModel {
                name: "readmission".into(),
                version: 2,
            }],
        }
        .encode_to_vec(),
        pb::Welcome {
            major: 1,
            minor: 6,
            capabilities: caps.clone(),
            run_id: "run-0123456789abcdef".into(),
            plan_toml: "name = \"fed-heart-disease\"\nseed = 42\n[model]\nkind = \"logistic\"\n"
                .into(),
            heartbeat_millis: 5000,
            rollout: Some(pb::ServedModel {
                name: "readmission".into(),
                version: 3,
            }),
        }
        .encode_to_vec(),
        pb::AgreeRequest {
            site: "cleveland".into(),
            offer: Some(pb::agree_request::Offer::Kinds(kinds_offer())),
        }
        .encode_to_vec(),
        pb::AgreeRequest {
            site: "cleveland".into(),
            offer: Some(pb::agree_request::Offer::Levels(levels_offer())),
        }
        .encode_to_vec(),
        pb::AgreeRequest {
            site: "cleveland".into(),
            offer: Some(pb::agree_request::Offer::Statistics(statistics())),
        }
        .encode_to_vec(),
        pb::AgreeRequest {
            site: "cleveland".into(),
            offer: Some(pb::agree_request::Offer::External(
                tessera_proto::convert::external_offer_to_pb(212, 91, &MLP),
            )),
        }
        .encode_to_vec(),
        pb::AgreeReply {
            result: Some(pb::agree_reply::Result::External(
                tessera_proto::convert::external_agreement_to_pb("cleveland", &MLP),
            )),
        }
        .encode_to_vec(),
        pb::AgreeReply {
            result: Some(pb::agree_reply::Result::Kinds(column_kinds())),
        }
        .encode_to_vec(),
        pb::AgreeReply {
            result: Some(pb::agree_reply::Result::Agreement(agreement())),
        }
        .encode_to_vec(),
        pb::AgreeReply {
            result: Some(pb::agree_reply::Result::Statistics(statistics())),
        }
        .encode_to_vec(),
        pb::TaskRequest {
            site: "va".into(),
            held_round: Some(3),
        }
        .encode_to_vec(),
        pb::Task {
            part: Some(pb::task::Part::Header(task_header())),
        }
        .encode_to_vec(),
        pb::Task {
            part: Some(pb::task::Part::Finished(pb::Finished {
                reason: "every round is done".into(),
                serve: Some(pb::ServedModel {
                    name: "readmission".into(),
                    version: 2,
                }),
            })),
        }
        .encode_to_vec(),
        pb::Task {
            part: Some(pb::task::Part::Header(canary_header())),
        }
        .encode_to_vec(),
        pb::UpdatePart {
            part: Some(Part::Header(update_header(&MODEL, ""))),
        }
        .encode_to_vec(),
        pb::UpdatePart {
            part: Some(Part::Header(update_header(&MLP, "q8"))),
        }
        .encode_to_vec(),
        pb::UpdateReply {
            accepted: false,
            reason: "round 2: the update claims 0 training examples".into(),
        }
        .encode_to_vec(),
        evaluation().encode_to_vec(),
        aggregator_evaluation().encode_to_vec(),
        pb::HeartbeatRequest {
            site: "switzerland".into(),
            round: 7,
        }
        .encode_to_vec(),
        pb::HeartbeatReply { keep_going: true }.encode_to_vec(),
        pb::WithdrawRequest {
            site: "switzerland".into(),
            round: 7,
            reason: "out of memory".into(),
            leaving: true,
        }
        .encode_to_vec(),
        pb::WithdrawReply { withdrawn: true }.encode_to_vec(),
        pb::PeerHello {
            major: 1,
            minor: 6,
            capabilities: caps.clone(),
            site: "site4".into(),
            plan_digest: vec![0xab; 32],
            sites_digest: vec![0xcd; 32],
        }
        .encode_to_vec(),
        pb::PeerWelcome {
            major: 1,
            minor: 6,
            capabilities: caps,
            site: "site5".into(),
            trace_nonce: vec![0x5a; 16],
        }
        .encode_to_vec(),
        pb::PeerOfferRequest {
            site: "site4".into(),
            step: 2,
        }
        .encode_to_vec(),
        pb::PeerOffer {
            offer: Some(pb::peer_offer::Offer::Levels(levels_offer())),
        }
        .encode_to_vec(),
        pb::PeerModelRequest {
            site: "site4".into(),
            round: 9,
            step: 1,
        }
        .encode_to_vec(),
        pb::PeerModelPart {
            part: Some(pb::peer_model_part::Part::Header(pb::PeerModelHeader {
                round: 9,
                step: 1,
                degree: 4,
                layout: layout_of(&MLP),
            })),
        }
        .encode_to_vec(),
        encode_parameters(&MODEL),
        encode_parameters(&MLP),
    ];
    for set in [&*MODEL, &*MLP] {
        for chunk in chunks(0, set, 64) {
            out.push(
                pb::UpdatePart {
                    part: Some(Part::Chunk(chunk.clone())),
                }
                .encode_to_vec(),
            );
            out.push(
                pb::PeerModelPart {
                    part: Some(pb::peer_model_part::Part::Chunk(chunk)),
                }
                .encode_to_vec(),
            );
        }
        for bytes in compressed(set) {
            out.push(
                pb::UpdatePart {
                    part: Some(Part::Compressed(bytes.clone())),
                }
                .encode_to_vec(),
            );
            out.push(
                pb::Task {
                    part: Some(pb::task::Part::Compressed(bytes)),
                }
                .encode_to_vec(),
            );
        }
    }
    out.extend(sec_agg_requests().iter().map(Message::encode_to_vec));
    out.extend(sec_agg_replies().iter().map(Message::encode_to_vec));
    out
});
