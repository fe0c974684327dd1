//! Secure aggregation in deployment: the open round's cohort runs a SecAgg+
//! round through `SecureAggregation` requests, and the engine receives only
//! the recovered sum. Each stage closes when every participant still in it has
//! answered, or after the liveness period; whoever has not answered by then
//! has dropped, and the protocol recovers the sum of the others. The
//! protocol's state is not stored: after a coordinator restart the round is
//! reopened and the cohort trains again (no update was accepted).
//!
//! Stages: 1 keys, 2 shares, 3 masked inputs, 4 signed views (the
//! consistency check), 5 unmasking, 6 done. The coordinator relays: each
//! participant checks the parameters against the plan, its neighbours'
//! signatures against the certificates relayed with the parameters (which it
//! verifies against the federation CA itself), and the survivors' signed
//! views before it reveals anything (see `tessera_secagg`).
//!
//! Each participant's example count, train loss and step count travel inside
//! its masked vector, after the update ([`tessera_secagg::encode_metadata`]):
//! the coordinator learns only the survivors' sums of them, decoded when the
//! round closes. The clear fields of `SecAggMasked` (before 1.5) are not read.

use std::collections::{BTreeMap, BTreeSet};

use tessera_core::{FitStats, ParticipantId, Timestamp, Update};
use tessera_proto::pb;
use tessera_proto::pb::sec_agg_reply::State as Reply;
use tessera_proto::pb::sec_agg_request::Step;
use tessera_secagg::{
    AdvertiseKeys, MaskedInput, Server, ShareKeys, SignedView, UnmaskResponse, masked_dimension,
    split_sum,
};

use super::{Federation, Refusal};

/// A round's secure aggregation in progress.
pub(super) struct SecureRound {
    pub(super) round: u32,
    index: BTreeMap<String, u32>,
    sites: BTreeMap<u32, String>,
    server: Server,
    /// 1 keys, 2 shares, 3 masked inputs, 4 signed views, 5 unmasking, 6 done.
    stage: u32,
    /// Who is still expected in the current stage, and who has answered.
    waiting: BTreeSet<u32>,
    sent: BTreeSet<u32>,
    stage_started: Timestamp,
    /// Whether it sums the sites' evaluations (`site_metrics =
    /// "aggregate-only"`) rather than their updates.
    pub(super) evaluation: bool,
    /// Sites that refused the round (its parameters or views failed their
    /// checks): neither waited for nor asked again.
    refused: BTreeSet<String>,
}

impl SecureRound {
    /// The names of the sites whose masked input arrived.
    fn survivor_names(&self) -> Vec<&str> {
        self.server
            .unmask_request()
            .survivors
            .iter()
            .filter_map(|i| self.sites.get(i).map(String::as_str))
            .collect()
    }

    /// Whether `site` took part in this round from its first stage (it has
    /// sent its keys).
    pub(super) fn has_joined(&self, site: &str) -> bool {
        self.index
            .get(site)
            .is_some_and(|id| self.server.has_keys(*id))
    }

    /// Whether `site` has refused the round.
    pub(super) fn has_refused(&self, site: &str) -> bool {
        self.refused.contains(site)
    }

    /// Whether it sums evaluations.
    pub(super) fn is_evaluation(&self) -> bool {
        self.evaluation
    }
}

fn shares_to_pb(shares: Vec<(u32, Vec<u8>)>) -> Vec<pb::SecAggShare> {
    shares
        .into_iter()
        .map(|(peer, data)| pb::SecAggShare { peer, data })
        .collect()
}

fn shares_from_pb(shares: Vec<pb::SecAggShare>) -> Vec<(u32, Vec<u8>)> {
    shares.into_iter().map(|s| (s.peer, s.data)).collect()
}

fn key32(bytes: &[u8], what: &str) -> Result<[u8; 32], Refusal> {
    bytes
        .try_into()
        .map_err(|_| Refusal::Invalid(format!("{what} is {} bytes, not 32", bytes.len())))
}

impl Federation {
    /// Keeps the client certificate `site` presented (with mutual TLS), to
    /// relay to the cohorts of secure rounds.
    pub fn remember_certificate(&mut self, site: &str, certificate: Option<Vec<u8>>) {
        if let Some(der) = certificate
            && self.roster.is_joined(site)
            && self.certificates.get(site) != Some(&der)
        {
            self.certificates.insert(site.to_string(), der);
        }
    }

    /// Starts secure aggregation for a round just opened with `cohort`.
    pub(super) fn open_secure_round(
        &mut self,
        round: u32,
        cohort: &[ParticipantId],
        now: Timestamp,
    ) {
        if !self.plan.secure_aggregation.enabled {
            return;
        }
        let Some(n_values) = self.training.rounds().map(|e| e.global().n_values()) else {
            return;
        };
        // A random-k codec: everyone masks the round's shared coordinates
        // only; then the metadata (example count, loss, steps) follows.
        let dimension = masked_dimension(
            self.plan
                .secure_coordinates(round, n_values)
                .map_or(n_values, |kept| kept.len()),
        );
        let index: BTreeMap<String, u32> = cohort
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_str().to_string(), i as u32))
            .collect();
        let ids: Vec<u32> = index.values().copied().collect();
        let made = self
            .plan
            .secure_aggregation
            .round_params(round, &ids, self.plan.secagg_graph_seed(round), dimension)
            .and_then(Server::new);
        match made {
            Ok(server) => {
                self.secure = Some(SecureRound {
                    round,
                    sites: index.iter().map(|(s, i)| (*i, s.clone())).collect(),
                    index,
                    server,
                    stage: 1,
                    waiting: ids.into_iter().collect(),
                    sent: BTreeSet::new(),
                    stage_started: now,
                    evaluation: false,
                    refused: BTreeSet::new(),
                });
            }
            Err(e) => {
                // The round cannot be secured (too small a cohort): nobody's update counts.
                tracing::error!(round, %e, "secure aggregation cannot start");
                self.audit("-", "secure-aggregation", "failed", &e.to_string());
                if let Some(engine) = self.training.rounds_mut() {
                    for p in cohort {
                        engine.report_dropout(p);
                    }
                }
            }
        }
    }

    /// Starts the secure sum of the evaluations of round `round`'s model by
    /// `targets`, the live sites of `cohort` (`site_metrics =
    /// "aggregate-only"` or `"dp"`): secure round `round | EVALUATION_ROUND`,
    /// over the summable encoding.
    pub(super) fn open_secure_evaluation(
        &mut self,
        round: u32,
        cohort: &BTreeSet<String>,
        targets: &BTreeSet<String>,
        now: Timestamp,
    ) {
        let secure_round = round | tessera_secagg::EVALUATION_ROUND;
        let index: BTreeMap<String, u32> = cohort
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        let ids: Vec<u32> = index.values().copied().collect();
        let made = self
            .plan
            .secure_aggregation
            .round_params(
                secure_round,
                &ids,
                self.plan.secagg_graph_seed(secure_round),
                tessera_learn::SUMMABLE_LEN,
            )
            .and_then(Server::new);
        let absent: Vec<String> = index
            .keys()
            .filter(|s| !targets.contains(*s))
            .cloned()
            .collect();
        match made {
            Ok(server) => {
                self.secure = Some(SecureRound {
                    round: secure_round,
                    sites: index.iter().map(|(s, i)| (*i, s.clone())).collect(),
                    index,
                    server,
                    stage: 1,
                    waiting: ids.into_iter().collect(),
                    sent: BTreeSet::new(),
                    stage_started: now,
                    evaluation: true,
                    refused: BTreeSet::new(),
                });
                // Sites that are not live (they left the run, or went
                // silent) are in the cohort, as in a training round, and
                // counted as dropped at once.
                for site in &absent {
                    self.secure_withdraw(site);
                }
            }
            Err(e) => {
                let detail = format!(
                    "round {round}'s evaluation cannot be summed securely: {e}; the round has no \
                     evaluation figures (site_metrics = \"clear\" in [privacy] lets the \
                     coordinator see each site's evaluation)"
                );
                tracing::error!(round, %e, "secure evaluation cannot start");
                self.audit("-", "secure-evaluation", "failed", &detail);
                self.secure_evaluated = Some((round, None));
            }
        }
    }

    /// One `SecureAggregation` request.
    pub fn secure_step(
        &mut self,
        site: &str,
        round: u32,
        step: Option<Step>,
    ) -> Result<pb::SecAggReply, Refusal> {
        self.require_joined(site)?;
        self.touch(site);
        let now = self.now();
        let reply = |state| Ok(pb::SecAggReply { state: Some(state) });
        let Some(secure) = self.secure.as_mut().filter(|s| s.round == round) else {
            // The round is over (or was reopened after a restart): stop.
            return reply(Reply::Done(true));
        };
        let Some(&id) = secure.index.get(site) else {
            return Err(Refusal::Denied(format!(
                "site '{site}' is not in round {round}'s cohort"
            )));
        };
        let outcome: Result<pb::SecAggReply, Refusal> = match step {
            None => Err(Refusal::Invalid(
                "an empty secure-aggregation request".into(),
            )),
            Some(Step::Poll(want)) => {
                let server = &secure.server;
                let state = match want {
                    1 => {
                        let p = server.params();
                        let sites: Vec<String> = p
                            .participants
                            .iter()
                            .map(|i| secure.sites.get(i).cloned().unwrap_or_default())
                            .collect();
                        let certificates = sites
                            .iter()
                            .map(|s| self.certificates.get(s).cloned().unwrap_or_default())
                            .collect();
                        Reply::Params(pb::SecAggParams {
                            id,
                            participants: p.participants.clone(),
                            neighbours: p.neighbours as u32,
                            threshold: p.threshold as u32,
                            graph_seed: p.graph_seed.to_vec(),
                            dimension: p.dimension as u32,
                            range: p.range,
                            sites,
                            certificates,
                        })
                    }
                    2 if secure.stage >= 2 => {
                        let keys = server.keys_for(id);
                        Reply::Keys(pb::SecAggNeighbourKeys {
                            peers: keys.iter().map(|k| k.from).collect(),
                            keys: keys
                                .into_iter()
                                .map(|k| pb::SecAggKeys {
                                    c_public: k.c_public.to_vec(),
                                    s_public: k.s_public.to_vec(),
                                    signature: k.signature,
                                })
                                .collect(),
                        })
                    }
                    3 if secure.stage >= 3 => Reply::Shares(pb::SecAggShares {
                        shares: shares_to_pb(server.shares_for(id)),
                    }),
                    4 if secure.stage >= 4 => {
                        let r = server.unmask_request();
                        Reply::Unmask(pb::SecAggUnmaskRequest {
                            survivors: r.survivors,
                            dropped: r.dropped,
                        })
                    }
                    5 if secure.stage >= 5 => Reply::Views(pb::SecAggViews {
                        views: server
                            .views()
                            .into_iter()
                            .map(|v| pb::SecAggSignedView {
                                id: v.from,
                                signature: v.signature,
                            })
                            .collect(),
                    }),
                    6 if secure.stage >= 6 => Reply::Done(true),
                    2..=6 => Reply::Wait(true),
                    other => {
                        return Err(Refusal::Invalid(format!("no stage {other} to wait for")));
                    }
                };
                reply(state)
            }
            Some(step) => {
                let stage = match &step {
                    Step::Keys(_) => 1,
                    Step::Shares(_) => 2,
                    Step::Masked(_) => 3,
                    Step::View(_) => 4,
                    _ => 5,
                };
                if secure.stage != stage || !secure.waiting.contains(&id) {
                    // Too late: the round goes on without this site.
                    let detail = format!("round {round}: stage {stage} closed before it answered");
                    self.audit(site, "secure-aggregation", "late", &detail);
                    return reply(Reply::Done(true));
                } else {
                    let received = match step {
                        Step::Keys(k) => key32(&k.c_public, "the encryption key").and_then(|c| {
                            let s = key32(&k.s_public, "the mask key")?;
                            secure
                                .server
                                .receive_keys(AdvertiseKeys {
                                    from: id,
                                    c_public: c,
                                    s_public: s,
                                    signature: k.signature,
                                })
                                .map_err(|e| Refusal::Invalid(e.to_string()))
                        }),
                        Step::Shares(s) => secure
                            .server
                            .receive_shares(ShareKeys {
                                from: id,
                                shares: shares_from_pb(s.shares),
                            })
                            .map_err(|e| Refusal::Invalid(e.to_string())),
                        // The clear n_examples, mean_train_loss and n_steps
                        // (zero since 1.5) are ignored: they are in the vector.
                        Step::Masked(m) => secure
                            .server
                            .receive_masked(MaskedInput {
                                from: id,
                                values: m.values,
                            })
                            .map_err(|e| Refusal::Invalid(e.to_string())),
                        Step::View(v) => secure
                            .server
                            .receive_view(SignedView {
                                from: id,
                                signature: v.signature,
                            })
                            .map_err(|e| Refusal::Invalid(e.to_string())),
                        Step::Unmask(u) => secure
                            .server
                            .receive_unmask(UnmaskResponse {
                                from: id,
                                seed_shares: shares_from_pb(u.seed_shares),
                                key_shares: shares_from_pb(u.key_shares),
                            })
                            .map_err(|e| Refusal::Invalid(e.to_string())),
                        Step::Poll(_) => Ok(()),
                    };
                    received.map(|()| {
                        secure.sent.insert(id);
                        pb::SecAggReply {
                            state: Some(Reply::Wait(true)),
                        }
                    })
                }
            }
        };
        if let Err(e) = &outcome {
            self.audit(site, "secure-aggregation", "rejected", &e.to_string());
        }
        self.advance_secure(now);
        outcome
    }

    /// `site` refuses the secure sum of evaluations numbered `secure_round`:
    /// it is not waited for, nor given the evaluation again. True when that
    /// round is open and has `site`.
    pub(super) fn secure_evaluation_refused(&mut self, site: &str, secure_round: u32) -> bool {
        let open = self.secure.as_mut().is_some_and(|secure| {
            let here = secure.evaluation
                && secure.round == secure_round
                && secure.index.contains_key(site);
            if here {
                secure.refused.insert(site.to_string());
            }
            here
        });
        if open {
            self.secure_withdraw(site);
        }
        open
    }

    /// `site` left the open round: the current stage stops waiting for it
    /// (what it already sent in this stage stands).
    pub(super) fn secure_withdraw(&mut self, site: &str) {
        if let Some(secure) = self.secure.as_mut()
            && let Some(id) = secure.index.get(site)
            && !secure.sent.contains(id)
        {
            secure.waiting.remove(id);
        }
    }

    /// Closes the current stage when everyone in it has answered or the
    /// liveness period is over; after the last one, hands the sum to the engine.
    pub(super) fn advance_secure(&mut self, now: Timestamp) {
        let liveness = self.roster.liveness();
        let Some(secure) = self.secure.as_mut() else {
            return;
        };
        while secure.stage < 6 {
            let all_in = secure.waiting.is_subset(&secure.sent);
            let timed_out = now.since(secure.stage_started) > liveness;
            if !all_in && !timed_out {
                return;
            }
            secure.waiting = std::mem::take(&mut secure.sent);
            secure.stage += 1;
            secure.stage_started = now;
            self.version += 1;
        }
        let Some(secure) = self.secure.take() else {
            return;
        };
        if secure.evaluation {
            self.finish_secure_evaluation(&secure);
            return;
        }
        // Keep a finished round around so late polls hear that it is done.
        let round = secure.round;
        let result = secure
            .server
            .finish()
            .and_then(|(sum, count)| split_sum(&sum, count, secure.server.params()));
        let recovered = secure.server.unmask_request().dropped.len();
        // One site's count is hidden; the survivors' sums are bounded by
        // what they declared together.
        let names = secure.survivor_names();
        let result = result
            .map_err(|e| e.to_string())
            .and_then(|(values, meta)| {
                self.check_secure_sums(&names, meta.n_examples, meta.n_steps)
                    .map(|()| (values, meta))
                    .map_err(|reason| {
                        self.refuse_report(
                            "-",
                            "secure-aggregation",
                            &format!("round {round}: {reason}"),
                        );
                        reason
                    })
            });
        let Some(engine) = self.training.rounds_mut() else {
            return;
        };
        let global = engine.global().clone();
        let counted = match result {
            Ok((values, meta)) => {
                let mut values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
                if let Some(kept) = self.plan.secure_coordinates(round, global.n_values()) {
                    values = tessera_compress::scatter(global.n_values(), &kept, &values);
                }
                let delta = global.with_values(&values);
                let contributors: Vec<ParticipantId> =
                    names.iter().map(|name| ParticipantId::new(*name)).collect();
                match delta {
                    Ok(delta) => {
                        // Only the survivors' sums: examples and steps are
                        // the cohort's totals (the steps no longer the max),
                        // the loss their mean (2^-16 fixed point, clipped
                        // to [0, 65,536)).
                        let update = Update {
                            delta,
                            n_examples: meta.n_examples,
                            aux: None,
                            stats: FitStats {
                                n_steps: meta.n_steps,
                                mean_train_loss: meta.mean_train_loss(),
                            },
                        };
                        match engine.submit_sum(now, round, &contributors, &update) {
                            Ok(()) => contributors,
                            Err(e) => {
                                tracing::warn!(round, %e, "the secure sum was refused");
                                Vec::new()
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(round, %e, "the secure sum has the wrong layout");
                        Vec::new()
                    }
                }
            }
            Err(e) => {
                tracing::warn!(round, %e, "secure aggregation failed");
                Vec::new()
            }
        };
        for site in secure.index.keys() {
            let p = ParticipantId::new(site.as_str());
            if !counted.contains(&p) {
                engine.report_dropout(&p);
            }
        }
        let detail = format!(
            "round {round}: the sum of {} of {} updates; the masks of {recovered} that dropped after sharing keys removed",
            counted.len(),
            secure.index.len()
        );
        self.audit("-", "secure-aggregation", "completed", &detail);
        self.version += 1;
    }

    /// The sum of the sites' evaluations is in: decoded, it is all the
    /// coordinator learns of them.
    fn finish_secure_evaluation(&mut self, secure: &SecureRound) {
        let round = secure.round & !tessera_secagg::EVALUATION_ROUND;
        let summed = secure
            .server
            .finish()
            .map_err(|e| e.to_string())
            .and_then(|(sum, count)| tessera_learn::decode_summable(&sum, count))
            .and_then(|summed| {
                self.check_secure_evaluation(
                    &secure.survivor_names(),
                    summed.pooled.n_examples,
                    summed.pooled.loss_sum,
                )
                .map(|()| summed)
            });
        let (outcome, detail, view) = match (summed, self.metrics_dp.as_mut()) {
            (Ok(summed), None) => (
                "completed",
                format!(
                    "round {round}'s evaluation: the sum of {} of {} sites' evaluations ({} test rows)",
                    summed.sites,
                    secure.index.len(),
                    summed.pooled.n_examples
                ),
                Some(tessera_engine::report::EvaluationView::summed(&summed)),
            ),
            // `site_metrics = "dp"`: noised in memory with a key from the
            // operating system that is dropped here; the exact sum goes no
            // further than this function (not in the audit detail either).
            (Ok(summed), Some(dp)) => {
                let mut key = [0u8; 32];
                let drawn = getrandom::fill(&mut key)
                    .map_err(|e| format!("cannot draw a secret noise key: {e}"))
                    .and_then(|()| dp.charge().map_err(|e| e.to_string()));
                match drawn {
                    Ok(epsilon) => {
                        let mut noise = tessera_privacy::GaussianNoise::new(key, 0);
                        let view =
                            tessera_engine::report::EvaluationView::noised(&summed, dp, &mut noise);
                        self.metrics_released = Some(epsilon);
                        (
                            "completed",
                            format!(
                                "round {round}'s evaluation: the sum of {} of {} sites' evaluations, \
                                 noised (metrics epsilon {epsilon:.4} of {})",
                                summed.sites,
                                secure.index.len(),
                                dp.budget()
                            ),
                            Some(view),
                        )
                    }
                    Err(e) => (
                        "failed",
                        format!("round {round}'s evaluation not released: {e}"),
                        None,
                    ),
                }
            }
            (Err(e), _) => ("failed", format!("round {round}'s evaluation: {e}"), None),
        };
        self.audit("-", "secure-evaluation", outcome, &detail);
        self.secure_evaluated = Some((round, view));
        self.version += 1;
    }
}
