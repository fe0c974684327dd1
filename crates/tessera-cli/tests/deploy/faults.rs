//! Failures in a deployment: a coordinator killed with SIGKILL mid-round and
//! resumed, a participant killed mid-round, a site whose training fails
//! withdrawing, and a busy database during the agreement.

use crate::util::procs::{
    HEART_SITES, Proc, coordinator, coordinator_env, free_port, participant, participant_with,
    wait_until,
};
use crate::util::status::{poll, status_of};
use crate::util::{self, Scratch};
use crate::{LIMIT, OUTPUTS, heart_text, heart_with_slow_va, http_get, plan, simulated_model};

#[test]
fn coordinator_killed_mid_round_resumes_with_nothing_lost_or_doubled() {
    if util::skip_e2e("coordinator_killed_mid_round_resumes_with_nothing_lost_or_doubled") {
        return;
    }
    let s = Scratch::new("deploy-kill-coordinator");
    let plan = plan(&s, "fedavg", "");
    let expected = simulated_model(&s, &plan, "sim.model");
    let db = s.path("c.sqlite");
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let (mut first, url) = coordinator(&s.dir, &plan, &db, 0, &["--metrics", &metrics]);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut participants = heart_with_slow_va(&s, &url, "3");
    wait_until(LIMIT, "round 3 with three accepted updates", || {
        poll(&db, |s| s.pending_updates_of(3)) == 3
    });
    // Operations view of the round in progress, from the database and the metrics endpoint.
    let status = s.run(&["status", "--db", db.to_str().unwrap()]).ok();
    assert!(
        status.contains("round 3 open: 3 of 4 updates accepted"),
        "{status}"
    );
    let runs = s.run(&["runs", "--db", db.to_str().unwrap()]).ok();
    assert!(runs.contains("running") && runs.contains("2/15"), "{runs}");
    let scraped = http_get(&metrics, "/metrics");
    assert!(
        scraped.contains("tessera_updates_accepted_total 11"),
        "{scraped}"
    );
    assert!(
        scraped.contains("tessera_participants_connected 4"),
        "{scraped}"
    );
    assert!(
        scraped.contains("tessera_rounds_closed_total{status=\"completed\"} 2"),
        "{scraped}"
    );
    assert!(
        scraped.contains("tessera_round_duration_seconds_bucket"),
        "{scraped}"
    );
    first.kill_9();
    // The accepted updates of the open round are in the database.
    assert_eq!(status_of(&db).pending_updates_of(3), 3);
    let (mut second, _) = coordinator(
        &s.dir,
        &plan,
        &db,
        port,
        &["--model-out", "dep.model", "--report", "dep.json"],
    );
    assert!(second.wait(LIMIT).success(), "{}", second.log());
    assert!(second.log().contains("resumed"), "{}", second.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(
        util::model(&s.path("dep.model")),
        expected,
        "nothing lost, nothing doubled"
    );
    // Exactly one accepted update per site and round in the audit log.
    let status = status_of(&db);
    assert_eq!(status.duplicate_accepted_updates(), 0);
    assert_eq!(status.audited("update", "accepted"), 60);
}

/// The worst moment for a site: the coordinator stores its update, then
/// dies before replying (the crash drill `TESSERA_DRILL_CRASH_AFTER_STORING`).
/// The update counts although the site heard nothing; with SCAFFOLD the site
/// must still keep the control variate of that round, or every later round
/// drifts. After a restart the run ends as its simulation, bit for bit.
#[test]
fn an_update_stored_without_its_reply_still_counts_at_its_site() {
    if util::skip_e2e("an_update_stored_without_its_reply_still_counts_at_its_site") {
        return;
    }
    let s = Scratch::new("deploy-lost-reply");
    let plan = plan(&s, "scaffold", "");
    let expected = simulated_model(&s, &plan, "sim.model");
    let db = s.path("c.sqlite");
    let drill = [("TESSERA_DRILL_CRASH_AFTER_STORING", "hungarian:2")];
    let (mut first, url) = coordinator_env(&s.dir, &plan, &db, 0, &[], &drill);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    let crashed = first.wait(LIMIT);
    assert_eq!(crashed.code(), Some(137), "{}", first.log());
    assert!(first.log().contains("crash drill"), "{}", first.log());
    let (mut second, _) = coordinator(&s.dir, &plan, &db, port, &["--model-out", "dep.model"]);
    assert!(second.wait(LIMIT).success(), "{}", second.log());
    assert!(second.log().contains("resumed"), "{}", second.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(
        util::model(&s.path("dep.model")),
        expected,
        "the stored update's control variate is kept at its site"
    );
    assert_eq!(status_of(&db).duplicate_accepted_updates(), 0);
}

#[test]
fn a_participant_killed_mid_round_the_round_completes_on_quorum_and_it_rejoins() {
    if util::skip_e2e("a_participant_killed_mid_round_the_round_completes_on_quorum_and_it_rejoins")
    {
        return;
    }
    let s = Scratch::new("deploy-kill-participant");
    let plan = plan(&s, "fedavg", "quorum = 3");
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &db,
        0,
        &["--liveness", "1.5", "--report", "dep.json"],
    );
    let mut participants: Vec<Proc> = HEART_SITES[..3]
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    let mut va = participant(&s.dir, &url, "va", &["--pause-before-update", "3"]);
    wait_until(LIMIT, "round 2 with three accepted updates", || {
        poll(&db, |s| s.pending_updates_of(2)) == 3
    });
    va.kill_9();
    // The round goes on without VA once it has been silent for the liveness period.
    wait_until(LIMIT, "round 2 closed", || {
        poll(&db, |s| usize::from(s.round_closed(2))) == 1
    });
    let mut va = participant(&s.dir, &url, "va", &[]);
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    assert!(va.wait(LIMIT).success(), "{}", va.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let report = s.json("dep.json");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 15);
    assert_eq!(rounds[1]["accepted"], 3, "{}", rounds[1]);
    assert_eq!(rounds[1]["dropped"], 1, "{}", rounds[1]);
    assert_eq!(rounds[1]["status"], "completed");
    assert_eq!(rounds[14]["accepted"], 4, "VA rejoined: {}", rounds[14]);
    assert!(status_of(&db).audit_count(|a| a.action == "liveness" && a.site == "va") >= 1);
}

/// Four synthetic sites, site3's rows 1e30 times too large (its loss
/// overflows): its local training fails, it withdraws from the run with the
/// reason, the round closes on the other sites at once instead of waiting
/// out the liveness period (60 s here), and the run goes on without it.
fn a_failing_site_withdraws(name: &str, tables: &str) {
    let s = Scratch::new(name);
    let (plan, data) = util::synthetic(&s, 4, 4, "kind = \"flat\"");
    // The plan names its four sites, one file each, so that all four agree
    // the data and start round 1 together; the later rounds need only one.
    let names = ["site0", "site1", "site2", "site3"];
    let sites: String = names
        .iter()
        .map(|n| format!("[[data.sites]]\nname = \"{n}\"\npath = \"{n}.csv\"\n"))
        .collect();
    let text = std::fs::read_to_string(&plan)
        .unwrap()
        .replace("path = \"syn.csv\"\nsite_column = \"site\"\n", &sites);
    let plan = s.write("plan.toml", &format!("{text}\n{tables}"));
    let text = std::fs::read_to_string(&data).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let header = header.split(',').skip(1).collect::<Vec<_>>().join(",");
    let mut files: Vec<String> = names.iter().map(|_| format!("{header}\n")).collect();
    for line in lines {
        let mut fields: Vec<String> = line.split(',').map(str::to_string).collect();
        let target = fields.len() - 1;
        let Some(site) = names.iter().position(|n| *n == fields[0]) else {
            panic!("a row of no site: {line}");
        };
        if site == 3 {
            for value in &mut fields[1..target] {
                value.push_str("e30");
            }
        }
        files[site].push_str(&fields[1..].join(","));
        files[site].push('\n');
    }
    let files: Vec<_> = names
        .iter()
        .zip(&files)
        .map(|(n, text)| s.write(&format!("{n}.csv"), text))
        .collect();
    let bad = files[3].clone();
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &db,
        0,
        &["--liveness", "60", "--report", "dep.json"],
    );
    let mut good: Vec<Proc> = names[..3]
        .iter()
        .zip(&files)
        .map(|(site, data)| participant_with(&s.dir, &url, site, data, &[]))
        .collect();
    let mut failing = participant_with(&s.dir, &url, "site3", &bad, &[]);
    assert!(!failing.wait(LIMIT).success(), "{}", failing.log());
    let log = failing.log();
    assert!(
        log.contains("diverged") && log.contains("withdrew"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut good {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    // The coordinator's audit log keeps who left, when and why.
    let left = status_of(&db).audit_count(|a| {
        let detail = a.detail.to_lowercase();
        a.site == "site3"
            && a.action == "withdraw"
            && a.outcome == "left the run"
            && detail
                .strip_prefix("round 1: local training failed:")
                .is_some_and(|rest| rest.contains("diverged"))
    });
    assert_eq!(left, 1);
    // The store's participation table says the same, site by site.
    let table = s.run(&["contributions", "--db", "c.sqlite", "--json"]).ok();
    let table: serde_json::Value = serde_json::from_str(&table).unwrap();
    let sites = table["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 4, "{table}");
    let secure = tables.contains("secure_aggregation");
    for p in sites {
        let name = p["site"].as_str().unwrap();
        if name == "site3" {
            assert_eq!(
                (&p["asked"], &p["counted"], &p["withdrawn"]),
                (&1.into(), &0.into(), &1.into()),
                "{p}"
            );
            assert_eq!(p["reliability"], 0.0);
        } else {
            assert_eq!(
                (&p["asked"], &p["counted"], &p["longest_streak"]),
                (&4.into(), &4.into(), &4.into()),
                "{p}"
            );
            assert_eq!(p["reliability"], 1.0);
            // Each update's examples where it was seen alone; sums only
            // under secure aggregation. Its training seconds likewise.
            assert_eq!(p["examples"].is_null(), secure, "{p}");
            assert_eq!(p["train_seconds"].is_null(), secure, "{p}");
            if !secure {
                let seconds = p["train_seconds"].as_f64().unwrap();
                assert!(seconds > 0.0 && seconds < 60.0, "{p}");
            }
        }
    }
    let report = s.json("dep.json");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 4);
    assert!(
        rounds
            .iter()
            .all(|r| r["status"] == "completed" && r["accepted"] == 3),
        "{report}"
    );
    assert_eq!(rounds[0]["dropped"], 1, "{}", rounds[0]);
    let first = rounds[0]["seconds"].as_f64().unwrap();
    eprintln!("{name}: round 1 closed in {first:.2} s without the site that withdrew");
    assert!(
        first < 30.0,
        "round 1 waited {first} s for a site that had left"
    );
}

#[test]
fn a_site_whose_training_fails_withdraws_and_the_rounds_do_not_wait_for_it() {
    if util::skip_e2e("a_site_whose_training_fails_withdraws_and_the_rounds_do_not_wait_for_it") {
        return;
    }
    a_failing_site_withdraws("deploy-withdraw", "");
}

/// Under secure aggregation the key stage stops waiting for it too.
#[test]
fn a_site_whose_training_fails_withdraws_from_a_secure_round() {
    if util::skip_e2e("a_site_whose_training_fails_withdraws_from_a_secure_round") {
        return;
    }
    a_failing_site_withdraws(
        "deploy-withdraw-secure",
        "[secure_aggregation]\nenabled = true\n",
    );
}

/// A database that another writer holds past the coordinator's busy wait
/// (5 s) while the sites join and agree: their calls are answered
/// "unavailable", they ask again, and the run ends as its simulation, bit for
/// bit. Before, a database error during the agreement refused the site as if
/// its request were wrong, and it stopped for good.
#[test]
fn a_busy_database_during_the_agreement_is_retried_not_fatal() {
    if util::skip_e2e("a_busy_database_during_the_agreement_is_retried_not_fatal") {
        return;
    }
    let s = Scratch::new("deploy-db-busy");
    let plan = s.write("busy.toml", &heart_text(&s, 2));
    let (_, expected) = s.simulate(&plan, "sim.model");
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &db, 0, OUTPUTS);
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    // Held until a site was told so (a fixed wait could end before any
    // site's call had waited out the busy timeout on a slow machine).
    crate::util::procs::wait_until(LIMIT, "a site told the database failed", || {
        sites.iter().any(|p| p.log().contains("database failed"))
    });
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    let mut retried = 0;
    for site in &mut sites {
        assert!(site.wait(LIMIT).success(), "{}", site.log());
        retried += usize::from(site.log().contains("database failed"));
    }
    assert!(retried >= 1, "no site was told to retry");
    assert_eq!(util::model(&s.path("dep.model")), expected);
}
