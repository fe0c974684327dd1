//! A site's side of a SecAgg+ round: an update or an evaluation, masked, stage by stage.

use std::time::{Duration, Instant};

use tessera_proto::pb;
use tessera_proto::pb::federation_client::FederationClient;
use tonic::transport::Channel;

use super::identity::identity_is_own;
use super::{Failure, SecureIdentity, withdraw};

/// The pause before polling again after `wait` to a poll made at `asked`:
/// 20 ms; after `wait = false` (1.30 `long-poll`: the coordinator held the
/// poll, at least 50 ms) only what is left of 20 ms since the poll was made,
/// so that a coordinator answering `false` at once is polled no more often
/// than before.
pub(super) fn poll_pause(wait: bool, asked: Instant) -> Duration {
    let pause = Duration::from_millis(20);
    if wait {
        pause
    } else {
        pause.saturating_sub(asked.elapsed())
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
    let (input, metadata) = update_input(plan, round, &mut update);
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
            reason: "the round's secure sum did not count this site's input".into(),
        },
    })
}

/// In an asynchronous run under secure aggregation (1.28, `secure-buffers`):
/// joins a buffer with `update`, trained from model version `base`, and
/// waits to be seated; multiplies the update by the plan's staleness
/// discount of the staleness its seat gives, and sends it through the
/// buffer's SecAgg+ round ([`secure_submit`], which clips it as the plan
/// says after the discount, as the simulation does). Not accepted, with the
/// reason, when the coordinator refuses the join (an update past the
/// staleness bound), the run takes no more steps, or the seat's staleness
/// is past the plan's bound (this site then withdraws from that round).
#[allow(clippy::too_many_arguments)]
pub async fn buffer_submit(
    client: &mut FederationClient<Channel>,
    site: &str,
    plan: &tessera_engine::Plan,
    identity: &SecureIdentity,
    key_ring: &mut Option<tessera_secagg::KeyRing>,
    base: u32,
    mut update: tessera_core::Update,
    pause: Duration,
) -> Result<pb::UpdateReply, Failure> {
    use pb::sec_agg_reply::State;
    let not_counted = |reason: String| pb::UpdateReply {
        accepted: false,
        reason,
    };
    let seat = loop {
        let asked = Instant::now();
        let reply = client
            .secure_aggregation(pb::SecAggRequest {
                site: site.to_string(),
                round: base,
                step: Some(pb::sec_agg_request::Step::Buffer(pb::SecAggBufferJoin {
                    base,
                })),
            })
            .await;
        match reply.map(|r| r.into_inner().state) {
            Ok(Some(State::Seat(seat))) => break seat,
            Ok(Some(State::Wait(w))) => tokio::time::sleep(poll_pause(w, asked)).await,
            Ok(Some(State::Done(_))) => {
                return Ok(not_counted("the run takes no more steps".into()));
            }
            Ok(_) => {
                return Err(Failure::Retry(
                    "secure aggregation: an unexpected reply to a buffer join".into(),
                ));
            }
            // The coordinator refused the update (too stale, say): the
            // site trains again on a newer model.
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                return Ok(not_counted(status.message().to_string()));
            }
            Err(status) => return Err(status.into()),
        }
    };
    let bound = plan.federation.max_staleness;
    if seat.staleness > bound {
        let reason = format!(
            "{REFUSED}the coordinator gives this site's update staleness {}, past the plan's \
             bound of {bound}",
            seat.staleness
        );
        tracing::error!(round = seat.round, %reason, "refusing the buffer's secure round");
        if let Err(status) = withdraw(client, site, seat.round, &reason, false).await {
            tracing::warn!(round = seat.round, %status, "could not withdraw");
        }
        return Ok(not_counted(reason));
    }
    tracing::info!(
        round = seat.round,
        base,
        staleness = seat.staleness,
        "seated in a secure buffer"
    );
    let factor = plan.federation.staleness.factor(seat.staleness);
    tessera_engine::BufferedEngine::discount(&mut update, factor);
    secure_submit(
        client, site, plan, identity, key_ring, seat.round, update, pause,
    )
    .await
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

/// Sends a canary's comparison through the rollout's secure round `round`
/// (`candidate | ROLLOUT_ROUND`): `values` are its counts as 16-bit limbs
/// ([`tessera_analytics::ab::CanaryCounts::encode`]); the coordinator
/// unmasks only the canaries' sum. True when this site's counts counted.
pub async fn secure_compare(
    client: &mut FederationClient<Channel>,
    site: &str,
    plan: &tessera_engine::Plan,
    identity: &SecureIdentity,
    key_ring: &mut Option<tessera_secagg::KeyRing>,
    round: u32,
    values: Vec<u32>,
) -> Result<bool, Failure> {
    secure_exchange(
        client,
        site,
        plan,
        identity,
        key_ring,
        round,
        SecureInput::Raw(values),
        Duration::ZERO,
    )
    .await
}

/// Computes a site's masked values once the round's threshold is known
/// (the fewest inputs the coordinator may unmask a sum of, checked against
/// the plan): an analytics answer's noise share depends on it.
pub type DeferredInput = Box<dyn FnOnce(usize) -> Vec<u32> + Send>;

/// Sends an analytics query's answer through secure round `round`
/// (`release | ANALYTICS_ROUND`): `make`, given the round's threshold,
/// gives the `dimension` values this site masks (its contribution and its
/// noise share, as 16-bit limbs). True when this site's input counted.
#[allow(clippy::too_many_arguments)]
pub async fn secure_answer(
    client: &mut FederationClient<Channel>,
    site: &str,
    plan: &tessera_engine::Plan,
    identity: &SecureIdentity,
    key_ring: &mut Option<tessera_secagg::KeyRing>,
    round: u32,
    dimension: usize,
    make: DeferredInput,
) -> Result<bool, Failure> {
    secure_exchange(
        client,
        site,
        plan,
        identity,
        key_ring,
        round,
        SecureInput::Deferred { dimension, make },
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
    /// Such values, made once the round's threshold is known.
    Deferred {
        dimension: usize,
        make: DeferredInput,
    },
}

/// What a site sums securely in training round `round` (masked or
/// encrypted): its update clipped as the plan says, the round's shared
/// coordinates of it under a random-k codec, then its metadata (see
/// `tessera_secagg::encode_metadata`).
pub(super) fn update_input(
    plan: &tessera_engine::Plan,
    round: u32,
    update: &mut tessera_core::Update,
) -> (Vec<f32>, tessera_secagg::Metadata) {
    if let Some(bound) = plan.masked_update_bound() {
        tessera_privacy::clip_to_norm(&mut update.delta, bound);
    }
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
    (input, metadata)
}

/// Round `round`'s parameters as the coordinator sent them (checked against
/// the plan by the caller).
pub(super) fn round_params(
    p: &pb::SecAggParams,
    round: u32,
) -> Result<tessera_secagg::RoundParams, Failure> {
    let graph_seed: [u8; 32] =
        p.graph_seed.as_slice().try_into().map_err(|_| {
            Failure::Retry("secure aggregation: the graph seed is not 32 bytes".into())
        })?;
    Ok(tessera_secagg::RoundParams {
        round,
        participants: p.participants.clone(),
        neighbours: p.neighbours as usize,
        threshold: p.threshold as usize,
        graph_seed,
        dimension: p.dimension as usize,
        range: p.range,
    })
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
                let asked = Instant::now();
                match call(Step::Poll($want)).await? {
                    Some(State::Wait(w)) => tokio::time::sleep(poll_pause(w, asked)).await,
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
    let params = round_params(&p, round)?;
    let dimension = match &input {
        SecureInput::Update { input, .. } => tessera_secagg::masked_dimension(input.len()),
        SecureInput::Raw(values) => values.len(),
        SecureInput::Deferred { dimension, .. } => *dimension,
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
        .for_round(
            &p.participants,
            &p.sites,
            &p.certificates,
            &plan.data.named_sites(),
        )
        .map_err(refuse)?;
    let threshold = params.threshold;
    let ring = match key_ring.take() {
        Some(ring) => ring,
        None => tessera_secagg::KeyRing::new(super::secret_key()?, super::secret_key()?),
    };
    let (mut me, keys) = tessera_secagg::Client::with_keys(
        p.id,
        params,
        ring,
        super::secret_key()?,
        signer.as_ref(),
    )
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
            SecureInput::Deferred { make, .. } => me.masked_values(&mine, make(threshold)),
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
        // The coordinator says whether the sum counted (a round that closed
        // first, or a sum refused, did not).
        let summed = loop {
            let asked = Instant::now();
            match call(Step::Poll(6)).await? {
                Some(State::Wait(w)) => tokio::time::sleep(poll_pause(w, asked)).await,
                Some(State::Done(summed)) => break summed,
                Some(_) => break true,
                None => return Err(bad("an empty reply")),
            }
        };
        Ok(counted && summed)
    }
    .await;
    *key_ring = Some(me.into_keys(super::secret_key()?));
    outcome
}
