//! The coordinator's preflight (`tessera dry-run`): the four heart sites
//! join and agree their data, and the run ends before any round; then a
//! site whose file does not fit the plan fails the dry run, which names it
//! and the site's own reason, and the other sites are told and stop.

use std::sync::mpsc;
use std::time::Duration;

use super::*;
use util::procs::participant_with;

fn dry_run(s: &Scratch, plan: &std::path::Path, db: &str) -> (Proc, String) {
    let (tx, rx) = mpsc::channel();
    let args = [
        "dry-run",
        "--plan",
        plan.to_str().unwrap(),
        "--db",
        db,
        "--listen",
        "127.0.0.1:0",
        "--insecure",
        "--wait",
        "60",
    ];
    let proc = Proc::start("dry-run", &s.dir, &args, Some(tx));
    let address = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the dry run did not start:\n{}", proc.log()));
    (proc, format!("http://{address}"))
}

#[test]
fn a_dry_run_takes_every_site_through_the_agreement_and_names_a_site_that_fails() {
    if util::skip_e2e(
        "a_dry_run_takes_every_site_through_the_agreement_and_names_a_site_that_fails",
    ) {
        return;
    }
    let s = Scratch::new("deploy-dry-run");
    let plan = plan(&s, "fedavg", "");
    let db = s.path("dry.sqlite");
    let (mut coordinator, url) = dry_run(&s, &plan, db.to_str().unwrap());
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut sites {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let out = coordinator.log();
    for site in HEART_SITES {
        assert!(out.contains(&format!("site '{site}': agreed")), "{out}");
    }
    assert!(
        out.contains("dry run passed: every site's data agreed: 4 sites"),
        "{out}"
    );
    // Nothing was trained.
    let rounds = util::procs::query_i64(&db, "SELECT COUNT(*) FROM rounds");
    assert_eq!(rounds, 0);
    // The same database again is refused: a dry run keeps a record of its own.
    let e = s
        .run(&[
            "dry-run",
            "--plan",
            plan.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--insecure",
        ])
        .fails();
    assert!(e.contains("a database of its own"), "{e}");

    // va's file lacks the plan's columns: it withdraws, saying why, and the
    // dry run fails naming it; the sites still agreeing are told.
    let bad = s.write("va.csv", "1,2,3\n4,5,6\n");
    let db = s.path("dry2.sqlite");
    let (mut coordinator, url) = dry_run(&s, &plan, db.to_str().unwrap());
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| match *site {
            "va" => participant_with(&s.dir, &url, site, &bad, &[]),
            _ => participant(&s.dir, &url, site, &[]),
        })
        .collect();
    assert!(!coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    let out = coordinator.log();
    assert!(out.contains("site 'va': withdrew:"), "{out}");
    assert!(out.contains("dry run failed: site 'va' withdrew:"), "{out}");
    for p in &mut sites {
        assert!(!p.wait(LIMIT).success(), "{}", p.log());
    }
    let others = sites.iter().filter(|p| p.name != "va");
    for p in others {
        assert!(p.log().contains("the dry run failed"), "{}", p.log());
    }
}
