//! Secure joins between deployed sites (`[[analytics.joins]]`), run by
//! each site right after the data agreement, before training: for every
//! join of the plan that names this site, it consents (`--consent-join`)
//! or refuses with the reason (to the other site and the coordinator),
//! agrees a matching key with the other site (`tessera_psi::KeyShare`,
//! signed), then runs intersection-sum both ways (`tessera_psi::sum`, with
//! its own OS-random secrets): each site learns the number of shared
//! identifiers and the sum of the other site's values over them, and the
//! two exchange their results, so both hold the count and each site's
//! mean over the shared identifiers. With `reveal = "members"`,
//! `"members_first"` or `"count"` it runs ECDH-PSI instead (`members`). Nothing else crosses: the other site's
//! identifiers, tokens and values never arrive, only blinded points and
//! ciphertexts. Every message goes through the coordinator's relay, signed
//! with this site's certificate key and checked against the federation CA
//! at the other end (`envelope`, `relay`).
//!
//! The result and the transcript of everything received (kinds, sizes,
//! bytes) go to `join-NAME.json` in the site's join folder, and the result
//! to the coordinator, which records it as an unprotected (exact) release.
//! A join that fails or is refused does not stop training.

mod envelope;
mod members;
pub(crate) mod relay;
mod rows;

use std::path::PathBuf;

use serde::Serialize;
use tessera_analytics::JoinSpec;
use tessera_proto::pb;
use tessera_proto::pb::federation_client::FederationClient;
use tessera_psi::{
    DecryptRequest, DecryptShare, KeyShare, SumConfig, SumQuery, SumReceiver, SumResponse,
    SumSender,
};
use tonic::transport::Channel;

use crate::ParticipantConfig;
use crate::client::SecureIdentity;
use relay::{Received, Relay, Stop};

/// A site's consent to the plan's joins, and where their results go.
#[derive(Debug, Clone, Default)]
pub struct JoinSettings {
    /// The joins this site consents to, by name (`--consent-join`).
    pub consent: Vec<String>,
    /// The folder of the joins' results (`join-NAME.json`); `None`: the
    /// working folder.
    pub out_dir: Option<PathBuf>,
}

/// What a site writes for one join.
#[derive(Debug, Serialize)]
struct JoinFile {
    join: String,
    site: String,
    peer: String,
    identifier: String,
    value: String,
    /// "done", "refused" (by this site), "refused-by-peer", "failed".
    status: String,
    reason: String,
    /// What the join reveals (`count_mean`, `members`, `members_first`,
    /// `count`).
    reveal: String,
    /// The number of shared identifiers (where this site learns it).
    count: Option<u64>,
    /// With `members` (and `members_first` at the first site): this
    /// site's own identifiers that the other site holds, as its data file
    /// spells them, sorted.
    #[serde(skip_serializing_if = "Option::is_none")]
    shared: Option<Vec<String>>,
    /// Each site's mean of `value` over the shared identifiers.
    means: std::collections::BTreeMap<String, Option<f64>>,
    /// This site's identifiers, and the other site's (all it learns of it).
    own_elements: usize,
    peer_elements: Option<usize>,
    /// Whether the messages were signed and checked (mutual TLS).
    signed: bool,
    /// An exact release: no noise.
    protected: bool,
    /// Every message received from the other site.
    received: Vec<Received>,
}

/// Runs the plan's joins that name this site, one after the other.
pub(crate) async fn run_joins(
    config: &ParticipantConfig,
    client: &mut FederationClient<Channel>,
    welcome: &pb::Welcome,
    plan: &tessera_engine::Plan,
) {
    let mine: Vec<&JoinSpec> = plan
        .analytics
        .joins
        .iter()
        .filter(|j| j.sites.contains(&config.site))
        .collect();
    if mine.is_empty() {
        return;
    }
    if !welcome.capabilities.iter().any(|c| c == "join-relay") {
        tracing::warn!(
            "the plan lists joins, but the coordinator relays none (protocol before 1.11): skipped"
        );
        return;
    }
    let identity = match SecureIdentity::load(config.tls.as_ref()) {
        Ok(identity) => identity,
        Err(e) => {
            tracing::error!(%e, "joins skipped: this site's identity cannot be loaded");
            return;
        }
    };
    if !identity.signs() {
        // Unsigned, the key agreement could be answered by the coordinator
        // itself, which would then match its guesses against this site's
        // identifiers: a join runs only between certified sites.
        tracing::error!(
            "joins refused: without TLS their messages are unsigned, and the coordinator could stand in for the other site and test identifiers against this site's (run the participant with --tls)"
        );
        return;
    }
    for spec in mine {
        let file = one_join(config, client, welcome, plan, spec, &identity).await;
        tracing::info!(join = %spec.name, status = %file.status, reason = %file.reason, count = ?file.count, "join ended");
        let dir = config
            .joins
            .out_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("."));
        let path = dir.join(format!("join-{}.json", spec.name));
        let written = serde_json::to_vec_pretty(&file)
            .map_err(|e| e.to_string())
            .and_then(|bytes| write_private(&path, &bytes).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::error!(path = %path.display(), %e, "cannot write the join's result");
        }
    }
}

async fn one_join(
    config: &ParticipantConfig,
    client: &mut FederationClient<Channel>,
    welcome: &pb::Welcome,
    plan: &tessera_engine::Plan,
    spec: &JoinSpec,
    identity: &SecureIdentity,
) -> JoinFile {
    let peer = spec
        .sites
        .iter()
        .find(|s| **s != config.site)
        .cloned()
        .unwrap_or_default();
    let mut file = JoinFile {
        join: spec.name.clone(),
        site: config.site.clone(),
        peer: peer.clone(),
        identifier: spec.identifier.clone(),
        value: spec.value.clone(),
        status: String::new(),
        reason: String::new(),
        reveal: spec.reveal.as_str().into(),
        count: None,
        shared: None,
        means: Default::default(),
        own_elements: 0,
        peer_elements: None,
        signed: identity.signs(),
        protected: false,
        received: Vec::new(),
    };
    let mut relay = Relay::new(
        client,
        identity,
        &welcome.run_id,
        &spec.name,
        &config.site,
        &peer,
    );
    let report = |status: &str, reason: &str| pb::JoinReport {
        status: status.into(),
        reason: reason.into(),
        ..Default::default()
    };
    if !config.joins.consent.contains(&spec.name) {
        let reason = format!(
            "site '{}' has not consented to join '{}' (its operator gives --consent-join {})",
            config.site, spec.name, spec.name
        );
        tracing::warn!(join = %spec.name, %reason, "join refused");
        let _ = relay.send("refuse", reason.as_bytes()).await;
        if let Err(e) = relay.report(report("refused", &reason)).await {
            tracing::warn!(%e, "could not tell the coordinator");
        }
        file.status = "refused".into();
        file.reason = reason;
        return file;
    }
    if let Err(e) = relay.report(report("consented", "")).await {
        tracing::warn!(%e, "could not tell the coordinator of this site's consent");
    }
    let outcome = run_protocol(config, plan, spec, &mut relay, &mut file).await;
    match outcome {
        Ok(()) => {
            file.status = "done".into();
            let sites: Vec<String> = file.means.keys().cloned().collect();
            let means = file.means.values().map(|m| m.unwrap_or(f64::NAN)).collect();
            let done = pb::JoinReport {
                status: "done".into(),
                reason: String::new(),
                count: file.count.unwrap_or(0),
                sites,
                means,
            };
            if let Err(e) = relay.report(done).await {
                tracing::warn!(%e, "could not give the coordinator the join's result");
            }
        }
        Err(Stop::Refused(reason)) => {
            file.status = "refused-by-peer".into();
            file.reason = format!("site '{peer}' refused: {reason}");
        }
        Err(Stop::Failed(reason)) => {
            tracing::error!(join = %spec.name, %reason, "join failed");
            // The other site hears it too, so that it does not wait.
            let _ = relay
                .send(
                    "refuse",
                    format!("join failed at '{}': {reason}", config.site).as_bytes(),
                )
                .await;
            let _ = relay.report(report("failed", &reason)).await;
            file.status = "failed".into();
            file.reason = reason;
        }
    }
    file.received = std::mem::take(&mut relay.transcript);
    file
}

/// Writes `bytes` to `path` readable by this site's user only: with
/// `reveal = "members"` the file lists patient identifiers.
pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    // A file left there before keeps its mode through `open`: set it.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)
}

fn failed(e: impl std::fmt::Display) -> Stop {
    Stop::Failed(e.to_string())
}

fn u64_pair(payload: &[u8]) -> Result<(u64, u64), Stop> {
    let bytes: [u8; 16] = payload
        .try_into()
        .map_err(|_| failed(format!("a result is 16 bytes, got {}", payload.len())))?;
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&bytes[..8]);
    b.copy_from_slice(&bytes[8..]);
    Ok((u64::from_le_bytes(a), u64::from_le_bytes(b)))
}

async fn run_protocol(
    config: &ParticipantConfig,
    plan: &tessera_engine::Plan,
    spec: &JoinSpec,
    relay: &mut Relay<'_>,
    file: &mut JoinFile,
) -> Result<(), Stop> {
    if config.mapping.is_some() {
        return Err(Stop::Failed(format!(
            "join '{}' reads this site's data file as it is, which its mapping (--mapping) \
             does not reach yet; join from a file in the plan's layout",
            spec.name
        )));
    }
    let (data, site, given, plan_dir) = (
        plan.data.clone(),
        config.site.clone(),
        config.data.clone(),
        config.plan_dir.clone(),
    );
    let owned_spec = spec.clone();
    let rows = tokio::task::spawn_blocking(move || {
        rows::read(&owned_spec, &data, &site, given.as_deref(), &plan_dir)
    })
    .await
    .map_err(failed)?
    .map_err(Stop::Failed)?;
    tracing::info!(join = %spec.name, identifiers = rows.rows.len(), skipped = rows.skipped, repeated = rows.repeated, "join rows read");
    file.own_elements = rows.rows.len();
    // The matching key, agreed with the other site over the relay.
    let share = KeyShare::generate().map_err(failed)?;
    relay.send("hello", &share.public()).await?;
    let peer_public = relay.receive("hello").await?;
    let mut sites = spec.sites.clone();
    sites.sort();
    // The whole join as this site's plan has it: two sites whose plans
    // differ (a reveal, the sites' order, the bounds) agree different keys,
    // so nothing matches and nothing is released.
    let spec_text = serde_json::to_string(spec).map_err(failed)?;
    let context = format!(
        "{}\n{}\n{}\n{spec_text}",
        relay.run,
        spec.name,
        sites.join("\n")
    );
    let key = share
        .agree(&peer_public, context.as_bytes())
        .map_err(failed)?;
    let first = spec.sites.first() == Some(&config.site);
    if !spec.reveal.has_value() {
        return members::membership(first, spec, relay, file, key, rows).await;
    }
    let max_value = spec.max_value();
    let prepared = tokio::task::spawn_blocking(move || {
        tessera_psi::prepare_with_values(&key, &rows.rows, max_value)
    })
    .await
    .map_err(failed)?
    .map_err(failed)?;
    let sum_config = SumConfig {
        max_elements: spec.max_elements,
        max_value,
        min_receiver_elements: spec.min_elements,
    };
    // Intersection-sum both ways: the first site of the plan asks first.
    let mut learned = None;
    for asking in [first, !first] {
        if asking {
            let (receiver, query) =
                SumReceiver::start(sum_config, &prepared.tokens).map_err(failed)?;
            relay.send("query", &query.to_bytes()).await?;
            let response =
                SumResponse::from_bytes(&relay.receive("response").await?).map_err(failed)?;
            let (awaiting, request) = receiver.combine(&response).map_err(failed)?;
            relay.send("decrypt-request", &request.to_bytes()).await?;
            let share =
                DecryptShare::from_bytes(&relay.receive("decrypt-share").await?).map_err(failed)?;
            learned = Some(awaiting.finish(&share).map_err(failed)?);
        } else {
            let query = SumQuery::from_bytes(&relay.receive("query").await?).map_err(failed)?;
            let (sender, response) =
                SumSender::respond(sum_config, &prepared.tokens, &prepared.values, &query)
                    .map_err(failed)?;
            relay.send("response", &response.to_bytes()).await?;
            let request = DecryptRequest::from_bytes(&relay.receive("decrypt-request").await?)
                .map_err(failed)?;
            relay
                .send(
                    "decrypt-share",
                    &sender.decrypt(&request).map_err(failed)?.to_bytes(),
                )
                .await?;
        }
    }
    let Some(learned) = learned else {
        return Err(failed("the join ended without this site's result"));
    };
    // Each tells the other what it learned: the count, and the sum of the
    // other's values over the shared identifiers.
    let count = learned.intersection_size as u64;
    let mut result = count.to_le_bytes().to_vec();
    result.extend_from_slice(&learned.sum.to_le_bytes());
    relay.send("result", &result).await?;
    let (peer_count, own_sum) = u64_pair(&relay.receive("result").await?)?;
    if peer_count != count {
        return Err(failed(format!(
            "site '{}' found {peer_count} shared identifiers, this site {count}: refusing the result",
            relay.peer
        )));
    }
    // Too few shared identifiers would make the means those of a handful
    // of patients: nothing is released (neither the count nor the means).
    if count < spec.min_elements as u64 {
        return Err(failed(format!(
            "fewer than min_elements = {} identifiers are shared: no result is released",
            spec.min_elements
        )));
    }
    // Bound what the other site says: a sum of this site's own values over
    // `count` identifiers cannot exceed count x max_value.
    if u128::from(own_sum) > u128::from(count) * u128::from(max_value) {
        return Err(failed(format!(
            "site '{}' reports a sum {own_sum} above {count} x {max_value}: refusing the result",
            relay.peer
        )));
    }
    file.count = Some(count);
    file.peer_elements = Some(learned.sender_size);
    file.means
        .insert(config.site.clone(), spec.mean(own_sum, count));
    file.means
        .insert(relay.peer.clone(), spec.mean(learned.sum, count));
    Ok(())
}

#[cfg(test)]
mod tests;
