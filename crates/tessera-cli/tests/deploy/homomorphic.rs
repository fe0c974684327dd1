//! Homomorphic aggregation over gRPC (1.29, `homomorphic-aggregation`):
//! under mutual TLS every key share, commitment, list signature and answer
//! is signed with a site's certificate key and checked by the others, and
//! the run equals its simulation bit for bit; a key holder that goes
//! away fails the round naming it (decryption is n-of-n).

use crate::tls::heart_ca;
use crate::util::procs::{HEART_SITES, coordinator, participant, wait_until};
use crate::util::status::status_of;
use crate::util::{self, Scratch};
use crate::{LIMIT, heart_text};

/// The bundled heart plan for `rounds` rounds, aggregated homomorphically
/// with key holders Cleveland and VA.
fn homomorphic_plan(s: &Scratch, rounds: u32, extra: &str) -> std::path::PathBuf {
    let text = heart_text(s, rounds);
    s.write(
        "homomorphic.toml",
        &format!(
            "{text}\n{extra}\n[secure_aggregation]\nenabled = true\nscheme = \"homomorphic\"\n\
             key_holders = [\"cleveland\", \"va\"]\n"
        ),
    )
}

/// Homomorphic aggregation deployed under mutual TLS: each round the two
/// key holders draw and sign fresh key shares, the four sites encrypt
/// their quantised updates under the joint key they add up themselves,
/// commit, reveal under the closed list, and the key holders answer with
/// decryption shares of the sum they recomputed; the coordinator combines
/// them. The model equals the simulation's to the bit; no update or loss
/// is stored or audited per site.
#[test]
fn homomorphic_aggregation_under_mutual_tls_equals_simulation_bit_for_bit() {
    if util::skip_e2e("homomorphic_aggregation_under_mutual_tls_equals_simulation_bit_for_bit") {
        return;
    }
    let s = Scratch::new("deploy-homomorphic");
    let _ca = heart_ca(&s);
    let plan = homomorphic_plan(&s, 3, "");
    let (simulated, expected) = s.simulate(&plan, "sim.model");
    let coordinator_tls = s.path("ca/coordinator");
    let db = s.path("he.sqlite");
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
            "--report",
            "dep.model.json",
        ],
    );
    let url = url.replace("http://", "https://");
    let mut sites: Vec<_> = HEART_SITES
        .iter()
        .map(|site| {
            let dir = s.path(&format!("ca/sites/{site}"));
            participant(&s.dir, &url, site, &["--tls", dir.to_str().unwrap()])
        })
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut sites {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
        assert!(p.log().contains("done: 3 updates accepted"), "{}", p.log());
        assert!(
            p.log()
                .contains("the cohort's certificates checked against the federation CA"),
            "{}",
            p.log()
        );
    }
    // Each key holder drew a share and answered every round.
    for (p, site) in sites.iter().zip(HEART_SITES) {
        let answered = p.log().matches("key holder: done").count();
        // A commitment, a share and an answer each round.
        let expected = if site == "cleveland" || site == "va" {
            9
        } else {
            0
        };
        assert_eq!(answered, expected, "{site}: {}", p.log());
    }
    assert_eq!(util::model(&s.path("dep.model")), expected);
    let status = status_of(&db);
    assert_eq!(status.audited("homomorphic-aggregation", "completed"), 3);
    assert_eq!(status.audited("homomorphic-aggregation", "rejected"), 0);
    assert_eq!(status.audited("homomorphic-aggregation", "failed"), 0);
    assert_eq!(status.pending_updates(), 0);
    let report = s.json("dep.model.json");
    let rounds = report["rounds"].as_array().unwrap();
    let simulated = simulated["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    for (r, sim) in rounds.iter().zip(simulated) {
        assert_eq!(r["train_loss"], sim["train_loss"], "round {}", r["round"]);
        assert_eq!(r["accepted"], 4, "{r}");
    }
    assert_eq!(
        status.audit_count(|a| {
            let detail = a.detail.to_lowercase();
            detail.contains("loss") || detail.contains("example")
        }),
        0
    );
}

/// A key holder killed once training starts: the round it is in fails at
/// the liveness deadline naming it (its key share or its answer missing),
/// with no update taken in the clear, and the sites are told their update
/// did not count.
#[test]
fn a_missing_key_holder_fails_the_round_naming_it() {
    if util::skip_e2e("a_missing_key_holder_fails_the_round_naming_it") {
        return;
    }
    let s = Scratch::new("deploy-homomorphic-holder");
    let plan = homomorphic_plan(&s, 2, "");
    let text = std::fs::read_to_string(&plan)
        .unwrap()
        .replace("min_participants = 4", "min_participants = 3");
    let plan = s.write("holder.toml", &text);
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &db, 0, &["--liveness", "2"]);
    let mut sites: Vec<_> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    wait_until(LIMIT, "the first homomorphic round", || {
        status_of(&db).audited("homomorphic-aggregation", "opened") > 0
    });
    // VA, a key holder, is gone.
    sites[3].kill_9();
    let start = std::time::Instant::now();
    while status_of(&db).audit_count(|a| {
        a.action == "homomorphic-aggregation"
            && a.outcome == "failed"
            && (a.detail.contains("key holder(s) va sent no key")
                || a.detail.contains("key holder(s) va did not answer in time"))
    }) == 0
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no failure naming VA:\n{}\n{}",
            coordinator.log(),
            sites[0].log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    wait_until(LIMIT, "a site told its update did not count", || {
        sites.iter().any(|p| {
            p.log()
                .contains("the round ended before this site's input counted")
        })
    });
    coordinator.kill_9();
    for p in &mut sites {
        p.kill_9();
    }
    let status = status_of(&db);
    assert_eq!(status.audited("homomorphic-aggregation", "completed"), 0);
    assert_eq!(status.pending_updates(), 0);
}
