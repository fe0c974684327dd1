//! A lying coordinator against the join's envelopes: it alters a payload,
//! passes off another site's certificate, replays a message, strips the
//! signature; the recipient refuses each.

#![allow(clippy::unwrap_used)]

use super::envelope::{Envelope, Header, seal, signed_bytes};
use crate::client::SecureIdentity;

fn identities() -> (SecureIdentity, SecureIdentity, SecureIdentity) {
    let dir = std::env::temp_dir().join(format!("tessera-join-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut ca = tessera_tls::CaDir::init(&dir.join("ca"), "test", 30).unwrap();
    let load = |site: &str, ca: &mut tessera_tls::CaDir| {
        let files = tessera_tls::TlsFiles::in_dir(&ca.issue_site(site, 30).unwrap());
        SecureIdentity::load(Some(&files)).unwrap()
    };
    let a = load("a", &mut ca);
    let b = load("b", &mut ca);
    let c = load("c", &mut ca);
    (a, b, c)
}

fn header(seq: u32) -> Header {
    Header {
        run: "run".into(),
        join: "j".into(),
        from: "a".into(),
        to: "b".into(),
        kind: "query".into(),
        seq,
    }
}

fn sealed(by: &SecureIdentity, header: &Header, payload: &[u8]) -> Vec<u8> {
    let signed = signed_bytes(header, payload, &by.certificate());
    let signature = by.sign(&signed).unwrap();
    seal(signed, &signature)
}

fn check(by: &SecureIdentity, bytes: &[u8], expected: &Header) -> Result<Vec<u8>, String> {
    let e = Envelope::parse(bytes)?;
    e.expect(expected)?;
    by.check_signed(&expected.from, &e.certificate, e.signed(), &e.signature)?;
    Ok(e.payload)
}

#[test]
fn a_tampering_coordinator_is_detected() {
    let (a, b, c) = identities();
    let bytes = sealed(&a, &header(0), b"blinded points");
    assert_eq!(check(&b, &bytes, &header(0)).unwrap(), b"blinded points");

    // One payload byte altered on the way.
    let mut altered = bytes.clone();
    let at = altered.windows(7).position(|w| w == b"blinded").unwrap();
    altered[at] ^= 1;
    let e = check(&b, &altered, &header(0)).unwrap_err();
    assert!(e.contains("does not verify"), "{e}");

    // The coordinator's own (or another site's) message passed off as a's.
    let forged = sealed(&c, &header(0), b"blinded points");
    let e = check(&b, &forged, &header(0)).unwrap_err();
    assert!(e.contains("names another site"), "{e}");

    // A's first message replayed as its second.
    let e = check(&b, &bytes, &header(1)).unwrap_err();
    assert!(e.contains("sequence number"), "{e}");

    // The signature stripped.
    let unsigned = seal(signed_bytes(&header(0), b"blinded points", &[]), &[]);
    let e = check(&b, &unsigned, &header(0)).unwrap_err();
    assert!(e.contains("unsigned"), "{e}");
}
