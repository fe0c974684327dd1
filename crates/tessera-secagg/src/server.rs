//! The server's side of a round: relays messages and recovers the sum.

use std::collections::{BTreeMap, BTreeSet};

use blahaj::{Share, Sharks};
use x25519_dalek::StaticSecret;

use crate::keys::{add_mask, agree, pairwise_seed};
use crate::{
    AdvertiseKeys, MaskedInput, RoundParams, SecAggError, ShareKeys, SignedView, UnmaskRequest,
    UnmaskResponse,
};

/// The server's side of a round: relays messages and recovers the sum.
#[derive(Debug, Clone)]
pub struct Server {
    pub(crate) params: RoundParams,
    /// The neighbour graph, by participant.
    graph: BTreeMap<u32, Vec<u32>>,
    pub(crate) keys: BTreeMap<u32, AdvertiseKeys>,
    /// Stage 2 completers, with their shares by recipient.
    pub(crate) shares: BTreeMap<u32, BTreeMap<u32, Vec<u8>>>,
    pub(crate) masked: BTreeMap<u32, Vec<u32>>,
    /// Stage 4: survivors' signatures of the unmasking request.
    views: BTreeMap<u32, Vec<u8>>,
    pub(crate) responses: BTreeMap<u32, UnmaskResponse>,
}

impl Server {
    /// A server for the round.
    pub fn new(params: RoundParams) -> Result<Self, SecAggError> {
        params.validate()?;
        let graph = params.graph();
        Ok(Self {
            params,
            graph,
            keys: BTreeMap::new(),
            shares: BTreeMap::new(),
            masked: BTreeMap::new(),
            views: BTreeMap::new(),
            responses: BTreeMap::new(),
        })
    }

    /// The round's parameters.
    pub fn params(&self) -> &RoundParams {
        &self.params
    }

    fn neighbours(&self, id: u32) -> &[u32] {
        self.graph.get(&id).map_or(&[], Vec::as_slice)
    }

    fn check_member(&self, from: u32) -> Result<(), SecAggError> {
        if self.params.participants.binary_search(&from).is_err() {
            return Err(SecAggError::BadMessage {
                from,
                reason: "not a participant of the round".into(),
            });
        }
        Ok(())
    }

    /// Stage 1: a participant's keys.
    pub fn receive_keys(&mut self, keys: AdvertiseKeys) -> Result<(), SecAggError> {
        self.check_member(keys.from)?;
        if keys.signature.len() > 1024 {
            return Err(SecAggError::BadMessage {
                from: keys.from,
                reason: format!("a signature of {} bytes", keys.signature.len()),
            });
        }
        if self.keys.contains_key(&keys.from) {
            return Err(SecAggError::BadMessage {
                from: keys.from,
                reason: "keys advertised twice".into(),
            });
        }
        self.keys.insert(keys.from, keys);
        Ok(())
    }

    /// Whether participant `id` advertised its keys.
    pub fn has_keys(&self, id: u32) -> bool {
        self.keys.contains_key(&id)
    }

    /// Stage 1 → 2: the keys of `id`'s neighbours that advertised.
    pub fn keys_for(&self, id: u32) -> Vec<AdvertiseKeys> {
        self.neighbours(id)
            .iter()
            .filter_map(|n| self.keys.get(n).cloned())
            .collect()
    }

    /// Stage 2: a participant's encrypted shares.
    pub fn receive_shares(&mut self, shares: ShareKeys) -> Result<(), SecAggError> {
        let from = shares.from;
        self.check_member(from)?;
        if !self.keys.contains_key(&from) || self.shares.contains_key(&from) {
            return Err(SecAggError::BadMessage {
                from,
                reason: "shares without keys, or shared twice".into(),
            });
        }
        let neighbours = self.neighbours(from);
        let mut by_recipient = BTreeMap::new();
        for (to, ct) in shares.shares {
            if neighbours.binary_search(&to).is_err() || by_recipient.insert(to, ct).is_some() {
                return Err(SecAggError::BadMessage {
                    from,
                    reason: format!("a share for {to}, not a neighbour or twice"),
                });
            }
        }
        self.shares.insert(from, by_recipient);
        Ok(())
    }

    /// Stage 2 → 3: the shares addressed to `id`.
    pub fn shares_for(&self, id: u32) -> Vec<(u32, Vec<u8>)> {
        self.shares
            .iter()
            .filter_map(|(from, by)| by.get(&id).map(|ct| (*from, ct.clone())))
            .collect()
    }

    /// Stage 3: a masked input.
    pub fn receive_masked(&mut self, input: MaskedInput) -> Result<(), SecAggError> {
        let from = input.from;
        if !self.shares.contains_key(&from) || self.masked.contains_key(&from) {
            return Err(SecAggError::BadMessage {
                from,
                reason: "masked input without shares, or sent twice".into(),
            });
        }
        if input.values.len() != self.params.dimension {
            return Err(SecAggError::BadMessage {
                from,
                reason: format!(
                    "{} values, the round has {}",
                    input.values.len(),
                    self.params.dimension
                ),
            });
        }
        self.masked.insert(from, input.values);
        Ok(())
    }

    /// Stage 3 → 4: who survived and who dropped after sharing (the view
    /// every survivor signs in stage 4 and answers in stage 5).
    pub fn unmask_request(&self) -> UnmaskRequest {
        UnmaskRequest {
            survivors: self.masked.keys().copied().collect(),
            dropped: self
                .shares
                .keys()
                .filter(|id| !self.masked.contains_key(id))
                .copied()
                .collect(),
        }
    }

    /// Stage 4: a survivor's signature of the unmasking request.
    pub fn receive_view(&mut self, view: SignedView) -> Result<(), SecAggError> {
        let from = view.from;
        if !self.masked.contains_key(&from) || self.views.contains_key(&from) {
            return Err(SecAggError::BadMessage {
                from,
                reason: "a signed view from a non-survivor, or twice".into(),
            });
        }
        if view.signature.len() > 1024 {
            return Err(SecAggError::BadMessage {
                from,
                reason: format!("a signature of {} bytes", view.signature.len()),
            });
        }
        self.views.insert(from, view.signature);
        Ok(())
    }

    /// Stage 4 → 5: the survivors' signatures, sent to each of them.
    pub fn views(&self) -> Vec<SignedView> {
        self.views
            .iter()
            .map(|(from, signature)| SignedView {
                from: *from,
                signature: signature.clone(),
            })
            .collect()
    }

    /// Stage 5: a survivor's shares (from one that signed its view).
    pub fn receive_unmask(&mut self, response: UnmaskResponse) -> Result<(), SecAggError> {
        let from = response.from;
        if !self.views.contains_key(&from) || self.responses.contains_key(&from) {
            return Err(SecAggError::BadMessage {
                from,
                reason: "unmasking from a survivor that signed no view, or twice".into(),
            });
        }
        self.responses.insert(from, response);
        Ok(())
    }

    /// Whether the survivors' neighbour graph is connected: then the masked
    /// inputs and revealed secrets determine only the total.
    pub fn survivor_graph_is_connected(&self) -> bool {
        let survivors: Vec<u32> = self.masked.keys().copied().collect();
        let Some(&start) = survivors.first() else {
            return true;
        };
        let mut seen = BTreeSet::from([start]);
        let mut stack = vec![start];
        while let Some(u) = stack.pop() {
            for &v in self.neighbours(u) {
                if self.masked.contains_key(&v) && seen.insert(v) {
                    stack.push(v);
                }
            }
        }
        seen.len() == survivors.len()
    }

    fn recover(&self, owner: u32, shares: Vec<&Vec<u8>>) -> Result<[u8; 32], SecAggError> {
        if shares.len() < self.params.threshold {
            return Err(SecAggError::TooManyDropouts(format!(
                "{} shares of participant {owner}'s secret arrived, {} needed",
                shares.len(),
                self.params.threshold
            )));
        }
        // Any `threshold` shares determine the secret; more only cost time.
        let parsed: Vec<Share> = shares
            .into_iter()
            .take(self.params.threshold)
            .map(|b| Share::try_from(b.as_slice()))
            .collect::<Result<_, _>>()
            .map_err(|e| SecAggError::BadMessage {
                from: owner,
                reason: format!("a share of its secret is malformed: {e}"),
            })?;
        let secret = Sharks(self.params.threshold as u8)
            .recover(parsed.iter())
            .map_err(|e| SecAggError::TooManyDropouts(format!("participant {owner}: {e}")))?;
        secret.try_into().map_err(|_| SecAggError::BadMessage {
            from: owner,
            reason: "its recovered secret is not 32 bytes".into(),
        })
    }

    /// The sum of the survivors' quantised vectors, and how many they are.
    pub fn finish(&self) -> Result<(Vec<u32>, usize), SecAggError> {
        if self.masked.len() < self.params.threshold {
            return Err(SecAggError::TooManyDropouts(format!(
                "{} masked inputs, fewer than the threshold {}",
                self.masked.len(),
                self.params.threshold
            )));
        }
        let mut sum = vec![0u32; self.params.dimension];
        for values in self.masked.values() {
            for (s, v) in sum.iter_mut().zip(values) {
                *s = s.wrapping_add(*v);
            }
        }
        let request = self.unmask_request();
        // Self masks of survivors.
        for &u in &request.survivors {
            let shares: Vec<&Vec<u8>> = self
                .responses
                .values()
                .flat_map(|r| {
                    r.seed_shares
                        .iter()
                        .filter(|(o, _)| *o == u)
                        .map(|(_, s)| s)
                })
                .collect();
            let seed = self.recover(u, shares)?;
            add_mask(&mut sum, seed, false);
        }
        // Pairwise masks between the dropped and their surviving neighbours.
        for &u in &request.dropped {
            let shares: Vec<&Vec<u8>> = self
                .responses
                .values()
                .flat_map(|r| r.key_shares.iter().filter(|(o, _)| *o == u).map(|(_, s)| s))
                .collect();
            let secret = StaticSecret::from(self.recover(u, shares)?);
            for v in self.params.neighbours_of(u) {
                let Some(keys) = self.keys.get(&v) else {
                    continue;
                };
                if !self.masked.contains_key(&v) {
                    continue;
                }
                // v added +mask if v < u, -mask otherwise: undo it.
                let seed = pairwise_seed(&agree(&secret, &keys.s_public), self.params.round);
                add_mask(&mut sum, seed, v > u);
            }
        }
        Ok((sum, self.masked.len()))
    }
}
