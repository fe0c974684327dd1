//! Differential privacy deployed: central DP's ledger, budget and kill -9
//! resume with no key in the database, and local DP-SGD's per-participant
//! ledger and secret batches.

use crate::util::procs::{HEART_SITES, coordinator, wait_until};
use crate::util::status::{poll, status_of};
use crate::util::{self, Scratch};
use crate::{LIMIT, heart_with_slow_va, plan_with, run_federation};

#[test]
fn central_dp_in_deployment_records_every_release_and_refuses_past_the_budget() {
    if util::skip_e2e("central_dp_in_deployment_records_every_release_and_refuses_past_the_budget")
    {
        return;
    }
    let s = Scratch::new("deploy-dp");
    let dp = plan_with(
        &s,
        "dp",
        "[privacy]\nmode = \"central\"\nepsilon = 3.0\ndelta = 1e-5\nclip_norm = 0.05\n\n\
         [robust]\nnorm_bound = 10.0\n",
    );
    let (mut coordinator, mut participants) = run_federation(&s, &dp, "dp.sqlite", "dp.model");
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let db = s.path("dp.sqlite");
    assert_eq!(status_of(&db).ledger().len(), 15);
    assert_no_key_in(&db);
    let ledger = s.run(&["privacy", "--db", db.to_str().unwrap()]).ok();
    println!("{ledger}");
    assert!(
        ledger.contains("central DP, 15 release(s), epsilon 2.99"),
        "{ledger}"
    );
    assert!(ledger.contains("of a budget of 3"), "{ledger}");
    // Each participant's own spend: under central DP, every site spent the run's.
    let report = s.json("dp.model.json");
    let epsilon = report["privacy"]["epsilon"].as_f64().unwrap();
    for site in HEART_SITES {
        assert_eq!(participant_epsilon(&ledger, site), format!("{epsilon:.4}"));
    }
    assert!(epsilon <= 3.0 && epsilon > 2.9, "{epsilon}");
    assert_eq!(report["privacy"]["ledger"].as_array().unwrap().len(), 15);
    assert_eq!(report["privacy"]["release"], true);
    // The ledger is append-only.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let refused = conn.execute("DELETE FROM privacy_ledger", []).unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");

    // The same plan again on a fresh database: the coordinator's ledger is
    // empty, but each site's own ledger (its working folder's
    // tessera-ledger-SITE.json) holds the first run's 15 rounds, so every
    // site refuses the plan before training (exit 17), naming its ledger.
    let (mut again, mut sites) = run_federation(&s, &dp, "again.sqlite", "again.model");
    for p in &mut sites {
        let status = p.wait(LIMIT);
        assert_eq!(status.code(), Some(17), "{}", p.log());
        assert!(
            p.log()
                .contains("the plan's 15 rounds, on top of this site's own ledger"),
            "{}",
            p.log()
        );
    }
    again.kill_9();
    assert_eq!(status_of(&s.path("again.sqlite")).ledger().len(), 0);

    // A budget too small for the plan: the coordinator refuses before listening.
    let small = plan_with(
        &s,
        "small",
        "[privacy]\nmode = \"central\"\nnoise_multiplier = 5.0\nbudget = 1.0\n",
    );
    let run = s.run(&[
        "coordinator",
        "--plan",
        small.to_str().unwrap(),
        "--db",
        s.path("small.sqlite").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--insecure",
    ]);
    assert!(!run.output.status.success());
    let message = run.stderr();
    assert!(!message.contains("panicked"), "{message}");
    assert!(
        message.contains("error: run privacy budget exceeded: the plan's 15 remaining rounds"),
        "{message}"
    );
}

/// Each participant's epsilon in `tessera privacy`'s table (its second column).
fn participant_epsilon(ledger: &str, site: &str) -> String {
    ledger
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(site))
                .then(|| words.next().map(str::to_string))
                .flatten()
        })
        .unwrap_or_else(|| panic!("no line for {site} in\n{ledger}"))
}

/// Every value of every table of `db`, with its table and column.
fn every_value(db: &std::path::Path) -> Vec<(String, String, rusqlite::types::Value)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = Vec::new();
    for table in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let columns: Vec<String> = stmt.column_names().map(str::to_string).collect();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for (i, column) in columns.iter().enumerate() {
                out.push((table.clone(), column.clone(), row.get(i).unwrap()));
            }
        }
    }
    out
}

/// The database of a central DP run holds no key: no table or column named
/// for a secret, no 32-byte value, no text naming a secret; and the file,
/// its write-ahead log and shared memory are the owner's only.
fn assert_no_key_in(db: &std::path::Path) {
    use rusqlite::types::Value;
    use std::os::unix::fs::PermissionsExt;
    let values = every_value(db);
    assert!(values.len() > 100, "the scan reads the database");
    for (table, column, value) in &values {
        let names = format!("{table}.{column}").to_lowercase();
        assert!(
            !names.contains("secret") && !names.contains("key"),
            "{names}"
        );
        match value {
            Value::Blob(b) => assert_ne!(b.len(), 32, "a 32-byte blob in {names}"),
            Value::Text(t) => assert!(!t.to_lowercase().contains("secret"), "{names}: {t}"),
            _ => {}
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        if let Ok(meta) = std::fs::metadata(&path) {
            assert_eq!(
                meta.permissions().mode() & 0o777,
                0o600,
                "{}",
                std::path::Path::new(&path).display()
            );
        }
    }
}

/// The attack on a central DP database: with a round's noise key the
/// stored noised mean minus the key's noise is the mean of updates clipped
/// to `clip_norm`, so its norm is at most `clip_norm`; every other key
/// leaves noise of norm about sqrt(2 d) noise_std. Tries every 32-byte
/// window of every value in the database, and the simulation's key (from
/// the plan's seed), on every closed round; returns the rounds' noised
/// means' norms over the clipping norm, for the caller to check the noise
/// dominates.
fn try_to_denoise(db: &std::path::Path, seed: u64, clip_norm: f64) -> Vec<f64> {
    use rusqlite::types::Value;
    let conn = rusqlite::Connection::open(db).unwrap();
    let rounds: Vec<(u32, Vec<u8>, f64)> = conn
        .prepare(
            "SELECT a.round, a.mean_delta, l.noise_std FROM round_aggregates a
             JOIN privacy_ledger l ON l.run_id = a.run_id AND l.release = a.round ORDER BY a.round",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!rounds.is_empty());
    let mut candidates: Vec<[u8; 32]> = vec![tessera_sim::simulation_noise_key(seed)];
    for (_, _, value) in every_value(db) {
        let bytes = match value {
            Value::Blob(b) => b,
            Value::Text(t) => t.into_bytes(),
            Value::Integer(i) => i.to_le_bytes().to_vec(),
            _ => continue,
        };
        candidates.extend(bytes.windows(32).map(|w| <[u8; 32]>::try_from(w).unwrap()));
    }
    candidates.sort_unstable();
    candidates.dedup();
    let mut ratios = Vec::new();
    for (round, mean, noise_std) in &rounds {
        let mean = tessera_proto::decode_parameters(mean).unwrap();
        let values: Vec<f64> = mean.values().map(f64::from).collect();
        let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
        ratios.push(norm / clip_norm);
        for key in &candidates {
            let mut noise = tessera_privacy::GaussianNoise::new(*key, u64::from(*round));
            let rest = values
                .iter()
                .map(|v| (v - noise_std * noise.standard_normal()).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                rest > clip_norm,
                "round {round}: a key from the database removes the noise ({rest} <= {clip_norm})"
            );
        }
    }
    println!(
        "tried {} candidate keys on {} rounds: none removes the noise",
        candidates.len(),
        rounds.len()
    );
    ratios
}

#[test]
fn central_dp_resumes_after_kill_9_with_no_key_in_the_database() {
    if util::skip_e2e("central_dp_resumes_after_kill_9_with_no_key_in_the_database") {
        return;
    }
    let s = Scratch::new("deploy-dp-kill");
    let dp = plan_with(
        &s,
        "dp",
        "[privacy]\nmode = \"central\"\nepsilon = 3.0\nclip_norm = 0.05\n",
    );
    let (simulated, simulated_model) = s.simulate(&dp, "sim.model");
    let db = s.path("dp.sqlite");
    let (mut first, url) = coordinator(&s.dir, &dp, &db, 0, &[]);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut participants = heart_with_slow_va(&s, &url, "1.5");
    wait_until(LIMIT, "round 3 with three accepted updates", || {
        poll(&db, |s| s.pending_updates_of(3)) == 3
    });
    first.kill_9();
    assert_eq!(status_of(&db).ledger().len(), 2);
    assert_no_key_in(&db);
    let (mut second, _) = coordinator(
        &s.dir,
        &dp,
        &db,
        port,
        &["--report", "dep.json", "--model-out", "dep.model"],
    );
    assert!(second.wait(LIMIT).success(), "{}", second.log());
    assert!(second.log().contains("resumed"), "{}", second.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(status_of(&db).ledger().len(), 15);
    assert_no_key_in(&db);
    let mut ratios = try_to_denoise(&db, 42, 0.05);
    // A mean of updates clipped to C has norm at most C: every stored mean
    // is above it (its noise is there), and the noise dominates them (the
    // median; one round of 15 can fall near 3 by chance: the norm of the
    // noise is chi-distributed with few degrees of freedom).
    assert!(ratios.iter().all(|&r| r > 1.0), "{ratios:?}");
    ratios.sort_by(f64::total_cmp);
    assert!(ratios[ratios.len() / 2] > 3.0, "{ratios:?}");
    let report = s.json("dep.json");
    let epsilon = report["privacy"]["epsilon"].as_f64().unwrap();
    // The same spend as an uninterrupted run and as the simulation: 15
    // releases, none counted twice, at the same noise.
    assert!((epsilon - 2.9982).abs() < 1e-3, "{epsilon}");
    assert_eq!(
        report["privacy"]["epsilon"],
        simulated["privacy"]["epsilon"]
    );
    assert_eq!(report["privacy"]["ledger"], simulated["privacy"]["ledger"]);
    assert_eq!(report["rounds"].as_array().unwrap().len(), 15);
    let releases: Vec<u64> = report["privacy"]["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["release"].as_u64().unwrap())
        .collect();
    assert_eq!(releases, (1..=15).collect::<Vec<u64>>());
    assert_eq!(report["privacy"]["release"], true);
    assert_eq!(simulated["privacy"]["release"], false);
    // The noise is secret: the deployment's model is not the simulation's.
    let deployed = util::model(&s.path("dep.model"));
    assert_ne!(deployed, simulated_model, "the noise derives from the seed");
    let (a, b) = (
        util::parameters(&deployed),
        util::parameters(&simulated_model),
    );
    let gap = a
        .values()
        .zip(b.values())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    println!("largest difference from the simulated model: {gap:e}");
    assert!(gap > 1e-4, "{gap}");
}

#[test]
fn local_dp_sgd_in_deployment_fills_the_ledger_per_participant() {
    if util::skip_e2e("local_dp_sgd_in_deployment_fills_the_ledger_per_participant") {
        return;
    }
    let s = Scratch::new("deploy-local-dp");
    let dp = plan_with(
        &s,
        "local",
        "[privacy]\nmode = \"local\"\nepsilon = 3.0\nclip_norm = 1.0\n",
    );
    let (mut coordinator, mut participants) =
        run_federation(&s, &dp, "local.sqlite", "local.model");
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    let db = s.path("local.sqlite");
    let ledger = status_of(&db).ledger().to_vec();
    let local = ledger.iter().filter(|e| e["kind"] == "local").count();
    assert_eq!(local, 60);
    let participants: std::collections::BTreeSet<String> = ledger
        .iter()
        .map(|e| e["participant"].to_string())
        .collect();
    assert_eq!(participants.len(), 4, "{participants:?}");
    let ledger = s.run(&["privacy", "--db", db.to_str().unwrap()]).ok();
    println!("{ledger}");
    assert!(
        ledger.contains("local DP, 60 release(s), epsilon 2.99"),
        "{ledger}"
    );
    let report = s.json("local.model.json");
    assert_eq!(report["privacy"]["mode"], "local");
    let epsilon = report["privacy"]["epsilon"].as_f64().unwrap();
    assert!(epsilon <= 3.0 && epsilon > 2.99, "{epsilon}");
    // Each site calibrated its own noise to its own sampling rate: the
    // report names every multiplier, and `tessera privacy` every site's own
    // spend (each within the target; the run's is the largest).
    let multipliers = report["privacy"]["site_noise_multipliers"]
        .as_object()
        .unwrap();
    assert_eq!(multipliers.len(), 4, "{multipliers:?}");
    let mut distinct: Vec<String> = multipliers.values().map(|z| z.to_string()).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        4,
        "sites of different sizes: {multipliers:?}"
    );
    let mut largest = 0.0f64;
    for site in HEART_SITES {
        let own: f64 = participant_epsilon(&ledger, site).parse().unwrap();
        assert!(own <= 3.0 && own > 2.9, "{site}: {own}");
        largest = largest.max(own);
    }
    assert_eq!(format!("{largest:.4}"), format!("{epsilon:.4}"));
    assert_eq!(report["privacy"]["release"], true);
}

/// DP-SGD's randomness is the site's secret: with noise too small to move a
/// float (so what is left random is the Poisson sampling), two deployments
/// of the same plan and seed, and its simulation, give three different
/// models; if the batches came from the run seed, all three would be equal.
#[test]
fn local_dp_sgd_batches_cannot_be_recomputed_from_the_plan_and_seed() {
    if util::skip_e2e("local_dp_sgd_batches_cannot_be_recomputed_from_the_plan_and_seed") {
        return;
    }
    let s = Scratch::new("deploy-local-dp-secret");
    let dp = plan_with(
        &s,
        "local",
        "[privacy]\nmode = \"local\"\nnoise_multiplier = 1e-9\nclip_norm = 1.0\n",
    );
    let (simulated, simulated_model) = s.simulate(&dp, "sim.model");
    let mut models = vec![util::parameters(&simulated_model)];
    let mut accuracies = vec![simulated["final"]["accuracy"].as_f64().unwrap()];
    for run in ["first", "second"] {
        let model = format!("{run}.model");
        let (mut coordinator, mut participants) =
            run_federation(&s, &dp, &format!("{run}.sqlite"), &model);
        assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
        for p in &mut participants {
            assert!(p.wait(LIMIT).success(), "{}", p.log());
            assert!(p.log().contains("done: 15 updates accepted"), "{}", p.log());
        }
        let report = s.json(&format!("{model}.json"));
        assert_eq!(
            report["privacy"]["epsilon"],
            simulated["privacy"]["epsilon"]
        );
        accuracies.push(report["final"]["accuracy"].as_f64().unwrap());
        models.push(util::parameters(&util::model(&s.path(&model))));
    }
    let names = ["simulation", "first deployment", "second deployment"];
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let gap = models[i]
            .values()
            .zip(models[j].values())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        println!(
            "{} against {}: largest parameter difference {gap:e}, accuracy {} against {}",
            names[i], names[j], accuracies[i], accuracies[j]
        );
        assert!(
            gap > 1e-5,
            "{} and {} drew the same batches",
            names[i],
            names[j]
        );
    }
}
