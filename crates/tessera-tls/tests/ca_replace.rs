//! Issuing never silently revokes: a live certificate of the same kind and
//! name is replaced only when asked, and then the answer names what was
//! revoked; the coordinator and every aggregator hold server certificates
//! of their own under one CA, all live together.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Scratch, refused};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use tessera_tls::{CaDir, CertStatus};

/// Whether the server certificate in `party` verifies for `host` against
/// the CA's certificate and its current revocation list, as a client would.
fn server_verifies(ca_dir: &Path, party: &Path, host: &str) -> Result<(), String> {
    let pem = |path: PathBuf| std::fs::read(path).unwrap();
    let cert = CertificateDer::from_pem_slice(&pem(party.join("cert.pem"))).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&pem(ca_dir.join("ca.pem"))).unwrap())
        .unwrap();
    let crl = CertificateRevocationListDer::from_pem_slice(&pem(ca_dir.join("crl.pem"))).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(vec![crl])
        .build()
        .unwrap();
    verifier
        .verify_server_cert(
            &cert,
            &[],
            &ServerName::try_from(host.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn server_certificates_of_the_coordinator_and_each_aggregator_stay_live_together() {
    let s = Scratch::new("ca-replace", "servers");
    let mut ca = CaDir::init(&s.0, "test", 30).unwrap();
    let coordinator = ca
        .issue_coordinator(&["coord.example.org".into()], 30)
        .unwrap();
    let east = ca
        .issue_aggregator("east", &["east.example.org".into()], 30, false)
        .unwrap();
    let west = ca
        .issue_aggregator("west", &["west.example.org".into()], 30, false)
        .unwrap();
    // Toward its parent an aggregator is a site of its own name.
    ca.issue_site("east", 30).unwrap();
    assert!(east.replaced.is_empty() && west.replaced.is_empty());
    assert_ne!(east.dir, coordinator);
    assert_ne!(east.dir, west.dir);
    server_verifies(&s.0, &coordinator, "coord.example.org").unwrap();
    server_verifies(&s.0, &east.dir, "east.example.org").unwrap();
    server_verifies(&s.0, &west.dir, "west.example.org").unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        ca.issued()
            .iter()
            .all(|i| i.status(now) == CertStatus::Live)
    );
    assert_eq!(ca.issued().len(), 4);
    // Each server folder gets the revocation list.
    assert!(east.dir.join("crl.pem").exists() && coordinator.join("crl.pem").exists());
    // Rotation re-issues each of them in its own folder.
    let renewed = ca.rotate().unwrap();
    assert_eq!(renewed.len(), 4, "{renewed:?}");
    server_verifies(&s.0, &coordinator, "coord.example.org").unwrap();
    server_verifies(&s.0, &east.dir, "east.example.org").unwrap();
}

#[test]
fn a_live_certificate_is_replaced_only_when_asked_and_the_answer_names_it() {
    let s = Scratch::new("ca-replace", "replace");
    let mut ca = CaDir::init(&s.0, "test", 30).unwrap();
    let coordinator = ca
        .issue_coordinator(&["coord.example.org".into()], 30)
        .unwrap();
    let first_serial = ca.issued()[0].serial;
    let message = refused(ca.issue_coordinator(&["agg.example.org".into()], 30));
    assert!(
        message.starts_with(&format!(
            "the coordinator certificate (serial {first_serial}, valid from "
        )) && message.contains(" UTC until ")
            && message.contains("is live")
            && message.contains("give --replace"),
        "{message}"
    );
    // Refused means nothing changed: the first certificate still serves.
    assert_eq!(ca.issued().len(), 1);
    server_verifies(&s.0, &coordinator, "coord.example.org").unwrap();

    ca.issue_site("va", 30).unwrap();
    let message = refused(ca.issue_site("va", 30));
    assert!(
        message.contains("the site certificate 'va' (serial 2"),
        "{message}"
    );

    let replaced = ca
        .issue_coordinator_replacing(&["coord2.example.org".into()], 30, true)
        .unwrap();
    assert_eq!(replaced.replaced.len(), 1);
    assert_eq!(replaced.replaced[0].serial, first_serial);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let status = |serial: u64| {
        ca.issued()
            .iter()
            .find(|i| i.serial == serial)
            .unwrap()
            .status(now)
    };
    assert_eq!(status(first_serial), CertStatus::Revoked);
    assert_eq!(status(replaced.issued.serial), CertStatus::Live);
    assert_eq!(status(2), CertStatus::Live, "the site is untouched");
    server_verifies(&s.0, &coordinator, "coord2.example.org").unwrap();

    // An expired certificate is no longer live: a new one needs no --replace.
    ca.issue_expired_site("old").unwrap();
    let expired = ca.issued().last().unwrap().clone();
    assert_eq!(expired.status(now), CertStatus::Expired);
    let renewed = ca.issue_site_replacing("old", 30, false).unwrap();
    assert_eq!(renewed.replaced.len(), 1);
    assert_eq!(renewed.replaced[0].serial, expired.serial);
}

#[test]
fn bad_aggregator_names_and_hosts_are_refused_by_name() {
    let s = Scratch::new("ca-replace", "names");
    let mut ca = CaDir::init(&s.0, "test", 30).unwrap();
    assert_eq!(
        refused(ca.issue_aggregator("../x", &["a.example.org".into()], 30, false)),
        "'../x' cannot be an aggregator name"
    );
    assert_eq!(
        refused(ca.issue_aggregator("east", &[], 30, false)),
        "the aggregator needs at least one host name or address"
    );
    assert_eq!(
        refused(ca.issue_aggregator("east", &["".into()], 30, false)),
        "aggregator host '' is empty: give a DNS name or an IP address"
    );
    assert!(ca.issued().is_empty());
}
