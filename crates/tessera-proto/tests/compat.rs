//! Messages encoded with the frozen 1.0 schema are read by the current one,
//! and current messages are read by 1.0 peers (new fields are skipped).

#![allow(clippy::unwrap_used)]

use prost::Message;
use tessera_proto::{pb, pb_v1_0};

#[test]
fn a_1_0_hello_and_header_decode_as_1_1() {
    let old = pb_v1_0::Hello {
        major: 1,
        minor: 0,
        capabilities: vec!["chunked-tensors".into(), "agreement".into()],
        site: "cleveland".into(),
    };
    let new = pb::Hello::decode(old.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        (new.major, new.minor, new.site.as_str()),
        (1, 0, "cleveland")
    );
    assert_eq!(new.capabilities, old.capabilities);

    let header = pb_v1_0::TaskHeader {
        round: 3,
        kind: pb_v1_0::TaskKind::Fit as i32,
        layout: vec![pb_v1_0::TensorSpec {
            name: "dense0.weight".into(),
            shape: vec![13, 1],
        }],
        proximal_mu: Some(0.01),
        has_server_control: false,
        deadline_micros: 5,
    };
    let new = pb::TaskHeader::decode(header.encode_to_vec().as_slice()).unwrap();
    assert_eq!(new.round, 3);
    assert_eq!(new.kind(), pb::TaskKind::Fit);
    assert_eq!(new.layout[0].shape, vec![13, 1]);
    assert!(!new.previous_update_counted, "absent in 1.0: the default");
}

#[test]
fn a_1_1_header_decodes_as_1_0() {
    let header = pb::TaskHeader {
        round: 4,
        kind: pb::TaskKind::Evaluate as i32,
        layout: Vec::new(),
        proximal_mu: None,
        has_server_control: true,
        deadline_micros: 0,
        previous_update_counted: true,
        previous_round: 3,
        upload_codec: "topk:0.01+q8".into(),
        ..Default::default()
    };
    let old = pb_v1_0::TaskHeader::decode(header.encode_to_vec().as_slice()).unwrap();
    assert_eq!(old.round, 4);
    assert_eq!(old.kind(), pb_v1_0::TaskKind::Evaluate);
    assert!(old.has_server_control);
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for bytes in [
        &b"\xff\xff\xff"[..],
        b"\x0a\xff\xff\xff\xff\x0f",
        b"\x22\x05abc",
    ] {
        assert!(pb::TaskHeader::decode(bytes).is_err() || pb::UpdatePart::decode(bytes).is_err());
    }
}
