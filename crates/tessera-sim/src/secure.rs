//! Secure aggregation in simulation: each round's cohort runs a SecAgg+
//! round in process, and the engine receives only the recovered sum. The
//! coordinator's side is the deployment's own
//! ([`tessera_orchestrator::secure::SecureRound`]: stages, refusals,
//! recovery and decoding); this file plays the members and delivers their
//! messages at once, counting the bytes each would send and receive.
//!
//! Cohort members that drop out of the round (their simulated dropout, or
//! failed training) leave after sharing their keys and before sending their
//! masked input: the hardest case for the protocol, which must then unmask
//! their pairwise masks. Secrets (mask keys, self-mask seeds and the Ed25519
//! identity keys that sign advertisements and views) come from the run seed
//! here, which makes simulations reproducible; deployment draws them from
//! the operating system and signs with each site's certificate key.
//!
//! As in deployment, each site's example count, train loss and step count
//! are masked with its update (`tessera_secagg::encode_metadata`), and the
//! sum's statistics are the decoded sums: the examples and steps summed, the
//! loss their mean in 2^-16 fixed point.

use std::collections::BTreeMap;
use std::time::Duration;

use rayon::prelude::*;
use tessera_core::{ParameterSet, Timestamp, Update, derive_key};
use tessera_engine::Plan;
use tessera_engine::streams;
use tessera_orchestrator::secure::{self, Message, Refused};
use tessera_privacy::clip_to_norm;
use tessera_secagg::{Client, Ed25519Directory, Ed25519Signer, KeyRing, Metadata, SecAggError};

/// What a secure round produced.
pub(crate) struct SecureRound {
    /// The survivors' summed update (weight 1 each).
    pub sum: Update,
    /// Site indices whose updates are in the sum.
    pub survivors: Vec<usize>,
    /// Protocol bytes each site sent (keys, shares, masked input, unmasking).
    pub bytes_up: BTreeMap<usize, u64>,
    /// Of `bytes_up`, each site's masked input (its update).
    pub masked_bytes: BTreeMap<usize, u64>,
    /// Protocol bytes the server relayed down to each site.
    pub bytes_down: BTreeMap<usize, u64>,
}

/// Hands `message` to the round at once, under its sender's name.
fn deliver(server: &mut secure::SecureRound, message: Message) -> Result<(), SecAggError> {
    let from = message.from().to_string();
    server
        .receive(Timestamp::ZERO, &from, message)
        .map(drop)
        .map_err(Refused::into_secagg)
}

/// What every secure round (SecAgg+ or homomorphic) starts from: the
/// cohort's ids, the coordinates every participant protects (with a random-k
/// upload codec, the same k for all, from the round's shared seed), the
/// round's quantisation, and each participant's update clipped as the plan
/// asks before it is masked or encrypted.
pub(crate) type Prepared = (Vec<u32>, Option<Vec<usize>>, tessera_secagg::RoundParams);

/// Prepares a secure round (see [`Prepared`]).
pub(crate) fn prepare(
    plan: &Plan,
    round: u32,
    cohort: &[usize],
    updates: &mut BTreeMap<usize, Update>,
    layout: &ParameterSet,
) -> Result<Prepared, SecAggError> {
    let ids: Vec<u32> = cohort.iter().map(|&s| s as u32).collect();
    let kept = plan.secure_coordinates(round, layout.n_values());
    let params = secure::training_params(plan, round, &ids, layout.n_values())?;
    if let Some(bound) = plan.masked_update_bound() {
        for update in updates.values_mut() {
            clip_to_norm(&mut update.delta, bound);
        }
    }
    Ok((ids, kept, params))
}

/// Runs one SecAgg+ round for `cohort` (site indices) where `updates` holds
/// the updates of those who finished training; the others drop mid-round.
/// `rings` holds each site's key pairs between rounds.
pub(crate) fn secure_round(
    plan: &Plan,
    round: u32,
    cohort: &[usize],
    mut updates: BTreeMap<usize, Update>,
    layout: &ParameterSet,
    rings: &mut [Option<Box<KeyRing>>],
) -> Result<SecureRound, SecAggError> {
    let (ids, kept, params) = prepare(plan, round, cohort, &mut updates, layout)?;

    // The coordinator's side, as in deployment; the members answer at once,
    // so no stage waits for its deadline (dropouts are known in advance).
    let now = Timestamp::ZERO;
    let members = cohort.iter().map(|&s| (s.to_string(), s as u32)).collect();
    let (mut server, _) =
        secure::SecureRound::open(now, round, members, params.clone(), Duration::MAX).map_err(
            |e| match e {
                secure::OpenError::Protocol(e) => e,
                other => SecAggError::Config(other.to_string()),
            },
        )?;
    let mut bytes_up: BTreeMap<usize, u64> = BTreeMap::new();
    let mut bytes_down: BTreeMap<usize, u64> = BTreeMap::new();
    let mut clients: Vec<(usize, Client)> = Vec::with_capacity(ids.len());
    let secret = |tag: u64, site: usize| {
        derive_key(
            plan.seed,
            &[streams::SECAGG, u64::from(round), site as u64, tag],
        )
    };
    // Each site's identity key, the same every round.
    let signers: BTreeMap<usize, Ed25519Signer> = cohort
        .iter()
        .map(|&site| {
            let key = derive_key(plan.seed, &[streams::SECAGG, 0, site as u64, 5]);
            (site, Ed25519Signer::from_secret(key))
        })
        .collect();
    let mut directory = Ed25519Directory::new();
    for (&site, signer) in &signers {
        directory.insert(site as u32, signer.public())?;
    }
    for &site in cohort {
        let ring = rings[site].take().map_or_else(
            || KeyRing::new(secret(1, site), secret(2, site)),
            |ring| *ring,
        );
        let (client, keys) = Client::with_keys(
            site as u32,
            params.clone(),
            ring,
            secret(3, site),
            &signers[&site],
        )?;
        // Two keys and a signature.
        *bytes_up.entry(site).or_default() += 4 + 64 + keys.signature.len() as u64;
        deliver(&mut server, Message::Keys(keys))?;
        clients.push((site, client));
    }
    let shared: Vec<_> = clients
        .par_iter_mut()
        .map(|(site, client)| {
            client.share_keys(&server.server().keys_for(*site as u32), &directory)
        })
        .collect::<Result<_, _>>()?;
    for ((site, _), shares) in clients.iter().zip(shared) {
        let size: u64 = shares.shares.iter().map(|(_, c)| 4 + c.len() as u64).sum();
        *bytes_up.entry(*site).or_default() += size;
        // Each neighbour's keys come down to the site before it shares.
        *bytes_down.entry(*site).or_default() += (68 + 64) * params.neighbours as u64;
        deliver(&mut server, Message::Shares(shares))?;
    }
    // The shares addressed to each site come down to it.
    for &site in updates.keys() {
        let size: u64 = server
            .server()
            .shares_for(site as u32)
            .iter()
            .map(|(_, c)| 4 + c.len() as u64)
            .sum();
        *bytes_down.entry(site).or_default() += size;
    }
    // Those without an update leave after sharing their keys.
    for &site in cohort {
        if !updates.contains_key(&site) {
            server.withdraw(&site.to_string());
        }
    }
    let masked: Vec<_> = clients
        .par_iter_mut()
        .filter_map(|(site, client)| {
            let update = updates.get(site)?;
            let values: Vec<f32> = update.delta.values().collect();
            let input: Vec<f32> = match &kept {
                Some(ix) => ix.iter().map(|&i| values[i]).collect(),
                None => values,
            };
            let metadata = Metadata {
                n_examples: update.n_examples,
                train_loss: update.stats.mean_train_loss,
                n_steps: update.stats.n_steps,
            };
            Some(client.masked_update(&server.server().shares_for(*site as u32), &input, &metadata))
        })
        .collect::<Result<_, _>>()?;
    let mut masked_bytes = BTreeMap::new();
    for m in masked {
        let size = 4 * m.values.len() as u64 + 8;
        *bytes_up.entry(m.from as usize).or_default() += size;
        masked_bytes.insert(m.from as usize, size);
        deliver(&mut server, Message::Masked(m))?;
    }
    server.advance(now);
    let request = server.server().unmask_request();
    for &site in updates.keys() {
        *bytes_down.entry(site).or_default() +=
            4 * (request.survivors.len() + request.dropped.len()) as u64;
    }
    // The consistency check: every survivor signs the view it was given...
    let views: Vec<_> = clients
        .par_iter_mut()
        .filter(|(site, _)| updates.contains_key(site))
        .map(|(site, client)| client.sign_view(&request, &signers[site]))
        .collect::<Result<_, _>>()?;
    for v in views {
        *bytes_up.entry(v.from as usize).or_default() += 4 + v.signature.len() as u64;
        deliver(&mut server, Message::View(v))?;
    }
    // ...and checks everyone's signatures before revealing any share.
    let views = server.server().views();
    let views_size: u64 = views.iter().map(|v| 4 + v.signature.len() as u64).sum();
    let responses: Vec<_> = clients
        .par_iter_mut()
        .filter(|(site, _)| updates.contains_key(site))
        .map(|(_, client)| client.unmask(&request, &views, &directory))
        .collect::<Result<_, _>>()?;
    for &site in updates.keys() {
        *bytes_down.entry(site).or_default() += views_size;
    }
    for r in responses {
        let size: u64 = r
            .seed_shares
            .iter()
            .chain(&r.key_shares)
            .map(|(_, s)| 4 + s.len() as u64)
            .sum();
        *bytes_up.entry(r.from as usize).or_default() += size;
        deliver(&mut server, Message::Unmask(r))?;
    }
    server.advance(now);
    // A round whose sum cannot be recovered leaves its key rings behind.
    let sum = server.recover(layout, kept.as_deref())?;
    for (site, client) in clients {
        rings[site] = Some(Box::new(client.into_keys(secret(4, site))));
    }
    let survivors: Vec<usize> = request.survivors.iter().map(|&s| s as usize).collect();
    Ok(SecureRound {
        sum,
        survivors,
        bytes_up,
        masked_bytes,
        bytes_down,
    })
}
