//! Mutual TLS from the federation's own CA: unknown, revoked and
//! impersonating certificates refused, and revocations in the middle of a run.

use crate::util::procs::{HEART_SITES, Proc, coordinator, participant, wait_until};
use crate::util::status::{poll, status_of};
use crate::util::{self, Scratch};
use crate::{LIMIT, plan, simulated_model};

/// Mutual TLS from the federation's own CA: a certificate from another CA is
/// refused at the handshake, a revoked one too, a site cannot speak for
/// another, and valid certificates run the whole plan; a site refuses a
/// coordinator whose certificate was revoked.
#[test]
fn mutual_tls_refuses_unknown_revoked_and_impersonating_certificates() {
    if util::skip_e2e("mutual_tls_refuses_unknown_revoked_and_impersonating_certificates") {
        return;
    }
    let s = Scratch::new("deploy-tls");
    let ca = |args: &[&str]| {
        let mut all = vec!["ca", "--dir"];
        all.extend_from_slice(args);
        s.run(&all).ok();
    };
    ca(&["ca", "init"]);
    for site in HEART_SITES {
        ca(&["ca", "issue", "--site", site]);
    }
    ca(&["ca", "issue", "--coordinator", "--host", "127.0.0.1"]);
    ca(&["other", "init"]);
    ca(&["other", "issue", "--site", "va"]);
    // A certificate of another CA, with the federation's CA to trust the coordinator.
    std::fs::create_dir_all(s.path("unknown")).unwrap();
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(
            s.path("other/sites/va").join(file),
            s.path("unknown").join(file),
        )
        .unwrap();
    }
    std::fs::copy(s.path("ca/ca.pem"), s.path("unknown/ca.pem")).unwrap();
    // VA's first certificate, kept aside, is then revoked; VA gets a new one.
    std::fs::create_dir_all(s.path("revoked")).unwrap();
    for file in ["cert.pem", "key.pem", "ca.pem"] {
        std::fs::copy(
            s.path("ca/sites/va").join(file),
            s.path("revoked").join(file),
        )
        .unwrap();
    }
    ca(&["ca", "revoke", "va"]);
    ca(&["ca", "issue", "--site", "va"]);

    let plan = plan(&s, "fedavg", "");
    let expected = simulated_model(&s, &plan, "sim.model");
    let db = s.path("c.sqlite");
    let coordinator_tls = s.path("ca/coordinator");
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &db,
        0,
        &[
            "--tls",
            coordinator_tls.to_str().unwrap(),
            "--model-out",
            "dep.model",
        ],
    );
    let url = url.replace("http://", "https://");
    let refused = |name: &str, site: &str, dir: &std::path::Path| {
        let mut p = participant(
            &s.dir,
            &url,
            site,
            &["--tls", dir.to_str().unwrap(), "--give-up-after", "2"],
        );
        let status = p.wait(LIMIT);
        assert!(!status.success(), "{name} must be refused:\n{}", p.log());
        p.log()
    };
    refused("unknown CA", "va", &s.path("unknown"));
    refused("revoked", "va", &s.path("revoked"));
    let log = refused("impersonation", "va", &s.path("ca/sites/cleveland"));
    assert!(log.contains("does not name site 'va'"), "{log}");
    let status = status_of(&db);
    let handshakes = status.audited("connect", "rejected");
    assert!(
        handshakes >= 2,
        "refused handshakes are audited: {handshakes}"
    );
    let impersonations = status.audit_count(|a| a.action == "identity" && a.site == "va");
    assert!(impersonations >= 1);

    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            let dir = s.path(&format!("ca/sites/{site}"));
            participant(&s.dir, &url, site, &["--tls", dir.to_str().unwrap()])
        })
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut sites {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(util::model(&s.path("dep.model")), expected);

    // The coordinator's certificate is revoked: the list reaches every
    // site's folder, and a site refuses a coordinator that still serves it.
    ca(&["ca", "revoke", "coordinator"]);
    let list = std::fs::read(s.path("ca/crl.pem")).unwrap();
    assert_eq!(std::fs::read(s.path("ca/sites/va/crl.pem")).unwrap(), list);
    let (mut revoked, revoked_url) = util::procs::coordinator(
        &s.dir,
        &plan,
        &s.path("c2.sqlite"),
        0,
        &["--tls", coordinator_tls.to_str().unwrap()],
    );
    let va = s.path("ca/sites/va");
    let mut p = participant(
        &s.dir,
        &revoked_url.replace("http://", "https://"),
        "va",
        &["--tls", va.to_str().unwrap(), "--give-up-after", "2"],
    );
    assert!(
        !p.wait(LIMIT).success(),
        "a revoked coordinator is refused:\n{}",
        p.log()
    );
    assert!(
        p.log().contains("Revoked"),
        "the site says why:\n{}",
        p.log()
    );
    revoked.kill_9();
}

/// A federation CA in `ca/` with the four sites' certificates and the
/// coordinator's (for 127.0.0.1); returns `ca` to run `tessera ca --dir ca ...`.
pub(crate) fn heart_ca(s: &Scratch) -> impl Fn(&[&str]) + '_ {
    let ca = |args: &[&str]| {
        let mut all = vec!["ca", "--dir", "ca"];
        all.extend_from_slice(args);
        s.run(&all).ok();
    };
    ca(&["init"]);
    for site in HEART_SITES {
        ca(&["issue", "--site", site]);
    }
    ca(&["issue", "--coordinator", "--host", "127.0.0.1"]);
    ca
}

/// A federation under mutual TLS: a CA in `ca/` with the four sites and the
/// coordinator, the coordinator (with `coordinator_extra`), and the four
/// sites, each pausing 0.3 s before its update; returns them once round 2
/// has closed, with `ca` to run `tessera ca --dir ca ...`.
fn tls_run_at_round_2(
    s: &Scratch,
    coordinator_extra: &[&str],
) -> (Proc, Vec<Proc>, std::path::PathBuf, impl Fn(&[&str])) {
    let ca = heart_ca(s);
    // A site refused mid-run leaves; the rounds go on with the other three.
    let plan = plan(s, "fedavg", "quorum = 3");
    let text = std::fs::read_to_string(&plan).unwrap();
    let plan = s.write(
        "fedavg.toml",
        &text.replace("min_participants = 4", "min_participants = 3"),
    );
    let db = s.path("c.sqlite");
    let coordinator_tls = s.path("ca/coordinator");
    let mut args = vec!["--tls", coordinator_tls.to_str().unwrap()];
    args.extend_from_slice(coordinator_extra);
    let (coordinator, url) = coordinator(&s.dir, &plan, &db, 0, &args);
    let url = url.replace("http://", "https://");
    let sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            let dir = s.path(&format!("ca/sites/{site}"));
            let tls = ["--tls", dir.to_str().unwrap()];
            participant(
                &s.dir,
                &url,
                site,
                &[&tls[..], &["--pause-before-update", "0.3"]].concat(),
            )
        })
        .collect();
    wait_until(LIMIT, "round 2 closed", || {
        poll(&db, |s| usize::from(s.round_closed(2))) == 1
    });
    (coordinator, sites, db, ca)
}

/// A site's certificate revoked in the middle of a run: the coordinator
/// refuses the site's next call on the connection it already has open (the
/// handshake is long past), audits why, and the run completes on the others.
#[test]
fn a_site_revoked_mid_run_is_refused_on_its_open_connection() {
    if util::skip_e2e("a_site_revoked_mid_run_is_refused_on_its_open_connection") {
        return;
    }
    let s = Scratch::new("deploy-revoke-mid-run");
    let (mut coordinator, mut sites, db, ca) =
        tls_run_at_round_2(&s, &["--liveness", "1.5", "--report", "dep.json"]);
    ca(&["revoke", "va"]);
    let va = HEART_SITES.iter().position(|s| *s == "va").unwrap();
    assert!(
        !sites[va].wait(LIMIT).success(),
        "VA is refused:\n{}",
        sites[va].log()
    );
    assert!(
        sites[va].log().contains("Revoked"),
        "VA is told why:\n{}",
        sites[va].log()
    );
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for (i, p) in sites.iter_mut().enumerate() {
        if i != va {
            assert!(p.wait(LIMIT).success(), "{}", p.log());
        }
    }
    // Refused at a call, by name (a refused handshake is audited as 'connect').
    let refusals = status_of(&db).audit_count(|a| {
        a.site == "va"
            && (a.action == "identity" || a.action == "update")
            && a.outcome == "rejected"
            && a.detail.to_lowercase().contains("revoked")
    });
    assert!(refusals >= 1, "the refusal is audited: {refusals}");
    let report = s.json("dep.json");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 15);
    assert_eq!(rounds[0]["accepted"], 4, "{}", rounds[0]);
    assert_eq!(rounds[14]["accepted"], 3, "{}", rounds[14]);
}

/// The coordinator's certificate revoked in the middle of a run: every site
/// checks it again at its next task and stops, saying why, instead of
/// sending more over the connection it opened before.
#[test]
fn sites_stop_working_for_a_coordinator_revoked_mid_run() {
    if util::skip_e2e("sites_stop_working_for_a_coordinator_revoked_mid_run") {
        return;
    }
    let s = Scratch::new("deploy-revoke-coordinator");
    let (mut coordinator, mut sites, db, ca) = tls_run_at_round_2(&s, &[]);
    ca(&["revoke", "coordinator"]);
    for p in &mut sites {
        assert!(
            !p.wait(LIMIT).success(),
            "{} must stop:\n{}",
            p.name,
            p.log()
        );
        let log = p.log();
        assert!(
            log.contains("the coordinator's certificate is no longer accepted")
                && log.contains("Revoked"),
            "{} says why:\n{log}",
            p.name
        );
    }
    let closed = status_of(&db).rounds().len();
    assert!(closed < 15, "the run did not go on: {closed} rounds");
    coordinator.kill_9();
}
