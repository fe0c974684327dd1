//! A peer's rounds: where it starts (with the run, or after a restart from a
//! neighbour's current model), then each round train, publish, and average
//! with the neighbours present.
//!
//! Before its first round a peer asks each neighbour from which round it
//! mixes with it (`Gossip.Rejoin`, see `board::rejoin_round`). A peer that
//! starts with the run is told 1 by every neighbour and runs the plan's
//! rounds from the plan's initial model, as the simulation does. A peer
//! restarted after a crash is told, by each neighbour, the round after the
//! one that neighbour runs: it adopts the model of the neighbour that told it
//! the earliest round (that neighbour's model after its previous round's
//! averaging) and runs from that round on; each neighbour mixes with it again
//! from the round it told. A neighbour that does not answer a model for the
//! liveness period, or that restarted, is absent: the peer mixes with those
//! present, with their Metropolis-Hastings degrees, as a lost site's
//! neighbours do in simulation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_core::ParameterSet;
use tessera_data::Dataset;
use tessera_engine::report::{RoundRecord, SiteTraffic};
use tessera_engine::{FitTask, Site};
use tessera_learn::Evaluation;
use tessera_proto::pb::{self, peer_model_part};
use tessera_proto::{Assembler, Limits};
use tracing::Instrument;

use crate::board::Board;
use crate::trace::RoundTraces;
use crate::{Failure, Link, PeerConfig, PeerError, local};

/// What a peer did: its rounds, the neighbours it lost and took back, its
/// traffic, its last evaluation.
pub(crate) struct Progress {
    pub records: Vec<RoundRecord>,
    /// Neighbours lost (unreachable for the liveness period, revoked, or
    /// restarted), with the last round each was lost in.
    pub lost: BTreeMap<String, u32>,
    /// Restarted peers taken back, with the round from which they are mixed
    /// with again; this peer itself when it rejoined the run.
    pub rejoined: BTreeMap<String, u32>,
    pub bytes_received: BTreeMap<String, u64>,
    pub last: Option<Evaluation>,
}

/// The first round a peer runs, and the neighbour whose model it adopts
/// (none when it is round 1: the plan's initial model), from each
/// answering neighbour's round: the earliest, first by name.
pub(crate) fn first_round(answers: &BTreeMap<String, u32>) -> (u32, Option<&str>) {
    match answers.iter().min_by_key(|(_, round)| **round) {
        None => (1, None),
        Some((_, &round)) if round <= 1 => (1, None),
        Some((name, &round)) => (round, Some(name.as_str())),
    }
}

/// Fetches `link`'s model of (`round`, `step`): the model, its degree and
/// the bytes received; `None` when the peer is unreachable.
pub(crate) async fn fetch(
    link: &mut Link,
    me: &str,
    round: u32,
    step: u32,
    layout_of: &ParameterSet,
    patience: Duration,
) -> Result<Option<(ParameterSet, usize, u64)>, PeerError> {
    let request = pb::PeerModelRequest {
        site: me.to_string(),
        round,
        step,
    };
    link.retry(patience, async |c| {
        let mut stream = c.model(request.clone()).await?.into_inner();
        let malformed = |e: String| Failure::Retry(format!("malformed model: {e}"));
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Failure::Retry("model stream ended before its header".into()))?;
        let mut bytes = prost::Message::encoded_len(&first) as u64;
        let Some(peer_model_part::Part::Header(header)) = first.part else {
            return Err(malformed("a model starts with its header".into()));
        };
        if (header.round, header.step) != (round, step) {
            return Err(malformed(format!(
                "asked for round {round} step {step}, got round {} step {}",
                header.round, header.step
            )));
        }
        let mut assembler = Assembler::new(&header.layout, Limits::default())
            .map_err(|e| malformed(e.to_string()))?;
        assembler
            .expect_layout_of(layout_of)
            .map_err(|e| malformed(e.to_string()))?;
        while let Some(part) = stream.message().await? {
            bytes += prost::Message::encoded_len(&part) as u64;
            match part.part {
                Some(peer_model_part::Part::Chunk(chunk)) => assembler
                    .push(&chunk)
                    .map_err(|e| malformed(e.to_string()))?,
                _ => return Err(malformed("a second header".into())),
            }
        }
        let model = assembler.finish().map_err(|e| malformed(e.to_string()))?;
        if model.values().any(|v| !v.is_finite()) {
            return Err(Failure::Fatal(PeerError::Refused(format!(
                "round {round} step {step}: the model holds non-finite values"
            ))));
        }
        Ok((model, header.degree as usize, bytes))
    })
    .await
}

/// Asks `link` from which round it mixes with this peer (`None`: unreachable
/// for `patience`).
async fn ask_rejoin(
    link: &mut Link,
    me: &str,
    patience: Duration,
) -> Result<Option<u32>, PeerError> {
    let request = pb::PeerRejoinRequest {
        site: me.to_string(),
    };
    let name = link.name.clone();
    link.retry(patience, async |c| match c.rejoin(request.clone()).await {
        Ok(answer) => Ok(answer.into_inner().round.max(1)),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            Err(Failure::Fatal(PeerError::Refused(format!(
                "'{name}' runs a protocol before 1.8, without `gossip-rejoin`: upgrade it"
            ))))
        }
        Err(status) => Err(status.into()),
    })
    .await
}

/// Where this peer starts: each neighbour's round of mixing with it, the
/// neighbours that did not answer, the first round and its model.
struct Start {
    from: BTreeMap<String, u32>,
    unreachable: Vec<String>,
    first: u32,
    model: Arc<ParameterSet>,
}

/// Asks every neighbour from which round it mixes with this peer; after a
/// restart, adopts the model of the one that told the earliest round.
async fn start(
    config: &PeerConfig,
    links: &mut BTreeMap<String, Link>,
    neighbours: &[String],
    initial: Arc<ParameterSet>,
    progress: &mut Progress,
) -> Result<Start, PeerError> {
    let mut from = BTreeMap::new();
    let mut unreachable = Vec::new();
    for name in neighbours {
        let Some(link) = links.get_mut(name) else {
            continue;
        };
        match ask_rejoin(link, &config.site, config.liveness).await? {
            Some(round) => {
                from.insert(name.clone(), round);
            }
            None => unreachable.push(name.clone()),
        }
    }
    if from.is_empty() && !neighbours.is_empty() {
        return Err(PeerError::Network(format!(
            "no neighbour ({}) answered for {:?}: where the run stands is unknown",
            neighbours.join(", "),
            config.liveness
        )));
    }
    let (first, adopt) = first_round(&from);
    let Some(adopt) = adopt.map(str::to_string) else {
        return Ok(Start {
            from,
            unreachable,
            first,
            model: initial,
        });
    };
    // Restarted: the neighbour's model after its round `first - 1`.
    let steps = config.plan.topology.gossip_steps.max(1);
    let link = links
        .get_mut(&adopt)
        .ok_or_else(|| PeerError::Config(format!("no link to '{adopt}'")))?;
    let (model, _, bytes) = fetch(
        link,
        &config.site,
        first - 1,
        steps,
        &initial,
        config.liveness,
    )
    .await?
    .ok_or_else(|| {
        PeerError::Network(format!(
            "neighbour '{adopt}' did not send its model of round {} to rejoin from",
            first - 1
        ))
    })?;
    *progress.bytes_received.entry(adopt.clone()).or_default() += bytes;
    progress.rejoined.insert(config.site.clone(), first);
    tracing::warn!(
        round = first,
        adopted_from = %adopt,
        "restarted: rejoining the run with the neighbour's model of the round before; this peer's rounds and model since its crash are lost"
    );
    Ok(Start {
        from,
        unreachable,
        first,
        model: Arc::new(model),
    })
}

/// A neighbour's model of one step, or why there is none.
enum Fetched {
    Model(Option<(ParameterSet, usize, u64)>),
    Restarted(u32),
}

/// The rounds: train, publish, average with the neighbours present.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn rounds(
    config: &PeerConfig,
    board: &Board,
    links: &mut BTreeMap<String, Link>,
    neighbours: &[String],
    mut site: Site,
    initial: Arc<ParameterSet>,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    traces: &RoundTraces,
) -> Result<(Progress, Arc<ParameterSet>), PeerError> {
    let plan = &config.plan;
    let steps = plan.topology.gossip_steps.max(1);
    let mut progress = Progress {
        records: Vec::new(),
        lost: BTreeMap::new(),
        rejoined: BTreeMap::new(),
        bytes_received: BTreeMap::new(),
        last: None,
    };
    let Start {
        mut from,
        unreachable,
        first,
        mut model,
    } = start(config, links, neighbours, initial, &mut progress).await?;
    // Neighbours this peer does not mix with until they rejoin.
    let mut absent: BTreeSet<String> = BTreeSet::new();
    for name in unreachable {
        tracing::warn!(neighbour = %name, round = first, "neighbour lost");
        board.lose(&name);
        progress.lost.insert(name.clone(), first);
        absent.insert(name);
    }
    let mut living: Vec<String> = Vec::new();
    for round in first..=plan.federation.rounds {
        let wall = Instant::now();
        // The round's span, in the trace every peer derives for the round.
        let span = tracing::info_span!(parent: None, "round", round, site = %config.site);
        let (trace, parent) = traces.ids(round);
        tessera_proto::trace::under_ids(&span, trace, parent);
        for name in board.begin_round(round) {
            tracing::warn!(neighbour = %name, round, "restarted neighbour taken back: mixing with it again");
            absent.remove(&name);
            from.insert(name.clone(), round);
            progress.rejoined.insert(name, round);
        }
        living = neighbours
            .iter()
            .filter(|n| !absent.contains(*n) && from.get(*n).is_some_and(|&f| f <= round))
            .cloned()
            .collect();
        let sent_before: u64 = board.bytes_sent().values().sum();
        let received_before: u64 = progress.bytes_received.values().sum();
        // Local training from this peer's own model.
        let task = FitTask {
            round,
            global: Arc::clone(&model),
            instructions: Default::default(),
            deadline: None,
        };
        let train_rows = Arc::clone(&train);
        let training = tracing::info_span!(parent: &span, "train", round);
        let (back, trained) = tokio::task::spawn_blocking(move || {
            let _in = training.enter();
            let update = site.fit(&task, &train_rows);
            (site, update.map(|u| (task.global, u)))
        })
        .await
        .map_err(|e| local(format!("training crashed: {e}")))?;
        site = back;
        tokio::time::sleep(config.pause_each_round).await;
        let mut site_errors = Vec::new();
        let mut current = match trained {
            Ok((base, update)) => {
                let mut next = base.as_ref().clone();
                next.add_scaled(&update.delta, 1.0).map_err(local)?;
                next
            }
            Err(e) => {
                // A failed training keeps the model and still gossips it.
                site_errors.push(format!("site '{}': {e}", config.site));
                model.as_ref().clone()
            }
        };
        for step in 0..steps {
            let own = Arc::new(current);
            board.publish_model(round, step, Arc::clone(&own), living.len() as u32);
            let mut theirs: Vec<(String, ParameterSet, usize)> = Vec::new();
            // One neighbour after another: each published (round, step)
            // before asking for anyone's, so no one waits in a circle.
            for name in living.clone() {
                let Some(link) = links.get_mut(&name) else {
                    continue;
                };
                // A neighbour that restarts meanwhile will not send this
                // round's model: it is absent until the round it rejoins at.
                let fetching =
                    tracing::info_span!(parent: &span, "fetch", round, step, neighbour = %name);
                let fetched = tokio::select! {
                    fetched = fetch(link, &config.site, round, step, &own, config.liveness).instrument(fetching) => {
                        Fetched::Model(fetched?)
                    }
                    rejoins = board.restarted(&name, round) => Fetched::Restarted(rejoins),
                };
                let fetched = match fetched {
                    Fetched::Restarted(rejoins) => {
                        tracing::warn!(neighbour = %name, round, step, rejoins_at = rejoins, "neighbour restarted; absent until it rejoins");
                        progress.lost.insert(name.clone(), round);
                        absent.insert(name);
                        continue;
                    }
                    Fetched::Model(fetched) => fetched,
                };
                // A certificate revoked since the connection opened: what
                // came over it is not used, and the neighbour is lost.
                if let (Some(_), Err(reason)) = (&fetched, link.endpoint.check_server()) {
                    tracing::warn!(neighbour = %name, round, step, %reason, "neighbour's certificate no longer accepted; lost for good");
                    board.lose(&name);
                    progress.lost.insert(name.clone(), round);
                    absent.insert(name);
                    continue;
                }
                match fetched {
                    Some((m, degree, bytes)) => {
                        *progress.bytes_received.entry(name.clone()).or_default() += bytes;
                        theirs.push((name, m, degree));
                    }
                    None => {
                        tracing::warn!(neighbour = %name, round, step, "neighbour lost: silent for the liveness period");
                        board.lose(&name);
                        progress.lost.insert(name.clone(), round);
                        absent.insert(name);
                    }
                }
            }
            living.retain(|n| !absent.contains(n));
            // Summed in name order, as the simulation sums them.
            theirs.sort_by(|a, b| a.0.cmp(&b.0));
            current = tessera_engine::metropolis_mix(
                &own,
                living.len(),
                theirs.iter().map(|(_, m, d)| (m, *d)),
            )
            .map_err(local)?;
        }
        model = Arc::new(current);
        // The round's final model: what a restarted neighbour adopts.
        board.publish_model(round, steps, Arc::clone(&model), living.len() as u32);
        let evaluation = tracing::info_span!(parent: &span, "evaluate", round)
            .in_scope(|| site.evaluate(&model, &test))
            .map_err(local)?;
        let bytes_up = board.bytes_sent().values().sum::<u64>() - sent_before;
        let bytes_down = progress.bytes_received.values().sum::<u64>() - received_before;
        let record = RoundRecord {
            round,
            status: "completed".into(),
            accuracy: evaluation.accuracy(),
            loss: evaluation.mean_loss(),
            mean_site_accuracy: evaluation.accuracy(),
            n_test: evaluation.n_examples,
            auc: evaluation.auc,
            accepted: living.len(),
            dropped: absent.len(),
            seconds: wall.elapsed().as_secs_f64(),
            bytes_up,
            bytes_down,
            traffic: BTreeMap::from([(
                config.site.clone(),
                SiteTraffic {
                    up: bytes_up,
                    down: bytes_down,
                    ..SiteTraffic::default()
                },
            )]),
            site_errors,
            ..RoundRecord::default()
        };
        tracing::info!(
            parent: &span,
            round,
            accuracy = record.accuracy,
            living = living.len(),
            "round done"
        );
        progress.records.push(record);
        progress.last = Some(evaluation);
    }
    // Stay until the living neighbours have this peer's last model, and a
    // neighbour restarted in the last round its final model.
    let rounds = plan.federation.rounds;
    let mut changes = board.subscribe();
    let deadline = Instant::now() + config.liveness * 4;
    while Instant::now() < deadline
        && !(living.iter().all(|n| board.served(n, rounds, steps - 1))
            && board
                .rejoining_after(rounds)
                .iter()
                .all(|n| board.served(n, rounds, steps)))
    {
        let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
    }
    // The last chunks leave after they are counted as served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((progress, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
        list.iter().map(|(n, r)| (n.to_string(), *r)).collect()
    }

    #[test]
    fn a_peer_every_neighbour_tells_round_1_starts_with_the_run() {
        assert_eq!(first_round(&answers(&[("a", 1), ("c", 1)])), (1, None));
        assert_eq!(first_round(&answers(&[])), (1, None));
        // One neighbour gave up on it in round 1, the other did not: it
        // redoes round 1 with the one that still waits for it.
        assert_eq!(first_round(&answers(&[("a", 2), ("c", 1)])), (1, None));
    }

    #[test]
    fn a_restarted_peer_adopts_the_model_of_the_neighbour_furthest_behind() {
        assert_eq!(
            first_round(&answers(&[("a", 7), ("c", 6), ("d", 6)])),
            (6, Some("c"))
        );
        assert_eq!(first_round(&answers(&[("a", 5)])), (5, Some("a")));
    }
}
