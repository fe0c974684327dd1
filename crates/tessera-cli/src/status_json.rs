//! `tessera status --json`: where a run stands, as one JSON document built
//! from the store's typed reads (never its schema), for operators' tools
//! and the end-to-end tests.
//!
//! The document is stable: fields are only ever added, and `format` says
//! which shape it is. Times are microseconds on the run clock (from the
//! run's creation) unless named `_unix_micros`.
//!
//! ```text
//! format                        1
//! run                           id, name, strategy, seed, rounds (planned),
//!                               status, created_unix_micros, plan_hash (SHA-256 of the plan text),
//!                               schema_version (the target schema version the plan's columns
//!                               follow, `[data.schema] version`; null where it names none)
//! state                         "agreeing" | "training" | "finished" | "stopped" | "aborted"
//! agreement                     per step (kinds, levels, statistics, external): offers (sites), agreed
//! participants                  sites that joined, sorted
//! rounds[]                      round, status, evaluated, cohort, counted, dropped
//!                               (cohort members not counted), aggregate (null unless it
//!                               completed: n_updates, n_participants, n_examples,
//!                               weight_sum, mean_train_loss), evaluations (stored per-site
//!                               reports), metrics (the round's report line)
//! open_round                    null, or round, cohort, opened_micros
//! pending_updates[]             accepted updates not yet in a closed round: site, round,
//!                               base, n_examples, received_micros
//! evaluations_stored            per-site evaluation reports stored, every round
//! models[]                      version, bytes, created_micros
//! privacy                       releases (ledger rows), kinds {kind: rows}, epsilon (the
//!                               run's, after the last release), delta, entries[] (release,
//!                               kind, participant (null: everyone), sampling_rate,
//!                               noise_multiplier, steps, run_epsilon, clip_norm,
//!                               noise_std, updates, recorded_micros)
//! audit[]                       at_micros, site, action, outcome, detail (oldest first)
//! waiting                       null, or what the run waits for as the coordinator last
//!                               wrote it: step ("agreement: column kinds", "round 3 to
//!                               open", "training round 3", "evaluation of round 3",
//!                               "secure aggregation of round 3: stage ..."), sites, detail,
//!                               since_unix_micros
//! sites[]                       every joined or named site: site, state ("live", "silent",
//!                               "left", "not joined"), note (why it left, or null),
//!                               last_seen_unix_micros (null: never heard from)
//! live_updated_unix_micros      when the coordinator last wrote `waiting` and `sites`
//!                               (null: never; a stopped coordinator's view stays as it was)
//! ```

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use serde_json::{Value, json};
use tessera_coordinator::RunStore;
use tessera_coordinator::store::{AgreementStep, RunRow};

/// The version of the document's shape.
pub const FORMAT: u32 = 1;

/// The status document of `run`.
pub fn document(store: &dyn RunStore, run: &RunRow) -> anyhow::Result<Value> {
    let id = run.id.as_str();
    let plan_hash = crate::tracking::sha256_hex(run.plan.as_bytes());
    // The stored plan's schema version (a plan that no longer parses, from
    // an older build, reads as none).
    let schema_version = toml::from_str::<tessera_engine::Plan>(&run.plan)
        .ok()
        .and_then(|p| p.data.schema.version);
    let mut agreement = serde_json::Map::new();
    for step in AgreementStep::ALL {
        let offers: Vec<String> = store
            .offers(id, step)?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        let agreed = store.agreement(id, step)?.is_some();
        agreement.insert(
            step.name().to_string(),
            json!({ "offers": offers, "agreed": agreed }),
        );
    }
    let cohort_rows = store.cohorts(id)?;
    let audit_rows = store.audit_log(id)?;
    // Each site's participation (`tessera contributions --db`'s, this run).
    let mut sites = BTreeMap::new();
    crate::participation::add_run(&mut sites, &cohort_rows, &audit_rows);
    let participation = crate::participation::rows(sites);
    let cohorts: BTreeMap<u32, _> = cohort_rows.into_iter().map(|c| (c.round, c)).collect();
    let closed = store.latest_model_version(id)?.unwrap_or(0);
    let aggregates: BTreeMap<u32, _> = store.aggregates(id, u32::MAX)?.into_iter().collect();
    let mut rounds = Vec::new();
    for row in store.rounds(id)? {
        let metrics: Value = serde_json::from_str(&row.record)
            .with_context(|| format!("round {}: a damaged report line", row.round))?;
        let (cohort, counted) = cohorts
            .get(&row.round)
            .map(|c| (c.cohort.clone(), c.counted.clone()))
            .unwrap_or_default();
        let counted_set: BTreeSet<&String> = counted.iter().collect();
        let dropped: Vec<&String> = cohort.iter().filter(|s| !counted_set.contains(s)).collect();
        let aggregate = aggregates.get(&row.round).map(|a| {
            json!({
                "n_updates": a.n_updates,
                "n_participants": a.n_participants,
                "n_examples": a.n_examples,
                "weight_sum": a.weight_sum,
                "mean_train_loss": a.mean_train_loss,
            })
        });
        rounds.push(json!({
            "round": row.round,
            "status": row.status,
            "evaluated": row.evaluated,
            "cohort": cohort,
            "counted": counted,
            "dropped": dropped,
            "aggregate": aggregate,
            "evaluations": store.evaluations(id, row.round)?.len(),
            "metrics": metrics,
        }));
    }
    let open = store.open_round_of(id)?;
    let pending_round = open.as_ref().map_or(closed + 1, |o| o.round);
    let pending: Vec<Value> = store
        .updates(id, pending_round)?
        .into_iter()
        .map(|u| {
            json!({
                "site": u.site.as_str(),
                "round": pending_round,
                "base": u.base,
                "n_examples": u.update.n_examples,
                "received_micros": u.at.0,
            })
        })
        .collect();
    // Every evaluation stored, also one of a round not closed yet.
    let last_round = rounds
        .last()
        .and_then(|r| r["round"].as_u64())
        .map_or(0, |r| u32::try_from(r).unwrap_or(u32::MAX))
        .max(pending_round);
    let mut evaluations_stored = 0;
    for round in 1..=last_round {
        evaluations_stored += store.evaluations(id, round)?.len();
    }
    let open_round = open.map(|o| {
        json!({
            "round": o.round,
            "cohort": o.cohort.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            "opened_micros": o.opened.0,
        })
    });
    let models: Vec<Value> = store
        .models(id)?
        .into_iter()
        .map(|m| json!({ "version": m.version, "bytes": m.bytes, "created_micros": m.created.0 }))
        .collect();
    let ledger = store.privacy_ledger(id)?;
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for row in &ledger {
        *kinds.entry(row.entry.kind.clone()).or_default() += 1;
    }
    let privacy = json!({
        "releases": ledger.len(),
        "kinds": kinds,
        "epsilon": ledger.iter().map(|r| r.entry.run_epsilon).fold(0.0, f64::max),
        "delta": ledger.last().map(|r| r.delta),
        "entries": ledger.iter().map(|r| json!({
            "release": r.entry.release,
            "kind": r.entry.kind,
            "participant": r.entry.participant,
            "sampling_rate": r.entry.event.sampling_rate,
            "noise_multiplier": r.entry.event.noise_multiplier,
            "steps": r.entry.event.steps,
            "run_epsilon": r.entry.run_epsilon,
            "clip_norm": r.clip_norm,
            "noise_std": r.noise_std,
            "updates": r.updates,
            "recorded_micros": r.recorded_micros,
        })).collect::<Vec<_>>(),
    });
    let audit: Vec<Value> = audit_rows
        .into_iter()
        .map(|a| {
            json!({
                "at_micros": a.at_micros,
                "site": a.site,
                "action": a.action,
                "outcome": a.outcome,
                "detail": a.detail,
            })
        })
        .collect();
    let state = if run.status != "running" {
        // finished, stopped or aborted
        run.status.as_str()
    } else if store.agreement(id, AgreementStep::Levels)?.is_some() {
        "training"
    } else {
        "agreeing"
    };
    // The coordinator's live view; an unreadable one reads as absent.
    let live: Value = store
        .live_view(id)?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    Ok(json!({
        "participation": participation,
        "waiting": live["waiting"],
        "sites": live.get("sites").cloned().unwrap_or_else(|| json!([])),
        "live_updated_unix_micros": live["updated_unix_micros"],
        "format": FORMAT,
        "run": {
            "id": run.id,
            "name": run.name,
            "strategy": run.strategy,
            "seed": run.seed,
            "rounds": run.rounds,
            "status": run.status,
            "created_unix_micros": run.created_unix_micros,
            "plan_hash": plan_hash,
            "schema_version": schema_version,
        },
        "state": state,
        "agreement": agreement,
        "participants": store.participants(id)?,
        "rounds": rounds,
        "open_round": open_round,
        "pending_updates": pending,
        "evaluations_stored": evaluations_stored,
        "models": models,
        "privacy": privacy,
        "audit": audit,
    }))
}

#[cfg(test)]
mod tests {
    use tessera_coordinator::SqliteStore;
    use tessera_coordinator::store::{AuditRow, CohortRow};
    use tessera_core::{ParameterSet, ParticipantId, Tensor, Timestamp};

    use super::*;

    fn model(v: f32) -> ParameterSet {
        let mut p = ParameterSet::new();
        p.push("w", Tensor::new(vec![2], vec![v, v]).unwrap())
            .unwrap();
        p
    }

    /// A run written through the store's API reads back whole: one closed
    /// round with a dropped site, one open with an update pending.
    #[test]
    fn the_document_shows_where_the_run_stands() {
        let dir = std::env::temp_dir().join(format!("tessera-status-json-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(&dir.join("c.sqlite")).unwrap();
        let run = RunRow {
            id: "r".into(),
            name: "n".into(),
            plan: "name = \"n\"".into(),
            strategy: "fedavg".into(),
            seed: 3,
            rounds: 5,
            created_unix_micros: 1,
            status: "running".into(),
        };
        store
            .write(&mut |tx| {
                tx.create_run(&run)?;
                for site in ["a", "b"] {
                    tx.add_participant("r", site, Timestamp(1))?;
                    tx.put_offer("r", AgreementStep::Kinds, site, b"k")?;
                }
                tx.put_agreement("r", AgreementStep::Kinds, b"k")?;
                tx.put_agreement("r", AgreementStep::Levels, b"v")?;
                tx.put_model("r", 0, &model(0.0), Timestamp(2))?;
                tx.put_cohort(
                    "r",
                    &CohortRow {
                        round: 1,
                        cohort: vec!["a".into(), "b".into()],
                        counted: vec!["a".into()],
                    },
                )?;
                tx.put_model("r", 1, &model(1.0), Timestamp(3))?;
                tx.put_round("r", 1, "completed", r#"{"round":1,"accuracy":0.5}"#)?;
                tx.open_round("r", 2, &[ParticipantId::new("a")], Timestamp(4))?;
                tx.audit(
                    "r",
                    &AuditRow {
                        at_micros: 5,
                        site: "a".into(),
                        action: "update".into(),
                        outcome: "accepted".into(),
                        detail: "round 1".into(),
                    },
                )
            })
            .unwrap();
        let doc = document(&store, &run).unwrap();
        assert_eq!(doc["format"], FORMAT);
        assert_eq!(doc["state"], "training");
        assert_eq!(doc["run"]["plan_hash"].as_str().unwrap().len(), 64);
        assert_eq!(doc["agreement"]["kinds"]["offers"], json!(["a", "b"]));
        assert_eq!(doc["agreement"]["statistics"]["agreed"], false);
        assert_eq!(doc["participants"], json!(["a", "b"]));
        let round = &doc["rounds"][0];
        assert_eq!(round["dropped"], json!(["b"]));
        assert_eq!(round["metrics"]["accuracy"], 0.5);
        assert!(round["aggregate"].is_null());
        assert_eq!(doc["open_round"]["round"], 2);
        assert_eq!(doc["open_round"]["cohort"], json!(["a"]));
        assert_eq!(doc["models"].as_array().unwrap().len(), 2);
        assert_eq!(doc["audit"][0]["detail"], "round 1");
        assert_eq!(doc["privacy"]["releases"], 0);
        assert!(doc["waiting"].is_null());
        assert_eq!(doc["sites"], json!([]));
        store
            .put_live_view(
                "r",
                r#"{"updated_unix_micros":9,"waiting":{"step":"training round 2","sites":["b"],"detail":"","since_unix_micros":7},"sites":[{"site":"b","state":"silent","note":null,"last_seen_unix_micros":6}]}"#,
            )
            .unwrap();
        let doc = document(&store, &run).unwrap();
        assert_eq!(doc["waiting"]["step"], "training round 2");
        assert_eq!(doc["waiting"]["sites"], json!(["b"]));
        assert_eq!(doc["sites"][0]["last_seen_unix_micros"], 6);
        assert_eq!(doc["live_updated_unix_micros"], 9);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
