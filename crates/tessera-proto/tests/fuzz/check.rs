//! What a receiving side does with bytes from a peer: decoded as every
//! message and checked as it would be, asserting no panic and one-line errors.

use prost::Message;
use tessera_proto::pb::{self, update_part::Part};
use tessera_proto::{
    Assembler, CAPABILITIES, Limits, convert, decode_parameters, layout_of, negotiate,
    required_capabilities,
};

use crate::one_line;
use crate::seeds::{MLP, MODEL};

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

fn external(e: pb::ExternalOffer) {
    match convert::external_offer_from_pb("s", &e) {
        Ok(offer) => {
            let again =
                convert::external_offer_to_pb(offer.train_rows, offer.test_rows, &offer.initial);
            assert_eq!(convert::external_offer_from_pb("s", &again), Ok(offer));
        }
        Err(e) => one_line(&e),
    }
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
        Some(pb::agree_request::Offer::External(e)) => external(e),
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
pub(crate) fn check(bytes: &[u8]) {
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
        ExternalOffer,
        ExternalAgreement,
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
            Some(pb::agree_reply::Result::External(e)) => {
                if let Err(e) = convert::external_agreement_from_pb(e, &MLP) {
                    one_line(&e);
                }
            }
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
        match convert::site_evaluations_from_pb(&e) {
            Ok(sites) => {
                let pooled = tessera_learn::Evaluation::pool(sites.iter().map(|(_, e)| e));
                let _ = convert::evaluation_with_sites_to_pb(&e.site, e.round, &pooled, &sites);
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
