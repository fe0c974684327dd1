//! The canary drill: a 15-round run's models registered (round 1 in
//! production), then two rollouts to the four heart-disease sites, two
//! of which opted in as canaries: round 15's model is promoted, then round
//! 1's model again (now worse than production) is rolled back; after each,
//! every site serves the version decided, and the registry holds the
//! decision with its evidence. Then, under plans whose site metrics are
//! sums only, three canaries mask their comparison: round 1's model is
//! rolled back on the secure sum alone (`"aggregate-only"`), a candidate
//! is decided on the noised sum (`"dp"`), and a canary that already masked
//! a comparison of a version refuses a second one.

use std::sync::mpsc;
use std::time::Duration;

use super::*;

const CANARIES: [&str; 2] = ["cleveland", "hungarian"];

/// Runs `tessera rollout` of `name` and a participant of each site, each
/// keeping its models under `models-SITE`; gives the rollout's output.
fn roll_out(
    s: &Scratch,
    plan: &std::path::Path,
    db: &str,
    canaries: &[&str],
    extra: &[&str],
) -> String {
    roll_out_logs(s, plan, db, canaries, extra).0
}

/// [`roll_out`], with each site's output too (in `HEART_SITES`' order).
fn roll_out_logs(
    s: &Scratch,
    plan: &std::path::Path,
    db: &str,
    canaries: &[&str],
    extra: &[&str],
) -> (String, Vec<String>) {
    let (tx, rx) = mpsc::channel();
    let mut args = vec![
        "rollout",
        "--plan",
        plan.to_str().unwrap(),
        "--db",
        db,
        "--name",
        "heart",
        "--listen",
        "127.0.0.1:0",
        "--insecure",
    ];
    args.extend_from_slice(extra);
    let mut rollout = Proc::start("rollout", &s.dir, &args, Some(tx));
    let address = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the rollout did not start:\n{}", rollout.log()));
    let url = format!("http://{address}");
    let mut sites: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            let models = s.path(&format!("models-{site}"));
            let mut extra = vec!["--models", models.to_str().unwrap()];
            if canaries.contains(site) {
                extra.push("--canary");
            }
            let extra: Vec<String> = extra.into_iter().map(String::from).collect();
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            participant(&s.dir, &url, site, &extra)
        })
        .collect();
    assert!(rollout.wait(LIMIT).success(), "{}", rollout.log());
    for p in &mut sites {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
        assert!(
            p.log()
                .contains(&format!("site {} serves 'heart' version", p.name)),
            "{}",
            p.log()
        );
    }
    (rollout.log(), sites.iter().map(Proc::log).collect())
}

/// What `site` reported evaluating round `round`'s model in run `run`
/// (rows, rows right).
fn evaluated(db: &str, run: &str, site: &str, round: u32) -> (u64, u64) {
    use prost::Message;
    let conn = rusqlite::Connection::open(db).unwrap();
    let blob: Vec<u8> = conn
        .query_row(
            "SELECT report FROM evaluations WHERE run_id = ?1 AND site = ?2 AND round = ?3",
            rusqlite::params![run, site, round],
            |r| r.get(0),
        )
        .unwrap();
    let report = tessera_proto::pb::EvaluationReport::decode(blob.as_slice()).unwrap();
    (report.n_examples, report.n_correct)
}

/// The version `site` serves, from its models folder.
fn serving(s: &Scratch, site: &str) -> String {
    std::fs::read_to_string(s.path(&format!("models-{site}/heart/serving")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn a_worse_candidate_is_rolled_back_and_a_better_one_promoted_on_every_site() {
    if util::skip_e2e("a_worse_candidate_is_rolled_back_and_a_better_one_promoted_on_every_site") {
        return;
    }
    let s = Scratch::new("deploy-canary");
    let plan = plan_with(&s, "clear", "[privacy]\nsite_metrics = \"clear\"");
    let (mut coordinator, mut participants) = run_federation(&s, &plan, "c.sqlite", "a.model");
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let db = s.path("c.sqlite");
    let db = db.to_str().unwrap();
    let models = |args: &[&str]| {
        let mut all = vec!["models", "--db", db];
        all.extend_from_slice(args);
        s.run(&all)
    };
    let listed = s.run(&["runs", "list", "--db", db]).ok();
    let run = listed
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{listed}"))
        .to_string();
    let register = |round: &str| {
        models(&[
            "register", "--name", "heart", "--run", &run, "--round", round,
        ])
        .ok()
    };
    // Version 1 (round 1) in production, version 2 (round 15) the candidate.
    register("1");
    let to_production = ["promote", "--name", "heart", "--version", "1"];
    models(&[&to_production[..], &["--to", "production"]].concat()).ok();
    register("15");

    // A deadline that is no time is refused, and nothing changes.
    let e = s
        .run(&[
            "rollout",
            "--plan",
            plan.to_str().unwrap(),
            "--db",
            db,
            "--name",
            "heart",
            "--insecure",
            "--deadline",
            "0",
        ])
        .fails();
    assert!(e.contains("--deadline 0: give seconds"), "{e}");
    // A canary list naming no site of the plan is refused.
    let e = s
        .run(&[
            "rollout",
            "--plan",
            plan.to_str().unwrap(),
            "--db",
            db,
            "--name",
            "heart",
            "--insecure",
            "--canaries",
            "cleveland,mayo",
        ])
        .fails();
    assert!(e.contains("--canaries names 'mayo'"), "{e}");
    let out = roll_out(
        &s,
        &plan,
        db,
        &CANARIES,
        &["--canaries", "cleveland,hungarian"],
    );
    assert!(
        out.contains("version 2 is production: rollout run"),
        "{out}"
    );
    assert!(out.contains("promoted: on 2 canary site(s)'"), "{out}");
    for site in HEART_SITES {
        assert_eq!(serving(&s, site), "2", "{site}");
    }
    // Only the canary sites saw a candidate before the decision: the others
    // hold the version decided alone.
    assert!(s.path("models-cleveland/heart/v1.model").exists());
    assert!(!s.path("models-va/heart/v1.model").exists());

    // Round 1's model again as version 3: worse than version 2 now in
    // production, it is rolled back, and every site serves version 2 still.
    register("1");
    let out = roll_out(&s, &plan, db, &CANARIES, &["--deadline", "600"]);
    assert!(out.contains("version 3 is archived: rollout run"), "{out}");
    assert!(out.contains("rolled back: on 2 canary site(s)'"), "{out}");
    for site in HEART_SITES {
        assert_eq!(serving(&s, site), "2", "{site}");
    }
    assert!(s.path("models-hungarian/heart/v3.model").exists());
    assert!(!s.path("models-switzerland/heart/v3.model").exists());

    // The registry: each decision with its evidence, the pooled sums of the
    // canary sites, the candidate's accuracy below production's for version 3.
    for (version, stage, kind) in [
        ("2", "production", "promoted"),
        ("3", "archived", "rolled back"),
    ] {
        let shown: serde_json::Value = serde_json::from_str(
            &models(&["show", "--name", "heart", "--version", version, "--json"]).ok(),
        )
        .unwrap();
        let last = shown["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["to"], stage, "{shown}");
        let evidence: serde_json::Value =
            serde_json::from_str(last["evidence"].as_str().unwrap()).unwrap();
        assert_eq!(evidence["decision"], kind);
        assert_eq!(evidence["canary_sites"], serde_json::json!(CANARIES));
        let difference = evidence["difference"].as_f64().unwrap();
        let (c, p) = (
            evidence["candidate_accuracy"].as_f64().unwrap(),
            evidence["production_accuracy"].as_f64().unwrap(),
        );
        assert!((difference - (c - p)).abs() < 1e-12);
        if kind == "promoted" {
            assert!(difference >= 0.0, "{evidence}");
        } else {
            assert!(difference < 0.0, "{evidence}");
        }
        // The canaries' rows: each site's test rows, scored by both models.
        let rows: u64 = evidence["per_site"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v["rows"].as_u64().unwrap())
            .sum();
        assert_eq!(evidence["rows"].as_u64(), Some(rows));
        // Each canary's sums are what the site reported evaluating the same
        // round's model in the training run: scored from the registry's
        // model file, on the same test rows, by the same site.
        let (candidate_round, production_round) =
            if kind == "promoted" { (15, 1) } else { (1, 15) };
        for site in CANARIES {
            let scores = &evidence["per_site"][site];
            let rows = scores["rows"].as_u64().unwrap();
            let correct = |key: &str| scores[key].as_u64().unwrap();
            assert_eq!(
                (rows, correct("candidate_correct")),
                evaluated(db, &run, site, candidate_round),
                "{site}"
            );
            assert_eq!(
                (rows, correct("production_correct")),
                evaluated(db, &run, site, production_round),
                "{site}"
            );
            // The paired counts agree with the sums.
            assert_eq!(
                correct("candidate_only_right") as i64 - correct("production_only_right") as i64,
                correct("candidate_correct") as i64 - correct("production_correct") as i64,
                "{site}"
            );
        }
        assert_eq!(evidence["interval"], "paired", "{evidence}");
        println!(
            "{kind}: difference {difference:+.4}, paired 95% interval {}, candidate alone right \
             on {} rows, production alone on {}",
            evidence["ci95"], evidence["candidate_only_right"], evidence["production_only_right"]
        );
    }
    let back = secure_rollouts(&s, db, &run, &models, &register);

    // A rollback by hand (the production version before the one serving
    // back in production: 1 before 2, or 2 before 5 where the noised
    // comparison promoted 5) reaches every site through a rollout that only
    // serves.
    models(&["rollback", "--name", "heart", "--reason", "drill"]).ok();
    let out = roll_out(&s, &plan, db, &[], &["--serve"]);
    assert!(
        out.contains(&format!(
            "every site was sent 'heart' version {back}: every site still in the run serves"
        )),
        "{out}"
    );
    for site in HEART_SITES {
        assert_eq!(serving(&s, site), back, "{site}");
    }

    // No candidate is left.
    let e = s
        .run(&[
            "rollout",
            "--plan",
            plan.to_str().unwrap(),
            "--db",
            db,
            "--name",
            "heart",
            "--insecure",
        ])
        .fails();
    assert!(e.contains("has no candidate or canary version"), "{e}");
}

/// Under sums only: three canaries mask their comparison (a secure round
/// needs three, and the plan's `min_participants`, here 3). Gives the
/// version a rollback returns to after them: the production version before
/// the one serving (the noised comparison promotes 5 or keeps 2 at
/// random).
fn secure_rollouts(
    s: &Scratch,
    db: &str,
    run: &str,
    models: &dyn Fn(&[&str]) -> util::Run,
    register: &dyn Fn(&str) -> String,
) -> &'static str {
    let canaries = ["cleveland", "hungarian", "switzerland"];
    let sums = |metrics: &str| {
        let text = std::fs::read_to_string(plan(s, "fedavg", ""))
            .unwrap()
            .replace("min_participants = 4", "min_participants = 3");
        s.write(
            &format!("{metrics}.toml"),
            &format!("{text}\n[privacy]\nsite_metrics = \"{metrics}\"\n"),
        )
    };
    let evidence_of = |version: &str| -> serde_json::Value {
        let shown: serde_json::Value = serde_json::from_str(
            &models(&["show", "--name", "heart", "--version", version, "--json"]).ok(),
        )
        .unwrap();
        let last = shown["history"].as_array().unwrap().last().unwrap().clone();
        serde_json::from_str(last["evidence"].as_str().unwrap()).unwrap()
    };
    // Round 1's model as version 4 against version 2 (round 15), on the
    // exact secure sum: rolled back, and the sum is the three canaries'
    // training-time evaluations summed. A first try stopped by SIGTERM
    // before any site joins is not resumed: it says so, and once its run is
    // aborted the rollout starts again.
    register("1");
    let summed = sums("aggregate-only");
    let (tx, rx) = mpsc::channel();
    let mut stopped = Proc::start(
        "rollout",
        &s.dir,
        &[
            "rollout",
            "--plan",
            summed.to_str().unwrap(),
            "--db",
            db,
            "--name",
            "heart",
            "--listen",
            "127.0.0.1:0",
            "--insecure",
        ],
        Some(tx),
    );
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the rollout did not start:\n{}", stopped.log()));
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &stopped.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert_eq!(stopped.wait(LIMIT).code(), Some(143), "{}", stopped.log());
    assert!(
        stopped.log().contains("a rollout is not resumed"),
        "{}",
        stopped.log()
    );
    s.run(&["abort", "--db", db]).ok();
    let out = roll_out(s, &summed, db, &canaries, &[]);
    assert!(out.contains("version 4 is archived: rollout run"), "{out}");
    assert!(
        out.contains("rolled back: on the secure sum of 3 canary site(s)'"),
        "{out}"
    );
    for site in HEART_SITES {
        assert_eq!(serving(s, site), "2", "{site}");
    }
    let evidence = evidence_of("4");
    let (mut rows, mut right_15, mut right_1) = (0, 0, 0);
    for site in canaries {
        let (n, c15) = evaluated(db, run, site, 15);
        let (n1, c1) = evaluated(db, run, site, 1);
        assert_eq!(n, n1);
        rows += n;
        right_15 += c15;
        right_1 += c1;
    }
    assert_eq!(evidence["rows"].as_f64(), Some(rows as f64), "{evidence}");
    assert_eq!(evidence["secure_aggregation"], true);
    assert_eq!(evidence["interval"], "paired");
    assert_eq!(evidence["canary_sites"], serde_json::json!(canaries));
    // Each canary keeps a mark of the comparison it masked (it masks one a
    // version); the other site none.
    for site in canaries {
        assert!(s.path(&format!("models-{site}/heart/compared-v4")).exists());
    }
    assert!(!s.path("models-va/heart/compared-v4").exists());
    let accuracy = |key: &str| evidence[key].as_f64().unwrap();
    assert!((accuracy("production_accuracy") - right_15 as f64 / rows as f64).abs() < 1e-12);
    assert!((accuracy("candidate_accuracy") - right_1 as f64 / rows as f64).abs() < 1e-12);
    println!(
        "secure sum: rolled back, difference {:+.4}, paired 95% interval {}, on {rows} rows",
        accuracy("difference"),
        evidence["ci95"]
    );

    // Round 8's model as version 5 under "dp": decided on the noised sum,
    // with the interval widened for the noise; every site serves the
    // version decided, whichever it is.
    register("8");
    let out = roll_out(s, &sums("dp"), db, &canaries, &[]);
    let evidence = evidence_of("5");
    assert_eq!(evidence["interval"], "paired, noised", "{evidence}");
    assert!(evidence["noise_std"].as_f64().unwrap() > 0.0);
    assert!(evidence["metrics_epsilon"].as_f64().unwrap() > 0.0);
    // Promoted only where the widened interval's lower end is at least 0
    // (the default --max-drop).
    let lower = evidence["ci95"][0].as_f64().unwrap();
    let promoted = evidence["decision"] == "promoted";
    assert_eq!(promoted, lower >= 0.0, "{evidence}");
    let serve = if promoted { "5" } else { "2" };
    for site in HEART_SITES {
        assert_eq!(serving(s, site), serve, "{site}");
    }
    println!(
        "noised secure sum: {}, difference {:+.4}, 95% interval {}, noise std {:.2}, metrics \
         epsilon {:.4}",
        evidence["decision"],
        evidence["difference"].as_f64().unwrap(),
        evidence["ci95"],
        evidence["noise_std"].as_f64().unwrap(),
        evidence["metrics_epsilon"].as_f64().unwrap()
    );
    assert!(out.contains("noised (standard deviation"), "{out}");

    // A canary that already masked a comparison of a version (its mark
    // planted here) refuses to mask a second one, saying why at the site;
    // the other three canaries' sum decides.
    register("12");
    s.write("models-switzerland/heart/compared-v6", "an earlier run\n");
    let all = ["cleveland", "hungarian", "switzerland", "va"];
    let (out, logs) = roll_out_logs(s, &sums("aggregate-only"), db, &all, &[]);
    let switzerland = &logs[2];
    assert!(
        switzerland.contains("this canary already masked its comparison of 'heart' version 6"),
        "{switzerland}"
    );
    assert!(
        out.contains("on the secure sum of 3 canary site(s)'"),
        "{out}"
    );
    let evidence = evidence_of("6");
    assert_eq!(
        evidence["canary_sites"],
        serde_json::json!(["cleveland", "hungarian", "va"]),
        "{evidence}"
    );
    for site in ["cleveland", "hungarian", "va"] {
        assert!(s.path(&format!("models-{site}/heart/compared-v6")).exists());
    }
    println!(
        "a second comparison refused at switzerland; {}",
        evidence["decision"]
    );
    // Version 6 is compared with the version serving, and rolled back or
    // promoted (then the one serving before it is the one to return to).
    match evidence["decision"].as_str() {
        Some("promoted") => serve,
        _ if promoted => "2",
        _ => "1",
    }
}
