//! What any client of a federation needs: the connection, the agreement
//! steps, a task's parameters and an update's stream. Participants and
//! aggregators (toward their parent) both speak through it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::pb::federation_client::FederationClient;
use tessera_proto::pb::{self, agree_reply, task, update_part};
use tessera_proto::{
    Assembler, CAPABILITIES, CHUNK_BYTES, Limits, MAJOR, MINOR, chunks, layout_of,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::ParticipantError;

/// Connects to the federation at `url` (through `endpoint`) and joins it as
/// `site`: the client and the federation's welcome. A welcome of another
/// major version is a refusal.
pub async fn join(
    endpoint: &Remote,
    url: &str,
    site: &str,
) -> Result<(FederationClient<Channel>, pb::Welcome), Failure> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Failure::Retry(format!("cannot connect to {url}: {}", chain(&e))))?;
    let mut client = FederationClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let welcome = client
        .join(pb::Hello {
            major: MAJOR,
            minor: MINOR,
            capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            site: site.to_string(),
        })
        .await?
        .into_inner();
    if welcome.major != MAJOR {
        return Err(Failure::Fatal(ParticipantError::Refused(format!(
            "{url} speaks protocol {}.{}, this build {MAJOR}.{MINOR}",
            welcome.major, welcome.minor
        ))));
    }
    Ok((client, welcome))
}

/// A server to connect to: its endpoint, and with mutual TLS the connector
/// that does the handshake (tonic's own TLS cannot check a revocation list).
#[derive(Clone)]
pub struct Remote {
    endpoint: Endpoint,
    tls: Option<tessera_tls::Connector>,
}

impl Remote {
    /// A new connection.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match &self.tls {
            Some(connector) => {
                self.endpoint
                    .connect_with_connector(connector.clone())
                    .await
            }
            None => self.endpoint.connect().await,
        }
    }

    /// Whether the server's certificate, as presented when the connection
    /// opened, is still accepted under the TLS folder as it is now (a
    /// revocation since); the reason when it is not. Always without TLS.
    pub fn check_server(&self) -> Result<(), String> {
        match &self.tls {
            Some(connector) => connector.check_server().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// Stops (a refusal) when `remote`'s certificate was revoked since the
/// connection opened: nothing more goes to a server no longer trusted.
pub fn still_trusted(remote: &Remote, what: &str) -> Result<(), Failure> {
    remote.check_server().map_err(|reason| {
        Failure::Fatal(ParticipantError::Refused(format!(
            "{what}'s certificate is no longer accepted: {reason}"
        )))
    })
}

/// The server at `url`, with mutual TLS from `tls` (the server's name in its
/// certificate: `domain`, else the URL's host; with TLS the URL starts with
/// `https://`). The folder's `crl.pem`, when there is one, is read at every
/// connection: a revoked server certificate fails the handshake.
pub fn endpoint(
    url: &str,
    tls: Option<&tessera_tls::TlsFiles>,
    domain: Option<&str>,
) -> Result<Remote, ParticipantError> {
    let parse = |url: &str| {
        Endpoint::from_shared(url.to_string())
            .map_err(|e| ParticipantError::Config(format!("URL '{url}': {e}")))
    };
    let mut endpoint = parse(url)?;
    let connector = match tls {
        None => None,
        Some(files) => {
            let Some(rest) = url.strip_prefix("https://") else {
                return Err(ParticipantError::Config(format!(
                    "with mutual TLS the URL starts with https://, got '{url}'"
                )));
            };
            let domain = match domain {
                Some(d) => d.to_string(),
                None => endpoint.uri().host().unwrap_or("localhost").to_string(),
            };
            let domain = domain.trim_start_matches('[').trim_end_matches(']');
            // The connector does the TLS: tonic sees a plain stream.
            endpoint = parse(&format!("http://{rest}"))?;
            Some(
                tessera_tls::Connector::new(files.clone(), domain)
                    .map_err(|e| ParticipantError::Config(format!("TLS: {e}")))?,
            )
        }
    };
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(Remote {
        endpoint,
        tls: connector,
    })
}

/// A failure inside a session: retry (network) or stop (refusal).
pub enum Failure {
    /// Try again after a pause (network, coordinator restarting).
    Retry(String),
    /// Stop (refused, unusable data or settings).
    Fatal(ParticipantError),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        match status.code() {
            Code::InvalidArgument
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::Unauthenticated => {
                Failure::Fatal(ParticipantError::Refused(status.message().to_string()))
            }
            _ => Failure::Retry(format!("{}: {}", status.code(), status.message())),
        }
    }
}

/// An error with its causes, on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads `site`'s rows from `data` (as the plan's `[data]` says, other
/// relative paths against `plan_dir`) off the async runtime.
pub async fn read_site(
    data: &tessera_data::DataConfig,
    site: &str,
    file: &std::path::Path,
    plan_dir: &std::path::Path,
) -> Result<tessera_data::LocalSite, ParticipantError> {
    let (data, site, file, plan_dir) = (
        data.clone(),
        site.to_string(),
        file.to_path_buf(),
        plan_dir.to_path_buf(),
    );
    tokio::task::spawn_blocking(move || {
        tessera_data::read_local_site(
            &data,
            &site,
            Some(&file),
            &plan_dir,
            &tessera_data::Filesystem,
        )
    })
    .await
    .map_err(|e| ParticipantError::Local(format!("reading the data crashed: {e}")))?
    .map_err(|e| ParticipantError::Local(e.to_string()))
}

/// How often to tell the federation this client is at work, if it listens
/// (`heartbeat` capability): its interval, at most five seconds.
pub fn heartbeat_interval(welcome: &pb::Welcome) -> Option<Duration> {
    welcome
        .capabilities
        .iter()
        .any(|c| c == "heartbeat")
        .then(|| {
            Duration::from_millis(u64::from(welcome.heartbeat_millis.max(50)))
                .min(Duration::from_secs(5))
        })
}

/// Whether the federation takes withdrawals (`withdraw` capability, 1.4).
pub fn can_withdraw(welcome: &pb::Welcome) -> bool {
    welcome.capabilities.iter().any(|c| c == "withdraw")
}

/// Tells the federation that `site` leaves round `round` without an update
/// (and with `leaving`, the run), so the round stops waiting for it. True
/// when the round was waiting for it. `reason` is cut to the protocol's
/// limit.
pub async fn withdraw(
    client: &mut FederationClient<Channel>,
    site: &str,
    round: u32,
    reason: &str,
    leaving: bool,
) -> Result<bool, Status> {
    let reply = client
        .withdraw(pb::WithdrawRequest {
            site: site.to_string(),
            round,
            reason: tessera_proto::withdraw_reason(reason).to_string(),
            leaving,
        })
        .await?;
    Ok(reply.into_inner().withdrawn)
}

/// Offers one agreement step; waits for the federation's answer.
pub async fn agree(
    client: &mut FederationClient<Channel>,
    site: &str,
    offer: pb::agree_request::Offer,
) -> Result<agree_reply::Result, Failure> {
    let reply = client
        .agree(pb::AgreeRequest {
            site: site.to_string(),
            offer: Some(offer),
        })
        .await?
        .into_inner();
    reply
        .result
        .ok_or_else(|| Failure::Retry("empty agreement reply".into()))
}

/// Reads a task's parameters (set 0, or with compressed models the change
/// from the `held` model, or nothing when it is held) and the instructions' tensors (set 1).
pub async fn receive_parameters(
    header: &pb::TaskHeader,
    stream: &mut tonic::Streaming<pb::Task>,
    held: Option<(u32, Arc<tessera_core::ParameterSet>)>,
) -> Result<
    (
        tessera_core::ParameterSet,
        Option<tessera_core::ParameterSet>,
    ),
    Failure,
> {
    let malformed = |e: String| Failure::Retry(format!("malformed task: {e}"));
    let mut global =
        Assembler::new(&header.layout, Limits::default()).map_err(|e| malformed(e.to_string()))?;
    // The instructions' tensors (SCAFFOLD's server control variate), set 1.
    let mut tensors = if header.has_server_control {
        Some(
            Assembler::new(&header.layout, Limits::default())
                .map_err(|e| malformed(e.to_string()))?,
        )
    } else {
        None
    };
    let delivery = header.model_delivery();
    let base = match delivery {
        pb::ModelDelivery::Full => None,
        pb::ModelDelivery::Change | pb::ModelDelivery::Held => {
            let want = match delivery {
                pb::ModelDelivery::Change => header.model_round.checked_sub(1),
                _ => Some(header.model_round),
            };
            match held {
                Some((round, model)) if Some(round) == want => Some(model),
                // Asked again, it sends the whole model.
                _ => {
                    return Err(malformed(
                        "a model change for a model this site does not hold".into(),
                    ));
                }
            }
        }
    };
    let codec: tessera_compress::Codec = if header.model_codec.is_empty() {
        tessera_compress::Codec::NONE
    } else {
        header
            .model_codec
            .parse()
            .map_err(|e: tessera_compress::CompressError| malformed(e.to_string()))?
    };
    let mut change: Vec<u8> = Vec::new();
    while let Some(message) = stream.message().await? {
        let chunk = match message.part {
            Some(task::Part::Chunk(chunk)) => chunk,
            Some(task::Part::Compressed(piece)) if delivery == pb::ModelDelivery::Change => {
                let bound = base
                    .as_ref()
                    .map_or(0, |b| codec.max_encoded_len(b.n_values()));
                if change.len() + piece.len() > bound {
                    return Err(malformed(format!(
                        "the model change passes {bound} bytes, the most '{codec}' takes"
                    )));
                }
                change.extend_from_slice(&piece);
                continue;
            }
            _ => return Err(malformed("a second header".into())),
        };
        match (chunk.set, tensors.as_mut()) {
            (0, _) if base.is_some() => Err(tessera_proto::ProtoError::Malformed(
                "model chunks in a task whose model is held or comes as a change".into(),
            )),
            (0, _) => global.push(&chunk),
            (1, Some(c)) => c.push(&chunk),
            (set, _) => return Err(malformed(format!("chunk for set {set}"))),
        }
        .map_err(|e| malformed(e.to_string()))?;
    }
    let global = match (delivery, base) {
        (pb::ModelDelivery::Change, Some(base)) => {
            let decoded = tessera_compress::decode_set(&change, &base)
                .map_err(|e| malformed(e.to_string()))?;
            let mut next = base.as_ref().clone();
            next.add_scaled(&decoded, 1.0)
                .map_err(|e| malformed(e.to_string()))?;
            next
        }
        (_, Some(base)) => base.as_ref().clone(),
        (_, None) => global.finish().map_err(|e| malformed(e.to_string()))?,
    };
    let tensors = tensors
        .map(Assembler::finish)
        .transpose()
        .map_err(|e| malformed(e.to_string()))?;
    Ok((global, tensors))
}

/// Streams `update` for `round` as `site`: its delta in chunks, or its
/// `encoded` form in pieces, then its auxiliary sum (set 1).
pub async fn send_update(
    site: &str,
    client: &mut FederationClient<Channel>,
    round: u32,
    update: &tessera_core::Update,
    codec: tessera_compress::Codec,
    encoded: Option<Vec<u8>>,
) -> Result<pb::UpdateReply, Failure> {
    let header = pb::UpdatePart {
        part: Some(update_part::Part::Header(pb::UpdateHeader {
            site: site.to_string(),
            round,
            n_examples: update.n_examples,
            has_control: update.aux.is_some(),
            n_steps: update.stats.n_steps,
            mean_train_loss: update.stats.mean_train_loss,
            layout: layout_of(&update.delta),
            codec: if encoded.is_some() {
                codec.to_string()
            } else {
                String::new()
            },
        })),
    };
    let delta = update.delta.clone();
    let aux = update.aux.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        if tx.send(header).await.is_err() {
            return;
        }
        // The delta: its compressed encoding in pieces, or chunks of values.
        let delta_parts: Box<dyn Iterator<Item = update_part::Part> + Send> = match encoded {
            Some(bytes) => Box::new(
                bytes
                    .chunks(CHUNK_BYTES)
                    .map(|piece| update_part::Part::Compressed(piece.to_vec()))
                    .collect::<Vec<_>>()
                    .into_iter(),
            ),
            None => Box::new(chunks(0, &delta, CHUNK_BYTES).map(update_part::Part::Chunk)),
        };
        let parts = delta_parts.chain(
            aux.iter()
                .flat_map(|c| chunks(1, c, CHUNK_BYTES))
                .map(update_part::Part::Chunk),
        );
        for part in parts {
            if tx.send(pb::UpdatePart { part: Some(part) }).await.is_err() {
                return;
            }
        }
    });
    Ok(client
        .submit_update(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner())
}

/// Whether the cohort's site names give id `id` to `site` (without TLS the
/// coordinator may send no names: then there is nothing to check).
fn identity_is_own(sites: &[String], participants: &[u32], id: u32, site: &str) -> bool {
    if sites.is_empty() {
        return true;
    }
    participants
        .iter()
        .zip(sites)
        .any(|(p, s)| *p == id && s == site)
}

fn random32() -> Result<[u8; 32], Failure> {
    let mut out = [0u8; 32];
    getrandom::fill(&mut out).map_err(|e| {
        Failure::Fatal(ParticipantError::Local(format!(
            "no secret randomness: {e}"
        )))
    })?;
    Ok(out)
}

/// How a site signs and checks secure-aggregation messages: with its
/// certificate key, checking the other sites' certificates against the
/// federation CA and revocation list of its own folder (mutual TLS), or not
/// at all (the explicit insecure mode, where the coordinator is trusted to
/// relay honestly).
pub struct SecureIdentity {
    tls: Option<(tessera_tls::SiteSigner, tessera_tls::TlsFiles)>,
}

impl SecureIdentity {
    /// The identity of the site whose TLS folder holds `files` (`None`: no TLS).
    pub fn load(files: Option<&tessera_tls::TlsFiles>) -> Result<Self, ParticipantError> {
        let tls = match files {
            Some(files) => {
                // Checked now so that a bad folder stops the site at start.
                tessera_tls::SiteCertificates::load(files)
                    .map_err(|e| ParticipantError::Local(e.to_string()))?;
                Some((
                    tessera_tls::SiteSigner::load(files)
                        .map_err(|e| ParticipantError::Local(e.to_string()))?,
                    files.clone(),
                ))
            }
            None => None,
        };
        Ok(Self { tls })
    }

    /// The signer and the checker of a round whose participants are
    /// `sites` with `certificates` (in the order of the participant ids of
    /// `participants`); each certificate is checked against the CA and must
    /// name its site.
    fn for_round(
        &self,
        participants: &[u32],
        sites: &[String],
        certificates: &[Vec<u8>],
    ) -> Result<RoundIdentity<'_>, String> {
        let Some((signer, files)) = &self.tls else {
            return Ok((
                Box::new(tessera_secagg::Unauthenticated),
                Box::new(tessera_secagg::Unauthenticated),
            ));
        };
        if sites.len() != participants.len() || certificates.len() != participants.len() {
            return Err(format!(
                "the coordinator sent {} site names and {} certificates for {} participants",
                sites.len(),
                certificates.len(),
                participants.len()
            ));
        }
        // The CA and revocation list as they are now: a site revoked during
        // the run is refused from its next round on.
        let checker = tessera_tls::SiteCertificates::load(files).map_err(|e| e.to_string())?;
        let mut by_id = BTreeMap::new();
        let mut names = BTreeSet::new();
        for ((id, site), der) in participants.iter().zip(sites).zip(certificates) {
            if !names.insert(site.as_str()) {
                return Err(format!("site '{site}' is named twice in the cohort"));
            }
            if der.is_empty() {
                return Err(format!(
                    "the coordinator sent no certificate for site '{site}'"
                ));
            }
            checker.check(der, site)?;
            by_id.insert(*id, der.clone());
        }
        tracing::info!(
            certificates = by_id.len(),
            "secure aggregation: the cohort's certificates checked against the federation CA; keys and views signed with this site's certificate key"
        );
        Ok((Box::new(CertSigner(signer)), Box::new(CertDirectory(by_id))))
    }
}

/// A round's signer and the checker of the other participants' signatures.
type RoundIdentity<'a> = (
    Box<dyn tessera_secagg::Signer + 'a>,
    Box<dyn tessera_secagg::Verifier>,
);

/// Signs with a site's certificate key.
struct CertSigner<'a>(&'a tessera_tls::SiteSigner);

impl tessera_secagg::Signer for CertSigner<'_> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, tessera_secagg::SecAggError> {
        self.0
            .sign(message)
            .map_err(|e| tessera_secagg::SecAggError::Config(e.to_string()))
    }
}

/// Checked certificates by participant id.
struct CertDirectory(BTreeMap<u32, Vec<u8>>);

impl tessera_secagg::Verifier for CertDirectory {
    fn verify(&self, who: u32, message: &[u8], signature: &[u8]) -> Result<(), String> {
        let der = self
            .0
            .get(&who)
            .ok_or_else(|| format!("participant {who} has no certificate in this round"))?;
        tessera_tls::verify_signature(der, message, signature)
    }
}

/// Sends `update` as `site` through a SecAgg+ round of `plan`'s run: the
/// federation learns only the cohort's sum. `key_ring` holds the site's key
/// pairs between rounds (the mask key is replaced after every round);
/// `identity` signs and checks the protocol's messages; `pause` is fault
/// injection (a site that goes quiet after sharing its keys). The reply says
/// whether this site's input counted. Parameters that do not follow from the
/// plan, keys a neighbour did not sign and a coordinator that shows
/// participants different views of the round end the round for this site
/// with the reason, before it reveals anything.
#[allow(clippy::too_many_arguments)]
pub async fn secure_submit(
    client: &mut FederationClient<Channel>,
    site: &str,
    plan: &tessera_engine::Plan,
    identity: &SecureIdentity,
    key_ring: &mut Option<tessera_secagg::KeyRing>,
    round: u32,
    mut update: tessera_core::Update,
    pause: Duration,
) -> Result<pb::UpdateReply, Failure> {
    if let Some(bound) = plan.masked_update_bound() {
        tessera_privacy::clip_to_norm(&mut update.delta, bound);
    }
    // What this site masks: the update (the round's shared coordinates
    // under a random-k codec), then its metadata (see
    // `tessera_secagg::encode_metadata`).
    let values: Vec<f32> = update.delta.values().collect();
    let input: Vec<f32> = match plan.secure_coordinates(round, values.len()) {
        Some(kept) => kept.iter().map(|&i| values[i]).collect(),
        None => values,
    };
    let metadata = tessera_secagg::Metadata {
        n_examples: update.n_examples,
        train_loss: update.stats.mean_train_loss,
        n_steps: update.stats.n_steps,
    };
    let counted = secure_exchange(
        client,
        site,
        plan,
        identity,
        key_ring,
        round,
        SecureInput::Update { input, metadata },
        pause,
    )
    .await?;
    Ok(match counted {
        true => pb::UpdateReply {
            accepted: true,
            reason: String::new(),
        },
        false => pb::UpdateReply {
            accepted: false,
            reason: "the round ended before this site's input counted".into(),
        },
    })
}

/// Sends `evaluation` of round `round`'s model through a SecAgg+ round of
/// its own (`site_metrics = "aggregate-only"`): the coordinator unmasks only
/// the sum of the sites' summable evaluations ([`tessera_learn::encode_summable`]).
/// True when this site's evaluation counted.
pub async fn secure_evaluate(
    client: &mut FederationClient<Channel>,
    site: &str,
    plan: &tessera_engine::Plan,
    identity: &SecureIdentity,
    key_ring: &mut Option<tessera_secagg::KeyRing>,
    round: u32,
    evaluation: &tessera_learn::Evaluation,
) -> Result<bool, Failure> {
    secure_exchange(
        client,
        site,
        plan,
        identity,
        key_ring,
        round | tessera_secagg::EVALUATION_ROUND,
        SecureInput::Raw(tessera_learn::encode_summable(evaluation)),
        Duration::ZERO,
    )
    .await
}

/// What a site masks in a secure round.
enum SecureInput {
    /// A model update (quantised) and its training metadata.
    Update {
        input: Vec<f32>,
        metadata: tessera_secagg::Metadata,
    },
    /// Values of `Z_2^32` summed as they are.
    Raw(Vec<u32>),
}

/// How a refusal of a secure round starts its message.
const REFUSED: &str = "secure aggregation refused: ";

/// One SecAgg+ round, secure round number `round`, with `input`: true when
/// this site's input is in the sum. When this site refuses the round (its
/// parameters, keys or views fail a check), it withdraws from that round,
/// saying why, so that the coordinator neither waits for it nor asks again,
/// and goes on with the run: false.
#[allow(clippy::too_many_arguments)]
async fn secure_exchange(
    client: &mut FederationClient<Channel>,
    site: &str,
    plan: &tessera_engine::Plan,
    identity: &SecureIdentity,
    key_ring: &mut Option<tessera_secagg::KeyRing>,
    round: u32,
    input: SecureInput,
    pause: Duration,
) -> Result<bool, Failure> {
    match secure_stages(client, site, plan, identity, key_ring, round, input, pause).await {
        Err(Failure::Retry(reason)) if reason.starts_with(REFUSED) => {
            match withdraw(client, site, round, &reason, false).await {
                Ok(_) => tracing::warn!(round, %reason, "withdrew from the secure round"),
                Err(status) => tracing::warn!(round, %status, "could not withdraw"),
            }
            Ok(false)
        }
        other => other,
    }
}

/// The stages of [`secure_exchange`]; a refusal is a `Retry` that starts
/// with [`REFUSED`].
#[allow(clippy::too_many_arguments)]
async fn secure_stages(
    client: &mut FederationClient<Channel>,
    site: &str,
    plan: &tessera_engine::Plan,
    identity: &SecureIdentity,
    key_ring: &mut Option<tessera_secagg::KeyRing>,
    round: u32,
    input: SecureInput,
    pause: Duration,
) -> Result<bool, Failure> {
    use pb::sec_agg_reply::State;
    use pb::sec_agg_request::Step;
    let site = site.to_string();
    let mut call = async |step: Step| -> Result<Option<State>, Failure> {
        let reply = client
            .secure_aggregation(pb::SecAggRequest {
                site: site.clone(),
                round,
                step: Some(step),
            })
            .await?
            .into_inner();
        Ok(reply.state)
    };
    let bad = |what: &str| Failure::Retry(format!("secure aggregation: {what}"));
    // Waits for stage `want`; `None` when the round is over.
    macro_rules! wait_for {
        ($want:expr) => {
            loop {
                match call(Step::Poll($want)).await? {
                    Some(State::Wait(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Some(State::Done(_)) => break None,
                    Some(other) => break Some(other),
                    None => return Err(bad("an empty reply")),
                }
            }
        };
    }
    let Some(State::Params(p)) = wait_for!(1) else {
        return Ok(false);
    };
    let graph_seed: [u8; 32] = p
        .graph_seed
        .as_slice()
        .try_into()
        .map_err(|_| bad("the graph seed is not 32 bytes"))?;
    let params = tessera_secagg::RoundParams {
        round,
        participants: p.participants.clone(),
        neighbours: p.neighbours as usize,
        threshold: p.threshold as usize,
        graph_seed,
        dimension: p.dimension as usize,
        range: p.range,
    };
    let dimension = match &input {
        SecureInput::Update { input, .. } => tessera_secagg::masked_dimension(input.len()),
        SecureInput::Raw(values) => values.len(),
    };
    let refuse = |why: String| {
        tracing::error!(round, %why, "secure aggregation: this site refuses the round");
        Failure::Retry(format!("{REFUSED}{why}"))
    };
    params
        .check(&tessera_secagg::Expected {
            config: &plan.secure_aggregation,
            round,
            id: p.id,
            graph_seed: plan.secagg_graph_seed(round),
            dimension,
            min_cohort: plan.federation.min_participants,
        })
        .map_err(|e| refuse(e.to_string()))?;
    if !identity_is_own(&p.sites, &p.participants, p.id, &site) {
        return Err(refuse(format!(
            "the coordinator does not give id {} to this site",
            p.id
        )));
    }
    let (signer, verifier) = identity
        .for_round(&p.participants, &p.sites, &p.certificates)
        .map_err(refuse)?;
    let ring = match key_ring.take() {
        Some(ring) => ring,
        None => tessera_secagg::KeyRing::new(random32()?, random32()?),
    };
    let (mut me, keys) =
        tessera_secagg::Client::with_keys(p.id, params, ring, random32()?, signer.as_ref())
            .map_err(|e| bad(&e.to_string()))?;
    let outcome = async {
        call(Step::Keys(pb::SecAggKeys {
            c_public: keys.c_public.to_vec(),
            s_public: keys.s_public.to_vec(),
            signature: keys.signature.clone(),
        }))
        .await?;
        let Some(State::Keys(k)) = wait_for!(2) else {
            return Ok(false);
        };
        let mut neighbour_keys = Vec::new();
        for (from, key) in k.peers.iter().zip(k.keys) {
            let (Ok(c_public), Ok(s_public)) = (
                <[u8; 32]>::try_from(key.c_public.as_slice()),
                <[u8; 32]>::try_from(key.s_public.as_slice()),
            ) else {
                return Err(bad("a neighbour's key is not 32 bytes"));
            };
            neighbour_keys.push(tessera_secagg::AdvertiseKeys {
                from: *from,
                c_public,
                s_public,
                signature: key.signature,
            });
        }
        let shares = me
            .share_keys(&neighbour_keys, verifier.as_ref())
            .map_err(|e| refuse(e.to_string()))?;
        call(Step::Shares(pb::SecAggShares {
            shares: shares
                .shares
                .into_iter()
                .map(|(peer, data)| pb::SecAggShare { peer, data })
                .collect(),
        }))
        .await?;
        let Some(State::Shares(mine)) = wait_for!(3) else {
            return Ok(false);
        };
        let mine: Vec<(u32, Vec<u8>)> = mine.shares.into_iter().map(|s| (s.peer, s.data)).collect();
        let masked = match input {
            SecureInput::Update { input, metadata } => me.masked_update(&mine, &input, &metadata),
            SecureInput::Raw(values) => me.masked_values(&mine, values),
        }
        .map_err(|e| bad(&e.to_string()))?;
        // Fault injection: a site that goes quiet after sharing its keys.
        tokio::time::sleep(pause).await;
        // Since 1.5 the example count, loss and steps are inside the masked
        // vector; the clear fields stay zero.
        call(Step::Masked(pb::SecAggMasked {
            values: masked.values,
            n_examples: 0,
            mean_train_loss: 0.0,
            n_steps: 0,
        }))
        .await?;
        let Some(State::Unmask(request)) = wait_for!(4) else {
            return Ok(false);
        };
        let request = tessera_secagg::UnmaskRequest {
            survivors: request.survivors,
            dropped: request.dropped,
        };
        // The consistency check: sign the view given, then see everyone's.
        let view = me
            .sign_view(&request, signer.as_ref())
            .map_err(|e| refuse(e.to_string()))?;
        call(Step::View(pb::SecAggView {
            signature: view.signature,
        }))
        .await?;
        let Some(State::Views(views)) = wait_for!(5) else {
            return Ok(false);
        };
        let views: Vec<tessera_secagg::SignedView> = views
            .views
            .into_iter()
            .map(|v| tessera_secagg::SignedView {
                from: v.id,
                signature: v.signature,
            })
            .collect();
        let counted = request.survivors.contains(&p.id);
        let response = me
            .unmask(&request, &views, verifier.as_ref())
            .map_err(|e| refuse(e.to_string()))?;
        let pack = |v: Vec<(u32, Vec<u8>)>| {
            v.into_iter()
                .map(|(peer, data)| pb::SecAggShare { peer, data })
                .collect()
        };
        call(Step::Unmask(pb::SecAggUnmask {
            seed_shares: pack(response.seed_shares),
            key_shares: pack(response.key_shares),
        }))
        .await?;
        let _ = wait_for!(6);
        Ok(counted)
    }
    .await;
    *key_ring = Some(me.into_keys(random32()?));
    outcome
}
