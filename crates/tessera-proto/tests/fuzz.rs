//! Fuzz harness for protobuf decoding: bytes from a peer decoded into every
//! message of `tessera.v1`, then the checked conversions of
//! `tessera_proto::convert`, version negotiation, the [`Assembler`] that
//! rebuilds chunked tensors, stored parameters and compressed deltas.
//!
//! Hostile inputs are made by mutating the encodings of real messages (bit
//! flips, byte edits, varints and lengths replaced with extreme ones, pieces
//! spliced from other messages, chunks dropped, repeated and reordered) and
//! from random bytes. Each case asserts only that nothing panics, and that
//! an error is one line.
//!
//! cargo-fuzz needs a nightly toolchain, so this is proptest-driven. By
//! default each test runs 5000 cases (about a second in a debug build); run
//! longer with `PROPTEST_CASES` (which applies to each test), e.g. for about
//! three minutes:
//!
//! ```text
//! PROPTEST_CASES=1000000 cargo test -p tessera-proto --test fuzz
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use prost::Message;
use tessera_core::{ParameterSet, SeededRng, Tensor};
use tessera_proto::pb::{self, update_part::Part};
use tessera_proto::{
    Assembler, CAPABILITIES, Limits, chunks, convert, decode_parameters, encode_parameters,
    layout_of, negotiate, required_capabilities,
};

/// Cases per test when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 5000;

/// proptest's default configuration (which reads `PROPTEST_CASES`), with
/// other cases than its 256 when the variable is not set.
fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    config
}

fn one_line(e: &dyn std::fmt::Display) {
    let text = e.to_string();
    assert!(
        !text.contains('\n') && !text.contains('\r'),
        "error is not one line: {text:?}"
    );
}

/// The model of the bundled heart plan (logistic regression on 13
/// features), with values that are not all alike.
static MODEL: LazyLock<ParameterSet> = LazyLock::new(|| {
    let mut set = ParameterSet::new();
    let w: Vec<f32> = (0..13).map(|k| (k as f32 - 6.0) * 0.37).collect();
    set.push("w", Tensor::new(vec![13, 1], w).unwrap()).unwrap();
    set.push("b", Tensor::new(vec![1], vec![0.25]).unwrap())
        .unwrap();
    set
});

/// A two-layer model, for chunks that span tensors.
static MLP: LazyLock<ParameterSet> = LazyLock::new(|| {
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
    }
}

fn update_header(set: &ParameterSet, codec: &str) -> pb::UpdateHeader {
    pb::UpdateHeader {
        site: "hungarian".into(),
        round: 2,
        n_examples: 172,
        has_control: false,
        n_steps: 100,
        mean_train_loss: 0.61,
        layout: layout_of(set),
        codec: codec.into(),
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
    ]
    .into_iter()
    .map(|state| pb::SecAggReply { state: Some(state) })
    .collect()
}

/// Encodings of real messages of every kind.
static SEEDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let caps: Vec<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
    let mut out: Vec<Vec<u8>> = vec![
        pb::Hello {
            major: 1,
            minor: 6,
            capabilities: caps.clone(),
            site: "cleveland".into(),
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
            })),
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

/// Replacement varints and pieces: extreme lengths, numbers and tags.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

static PIECES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let mut p: Vec<Vec<u8>> = [
        0u64,
        1,
        0x7f,
        0x80,
        0xffff,
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
        i64::MAX as u64,
        u64::MAX,
        1 << 31,
        1 << 40,
    ]
    .into_iter()
    .map(varint)
    .collect();
    // An over-long varint, a truncated one, and tags of unknown and
    // deprecated wire types (groups), a huge field number.
    p.push(vec![0xff; 11]);
    p.push(vec![0x80]);
    p.push(vec![0x0b]);
    p.push(vec![0x0c]);
    p.push(vec![0x0f]);
    p.push(varint((u64::from(u32::MAX) << 3) | 2));
    p.push(varint(((1 << 29) - 1) << 3));
    // NaN, infinities and huge f64/f32 values.
    p.push(f64::NAN.to_le_bytes().to_vec());
    p.push(f64::INFINITY.to_le_bytes().to_vec());
    p.push(f64::MAX.to_le_bytes().to_vec());
    p.push((-1.0f64).to_le_bytes().to_vec());
    p.push(f32::NAN.to_le_bytes().to_vec());
    p.push(f32::INFINITY.to_le_bytes().to_vec());
    // Non-UTF-8 string bytes.
    p.push(vec![0xff, 0xfe, 0xc3]);
    p.push(vec![0xed, 0xa0, 0x80]);
    p
});

/// One edit of an encoding.
#[derive(Debug, Clone)]
enum Edit {
    /// Flip one bit.
    Flip(Index, u8),
    /// Overwrite one byte.
    Set(Index, u8),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Delete up to this many bytes.
    Delete(Index, usize),
    /// Replace the bytes at a position with a piece.
    Overwrite(Index, Index),
    /// Insert a piece.
    InsertPiece(Index, Index),
    /// Insert a stretch of another seed.
    Splice(Index, Index, Index, usize),
    /// Repeat a stretch of this one.
    Repeat(Index, usize, usize),
    /// Cut it short.
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => (any::<Index>(), 1usize..32).prop_map(|(i, n)| Edit::Delete(i, n)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(i, p)| Edit::Overwrite(i, p)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(i, p)| Edit::InsertPiece(i, p)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>(), 1usize..64)
            .prop_map(|(s, a, b, n)| Edit::Splice(s, a, b, n)),
        1 => (any::<Index>(), 1usize..32, 1usize..20).prop_map(|(i, n, k)| Edit::Repeat(i, n, k)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    let len = bytes.len();
    match edit {
        Edit::Flip(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
        Edit::Set(i, b) if len > 0 => bytes[i.index(len)] = *b,
        Edit::Insert(i, b) => {
            let p = i.index(len + 1);
            bytes.splice(p..p, b.iter().copied());
        }
        Edit::Delete(i, n) if len > 0 => {
            let p = i.index(len);
            bytes.drain(p..(p + n).min(len));
        }
        Edit::Overwrite(i, p) => {
            let piece = &PIECES[p.index(PIECES.len())];
            let at = i.index(len + 1);
            let end = (at + piece.len()).min(len);
            bytes.splice(at..end, piece.iter().copied());
        }
        Edit::InsertPiece(i, p) => {
            let at = i.index(len + 1);
            bytes.splice(at..at, PIECES[p.index(PIECES.len())].iter().copied());
        }
        Edit::Splice(s, a, b, n) => {
            let other = &SEEDS[s.index(SEEDS.len())];
            if !other.is_empty() {
                let from = a.index(other.len());
                let piece = &other[from..(from + n).min(other.len())];
                let at = b.index(len + 1);
                bytes.splice(at..at, piece.iter().copied());
            }
        }
        Edit::Repeat(i, n, k) if len > 0 => {
            let from = i.index(len);
            let piece = bytes[from..(from + n).min(len)].repeat(*k);
            bytes.splice(from..from, piece);
        }
        Edit::Truncate(i) => bytes.truncate(i.index(len + 1)),
        _ => {}
    }
}

fn codec(text: &str) {
    match text.parse::<tessera_compress::Codec>() {
        Ok(codec) => {
            for n in [0, 1, 14, 1 << 20] {
                let _ = codec.max_encoded_len(n);
                let _ = codec.kept(n);
            }
        }
        Err(e) => one_line(&e),
    }
}

fn layout(layout: &[pb::TensorSpec]) {
    match Assembler::new(layout, Limits::default()) {
        Ok(assembler) => {
            for set in [&*MODEL, &*MLP] {
                if let Err(e) = assembler.expect_layout_of(set) {
                    one_line(&e);
                }
            }
            let _ = assembler.is_complete();
            if let Err(e) = assembler.finish() {
                one_line(&e);
            }
        }
        Err(e) => one_line(&e),
    }
}

fn compressed_delta(bytes: &[u8]) {
    for set in [&*MODEL, &*MLP] {
        if let Err(e) = tessera_compress::decode_set(bytes, set) {
            one_line(&e);
        }
    }
}

fn chunk_into_model(chunk: &pb::TensorChunk) {
    for set in [&*MODEL, &*MLP] {
        let mut assembler = Assembler::new(&layout_of(set), Limits::default()).unwrap();
        if let Err(e) = assembler.push(chunk) {
            one_line(&e);
        }
    }
}

fn kinds(k: pb::KindsOffer) {
    if let Err(e) = convert::kinds_offer_from_pb("s", k) {
        one_line(&e);
    }
}

fn levels(l: pb::LevelsOffer) {
    let offer = convert::levels_offer_from_pb("s", l);
    let _ = convert::levels_offer_to_pb(&offer);
}

fn stats(s: pb::FeatureStatistics) {
    for n in [s.mean.len(), s.m2.len(), 0, 13] {
        match convert::statistics_from_pb(s.clone(), n) {
            Ok(stats) => {
                let _ = convert::statistics_to_pb(&stats);
            }
            Err(e) => one_line(&e),
        }
    }
}

fn agreement_of(a: pb::Agreement) {
    match convert::agreement_from_pb(a) {
        Ok(agreement) => {
            let _ = agreement.feature_names();
            let _ = convert::agreement_to_pb(&agreement);
        }
        Err(e) => one_line(&e),
    }
}

fn column_kinds_of(k: pb::ColumnKinds) {
    match convert::kinds_from_pb(k) {
        Ok(kinds) => {
            let _ = convert::kinds_to_pb(&kinds);
        }
        Err(e) => one_line(&e),
    }
}

fn offer(o: Option<pb::agree_request::Offer>) {
    match o {
        Some(pb::agree_request::Offer::Kinds(k)) => kinds(k),
        Some(pb::agree_request::Offer::Levels(l)) => levels(l),
        Some(pb::agree_request::Offer::Statistics(s)) => stats(s),
        None => {}
    }
}

fn update_header_of(header: &pb::UpdateHeader) {
    if let Err(e) = convert::fit_stats_from_pb(header) {
        one_line(&e);
    }
    layout(&header.layout);
    codec(&header.codec);
    let _ = tessera_proto::shown(&header.site, tessera_proto::MAX_SITE_NAME);
}

/// Decodes `bytes` as every message, and checks what decodes as the
/// receiving side would.
fn check(bytes: &[u8]) {
    macro_rules! decode_only {
        ($($t:ident),* $(,)?) => {
            $(
                match pb::$t::decode(bytes) {
                    Ok(m) => {
                        let again = m.encode_to_vec();
                        assert_eq!(again.len(), m.encoded_len());
                        let _ = format!("{m:?}");
                    }
                    Err(e) => one_line(&e),
                }
            )*
        };
    }
    decode_only!(
        TensorSpec,
        TensorChunk,
        StoredParameters,
        Hello,
        Welcome,
        KindsOffer,
        ColumnKinds,
        ColumnLevels,
        LevelsOffer,
        Encoding,
        Agreement,
        FeatureStatistics,
        AgreeRequest,
        AgreeReply,
        TaskRequest,
        TaskHeader,
        Finished,
        Task,
        UpdateHeader,
        UpdatePart,
        UpdateReply,
        HistogramBin,
        EvaluationReport,
        EvaluationReply,
        HeartbeatRequest,
        HeartbeatReply,
        WithdrawRequest,
        WithdrawReply,
        SecAggShare,
        SecAggKeys,
        SecAggMasked,
        SecAggUnmask,
        SecAggRequest,
        SecAggView,
        SecAggSignedView,
        SecAggViews,
        SecAggShares,
        SecAggParams,
        SecAggNeighbourKeys,
        SecAggUnmaskRequest,
        SecAggReply,
        PeerHello,
        PeerWelcome,
        PeerOfferRequest,
        PeerOffer,
        PeerModelRequest,
        PeerModelHeader,
        PeerModelPart,
    );
    // The frozen 1.0 schema, which current peers still read.
    if let Ok(m) = tessera_proto::pb_v1_0::Hello::decode(bytes) {
        let _ = m.encode_to_vec();
    }

    // What the receiving side does with what decodes.
    if let Ok(h) = pb::Hello::decode(bytes) {
        for strategy in ["fedavg", "scaffold", &h.site] {
            match negotiate(
                CAPABILITIES,
                h.major,
                h.minor,
                &h.capabilities,
                &required_capabilities(strategy),
            ) {
                Ok(n) => {
                    let _ = n.has("scaffold");
                }
                Err(e) => one_line(&e),
            }
        }
        let _ = tessera_proto::shown(&h.site, tessera_proto::MAX_SITE_NAME);
    }
    if let Ok(w) = pb::Welcome::decode(bytes) {
        let _ = negotiate(CAPABILITIES, w.major, w.minor, &w.capabilities, &[]);
    }
    if let Ok(r) = pb::AgreeRequest::decode(bytes) {
        offer(r.offer);
    }
    if let Ok(r) = pb::AgreeReply::decode(bytes) {
        match r.result {
            Some(pb::agree_reply::Result::Kinds(k)) => column_kinds_of(k),
            Some(pb::agree_reply::Result::Agreement(a)) => agreement_of(a),
            Some(pb::agree_reply::Result::Statistics(s)) => stats(s),
            None => {}
        }
    }
    if let Ok(o) = pb::PeerOffer::decode(bytes) {
        match o.offer {
            Some(pb::peer_offer::Offer::Kinds(k)) => kinds(k),
            Some(pb::peer_offer::Offer::Levels(l)) => levels(l),
            Some(pb::peer_offer::Offer::Statistics(s)) => stats(s),
            None => {}
        }
    }
    if let Ok(k) = pb::KindsOffer::decode(bytes) {
        kinds(k);
    }
    if let Ok(k) = pb::ColumnKinds::decode(bytes) {
        column_kinds_of(k);
    }
    if let Ok(l) = pb::LevelsOffer::decode(bytes) {
        levels(l);
    }
    if let Ok(a) = pb::Agreement::decode(bytes) {
        agreement_of(a);
    }
    if let Ok(s) = pb::FeatureStatistics::decode(bytes) {
        stats(s);
    }
    if let Ok(e) = pb::EvaluationReport::decode(bytes) {
        match convert::evaluation_from_pb(&e) {
            Ok(evaluation) => {
                let _ = convert::evaluation_to_pb(&e.site, e.round, &evaluation);
            }
            Err(e) => one_line(&e),
        }
    }
    if let Ok(h) = pb::UpdateHeader::decode(bytes) {
        update_header_of(&h);
    }
    if let Ok(p) = pb::UpdatePart::decode(bytes) {
        match p.part {
            Some(Part::Header(h)) => update_header_of(&h),
            Some(Part::Chunk(c)) => chunk_into_model(&c),
            Some(Part::Compressed(b)) => compressed_delta(&b),
            None => {}
        }
    }
    if let Ok(t) = pb::Task::decode(bytes) {
        match t.part {
            Some(pb::task::Part::Header(h)) => {
                layout(&h.layout);
                codec(&h.upload_codec);
                codec(&h.model_codec);
                let _ = pb::TaskKind::try_from(h.kind);
                let _ = pb::ModelDelivery::try_from(h.model_delivery);
            }
            Some(pb::task::Part::Chunk(c)) => chunk_into_model(&c),
            Some(pb::task::Part::Compressed(b)) => compressed_delta(&b),
            Some(pb::task::Part::Finished(_)) | None => {}
        }
    }
    if let Ok(p) = pb::PeerModelPart::decode(bytes) {
        match p.part {
            Some(pb::peer_model_part::Part::Header(h)) => layout(&h.layout),
            Some(pb::peer_model_part::Part::Chunk(c)) => chunk_into_model(&c),
            None => {}
        }
    }
    if let Ok(w) = pb::WithdrawRequest::decode(bytes) {
        let cut = tessera_proto::withdraw_reason(&w.reason);
        assert!(w.reason.starts_with(cut));
    }
    if let Err(e) = decode_parameters(bytes) {
        one_line(&e);
    }
    compressed_delta(bytes);
}

/// A model's update as it travels: a header, then chunks (or compressed
/// pieces), each its own message.
fn update_stream(set: &ParameterSet, chunk_bytes: usize, codec: Option<usize>) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let codec_name = codec.map_or("", |k| ["q8", "topk:0.5+q4", "randk:0.25"][k % 3]);
    parts.push(
        pb::UpdatePart {
            part: Some(Part::Header(update_header(set, codec_name))),
        }
        .encode_to_vec(),
    );
    if codec.is_some() {
        let codec: tessera_compress::Codec = codec_name.parse().unwrap();
        let bytes = tessera_compress::encode_set(&codec, set, None, &mut SeededRng::new(2)).0;
        for piece in bytes.chunks(chunk_bytes.max(1)) {
            parts.push(
                pb::UpdatePart {
                    part: Some(Part::Compressed(piece.to_vec())),
                }
                .encode_to_vec(),
            );
        }
    } else {
        for chunk in chunks(0, set, chunk_bytes) {
            parts.push(
                pb::UpdatePart {
                    part: Some(Part::Chunk(chunk)),
                }
                .encode_to_vec(),
            );
        }
    }
    parts
}

/// Receives an update stream as the coordinator does: the header's layout
/// must be the model's, chunks go into an [`Assembler`] in order, compressed
/// pieces are joined (up to the codec's bound) and decoded.
fn receive(model: &ParameterSet, parts: &[Vec<u8>]) -> Result<ParameterSet, String> {
    let mut parts = parts.iter();
    let first = parts.next().ok_or("empty update stream")?;
    let first = pb::UpdatePart::decode(first.as_slice()).map_err(|e| e.to_string())?;
    let Some(Part::Header(header)) = first.part else {
        return Err("an update starts with its header".into());
    };
    convert::fit_stats_from_pb(&header).map_err(|e| e.to_string())?;
    let mut delta = Assembler::new(&header.layout, Limits::default()).map_err(|e| e.to_string())?;
    delta.expect_layout_of(model).map_err(|e| e.to_string())?;
    let codec = if header.codec.is_empty() {
        tessera_compress::Codec::NONE
    } else {
        header
            .codec
            .parse::<tessera_compress::Codec>()
            .map_err(|e| e.to_string())?
    };
    let bound = codec.max_encoded_len(model.n_values());
    let mut compressed: Option<Vec<u8>> = (!codec.is_identity()).then(Vec::new);
    for part in parts {
        let part = pb::UpdatePart::decode(part.as_slice()).map_err(|e| e.to_string())?;
        match part.part {
            Some(Part::Chunk(chunk)) => {
                if compressed.is_some() || chunk.set != 0 {
                    return Err("unexpected chunk".into());
                }
                delta.push(&chunk).map_err(|e| e.to_string())?;
            }
            Some(Part::Compressed(piece)) => {
                let Some(bytes) = compressed.as_mut() else {
                    return Err("compressed parts in an uncompressed update".into());
                };
                if bytes.len() + piece.len() > bound {
                    return Err("too long".into());
                }
                bytes.extend_from_slice(&piece);
            }
            _ => return Err("a second header in one update".into()),
        }
    }
    match compressed {
        Some(bytes) => tessera_compress::decode_set(&bytes, model).map_err(|e| e.to_string()),
        None => delta.finish().map_err(|e| e.to_string()),
    }
}

/// Edits of a stream of messages.
#[derive(Debug, Clone)]
enum StreamEdit {
    /// Edit one message's bytes.
    Bytes(Index, Edit),
    /// Drop a message.
    Drop(Index),
    /// Repeat a message.
    Repeat(Index),
    /// Swap two messages.
    Swap(Index, Index),
    /// Insert a seed (of any kind).
    Seed(Index, Index),
}

fn stream_edit() -> impl Strategy<Value = StreamEdit> {
    prop_oneof![
        6 => (any::<Index>(), edit()).prop_map(|(i, e)| StreamEdit::Bytes(i, e)),
        1 => any::<Index>().prop_map(StreamEdit::Drop),
        1 => any::<Index>().prop_map(StreamEdit::Repeat),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| StreamEdit::Swap(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| StreamEdit::Seed(a, b)),
    ]
}

fn apply_to_stream(parts: &mut Vec<Vec<u8>>, edit: &StreamEdit) {
    let n = parts.len();
    match edit {
        StreamEdit::Bytes(i, e) if n > 0 => apply(&mut parts[i.index(n)], e),
        StreamEdit::Drop(i) if n > 0 => {
            parts.remove(i.index(n));
        }
        StreamEdit::Repeat(i) if n > 0 => {
            let k = i.index(n);
            let part = parts[k].clone();
            parts.insert(k, part);
        }
        StreamEdit::Swap(a, b) if n > 0 => parts.swap(a.index(n), b.index(n)),
        StreamEdit::Seed(s, at) => {
            let seed = SEEDS[s.index(SEEDS.len())].clone();
            parts.insert(at.index(n + 1), seed);
        }
        _ => {}
    }
}

#[test]
fn seeds_decode() {
    for bytes in SEEDS.iter() {
        check(bytes);
    }
    for set in [&*MODEL, &*MLP] {
        assert_eq!(&receive(set, &update_stream(set, 16, None)).unwrap(), set);
        for k in 0..3 {
            receive(set, &update_stream(set, 16, Some(k))).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Encodings of real messages, mutated, decoded as every message.
    #[test]
    fn mutated_messages(seed in any::<Index>(), edits in prop::collection::vec(edit(), 1..8)) {
        let mut bytes = SEEDS[seed.index(SEEDS.len())].clone();
        for e in &edits {
            apply(&mut bytes, e);
        }
        check(&bytes);
    }

    /// Random bytes decoded as every message.
    #[test]
    fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    /// An update's stream of messages, mutated, received as the coordinator
    /// receives it.
    #[test]
    fn mutated_update_streams(
        mlp in any::<bool>(),
        chunk_bytes in 1usize..200,
        codec in prop::option::of(0usize..3),
        edits in prop::collection::vec(stream_edit(), 1..8),
    ) {
        let set: &ParameterSet = if mlp { &MLP } else { &MODEL };
        let mut parts = update_stream(set, chunk_bytes, codec);
        for e in &edits {
            apply_to_stream(&mut parts, e);
        }
        if let Err(e) = receive(set, &parts) {
            one_line(&e);
        }
    }
}
