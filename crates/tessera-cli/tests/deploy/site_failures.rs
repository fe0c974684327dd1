//! What a site is told when it cannot take part: a certificate from another
//! CA, a revoked one, TLS against plain text and back each end the
//! participant at once with a one-line cause and its documented exit code;
//! the coordinator audits the refused certificate under its name and counts
//! the refusals; a second live process of a site is refused while the first
//! goes on.

use std::time::{Duration, Instant};

use crate::util::procs::{HEART_SITES, Proc, coordinator, free_port, participant, wait_until};
use crate::util::status::{poll, status_of};
use crate::util::{self, Scratch};
use crate::{LIMIT, http_get, plan, simulated_model};

/// Runs a participant for `site` with `extra` against `url`, which must stop
/// on its own within five seconds (its --give-up-after is five minutes) with
/// `code`, naming `cause`; returns its log.
fn stops_at_once(
    s: &Scratch,
    url: &str,
    site: &str,
    extra: &[&str],
    code: i32,
    cause: &str,
) -> String {
    let args = [extra, &["--give-up-after", "300"]].concat();
    let started = Instant::now();
    let mut p = participant(&s.dir, url, site, &args);
    let status = p.wait(LIMIT);
    let took = started.elapsed();
    let log = p.log();
    assert_eq!(status.code(), Some(code), "{cause}: exit code\n{log}");
    assert!(
        took < Duration::from_secs(5),
        "{cause}: stopped after {took:?}, not at once\n{log}"
    );
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with("error: "))
        .unwrap_or("");
    assert!(
        last.contains(cause),
        "{cause}: the last line names it\n{log}"
    );
    log
}

/// A certificate from another CA (both ways), a revoked certificate, and
/// plain text against TLS (and TLS against plain text): each stops the
/// participant within five seconds with its cause and exit code; the
/// coordinator audits the refused handshakes under the certificate's name
/// and counts them by reason at /metrics.
#[test]
fn a_site_that_cannot_connect_is_told_why_at_once() {
    if util::skip_e2e("a_site_that_cannot_connect_is_told_why_at_once") {
        return;
    }
    let s = Scratch::new("deploy-site-failures");
    let ca = |args: &[&str]| {
        let mut all = vec!["ca", "--dir"];
        all.extend_from_slice(args);
        s.run(&all).ok();
    };
    ca(&["ca", "init"]);
    ca(&["ca", "issue", "--site", "va"]);
    ca(&["ca", "issue", "--coordinator", "--host", "127.0.0.1"]);
    ca(&["other", "init"]);
    ca(&["other", "issue", "--site", "va"]);
    let folder = |name: &str, cert_of: &str, ca_of: &str| {
        let dir = s.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["cert.pem", "key.pem"] {
            std::fs::copy(s.path(cert_of).join(file), dir.join(file)).unwrap();
        }
        std::fs::copy(s.path(ca_of).join("ca.pem"), dir.join("ca.pem")).unwrap();
        dir
    };
    // VA's certificate from another CA; VA's own with another CA to trust;
    // VA's first certificate, then revoked.
    let foreign = folder("foreign", "other/sites/va", "ca");
    let distrusting = folder("distrusting", "ca/sites/va", "other");
    let revoked = folder("revoked", "ca/sites/va", "ca");
    ca(&["ca", "revoke", "va"]);
    std::fs::copy(s.path("ca/crl.pem"), revoked.join("crl.pem")).unwrap();
    ca(&["ca", "issue", "--site", "va"]);

    let plan = plan(&s, "fedavg", "");
    let db = s.path("c.sqlite");
    let metrics = format!("127.0.0.1:{}", free_port());
    let coordinator_tls = s.path("ca/coordinator");
    let (mut tls_coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &db,
        0,
        &[
            "--tls",
            coordinator_tls.to_str().unwrap(),
            "--metrics",
            &metrics,
        ],
    );
    let https = url.replace("http://", "https://");
    let tls = |dir: &std::path::Path| dir.to_str().unwrap().to_string();

    stops_at_once(&s, &https, "va", &["--tls", &tls(&foreign)], 12, "wrong CA");
    let log = stops_at_once(
        &s,
        &https,
        "va",
        &["--tls", &tls(&distrusting)],
        12,
        "wrong CA",
    );
    assert!(log.contains("this site does not trust"), "{log}");
    let log = stops_at_once(
        &s,
        &https,
        "va",
        &["--tls", &tls(&revoked)],
        13,
        "certificate revoked",
    );
    assert!(log.contains("this site's certificate was revoked"), "{log}");
    stops_at_once(&s, &url, "va", &[], 15, "TLS mismatch");

    // The coordinator audits the refused certificates under their name.
    let status = status_of(&db);
    let named = status.audit_count(|a| {
        a.action == "connect"
            && a.outcome == "rejected"
            && a.site == "va"
            && a.detail.contains("127.0.0.1:")
            && a.detail.contains("a certificate naming 'va'")
    });
    assert!(
        named >= 2,
        "refusals audited under the certificate's name: {named}"
    );
    let scraped = http_get(&metrics, "/metrics");
    for reason in ["unknown_ca", "revoked", "not_tls"] {
        assert!(
            scraped.contains(&format!(
                "tessera_handshake_refusals_total{{reason=\"{reason}\"}}"
            )),
            "{reason}:\n{scraped}"
        );
    }
    assert!(
        scraped.contains("# HELP tessera_handshake_refusals_total"),
        "{scraped}"
    );
    tls_coordinator.kill_9();

    // TLS against a coordinator that speaks plain text.
    let (mut plain, plain_url) = coordinator(&s.dir, &plan, &s.path("plain.sqlite"), 0, &[]);
    let va = s.path("ca/sites/va");
    stops_at_once(
        &s,
        &plain_url.replace("http://", "https://"),
        "va",
        &["--tls", &tls(&va)],
        15,
        "TLS mismatch",
    );
    plain.kill_9();
}

/// A second process for a site whose first is live is refused (and
/// audited) while the first keeps training; the run completes, its model
/// equal to the simulation's.
#[test]
fn a_second_live_process_of_a_site_is_refused() {
    if util::skip_e2e("a_second_live_process_of_a_site_is_refused") {
        return;
    }
    let s = Scratch::new("deploy-second-process");
    let plan = plan(&s, "fedavg", "");
    let expected = simulated_model(&s, &plan, "sim.model");
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &db,
        0,
        &["--liveness", "5", "--model-out", "dep.model"],
    );
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &["--pause-before-update", "0.2"]))
        .collect();
    wait_until(LIMIT, "round 1 closed", || {
        poll(&db, |s| usize::from(s.round_closed(1))) == 1
    });
    // In the same folder, the second process is refused at the site: the
    // site's privacy ledger is kept by one process at a time.
    let mut same_folder = participant(&s.dir, &url, "va", &[]);
    assert!(!same_folder.wait(LIMIT).success());
    assert!(
        same_folder
            .log()
            .contains("in use by another participant process"),
        "{}",
        same_folder.log()
    );
    // With a ledger of its own, it reaches the coordinator, which refuses it.
    let mut second = participant(&s.dir, &url, "va", &["--ledger", "second.json"]);
    wait_until(LIMIT, "the second process refused", || {
        second
            .log()
            .contains("already served by another live process")
    });
    let refused = status_of(&db).audit_count(|a| {
        a.site == "va"
            && a.action == "join"
            && a.outcome == "refused"
            && a.detail.contains("another live process")
    });
    assert!(refused >= 1, "the refusal is audited");
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut sites {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    second.kill_9();
    assert!(
        !second.log().contains("update accepted"),
        "the second process never trained:\n{}",
        second.log()
    );
    assert_eq!(crate::util::model(&s.path("dep.model")), expected);
}
