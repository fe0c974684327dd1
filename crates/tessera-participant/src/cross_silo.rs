//! `[data.cross_silo]` deployed: before the data agreement, this site
//! computes the cross-silo feature of its rows with every other site of
//! the plan, through the coordinator's relay, as `tessera simulate` does in
//! process (`tessera-psi`'s noisy membership, one run per ordered pair).
//!
//! For each other site, in one global order of the pairs (so that no two
//! sites wait on each other): the two agree a matching key (signed
//! `KeyShare`s, bound to the run, the pair and the section), then each asks
//! the other in turn, the first site of the plan first. As the asking site
//! this site sends its blinded, padded, shuffled query and learns one noisy
//! answer per query point; as the answering site it adds Gaussian noise
//! from its own operating system's randomness to each answer. Before
//! anything leaves, its answers to the other `n - 1` sites are charged to
//! its own ledger (refused past the plan's budgets). Every secret (the
//! blindings, the shuffle, the noise) is drawn here and never leaves; the
//! coordinator carries signed, opaque envelopes.
//!
//! What this site learns of each other site: its number of distinct
//! identifier occurrences and one noisy answer per query point. What the
//! other learns of this site: the number of query points (a power of two,
//! at least 64) and how many matched (the documented leak of
//! `tessera_psi::noisy`). A failed or refused pair stops the site: it
//! cannot train on the plan's layout without the feature.
//!
//! What was received from whom (kinds and sizes) goes to
//! `cross-silo-SITE.json` in the join folder, with the charge.

use std::path::PathBuf;

use serde::Serialize;
use tessera_data::{LocalSite, PendingSite};
use tessera_engine::Plan;
use tessera_proto::pb;
use tessera_proto::pb::federation_client::FederationClient;
use tessera_psi::{
    KeyShare, MatchingKey, MembershipOffer, MembershipQuery, NoisyAnswers, NoisyConfig,
    NoisyReceiver, NoisySender, Reblinded, Visits,
};
use tonic::transport::Channel;

use crate::client::SecureIdentity;
use crate::join::relay::{Relay, Stop};
use crate::supervisor::Failure;
use crate::{ParticipantConfig, ParticipantError, cause};

/// The capability of a coordinator that relays cross-silo conversations.
pub(crate) const CAPABILITY: &str = "cross-silo";

/// The relay conversation of the pair of the plan's sites `i < j`.
pub fn conversation(i: usize, j: usize) -> String {
    format!("cross-silo/{i}-{j}")
}

/// What this site writes of one pair.
#[derive(Debug, Serialize)]
struct PairFile {
    peer: String,
    /// Distinct identifier occurrences the other site answers for.
    peer_held: Option<usize>,
    /// Of this site's query points, how many the other site's answered
    /// query matched (what the other site learns of this site).
    own_query_points: Option<usize>,
    /// Of the other site's query points, how many matched this site's
    /// identifiers (what this site learnt as the answering site).
    matched_as_sender: Option<usize>,
    received: Vec<Seen>,
}

/// One received message as this site's record keeps it: its payload's
/// hash, not the payload (a query is megabytes).
#[derive(Debug, Serialize)]
struct Seen {
    kind: String,
    seq: u32,
    payload_bytes: usize,
    payload_sha256: String,
}

impl Seen {
    fn of(r: crate::join::relay::Received) -> Self {
        use sha2::Digest;
        let bytes: Vec<u8> = (0..r.payload_hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(r.payload_hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        Seen {
            kind: r.kind,
            seq: r.seq,
            payload_bytes: r.payload_bytes,
            payload_sha256: sha2::Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        }
    }
}

/// What this site writes of the feature (`cross-silo-SITE.json`).
#[derive(Debug, Serialize)]
struct FeatureFile {
    site: String,
    feature: String,
    identifier: String,
    rows: usize,
    distinct: usize,
    /// The noise multiplier and standard deviation of each answer.
    noise_multiplier: f64,
    sigma: f64,
    /// The epsilon this site's answers cost at `delta`, by its ledger.
    epsilon: f64,
    delta: f64,
    pairs: Vec<PairFile>,
}

fn refused(why: String) -> Failure {
    tracing::error!(%why, "plan refused");
    Failure::Fatal(ParticipantError::Stop(cause::Cause::PlanRefused(why)))
}

fn local(why: String) -> Failure {
    Failure::Fatal(ParticipantError::Local(why))
}

fn stopped(stop: Stop) -> String {
    match stop {
        Stop::Refused(why) => format!("the other site refused: {why}"),
        Stop::Failed(why) => why,
    }
}

/// Runs `f` off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("crashed: {e}"))?
}

/// Reads this site's rows: with `[data.cross_silo]`, the feature computed
/// with the other sites as their last column ([`read_site`]).
pub(crate) async fn read_local(
    config: &ParticipantConfig,
    client: &mut FederationClient<Channel>,
    welcome: &pb::Welcome,
    plan: &Plan,
) -> Result<LocalSite, Failure> {
    if plan.data.cross_silo.is_some() {
        return read_site(config, client, welcome, plan).await;
    }
    crate::client::read_site(
        &plan.data,
        &config.site,
        config.data.as_deref(),
        &config.plan_dir,
        config.mapping.as_ref(),
    )
    .await
    .map_err(Failure::Fatal)
}

/// Reads this site's rows and computes the plan's cross-silo feature with
/// the other sites: the rows with the feature as their last column.
pub(crate) async fn read_site(
    config: &ParticipantConfig,
    client: &mut FederationClient<Channel>,
    welcome: &pb::Welcome,
    plan: &Plan,
) -> Result<LocalSite, Failure> {
    let Some(cross) = plan.data.cross_silo.clone() else {
        return Err(local("the plan has no [data.cross_silo]".into()));
    };
    let sites = plan.data.named_sites();
    let Some(me) = sites.iter().position(|s| *s == config.site) else {
        return Err(refused(format!(
            "[data.cross_silo] is computed among the plan's named sites, and '{}' is not one of \
             them ({})",
            config.site,
            sites.join(", ")
        )));
    };
    // Only the plan this site agreed to: a coordinator's plan could lower
    // the noise (a larger epsilon) or rename the plan to reset this site's
    // ledger, and a consent by name could be matched by a join of that name.
    if config.expect_plan.is_none() {
        return Err(refused(format!(
            "the plan computes the cross-silo feature '{}' from this site's '{}' column with \
             the other sites: give --expect-plan with the plan this site agreed to (its noise \
             and budgets are then the ones agreed, not the coordinator's)",
            cross.feature, cross.identifier
        )));
    }
    if !welcome.capabilities.iter().any(|c| c == CAPABILITY) {
        return Err(refused(
            "the plan has [data.cross_silo], but the coordinator relays no cross-silo \
             conversations (protocol before 1.13)"
                .into(),
        ));
    }
    let identity = SecureIdentity::load(config.tls.as_ref()).map_err(Failure::Fatal)?;
    if !identity.signs() {
        // Unsigned, the coordinator could stand in for another site and
        // ask about guessed identifiers.
        return Err(refused(
            "[data.cross_silo] runs between certified sites only: without TLS its messages are \
             unsigned and the coordinator could stand in for another site (run the participant \
             with --tls)"
                .into(),
        ));
    }
    let (data, site, file, plan_dir, mapping) = (
        plan.data.clone(),
        config.site.clone(),
        config.data.clone(),
        config.plan_dir.clone(),
        config.mapping.clone(),
    );
    let pending: PendingSite = blocking(move || {
        let (file, schema) = (file.as_deref(), &data.schema);
        let fs = &tessera_data::Filesystem;
        tessera_data::mapping::with_mapping(fs, file, &plan_dir, mapping.as_ref(), schema, |s| {
            tessera_data::read_pending_site(&data, &site, file, &plan_dir, s)
        })
        .map_err(|e| e.to_string())
    })
    .await
    .map_err(local)?;
    let Some((z, sigma, event)) = plan
        .cross_silo_noise(sites.len())
        .map_err(|e| refused(format!("[data.cross_silo]: {e}")))?
    else {
        return Err(refused(
            "[data.cross_silo] needs at least two named sites".into(),
        ));
    };
    // Every identifier checked, and the messages' sizes, before anything
    // is charged or sent.
    let visits = blocking({
        let ids = pending.identifiers().identifiers.clone();
        let column = cross.identifier.clone();
        // Only the grouping of rows by identifier matters here.
        move || {
            Visits::new(&MatchingKey::from_bytes([0u8; 32]), &ids).map_err(|e| match e {
                tessera_psi::PsiError::EmptyIdentifier { index } => format!(
                    "data row {} of this site: its '{column}' is empty once normalised",
                    index + 1
                ),
                e => e.to_string(),
            })
        }
    })
    .await
    .map_err(local)?;
    let points = noisy_points(visits.distinct(), cross.max_visits);
    if points.saturating_mul(tessera_psi::POINT_BYTES) > MAX_MESSAGE {
        return Err(local(format!(
            "[data.cross_silo]: {} patients x max_visits {} make a query of {points} points, \
             above the {} bytes one relayed message carries: lower max_visits",
            visits.distinct(),
            cross.max_visits,
            MAX_MESSAGE
        )));
    }
    // Within a run, the feature computed once (a new session after a lost
    // connection reuses it, without a second charge).
    if let Some(values) = cached(&welcome.run_id) {
        tracing::info!(feature = %cross.feature, "the cross-silo feature of this run, computed before");
        return blocking(move || pending.finish(values).map_err(|e| e.to_string()))
            .await
            .map_err(local);
    }
    // Charged before any answer leaves, across runs and restarts.
    let mut ledger = crate::ledger::SiteLedger::open(
        config.ledger.as_deref(),
        &config.site,
        plan,
        &welcome.run_id,
    )
    .map_err(local)?;
    ledger
        .record_cross_silo(event, &cross.feature)
        .map_err(|e| refused(format!("[data.cross_silo]: {e}")))?;
    let epsilon = ledger.epsilon();
    drop(ledger);
    let rows = pending.identifiers().identifiers.len();
    tracing::info!(feature = %cross.feature, rows, sigma, "computing the cross-silo feature with the other sites");
    let mut file = FeatureFile {
        site: config.site.clone(),
        feature: cross.feature.clone(),
        identifier: cross.identifier.clone(),
        rows,
        distinct: 0,
        noise_multiplier: z,
        sigma,
        epsilon,
        delta: plan.privacy.delta,
        pairs: Vec::new(),
    };
    // Each row's sum of the answers about its identifier, over the pairs.
    let mut totals = vec![0.0f64; rows];
    let noisy = NoisyConfig::new(sigma);
    let mut failure: Option<String> = None;
    // Every pair in one global order: each site works through its own
    // pairs in that order, so the smallest unfinished pair always has both
    // its sites at it.
    for i in 0..sites.len() {
        for j in i + 1..sites.len() {
            if i != me && j != me {
                continue;
            }
            let peer = if i == me { &sites[j] } else { &sites[i] };
            let name = conversation(i, j);
            let mut relay = Relay::new(
                client,
                &identity,
                &welcome.run_id,
                &name,
                &config.site,
                peer,
            );
            if let Some(why) = &failure {
                // The other sites do not wait for this one in vain.
                let _ = relay
                    .send(
                        "refuse",
                        format!(
                            "the cross-silo feature failed at '{}' before this pair: {why}",
                            config.site
                        )
                        .as_bytes(),
                    )
                    .await;
                continue;
            }
            let mut pair = PairFile {
                peer: peer.clone(),
                peer_held: None,
                own_query_points: None,
                matched_as_sender: None,
                received: Vec::new(),
            };
            let context = format!(
                "{}\n{name}\n{}\n{}\n{}",
                welcome.run_id,
                sites[i],
                sites[j],
                serde_json::to_string(&cross).unwrap_or_default()
            );
            let outcome = one_pair(
                &mut relay,
                &pending,
                &context,
                i == me,
                noisy,
                cross.max_visits,
                &mut pair,
                &mut totals,
            )
            .await;
            pair.received = std::mem::take(&mut relay.transcript)
                .into_iter()
                .map(Seen::of)
                .collect();
            let report = |status: &str, reason: &str| pb::JoinReport {
                status: status.into(),
                reason: reason.into(),
                ..Default::default()
            };
            match outcome {
                Ok(()) => {
                    if let Err(e) = relay.report(report("done", "")).await {
                        tracing::warn!(%e, "could not tell the coordinator");
                    }
                }
                Err(stop) => {
                    let why = format!("with site '{peer}': {}", stopped(stop));
                    let _ = relay
                        .send(
                            "refuse",
                            format!("the cross-silo feature failed at '{}': {why}", config.site)
                                .as_bytes(),
                        )
                        .await;
                    let _ = relay.report(report("failed", &why)).await;
                    failure = Some(why);
                }
            }
            file.pairs.push(pair);
        }
    }
    file.distinct = visits.distinct();
    write_file(config, &file);
    if let Some(why) = failure {
        return Err(local(format!(
            "the cross-silo feature '{}' could not be computed ({why}): this site cannot train \
             on the plan's layout without it",
            cross.feature
        )));
    }
    // Rows without an identifier are unknown (NaN), whatever was summed.
    let values: Vec<f64> = totals
        .iter()
        .zip(&pending.identifiers().identifiers)
        .map(|(v, id)| if id.is_some() { *v } else { f64::NAN })
        .collect();
    remember(&welcome.run_id, values.clone());
    blocking(move || pending.finish(values).map_err(|e| e.to_string()))
        .await
        .map_err(local)
}

/// The most bytes of points one relayed message carries (the relay's
/// envelope bound, less room for the header and the signature).
const MAX_MESSAGE: usize = (15 << 20) - (64 << 10);

/// The query points for `distinct` identifiers of `cap` occurrences.
fn noisy_points(distinct: usize, cap: u32) -> usize {
    NoisyConfig::new(0.0).padded_len(distinct.saturating_mul(cap as usize))
}

/// This process's feature of its last run.
static COMPUTED: std::sync::Mutex<Option<(String, Vec<f64>)>> = std::sync::Mutex::new(None);

fn cached(run: &str) -> Option<Vec<f64>> {
    let held = COMPUTED.lock().ok()?;
    held.as_ref()
        .filter(|(r, _)| r == run)
        .map(|(_, v)| v.clone())
}

fn remember(run: &str, values: Vec<f64>) {
    if let Ok(mut held) = COMPUTED.lock() {
        *held = Some((run.to_string(), values));
    }
}

/// One pair: the key, then each site asks the other (`first` asks first).
/// `totals`: each row's sum of the answers about its identifier.
#[allow(clippy::too_many_arguments)]
async fn one_pair(
    relay: &mut Relay<'_>,
    pending: &PendingSite,
    context: &str,
    first: bool,
    noisy: NoisyConfig,
    cap: u32,
    pair: &mut PairFile,
    totals: &mut [f64],
) -> Result<(), Stop> {
    let share = KeyShare::generate().map_err(fail)?;
    relay.send("hello", &share.public()).await?;
    let peer_public = relay.receive("hello").await?;
    let key = share
        .agree(&peer_public, context.as_bytes())
        .map_err(fail)?;
    // Both sites prove they hold the same key (the same plan section, this
    // session's key shares): a message left from an earlier session, or a
    // peer with another plan, fails here, named, instead of matching nothing.
    let confirm = |role: &[u8], first: &[u8], second: &[u8]| {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"tessera/cross-silo/confirm/v1\0");
        h.update(key.to_bytes());
        h.update(role);
        h.update(first);
        h.update(second);
        h.finalize().to_vec()
    };
    let own_public = share.public();
    let (mine, theirs): (&[u8], &[u8]) = if first {
        (b"first", b"second")
    } else {
        (b"second", b"first")
    };
    let (lo, hi) = if first {
        (own_public.as_slice(), peer_public.as_slice())
    } else {
        (peer_public.as_slice(), own_public.as_slice())
    };
    relay.send("confirm", &confirm(mine, lo, hi)).await?;
    if relay.receive("confirm").await? != confirm(theirs, lo, hi) {
        return Err(Stop::Failed(
            "the other site agreed another key (another [data.cross_silo] section or run, or \
             a message left from an earlier attempt): nothing is computed"
                .into(),
        ));
    }
    let ids = pending.identifiers().identifiers.clone();
    let visits = blocking(move || Visits::new(&key, &ids).map_err(|e| e.to_string()))
        .await
        .map_err(Stop::Failed)?;
    for asking in [first, !first] {
        if asking {
            let query = visits.query(cap);
            let (receiver, q) =
                blocking(move || NoisyReceiver::start(noisy, &query).map_err(|e| e.to_string()))
                    .await
                    .map_err(Stop::Failed)?;
            pair.own_query_points = Some(q.count as usize);
            relay.send("query", &q.to_bytes()).await?;
            let offer =
                MembershipOffer::from_bytes(&relay.receive("offer").await?).map_err(fail)?;
            pair.peer_held = Some(offer.count as usize);
            let (receiver, reblinded) = blocking(move || {
                let r = receiver.reblind(&offer).map_err(|e| e.to_string())?;
                Ok((receiver, r))
            })
            .await
            .map_err(Stop::Failed)?;
            relay.send("reblinded", &reblinded.to_bytes()).await?;
            let answers =
                NoisyAnswers::from_bytes(&relay.receive("answers").await?).map_err(fail)?;
            let values = receiver.finish(&answers).map_err(fail)?;
            // An answer is a bit plus Gaussian noise: far outside that, the
            // other site is not following the protocol.
            let bound = 1.0 + 50.0 * noisy.sigma;
            if let Some(v) = values.iter().find(|v| !(-bound..=bound + 1.0).contains(*v)) {
                return Err(Stop::Failed(format!(
                    "an answer of {v} lies outside [-{bound}, {}] (a bit plus noise of sd {}): \
                     refused",
                    bound + 1.0,
                    noisy.sigma
                )));
            }
            let mut per_identifier = vec![0.0; visits.distinct()];
            visits
                .add_answers(&mut per_identifier, &values, cap)
                .map_err(fail)?;
            for (t, v) in totals.iter_mut().zip(visits.per_row(&per_identifier)) {
                *t += v;
            }
        } else {
            let q = MembershipQuery::from_bytes(&relay.receive("query").await?).map_err(fail)?;
            let held = visits.held(cap);
            let (sender, offer) =
                blocking(move || NoisySender::respond(noisy, &held, &q).map_err(|e| e.to_string()))
                    .await
                    .map_err(Stop::Failed)?;
            relay.send("offer", &offer.to_bytes()).await?;
            let reblinded =
                Reblinded::from_bytes(&relay.receive("reblinded").await?).map_err(fail)?;
            let (answers, view) =
                blocking(move || sender.answer(&reblinded).map_err(|e| e.to_string()))
                    .await
                    .map_err(Stop::Failed)?;
            pair.matched_as_sender = Some(view.matched);
            relay.send("answers", &answers.to_bytes()).await?;
        }
    }
    Ok(())
}

fn fail(e: impl std::fmt::Display) -> Stop {
    Stop::Failed(e.to_string())
}

fn write_file(config: &ParticipantConfig, file: &FeatureFile) {
    let dir = config
        .joins
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("."));
    let path = dir.join(format!("cross-silo-{}.json", config.site));
    let written = serde_json::to_vec_pretty(file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| crate::join::write_private(&path, &bytes).map_err(|e| e.to_string()));
    if let Err(e) = written {
        tracing::error!(path = %path.display(), %e, "cannot write the cross-silo feature's record");
    }
}
