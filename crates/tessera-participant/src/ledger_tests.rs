#![allow(clippy::unwrap_used)]

use super::*;

fn plan(privacy: &str, rounds: u32) -> Plan {
    Plan::from_toml(
        &format!(
            "name = \"ledger\"\n[data]\nsite_column = \"site\"\n[data.synthetic]\nsites = 3\nrows = \
             50\nfeatures = 2\nclasses = 2\nalpha = 0.5\nbeta = 0.5\nseed = 7\n[data.schema]\n\
             target = \"y\"\n[model]\nkind = \"logistic\"\n[federation]\nrounds = {rounds}\n\
             [privacy]\n{privacy}\n"
        ),
        "test",
    )
    .unwrap()
}

/// The event of one query at epsilon 1, delta 1e-6 (as `prepare` makes it).
fn query_event() -> DpEvent {
    let z = tessera_privacy::calibrate_noise_multiplier(1.0, 1, 1.0, 1e-6).unwrap();
    DpEvent {
        sampling_rate: 1.0,
        noise_multiplier: z,
        steps: 1,
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-ledger-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("site0.json")
}

/// The attack: a coordinator whose own ledger is empty (it lost its
/// database, or starts a new run of the same plan) asks again. The site's
/// count survives the restart of its process and the new run id, and the
/// query past the budget is refused naming the site's file.
#[test]
fn a_new_run_or_a_restart_does_not_reset_the_sites_count() {
    let path = scratch("reset");
    let plan = plan("budget = 1.2\ndelta = 1e-6", 2);
    let mut first = SiteLedger::open(Some(&path), "site0", &plan, "run-a").unwrap();
    first
        .record_query(1, "SELECT count(*) FROM data", Some(query_event()), false)
        .unwrap();
    let spent = first.epsilon();
    assert!((spent - 1.0).abs() < 0.05, "{spent}");
    drop(first);
    let mut second = SiteLedger::open(Some(&path), "site0", &plan, "run-b").unwrap();
    assert_eq!(second.epsilon(), spent, "read back from the file");
    let e = second
        .record_query(1, "SELECT count(*) FROM data", Some(query_event()), false)
        .unwrap_err();
    assert!(e.contains("budget") && e.contains("site0.json"), "{e}");
    // Nothing was written for the refused release.
    let third = SiteLedger::open(Some(&path), "site0", &plan, "run-c").unwrap();
    assert_eq!(third.entries(), 1);
    // Another plan (another budget agreed to) counts apart.
    let other = plan_with_name("other");
    let fresh = SiteLedger::open(Some(&path), "site0", &other, "run-d").unwrap();
    assert_eq!(fresh.epsilon(), 0.0);
    assert!(
        fresh
            .check_query(1, "q", Some(query_event()), false)
            .is_ok()
    );
}

fn plan_with_name(name: &str) -> Plan {
    let mut p = plan("budget = 1.2\ndelta = 1e-6", 2);
    p.name = name.into();
    p
}

/// A release number of a run is answered once: asked again, with another
/// query or the same one, the site refuses (each answer is fresh noise, so
/// a second one would be a release its first charge does not cover).
#[test]
fn a_release_number_is_answered_once() {
    let plan = plan("budget = 5.0\ndelta = 1e-6", 2);
    let mut l = SiteLedger::open(None, "site0", &plan, "run").unwrap();
    l.record_query(3, "SELECT count(*) FROM data", Some(query_event()), false)
        .unwrap();
    let once = l.epsilon();
    let e = l
        .record_query(3, "SELECT count(*) FROM data", Some(query_event()), false)
        .unwrap_err();
    assert!(
        e.contains("release 3") && e.contains("the same query"),
        "{e}"
    );
    let e = l
        .record_query(3, "SELECT mean(x0) FROM data", Some(query_event()), false)
        .unwrap_err();
    assert!(
        e.contains("release 3") && e.contains("another query"),
        "{e}"
    );
    assert_eq!(l.epsilon(), once, "nothing more is charged");
    // An exact query (the plan said dp = false) is recorded, uncharged.
    l.record_query(4, "SELECT count(*) FROM data", None, false)
        .unwrap();
    assert_eq!(l.epsilon(), once);
    assert!(l.record_query(4, "other", None, false).is_err());
}

/// Entries without DP bound nothing: past `MAX_UNCHARGED` under a plan the
/// oldest go, so a plan without DP cannot grow the file without end.
#[test]
fn answers_without_dp_are_kept_bounded() {
    let plan = plan("budget = 5.0\ndelta = 1e-6", 2);
    let mut l = SiteLedger::open(None, "site0", &plan, "run").unwrap();
    for release in 1..=(MAX_UNCHARGED as u32 + 5) {
        l.record_query(release, "q", None, false).unwrap();
    }
    assert_eq!(l.entries(), MAX_UNCHARGED);
    l.record_query(MAX_UNCHARGED as u32 + 6, "q", Some(query_event()), false)
        .unwrap();
    assert_eq!(
        l.entries(),
        MAX_UNCHARGED + 1,
        "a DP entry is never dropped"
    );
}

/// With central DP each round this site trains in is the plan's round
/// event, once per round of a run; the plan's rounds fit its budget, and
/// a second run of the same plan does not.
#[test]
fn training_is_counted_and_a_second_run_of_the_plan_is_refused() {
    let path = scratch("training");
    let plan = plan(
        "mode = \"central\"\nepsilon = 2.0\ndelta = 1e-5\nclip_norm = 1.0\nbudget = 2.0",
        3,
    );
    let mut l = SiteLedger::open(Some(&path), "site0", &plan, "run-a").unwrap();
    for round in 1..=3 {
        l.record_training(round, None).unwrap();
        l.record_training(round, None).unwrap();
    }
    let spent = l.epsilon();
    assert!(spent > 1.9 && spent <= 2.0 + 1e-9, "{spent}");
    drop(l);
    let mut again = SiteLedger::open(Some(&path), "site0", &plan, "run-b").unwrap();
    // Refused before any training: the second run's 3 rounds do not fit.
    let e = again.check_run(3, None).unwrap_err();
    assert!(e.contains("3 rounds") && e.contains("site0.json"), "{e}");
    // The first run restarted is left to the checks before each release.
    let resumed = SiteLedger::open(Some(&path), "site0", &plan, "run-a").unwrap();
    resumed.check_run(3, None).unwrap();
    let e = again.record_training(1, None).unwrap_err();
    assert!(e.contains("round 1") && e.contains("budget"), "{e}");
    // Queries share the count: nothing is left for one.
    assert!(
        again
            .check_query(1, "q", Some(query_event()), false)
            .is_err()
    );
    // Without DP nothing is counted.
    let none = plan_with_name("none");
    let mut plain = SiteLedger::open(Some(&path), "site0", &none, "run").unwrap();
    plain.record_training(1, None).unwrap();
    assert_eq!(plain.entries(), 0);
}

/// With local DP each training is a release of its own (fresh noise): a
/// round trained twice, as after a restart, is charged twice.
#[test]
fn every_local_dp_training_is_charged() {
    let plan = plan("budget = 50.0\ndelta = 1e-5", 3);
    let mut l = SiteLedger::open(None, "site0", &plan, "run").unwrap();
    let event = DpEvent {
        sampling_rate: 0.1,
        noise_multiplier: 1.0,
        steps: 10,
    };
    l.record_training(1, Some(event)).unwrap();
    let once = l.epsilon();
    l.record_training(1, Some(event)).unwrap();
    assert!(l.epsilon() > once, "{} after {once}", l.epsilon());
    assert_eq!(l.entries(), 2);
}

/// A file that is not this site's ledger is refused, naming it, and left
/// as it is; one too large is refused before it is read.
#[test]
fn a_bad_ledger_file_is_refused_and_kept() {
    let plan = plan("budget = 5.0\ndelta = 1e-6", 2);
    let path = scratch("bad");
    std::fs::write(&path, "{ not json").unwrap();
    let e = SiteLedger::open(Some(&path), "site0", &plan, "r")
        .err()
        .unwrap();
    assert!(
        e.contains("site0.json") && e.contains("not a ledger"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");

    let mut l = SiteLedger::open(Some(&scratch("owner")), "site0", &plan, "r").unwrap();
    l.record_query(1, "q", Some(query_event()), false).unwrap();
    let written = l.path.clone().unwrap();
    let e = SiteLedger::open(Some(&written), "site1", &plan, "r")
        .err()
        .unwrap();
    assert!(e.contains("site 'site0'"), "{e}");

    let big = scratch("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap();
    let e = SiteLedger::open(Some(&big), "site0", &plan, "r")
        .err()
        .unwrap();
    assert!(e.contains("MiB"), "{e}");
}

/// Two processes keeping one ledger would lose each other's entries: the
/// second lock is refused while the first is held.
#[test]
fn one_process_at_a_time_keeps_a_ledger() {
    let path = scratch("lock");
    let held = lock(&path).unwrap();
    let e = lock(&path).unwrap_err();
    assert!(e.contains("in use by another participant process"), "{e}");
    drop(held);
    assert!(lock(&path).is_ok());
}

/// A PER SITE query releases the site's rows twice (in the federation's
/// sum and in its own answer): both are charged, and a budget that fits
/// one release refuses the pair.
#[test]
fn a_per_site_answer_is_charged_besides_the_federations() {
    let roomy = plan("budget = 5.0\ndelta = 1e-6", 2);
    let mut plain = SiteLedger::open(None, "site0", &roomy, "r").unwrap();
    plain
        .record_query(1, "SELECT count(*) FROM data", Some(query_event()), false)
        .unwrap();
    let mut own = SiteLedger::open(None, "site0", &roomy, "r").unwrap();
    own.record_query(
        1,
        "SELECT count(*) FROM data PER SITE",
        Some(query_event()),
        true,
    )
    .unwrap();
    assert!(
        own.epsilon() > 1.3 * plain.epsilon(),
        "{} against {}",
        own.epsilon(),
        plain.epsilon()
    );
    let tight = plan("budget = 1.2\ndelta = 1e-6", 2);
    let l = SiteLedger::open(None, "site0", &tight, "r").unwrap();
    let e = l
        .check_query(1, "q", Some(query_event()), true)
        .unwrap_err();
    assert!(e.contains("budget"), "{e}");
    assert!(l.check_query(1, "q", Some(query_event()), false).is_ok());
}

/// The cross-silo feature's answers are charged before they leave, each
/// computation again (fresh noise), refused when the plan's central
/// rounds would not fit after them; and the charge does not make the run
/// one already under way, so the rounds are still checked before training.
#[test]
fn the_cross_silo_feature_is_charged_and_leaves_the_rounds_checked() {
    let path = scratch("cross-silo");
    // Central DP at epsilon 2 over 4 rounds; budget 2.5.
    let plan = plan(
        "mode = \"central\"\nepsilon = 2.0\nbudget = 2.5\ndelta = 1e-6",
        4,
    );
    let small = DpEvent {
        sampling_rate: 1.0,
        noise_multiplier: 20.0,
        steps: 2,
    };
    let mut l = SiteLedger::open(Some(&path), "site0", &plan, "run-a").unwrap();
    l.record_cross_silo(small, "visits").unwrap();
    let after_one = l.epsilon();
    assert!(after_one > 0.0);
    assert!(l.check_run(4, None).is_ok(), "room left for the rounds");
    l.record_cross_silo(small, "visits").unwrap();
    assert!(l.epsilon() > after_one, "charged again");
    // A charge that leaves no room for the rounds is refused, unwritten.
    let big = DpEvent {
        noise_multiplier: 1.0,
        ..small
    };
    let e = l.record_cross_silo(big, "visits").unwrap_err();
    assert!(e.contains("rounds") && e.contains("site0.json"), "{e}");
    drop(l);
    let l = SiteLedger::open(Some(&path), "site0", &plan, "run-a").unwrap();
    assert_eq!(l.entries(), 2, "the refused charge was not written");
    // With a cross-silo entry only, this run's rounds are still checked
    // (a run already under way would skip the check): 4 rounds fit, 400
    // do not.
    let path = scratch("cross-silo-2");
    let mut l = SiteLedger::open(Some(&path), "site0", &plan, "run-b").unwrap();
    l.record_cross_silo(small, "visits").unwrap();
    assert!(l.check_run(4, None).is_ok());
    let e = l.check_run(400, None).unwrap_err();
    assert!(e.contains("400 rounds"), "{e}");
}

/// Without a budget nothing would bound repeated computations of the
/// feature (each fresh noise, averaged away over runs): it is computed
/// once under the plan, and a second run is refused naming the budget.
#[test]
fn without_a_budget_the_cross_silo_feature_is_computed_once_per_plan() {
    let path = scratch("cross-silo-unbounded");
    let plan = plan("mode = \"off\"", 4);
    let event = DpEvent {
        sampling_rate: 1.0,
        noise_multiplier: 1.0,
        steps: 2,
    };
    let mut l = SiteLedger::open(Some(&path), "site0", &plan, "run-a").unwrap();
    l.record_cross_silo(event, "visits").unwrap();
    drop(l);
    let mut l = SiteLedger::open(Some(&path), "site0", &plan, "run-b").unwrap();
    let e = l.record_cross_silo(event, "visits").unwrap_err();
    assert!(
        e.contains("already computed") && e.contains("budget"),
        "{e}"
    );
}

/// The data quality score (`[contribution]`) is released once a plan: a
/// restart of the site's process or a new run of the plan sends the score
/// the file kept, not a fresh draw (which would be another release), and
/// many releases without DP do not push it out.
#[test]
fn the_quality_score_is_drawn_once_a_plan_and_kept() {
    let path = scratch("quality");
    let plan = plan("", 2);
    let mut first = SiteLedger::open(Some(&path), "site0", &plan, "run-a").unwrap();
    assert_eq!(first.quality(|| Ok(0.625)).unwrap(), 0.625);
    for round in 0..(MAX_UNCHARGED as u32 + 5) {
        first.add("training", round, None, None);
    }
    first.push("training", u32::MAX, None, None).unwrap();
    assert_eq!(first.entries(), MAX_UNCHARGED, "pruned, the score kept");
    drop(first);
    let mut second = SiteLedger::open(Some(&path), "site0", &plan, "run-b").unwrap();
    let drawn = second.quality(|| panic!("drawn again")).unwrap();
    assert_eq!(drawn, 0.625, "the kept score, not a new draw");
    // A failed draw releases nothing and writes nothing.
    let other = plan_with_name("other");
    let mut third = SiteLedger::open(Some(&path), "site0", &other, "run-c").unwrap();
    assert!(third.quality(|| Err("no randomness".into())).is_err());
    assert_eq!(third.quality(|| Ok(0.25)).unwrap(), 0.25);
}
