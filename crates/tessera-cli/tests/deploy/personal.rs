//! Deployed FedPer and FedRep runs on Fed-Heart-Disease with an MLP: each
//! site's head (the last layer) stays at the site. The coordinator's database (every
//! model, every round's aggregate, and every byte of the file, freed pages
//! included, where the sites' updates were kept until their round closed)
//! holds none of a site's head values, and each site takes home its
//! personalized model, which is the simulation's. Per-FedAvg's deployed run
//! APFL's and IFCA's are their simulations; a Ditto site restarted mid-run says from which round
//! its personal model is.

use tessera_core::ParameterSet;
use tessera_engine::model_file::ModelFile;

use crate::util::procs::{
    HEART_SITES, Proc, coordinator, heart_file, participant, participant_with, wait_until,
};
use crate::util::status::poll;
use crate::util::{self, Scratch};
use crate::{LIMIT, heart_text};

const HEAD: [&str; 2] = ["dense1.weight", "dense1.bias"];
const BODY: [&str; 2] = ["dense0.weight", "dense0.bias"];

fn values(p: &ParameterSet, names: &[&str]) -> Vec<f32> {
    names
        .iter()
        .flat_map(|n| p.get(n).unwrap().data().to_vec())
        .collect()
}

/// Whether any two consecutive values of `of` appear, as stored (f32
/// little-endian), anywhere in `bytes`.
fn holds_any(bytes: &[u8], of: &[f32]) -> bool {
    of.windows(2).any(|pair| {
        let needle: Vec<u8> = pair.iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes.windows(needle.len()).any(|w| w == needle.as_slice())
    })
}

#[test]
fn fedpers_heads_never_reach_the_coordinator_and_each_site_takes_its_own_home() {
    if util::skip_e2e("fedpers_heads_never_reach_the_coordinator_and_each_site_takes_its_own_home")
    {
        return;
    }
    heads_stay_home("fedper", "");
}

#[test]
fn fedreps_heads_never_reach_the_coordinator_and_each_site_takes_its_own_home() {
    if util::skip_e2e("fedreps_heads_never_reach_the_coordinator_and_each_site_takes_its_own_home")
    {
        return;
    }
    heads_stay_home("fedrep", "\n[strategies.fedrep]\nhead_passes = 3\n");
}

/// A deployed run of `strategy` (with `settings` appended to the plan)
/// keeps every site's head out of the coordinator's database, and each
/// site's personalized model and report are the simulation's.
fn heads_stay_home(strategy: &str, settings: &str) {
    let s = Scratch::new(strategy);
    let text = heart_text(&s, 4)
        .replace("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [8]")
        .replace(
            "strategy = \"fedavg\"",
            &format!("strategy = \"{strategy}\""),
        )
        + "\n[privacy]\nsite_metrics = \"clear\"\n"
        + settings;
    assert!(text.contains(&format!("strategy = \"{strategy}\"")) && text.contains("hidden = [8]"));
    // Each site's personalized model and report are the simulation's.
    let (_, log) = deployed_as_simulated(&s, strategy, &text);
    let db = s.path("r.sqlite");
    let global = util::parameters(&std::fs::read(s.path("dep.model")).unwrap());
    // The operator is told the global head is the untrained one.
    assert!(log.contains("the global model's head"), "{log}");

    // What the coordinator kept: every model's head is the initial one, and
    // every round's aggregate carries zeros for the head.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let models: Vec<ParameterSet> = conn
        .prepare("SELECT params FROM models ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|b| tessera_proto::decode_parameters(&b.unwrap()).unwrap())
        .collect();
    assert!(models.len() >= 2, "{} models", models.len());
    for m in &models {
        assert_eq!(values(m, &HEAD), values(&models[0], &HEAD));
    }
    assert_ne!(
        values(&global, &BODY),
        values(&models[0], &BODY),
        "the body trained"
    );
    let aggregates: Vec<Vec<u8>> = conn
        .prepare("SELECT mean_delta FROM round_aggregates")
        .unwrap()
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(aggregates.len(), 4);
    for bytes in &aggregates {
        let mean = tessera_proto::decode_parameters(bytes).unwrap();
        assert!(values(&mean, &HEAD).iter().all(|v| *v == 0.0));
        assert!(values(&mean, &BODY).iter().any(|v| *v != 0.0));
    }
    drop(conn);
    let stored = stored_bytes(&db);
    // The search finds what the database does hold: the global body.
    assert!(holds_any(&stored, &values(&global, &BODY)));

    for site in HEART_SITES {
        let file =
            ModelFile::from_bytes(&std::fs::read(s.path(&format!("{site}.personal"))).unwrap())
                .unwrap();
        assert_eq!(
            file.header.run.written_by,
            format!("participant {site}, personalized")
        );
        let own = &file.parameters;
        // The shared body, the site's own head.
        assert_eq!(values(own, &BODY), values(&global, &BODY), "{site}");
        let head = values(own, &HEAD);
        assert_ne!(head, values(&global, &HEAD), "{site}");
        assert!(
            !holds_any(&stored, &head),
            "{site}'s head is in the database"
        );
    }
}

/// Per-FedAvg deployed on Fed-Heart-Disease: the sites take meta steps, the
/// global model is the simulation's bit for bit, and each site adapts it
/// with 20 of its own rows into the simulation's personalized model.
#[test]
fn per_fedavg_deployed_is_the_simulation_and_each_site_adapts_with_few_rows() {
    if util::skip_e2e("per_fedavg_deployed_is_the_simulation_and_each_site_adapts_with_few_rows") {
        return;
    }
    let s = Scratch::new("perfedavg");
    let text = heart_text(&s, 4).replace("strategy = \"fedavg\"", "strategy = \"perfedavg\"")
        + "\n[privacy]\nsite_metrics = \"clear\"\n\n[strategies.perfedavg]\nalpha = 0.01\n\n\
           [personalization]\nfinetune_epochs = 5\nfinetune_rows = 20\nfinetune_lr = 0.05\n";
    let (simulated_model, _) = deployed_as_simulated(&s, "perfedavg", &text);
    // Meta steps are not FedAvg's steps.
    let fedavg = s.write(
        "fedavg.toml",
        &text.replace("strategy = \"perfedavg\"", "strategy = \"fedavg\""),
    );
    assert_ne!(s.simulate(&fedavg, "fedavg.model").1, simulated_model);
    let adapted = HEART_SITES
        .iter()
        .filter(|site| {
            let report = s.json(&format!("{site}.json"));
            report["personalized"]["accuracy"] != report["global"]["accuracy"]
        })
        .count();
    assert!(
        adapted >= 2,
        "{adapted} of 4 sites' adapted models differ from the global one"
    );
}

/// APFL deployed on Fed-Heart-Disease: the global model is the
/// simulation's bit for bit, each site's own model (from its state file)
/// is nowhere in the coordinator's database, and each site's mixture of its
/// own model and the global one (its personal model file) is the
/// simulation's on its test rows, and not the global model.
#[test]
fn apfl_deployed_is_the_simulation_and_each_site_keeps_its_mixture() {
    if util::skip_e2e("apfl_deployed_is_the_simulation_and_each_site_keeps_its_mixture") {
        return;
    }
    let s = Scratch::new("apfl");
    let text = heart_text(&s, 4).replace("strategy = \"fedavg\"", "strategy = \"apfl\"")
        + "\n[privacy]\nsite_metrics = \"clear\"\n\n[strategies.apfl]\nalpha = 0.5\n\
           client_lr = 0.01\n";
    deployed_as_simulated(&s, "apfl", &text);
    let global = util::parameters(&std::fs::read(s.path("dep.model")).unwrap());
    let stored = stored_bytes(&s.path("r.sqlite"));
    assert!(
        holds_any(&stored, &values(&global, &["dense0.weight"])),
        "positive control"
    );
    for site in HEART_SITES {
        // The site's own model `v`, from its state file: nowhere in the
        // coordinator's database.
        let state = std::fs::read(s.path(&format!("tessera-state-{site}.bin"))).unwrap();
        let header = u32::from_le_bytes(state[8..12].try_into().unwrap()) as usize;
        let saved = tessera_proto::decode_parameters(&state[12 + header..]).unwrap();
        let own = values(&saved, &["personal/dense0.weight"]);
        assert!(
            !holds_any(&stored, &own),
            "{site}'s own model is in the database"
        );
        let file =
            ModelFile::from_bytes(&std::fs::read(s.path(&format!("{site}.personal"))).unwrap())
                .unwrap();
        assert_ne!(file.parameters, global, "{site}");
    }
}

/// IFCA deployed on Fed-Heart-Disease with two planted groups: hungarian's
/// and va's labels reversed (disease read as none and none as disease), so
/// that one model cannot serve all four hospitals. The coordinator's model
/// stacks two cluster models; each site trains the one of the lower loss
/// on its rows and sends the stacked change. The model file (the cluster of
/// the larger share) is the simulation's bit for bit; each site's cluster
/// and its own cluster's model (its personalized model) are the
/// simulation's, and the two groups land in different clusters.
#[test]
fn ifca_deployed_is_the_simulation_and_finds_the_planted_groups() {
    if util::skip_e2e("ifca_deployed_is_the_simulation_and_finds_the_planted_groups") {
        return;
    }
    ifca_planted();
}

/// The planted IFCA run, deployed and simulated.
fn ifca_planted() {
    let s = Scratch::new("ifca");
    let flipped = ["hungarian", "va"];
    let mut text = heart_text(&s, 4).replace("strategy = \"fedavg\"", "strategy = \"ifca\"")
        + "\n[privacy]\nsite_metrics = \"clear\"\n\n[strategies.ifca]\nclusters = 2\n";
    for site in flipped {
        // The target `num` is the last column: 0 becomes 1, any other 0.
        let rows: String = std::fs::read_to_string(heart_file(site))
            .unwrap()
            .lines()
            .map(|row| {
                let (features, num) = row.rsplit_once(',').unwrap();
                format!("{features},{}\n", if num == "0" { "1" } else { "0" })
            })
            .collect();
        let path = s.write(&format!("flipped.{site}.data"), &rows);
        text = text.replace(heart_file(site).to_str().unwrap(), path.to_str().unwrap());
    }
    let data = |site: &str| match flipped.contains(&site) {
        true => s.path(&format!("flipped.{site}.data")),
        false => heart_file(site),
    };
    let (simulated_model, _) = deployed_with(&s, "ifca", &text, &data);
    let simulated = s.json("sim.model.json");
    let served = util::parameters(&simulated_model);
    let mut clusters = Vec::new();
    for site in HEART_SITES {
        let report = s.json(&format!("{site}.json"));
        let cluster = &simulated["personalization"]["per_site"][site]["cluster"];
        assert_eq!(&report["cluster"], cluster, "{site}: {report}");
        let own = util::parameters(&std::fs::read(s.path(&format!("{site}.personal"))).unwrap());
        clusters.push((cluster.as_u64().unwrap(), own == served));
    }
    println!("ifca: (cluster, its model is the model file's) by site {clusters:?}");
    // The planted groups, each in a cluster of its own; one group's sites
    // take the model file's cluster home, the other's their own.
    let (a, b) = (clusters[0], clusters[1]);
    assert_eq!(clusters, [a, b, a, b]);
    assert_ne!(a, b);
}

/// Runs the plan `text` (written as `NAME.toml`) simulated and deployed on
/// the four heart sites (each with `--report SITE.json` and
/// `--personal-model-out SITE.personal`): the deployed global model and each
/// site's personalized and global accuracy are the simulation's. The
/// simulated model file, and the coordinator's log.
fn deployed_as_simulated(s: &Scratch, name: &str, text: &str) -> (Vec<u8>, String) {
    deployed_with(s, name, text, &heart_file)
}

/// [`deployed_as_simulated`], each site reading `data(SITE)`.
fn deployed_with(
    s: &Scratch,
    name: &str,
    text: &str,
    data: &dyn Fn(&str) -> std::path::PathBuf,
) -> (Vec<u8>, String) {
    assert!(text.contains(&format!("strategy = \"{name}\"")));
    let plan = s.write(&format!("{name}.toml"), text);
    let (simulated, simulated_model) = s.simulate(&plan, "sim.model");
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &s.path("r.sqlite"), 0, crate::OUTPUTS);
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            let (report, personal) = (format!("{site}.json"), format!("{site}.personal"));
            participant_with(
                &s.dir,
                &url,
                site,
                &data(site),
                &["--report", &report, "--personal-model-out", &personal],
            )
        })
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert_eq!(util::model(&s.path("dep.model")), simulated_model);
    for site in HEART_SITES {
        let report = s.json(&format!("{site}.json"));
        let expected = &simulated["personalization"]["per_site"][site];
        assert_eq!(
            report["personalized"]["accuracy"], expected["personalized"],
            "{site}: {report}"
        );
        assert_eq!(report["global"]["accuracy"], expected["global"], "{site}");
        if let Some(departments) = expected.get("departments") {
            assert_eq!(&report["departments"], departments, "{site}: {report}");
        }
        println!(
            "{name} {site}: personalized {}, global {}, local only {}",
            report["personalized"]["accuracy"],
            report["global"]["accuracy"],
            report["local_baseline"]["accuracy"]
        );
    }
    (simulated_model, coordinator.log())
}

/// Departments deployed (`[personalization] department`, here chest pain
/// type on Fed-Heart-Disease): each site fine-tunes its model for each of
/// its departments after the run, as the simulation does, and reports
/// every level on each department's test rows, bit for bit the
/// simulation's.
#[test]
fn departments_deployed_are_the_simulation() {
    if util::skip_e2e("departments_deployed_are_the_simulation") {
        return;
    }
    let s = Scratch::new("departments");
    let text = heart_text(&s, 4)
        + "\n[privacy]\nsite_metrics = \"clear\"\n\n\
           [personalization]\nfinetune_epochs = 5\nfinetune_lr = 0.05\ndepartment = \"cp\"\n";
    deployed_as_simulated(&s, "fedavg", &text);
    let mut levels = 0;
    for site in HEART_SITES {
        let report = s.json(&format!("{site}.json"));
        let departments = report["departments"].as_object().unwrap();
        assert!(!departments.is_empty(), "{site}: {report}");
        for (name, d) in departments {
            assert!(
                d["site"].is_number() && d["global"].is_number(),
                "{site} {name}: {d}"
            );
            levels += 1;
        }
    }
    println!("{levels} departments over 4 sites, each as simulated");
}

/// Every byte of the coordinator's database: the file and its write-ahead
/// log (freed pages included).
fn stored_bytes(db: &std::path::Path) -> Vec<u8> {
    let mut stored = std::fs::read(db).unwrap();
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    if let Ok(wal) = std::fs::read(wal) {
        stored.extend(wal);
    }
    stored
}

/// A Ditto site killed mid-run and started again takes back its personal
/// model from its state file (`--local-state`, by default in its working
/// folder): nothing of it is lost, and its report says nothing is missing.
#[test]
fn a_restarted_ditto_site_takes_back_its_personal_model() {
    if util::skip_e2e("a_restarted_ditto_site_takes_back_its_personal_model") {
        return;
    }
    let (log, report) = restart_ditto_site(true);
    assert!(
        log.contains("this site's personal state restored from an earlier process of this run"),
        "{log}"
    );
    assert!(!log.contains("personal model starts at round"), "{log}");
    assert!(report.get("personal_from_round").is_none(), "{report}");
    assert!(report["personalized"].is_object(), "{report}");
}

/// Without its state file, the restarted site says so, at the site (a
/// warning, and its report's `personal_from_round`), instead of passing off
/// a personal model of the later rounds as the whole run's.
#[test]
fn a_restarted_ditto_site_without_its_state_says_where_its_personal_model_starts() {
    if util::skip_e2e(
        "a_restarted_ditto_site_without_its_state_says_where_its_personal_model_starts",
    ) {
        return;
    }
    let (log, report) = restart_ditto_site(false);
    let from = report["personal_from_round"].as_u64().unwrap_or(0);
    assert!(from >= 2, "{report}");
    assert!(report["personalized"].is_object(), "{report}");
    assert!(
        log.contains(&format!("personal model starts at round {from}")),
        "{log}"
    );
    println!("va restarted without its state: its personal model from round {from}");
}

/// Ditto on four heart sites (quorum 3); VA killed in round 2 and started
/// again, with its state file or after it is removed: VA's log and report.
fn restart_ditto_site(keep_state: bool) -> (String, serde_json::Value) {
    let s = Scratch::new(if keep_state {
        "ditto-restart"
    } else {
        "ditto-restart-lost"
    });
    let plan = crate::plan(&s, "ditto", "quorum = 3");
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &db, 0, &["--liveness", "1.5"]);
    let mut participants: Vec<Proc> = HEART_SITES[..3]
        .iter()
        .map(|site| participant(&s.dir, &url, site, &["--report", &format!("{site}.json")]))
        .collect();
    let mut va = participant(&s.dir, &url, "va", &["--pause-before-update", "3"]);
    wait_until(LIMIT, "round 2 with three accepted updates", || {
        poll(&db, |s| s.pending_updates_of(2)) == 3
    });
    va.kill_9();
    let state = s.path("tessera-state-va.bin");
    assert!(state.is_file(), "VA saved its state after round 1");
    if !keep_state {
        std::fs::remove_file(&state).unwrap();
    }
    let mut va = participant(&s.dir, &url, "va", &["--report", "va.json"]);
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    assert!(va.wait(LIMIT).success(), "{}", va.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    for site in &HEART_SITES[..3] {
        let whole = s.json(&format!("{site}.json"));
        assert!(
            whole.get("personal_from_round").is_none(),
            "{site}: {whole}"
        );
    }
    (va.log(), s.json("va.json"))
}
