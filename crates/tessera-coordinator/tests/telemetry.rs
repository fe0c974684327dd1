//! The coordinator's metrics as a Prometheus scrape shows them: each check
//! runs against a recorder of its own (`metrics::with_local_recorder`), so
//! the tests of this binary do not share counters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Db, SITES, agree, examples, train};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use tessera_coordinator::{Federation, ManualClock};
use tessera_engine::Plan;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new().build_recorder()
}

/// An update whose certificate was revoked is refused before it is read
/// and counted under `reason="revoked"`, not as a malformed update.
#[test]
fn an_update_from_a_revoked_certificate_is_counted_as_revoked() {
    let db = Db::new();
    let dir = db.path().with_file_name("ca");
    let mut ca = tessera_tls::CaDir::init(&dir, "test", 30).unwrap();
    let site = ca.issue_site("cleveland", 30).unwrap();
    let coordinator = ca
        .issue_coordinator(&["127.0.0.1".to_string()], 30)
        .unwrap();
    let cert = CertificateDer::from_pem_file(site.join("cert.pem")).unwrap();
    ca.revoke("cleveland").unwrap();
    let callers = tessera_tls::Callers::new(tessera_tls::TlsFiles::in_dir(&coordinator));
    let reason = callers
        .check(Some(&[cert]), "cleveland")
        .expect_err("a revoked certificate is refused");

    let text = std::fs::read_to_string(examples().join("fed-heart-disease.toml")).unwrap();
    let f = db.open(&(Plan::from_toml(&text, "heart").unwrap(), text));
    let recorder = recorder();
    metrics::with_local_recorder(&recorder, || {
        f.reject_audit("cleveland", "update", &reason);
        f.reject_audit("cleveland", "update", "an update starts with its header");
    });
    let scraped = recorder.handle().render();
    assert!(
        scraped.contains("tessera_updates_rejected_total{reason=\"revoked\"} 1"),
        "{reason}\n{scraped}"
    );
    assert!(
        scraped.contains("tessera_updates_rejected_total{reason=\"malformed\"} 1"),
        "{scraped}"
    );
}

/// A cohort member silent past the liveness period is dropped, counted in
/// `tessera_liveness_drops_total`, and shown as silent with the time it was
/// last heard from; the sites that kept calling are live.
#[test]
fn a_site_dropped_for_silence_is_counted_and_shown_silent() {
    const LIVENESS: Duration = Duration::from_secs(60);
    let db = Db::new();
    let text = std::fs::read_to_string(examples().join("fed-heart-disease.toml")).unwrap()
        + "\n[privacy]\nsite_metrics = \"clear\"\n";
    let plan = (Plan::from_toml(&text, "heart").unwrap(), text);
    let f: Federation = db.open_with(&plan, LIVENESS);
    // Started after the run was created: the run clock never reads before it.
    let clock = ManualClock::starting_now();
    let mut f = f.with_clock(Arc::new(clock.clone()));
    agree(&mut f);
    let heard = f.sites()[3].last_seen_unix_micros.expect("heard from");
    for i in 0..3 {
        let (round, update) = train(&mut f, i);
        f.submit_update(&SITES[i].name, round, &update).unwrap();
    }
    let recorder = recorder();
    metrics::with_local_recorder(&recorder, || {
        clock.advance(LIVENESS + Duration::from_millis(1));
        for site in SITES.iter().take(3) {
            f.heartbeat(&site.name, 1).unwrap();
        }
        f.advance();
    });
    let scraped = recorder.handle().render();
    assert!(
        scraped.contains("tessera_liveness_drops_total 1"),
        "{scraped}"
    );
    let sites = f.sites();
    let silent: Vec<&str> = sites
        .iter()
        .filter(|s| s.state == "silent")
        .map(|s| s.site.as_str())
        .collect();
    assert_eq!(silent, [SITES[3].name.as_str()]);
    assert_eq!(sites[3].last_seen_unix_micros, Some(heard));
    assert_eq!(sites.iter().filter(|s| s.state == "live").count(), 3);
}
