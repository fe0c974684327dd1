//! What the coordinator's in-process tests share: the heart plan, its four
//! sites' offers, a scratch database, and a federation driven to its first
//! round.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tessera_coordinator::{Federation, SqliteStore, TaskView};
use tessera_core::{FitStats, Update};
use tessera_data::{Filesystem, agree_kinds, read_local_sites};
use tessera_engine::Plan;
use tessera_proto::pb;
use tessera_proto::{CAPABILITIES, convert};

pub const LIVENESS: Duration = Duration::from_secs(3600);

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The heart plan with clear site metrics and `extra` at its end.
pub fn plan(extra: &str) -> (Plan, String) {
    let mut text = std::fs::read_to_string(examples().join("fed-heart-disease.toml")).unwrap();
    text.push_str("\n[privacy]\nsite_metrics = \"clear\"\n");
    text.push_str(extra);
    let plan = Plan::from_toml(&text, "fatal").unwrap();
    (plan, text)
}

/// Local DP instead of the plan's privacy table.
pub fn local_dp_plan() -> (Plan, String) {
    let mut text = std::fs::read_to_string(examples().join("fed-heart-disease.toml")).unwrap();
    text.push_str(
        "\n[privacy]\nmode = \"local\"\nnoise_multiplier = 1.0\nclip_norm = 1.0\n\
         site_metrics = \"clear\"\n",
    );
    let plan = Plan::from_toml(&text, "fatal").unwrap();
    (plan, text)
}

/// The heart sites and the offers their rows give.
pub struct Site {
    pub name: String,
    pub kinds: pb::KindsOffer,
    pub levels: pb::LevelsOffer,
}

pub static SITES: LazyLock<Vec<Site>> = LazyLock::new(|| {
    let (plan, _) = plan("");
    let mut local = read_local_sites(&plan.data, &examples(), &Filesystem).unwrap();
    let kinds_offers: Vec<_> = local.iter().map(|s| s.kinds_offer()).collect();
    let kinds = agree_kinds(&plan.data, &kinds_offers).unwrap();
    local
        .iter_mut()
        .zip(&kinds_offers)
        .map(|(s, k)| Site {
            name: k.site.clone(),
            kinds: convert::kinds_offer_to_pb(k),
            levels: convert::levels_offer_to_pb(&s.levels_offer(&plan.data, &kinds).unwrap()),
        })
        .collect()
});

/// A database in its own temporary folder, removed afterwards.
pub struct Db {
    dir: PathBuf,
}

impl Db {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tessera-coordinator-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Db { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("coordinator.sqlite")
    }

    pub fn open(&self, plan: &(Plan, String)) -> Federation {
        self.open_with(plan, LIVENESS)
    }

    /// The federation of `plan` with sites presumed gone after `liveness`.
    pub fn open_with(&self, (plan, text): &(Plan, String), liveness: Duration) -> Federation {
        let store = SqliteStore::open(&self.path()).unwrap();
        Federation::open(plan.clone(), text, store, liveness).unwrap()
    }

    /// From another connection: every insert into `table` fails with `message`.
    pub fn break_table(&self, table: &str, message: &str) {
        let conn = rusqlite::Connection::open(self.path()).unwrap();
        conn.execute_batch(&format!(
            "CREATE TRIGGER broken_{table} BEFORE INSERT ON {table} \
             BEGIN SELECT RAISE(ABORT, '{message}'); END;"
        ))
        .unwrap();
    }

    pub fn mend_table(&self, table: &str) {
        let conn = rusqlite::Connection::open(self.path()).unwrap();
        conn.execute_batch(&format!("DROP TRIGGER broken_{table};"))
            .unwrap();
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn hello(site: &str) -> pb::Hello {
    pb::Hello {
        major: tessera_proto::MAJOR,
        minor: tessera_proto::MINOR,
        capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        site: site.to_string(),
        ..Default::default()
    }
}

/// Every site joins and agrees on the data; the first round (or step) opens.
pub fn agree(f: &mut Federation) {
    for site in SITES.iter() {
        f.join(&site.name, &hello(&site.name)).unwrap();
    }
    for site in SITES.iter() {
        f.offer_kinds(&site.name, site.kinds.clone()).unwrap();
    }
    for site in SITES.iter() {
        f.offer_levels(&site.name, site.levels.clone()).unwrap();
    }
    f.advance();
}

/// Site `i`'s task, trained: its round and its update.
pub fn train(f: &mut Federation, i: usize) -> (u32, Update) {
    let site = &SITES[i];
    let Ok(TaskView::Fit {
        header,
        global,
        tensors,
        ..
    }) = f.task_for(&site.name, None)
    else {
        panic!("{} has no training task", site.name);
    };
    let mut delta = global.zeros_like();
    for (k, v) in delta.values_mut().enumerate() {
        *v = (k % 7) as f32 * 0.01 - 0.03;
    }
    let update = Update {
        delta,
        n_examples: site.levels.train_rows,
        aux: tensors.map(|c| c.zeros_like()),
        stats: FitStats {
            n_steps: 1,
            mean_train_loss: 0.6,
            start_loss: None,
        },
    };
    (header.round, update)
}

/// A plausible clear evaluation of `round` from `site`: ten rows, half right.
pub fn evaluation_report(site: &str, round: u32) -> pb::EvaluationReport {
    pb::EvaluationReport {
        site: site.to_string(),
        round,
        n_examples: 10,
        loss_sum: 5.0,
        n_correct: 5,
        auc: None,
        histogram: Vec::new(),
        sites: Vec::new(),
        candidate_only_right: None,
        production_only_right: None,
    }
}

/// A registry with version 1 in production and version 2 a candidate, and
/// `f` rolling out version 2 against version 1 with `max_drop` and `deadline`.
pub fn start_rollout(
    db: &Db,
    max_drop: f64,
    deadline: Option<Duration>,
    f: Federation,
) -> Federation {
    start_rollout_listing(db, max_drop, deadline, None, f)
}

/// As [`start_rollout`], counting only `canaries` as canaries.
pub fn start_rollout_listing(
    db: &Db,
    max_drop: f64,
    deadline: Option<Duration>,
    canaries: Option<&[&str]>,
    mut f: Federation,
) -> Federation {
    let store = SqliteStore::open(&db.path()).unwrap();
    let mut p = tessera_core::ParameterSet::new();
    p.push("w", tessera_core::Tensor::new(vec![1], vec![1.0]).unwrap())
        .unwrap();
    for _ in 0..2 {
        store
            .register_version(&tessera_coordinator::NewVersion {
                name: "heart",
                run_id: f.run_id(),
                round: 1,
                params: &p,
                params_sha256: "s",
                lineage: "{}",
                parent: None,
                at_unix_micros: 1,
            })
            .unwrap();
    }
    store
        .set_stage(
            "heart",
            1,
            tessera_coordinator::Stage::Production,
            "first",
            "",
            2,
        )
        .unwrap();
    store
        .set_stage(
            "heart",
            2,
            tessera_coordinator::Stage::Canary,
            "canary",
            "",
            3,
        )
        .unwrap();
    f.set_rollout(tessera_coordinator::Rollout {
        name: "heart".into(),
        candidate: tessera_coordinator::RolloutModel {
            version: 2,
            file: std::sync::Arc::new(vec![2; 100]),
        },
        production: tessera_coordinator::RolloutModel {
            version: 1,
            file: std::sync::Arc::new(vec![1; 90]),
        },
        max_drop,
        deadline,
        canaries: canaries.map(|c| c.iter().map(|s| s.to_string()).collect()),
        serve_only: false,
    })
    .unwrap();
    f
}

/// The stage of version 2 and its last event's evidence.
pub fn decided(db: &Db) -> (tessera_coordinator::Stage, String) {
    let store = SqliteStore::open_existing(&db.path()).unwrap();
    let stage = store
        .versions(Some("heart"))
        .unwrap()
        .into_iter()
        .find(|v| v.version == 2)
        .unwrap()
        .stage;
    (stage, last_event(db).evidence)
}

/// Version 2's last stage event (its stage, reason and evidence).
pub fn last_event(db: &Db) -> tessera_coordinator::store::StageEvent {
    SqliteStore::open_existing(&db.path())
        .unwrap()
        .stage_events(Some("heart"))
        .unwrap()
        .into_iter()
        .rev()
        .find(|e| e.version == 2)
        .unwrap()
}

/// A secure-aggregation step of `site` for `round`: the reply's state.
pub fn step(
    f: &mut Federation,
    site: &str,
    round: u32,
    step: pb::sec_agg_request::Step,
) -> Result<pb::sec_agg_reply::State, tessera_coordinator::Refusal> {
    f.secure_step(site, round, Some(step))
        .map(|reply| reply.state.unwrap())
}

/// Why a step was refused (a step accepted fails the test).
pub fn refused(r: Result<pb::sec_agg_reply::State, tessera_coordinator::Refusal>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(state) => panic!("accepted: {state:?}"),
    }
}

/// Key commitments as they travel, read back.
pub fn key_commitments(sent: &[pb::HeKeyCommitmentFrom]) -> Vec<tessera_he::KeyCommitment> {
    (sent.iter())
        .map(|c| tessera_he::KeyCommitment {
            from: c.from,
            digest: c.digest.clone().try_into().unwrap(),
            signature: c.signature.clone(),
        })
        .collect()
}

/// The round's id as every party derives it from the plan.
pub fn round_id(plan: &tessera_engine::Plan, round: u32) -> tessera_he::RoundId {
    tessera_he::RoundId {
        round,
        seed: plan.secagg_graph_seed(round),
    }
}

/// The values a site's update goes into a secure sum as: quantised into
/// `Z_2^32` for the round `p` describes, its metadata appended.
pub fn secure_values(round: u32, p: &pb::SecAggParams, update: &Update) -> Vec<u32> {
    let params = tessera_secagg::RoundParams {
        round,
        participants: p.participants.clone(),
        neighbours: p.neighbours as usize,
        threshold: p.threshold as usize,
        graph_seed: p.graph_seed.clone().try_into().unwrap(),
        dimension: p.dimension as usize,
        range: p.range,
    };
    let input: Vec<f32> = update.delta.values().collect();
    let mut values = tessera_secagg::quantize(&input, &params);
    values.extend(tessera_secagg::encode_metadata(&tessera_secagg::Metadata {
        n_examples: update.n_examples,
        train_loss: update.stats.mean_train_loss,
        n_steps: update.stats.n_steps,
    }));
    values
}

/// The list of commitments as it travels, read back.
pub fn commitment_list(list: &pb::HeList) -> tessera_he::CommitmentList {
    tessera_he::CommitmentList::new(
        (list.commitments.iter())
            .map(|c| tessera_he::Commitment {
                from: c.from,
                length: c.length as usize,
                digest: c.digest.clone().try_into().unwrap(),
                signature: c.signature.clone(),
            })
            .collect(),
    )
    .unwrap()
}

/// What key holder `site` sums of round `round`: every listed
/// contribution fetched from the coordinator as a key holder fetches it
/// (its second polynomials and its first ones' digests, 1.33), checked
/// against its commitment and added.
pub fn fetched_sum(
    f: &mut Federation,
    site: &str,
    round: u32,
    key: &tessera_he::EndorsedKey,
    length: usize,
    list: &tessera_he::CommitmentList,
) -> tessera_he::VerifiedSum {
    let he = tessera_he::HeParams::shared().unwrap();
    let mut sum = tessera_he::VerifiedSum::new(
        &he,
        key,
        length,
        list.clone(),
        &tessera_secagg::Unauthenticated,
    )
    .unwrap();
    let total = tessera_he::HeParams::ciphertexts_for(length);
    for c in list.entries() {
        let fetch = pb::sec_agg_request::Step::HeFetch(pb::HeFetch {
            from: c.from,
            first: 0,
        });
        let Ok(pb::sec_agg_reply::State::HeContribution(got)) = step(f, site, round, fetch) else {
            panic!("no contribution of {}", c.from);
        };
        // No first polynomial travels to a key holder.
        assert!(got.ciphertexts.is_empty());
        assert_eq!(
            (got.total as usize, got.first, got.second_polynomials.len()),
            (total, 0, total.min(tessera_he::PIECE))
        );
        assert_eq!(got.first_digests.len(), got.second_polynomials.len());
        let contribution = tessera_he::Contribution::for_key_holder(
            &he,
            c.clone(),
            &got.first_digests,
            &got.second_polynomials,
        )
        .unwrap();
        let revealed = tessera_he::Reveal {
            contribution,
            list_signature: got.list_signature,
        };
        sum.absorb(&revealed, &tessera_secagg::Unauthenticated)
            .unwrap();
    }
    sum
}
