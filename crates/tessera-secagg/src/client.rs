//! A participant's side of a round.

use std::collections::{BTreeMap, BTreeSet};

use aes_gcm::Aes256Gcm;
use aes_gcm::Nonce;
use aes_gcm::aead::{Aead, Payload};
use blahaj::{Share, Sharks};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

use crate::keys::{aad, add_mask, nonce, pairwise_seed, share_cipher};
#[cfg(doc)]
use crate::split_sum;
use crate::{
    AdvertiseKeys, KeyRing, MAX_SUMMANDS, METADATA_LEN, MaskedInput, Metadata, RoundParams,
    SecAggError, ShareKeys, SignedView, Signer, UnmaskRequest, UnmaskResponse, Verifier,
    encode_metadata, keys_message, masked_dimension, quantize, view_message,
};

/// A participant's side of a round.
pub struct Client {
    id: u32,
    params: RoundParams,
    neighbours: Vec<u32>,
    keys: KeyRing,
    seed: [u8; 32],
    peers: BTreeMap<u32, AdvertiseKeys>,
    /// Per peer: the share cipher and the pairwise mask seed (one key
    /// agreement each, computed once).
    agreed: BTreeMap<u32, (Aes256Gcm, [u8; 32])>,
    /// Shares held for neighbours who completed stage 2: (seed share, key share).
    held: BTreeMap<u32, (Vec<u8>, Vec<u8>)>,
    masked: bool,
    /// The survivor and dropped sets this participant signed (stage 4).
    signed_view: Option<UnmaskRequest>,
    /// Whether it answered an unmasking request (at most once a round).
    unmasked: bool,
    digest: [u8; 32],
}

impl Client {
    /// A participant `id` of the round with fresh keys, from 32 bytes of
    /// secret randomness (from the operating system in deployment), and its
    /// stage 1 message, signed by `signer`.
    pub fn new(
        id: u32,
        params: RoundParams,
        randomness: [u8; 32],
        signer: &dyn Signer,
    ) -> Result<(Self, AdvertiseKeys), SecAggError> {
        let mut rng = ChaCha20Rng::from_seed(randomness);
        let mut draw = || {
            let mut b = [0u8; 32];
            rng.fill_bytes(&mut b);
            b
        };
        let keys = KeyRing::new(draw(), draw());
        Self::with_keys(id, params, keys, draw(), signer)
    }

    /// A participant `id` of the round with its key ring from the round
    /// before (see [`KeyRing`]), 32 bytes of fresh secret randomness for this
    /// round's self mask, and its stage 1 message, signed by `signer`.
    pub fn with_keys(
        id: u32,
        params: RoundParams,
        keys: KeyRing,
        seed: [u8; 32],
        signer: &dyn Signer,
    ) -> Result<(Self, AdvertiseKeys), SecAggError> {
        params.validate()?;
        if params.participants.binary_search(&id).is_err() {
            return Err(SecAggError::Config(format!(
                "participant {id} is not in the round"
            )));
        }
        if keys.answered.contains(&params.round) {
            return Err(SecAggError::Refused(format!(
                "this participant already revealed shares in secure round {}: it takes part in each round once",
                params.round
            )));
        }
        let digest = params.digest();
        let signature = signer.sign(&keys_message(&digest, id, &keys.c_public, &keys.s_public))?;
        let advertised = AdvertiseKeys {
            from: id,
            c_public: keys.c_public,
            s_public: keys.s_public,
            signature,
        };
        let neighbours = params.neighbours_of(id);
        Ok((
            Self {
                id,
                params,
                neighbours,
                keys,
                seed,
                peers: BTreeMap::new(),
                agreed: BTreeMap::new(),
                held: BTreeMap::new(),
                masked: false,
                signed_view: None,
                unmasked: false,
                digest,
            },
            advertised,
        ))
    }

    /// Ends the round and returns the key ring for the next one, its mask
    /// key replaced by a fresh one from `s_randomness` (whatever happened in
    /// this round: see [`KeyRing`]).
    pub fn into_keys(self, s_randomness: [u8; 32]) -> KeyRing {
        let mut keys = self.keys;
        if self.unmasked {
            keys.answered.insert(self.params.round);
        }
        keys.rotate_mask_key(s_randomness);
        keys
    }

    /// This participant's neighbours.
    pub fn neighbours(&self) -> &[u32] {
        &self.neighbours
    }

    /// Stage 2: takes the neighbours' keys (as relayed by the server),
    /// checks each neighbour's signature with `verifier`, and returns the
    /// encrypted shares of this participant's secrets. A key advertisement
    /// its sender did not sign (the server substituted it) ends the round
    /// for this participant before any share is made.
    pub fn share_keys(
        &mut self,
        keys: &[AdvertiseKeys],
        verifier: &dyn Verifier,
    ) -> Result<ShareKeys, SecAggError> {
        for k in keys {
            if self.neighbours.binary_search(&k.from).is_ok() {
                if k.c_public == k.s_public {
                    return Err(SecAggError::BadMessage {
                        from: k.from,
                        reason: "its two public keys are equal".into(),
                    });
                }
                let message = keys_message(&self.digest, k.from, &k.c_public, &k.s_public);
                if let Err(why) = verifier.verify(k.from, &message, &k.signature) {
                    return Err(SecAggError::Refused(format!(
                        "the keys relayed for participant {} are not signed by it ({why}): the coordinator may have substituted them",
                        k.from
                    )));
                }
                if self.peers.insert(k.from, k.clone()).is_some() {
                    return Err(SecAggError::BadMessage {
                        from: k.from,
                        reason: "its keys were relayed twice".into(),
                    });
                }
            }
        }
        if self.peers.len() < self.params.threshold {
            return Err(SecAggError::TooManyDropouts(format!(
                "participant {} has {} neighbours with keys, needs {}",
                self.id,
                self.peers.len(),
                self.params.threshold
            )));
        }
        let sharks = Sharks(self.params.threshold as u8);
        let k = self.peers.len();
        let seed_shares: Vec<Share> = sharks.dealer(&self.seed).take(k).collect();
        let key_shares: Vec<Share> = sharks
            .dealer(self.keys.s_secret.as_bytes())
            .take(k)
            .collect();
        let mut out = Vec::with_capacity(k);
        for ((peer, keys), (b, s)) in self.peers.iter().zip(seed_shares.iter().zip(&key_shares)) {
            let b: Vec<u8> = b.into();
            let s: Vec<u8> = s.into();
            let mut plain = Vec::with_capacity(4 + b.len() + s.len());
            plain.extend_from_slice(&(b.len() as u32).to_le_bytes());
            plain.extend_from_slice(&b);
            plain.extend_from_slice(&s);
            let c_shared = self.keys.agree_c(&keys.c_public);
            let s_shared = self.keys.agree_s(&keys.s_public);
            let cipher = share_cipher(
                &c_shared,
                self.params.round,
                &self.keys.s_public,
                &keys.s_public,
            );
            let mask_seed = pairwise_seed(&s_shared, self.params.round);
            let cipher = &self.agreed.entry(*peer).or_insert((cipher, mask_seed)).0;
            let ct = cipher
                .encrypt(
                    Nonce::from_slice(&nonce(self.id, *peer)),
                    Payload {
                        msg: &plain,
                        aad: &aad(self.params.round, self.id, *peer),
                    },
                )
                .map_err(|_| SecAggError::Config("encryption failed".into()))?;
            out.push((*peer, ct));
        }
        Ok(ShareKeys {
            from: self.id,
            shares: out,
        })
    }

    /// Stage 3: takes the shares addressed to this participant (the server
    /// relays them; their senders are the neighbours who completed stage 2)
    /// and returns the masked, quantised `input` (of the round's full
    /// dimension; see [`Client::masked_update`] for an update with its
    /// metadata).
    pub fn masked_input(
        &mut self,
        shares: &[(u32, Vec<u8>)],
        input: &[f32],
    ) -> Result<MaskedInput, SecAggError> {
        if input.len() != self.params.dimension {
            return Err(SecAggError::Config(format!(
                "input has {} values, the round {}",
                input.len(),
                self.params.dimension
            )));
        }
        let values = quantize(input, &self.params);
        self.masked_values(shares, values)
    }

    /// Stage 3 for an update and its training metadata: quantises `update`
    /// (the round's dimension less [`METADATA_LEN`] values), appends the
    /// encoded `metadata` ([`encode_metadata`]) and masks the whole, so that
    /// the server learns only the survivors' sums of both
    /// ([`split_sum`]).
    pub fn masked_update(
        &mut self,
        shares: &[(u32, Vec<u8>)],
        update: &[f32],
        metadata: &Metadata,
    ) -> Result<MaskedInput, SecAggError> {
        if masked_dimension(update.len()) != self.params.dimension {
            return Err(SecAggError::Config(format!(
                "an update of {} values and {METADATA_LEN} of metadata, the round has {}",
                update.len(),
                self.params.dimension
            )));
        }
        if self.params.participants.len() > MAX_SUMMANDS {
            return Err(SecAggError::Config(format!(
                "{} participants: the metadata of at most {MAX_SUMMANDS} sums exactly",
                self.params.participants.len()
            )));
        }
        let mut values = quantize(update, &self.params);
        values.extend_from_slice(&encode_metadata(metadata));
        self.masked_values(shares, values)
    }

    /// Stage 3 for raw values of `Z_2^32` (exactly the round's dimension):
    /// takes the shares addressed to this participant and returns `values`
    /// masked. The caller answers for their range: the server's sum wraps
    /// modulo `2^32`.
    pub fn masked_values(
        &mut self,
        shares: &[(u32, Vec<u8>)],
        mut values: Vec<u32>,
    ) -> Result<MaskedInput, SecAggError> {
        if self.masked {
            // Two vectors under the same masks would give away their difference.
            return Err(SecAggError::Refused(
                "this participant already sent its masked input this round".into(),
            ));
        }
        if values.len() != self.params.dimension {
            return Err(SecAggError::Config(format!(
                "{} values to mask, the round has {}",
                values.len(),
                self.params.dimension
            )));
        }
        for (from, ct) in shares {
            let Some((cipher, _)) = self.agreed.get(from) else {
                return Err(SecAggError::BadMessage {
                    from: *from,
                    reason: "not a neighbour with advertised keys".into(),
                });
            };
            let plain = cipher
                .decrypt(
                    Nonce::from_slice(&nonce(*from, self.id)),
                    Payload {
                        msg: ct,
                        aad: &aad(self.params.round, *from, self.id),
                    },
                )
                .map_err(|_| SecAggError::BadMessage {
                    from: *from,
                    reason: "its share does not decrypt".into(),
                })?;
            let bad = || SecAggError::BadMessage {
                from: *from,
                reason: "its share is malformed".into(),
            };
            let len_bytes: [u8; 4] = plain
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(bad)?;
            let len = u32::from_le_bytes(len_bytes) as usize;
            let b = plain.get(4..4 + len).ok_or_else(bad)?.to_vec();
            let s = plain.get(4 + len..).ok_or_else(bad)?.to_vec();
            self.held.insert(*from, (b, s));
        }
        // Pairwise masks only with those whose shares arrived: with fewer
        // than `t` of them, a coordinator that withheld the others (or later
        // calls them all dropped and rebuilds their mask keys) could strip
        // every pairwise mask, and the self mask's seed is revealed for a
        // survivor. Such a round could not recover this input anyway.
        if self.held.len() < self.params.threshold {
            return Err(SecAggError::Refused(format!(
                "the shares of only {} neighbours reached this participant, fewer than the threshold {}: its input would be protected by its self mask alone",
                self.held.len(),
                self.params.threshold
            )));
        }
        add_mask(&mut values, self.seed, true);
        for (peer, (_, seed)) in &self.agreed {
            if !self.held.contains_key(peer) {
                continue; // it dropped before sharing: no mask with it
            }
            add_mask(&mut values, *seed, self.id < *peer);
        }
        self.masked = true;
        Ok(MaskedInput {
            from: self.id,
            values,
        })
    }

    /// Checks an unmasking request before signing or answering it: this
    /// participant a survivor, nobody both survivor and dropped, everyone in
    /// the round, and enough survivors for a threshold.
    fn check_request(&self, request: &UnmaskRequest) -> Result<(), SecAggError> {
        if !self.masked {
            return Err(SecAggError::Refused(
                "this participant has not sent its masked input".into(),
            ));
        }
        let survivors: BTreeSet<u32> = request.survivors.iter().copied().collect();
        let dropped: BTreeSet<u32> = request.dropped.iter().copied().collect();
        if survivors.len() != request.survivors.len() || dropped.len() != request.dropped.len() {
            return Err(SecAggError::Refused(
                "the request names a participant twice".into(),
            ));
        }
        if let Some(both) = survivors.intersection(&dropped).next() {
            return Err(SecAggError::Refused(format!(
                "participant {both} is named both survivor and dropped"
            )));
        }
        if let Some(stranger) = survivors
            .iter()
            .chain(&dropped)
            .find(|p| self.params.participants.binary_search(p).is_err())
        {
            return Err(SecAggError::Refused(format!(
                "participant {stranger} is not in the round"
            )));
        }
        if !survivors.contains(&self.id) {
            return Err(SecAggError::Refused(
                "the request does not count this participant as a survivor".into(),
            ));
        }
        if survivors.len() < self.params.threshold {
            return Err(SecAggError::Refused(format!(
                "{} survivors, fewer than the threshold {}",
                survivors.len(),
                self.params.threshold
            )));
        }
        // A round that can complete has at least `t` surviving neighbours of
        // every survivor. A view with fewer around this participant calls
        // most of its neighbours dropped: with 2t > k that is how a
        // coordinator would strip a victim's pairwise masks (declare the
        // neighbours it masked with dropped, rebuild their mask keys), so
        // nobody who sees it signs or reveals.
        let alive = self
            .neighbours
            .iter()
            .filter(|n| survivors.contains(n))
            .count();
        if alive < self.params.threshold {
            return Err(SecAggError::Refused(format!(
                "only {alive} of this participant's {} neighbours survive in the view, fewer than the threshold {}: the round cannot complete, and a view that drops most of them is how a coordinator strips a participant's masks",
                self.neighbours.len(),
                self.params.threshold
            )));
        }
        Ok(())
    }

    /// Stage 4, the consistency check (Bonawitz et al. 2017, active
    /// variant): signs the survivor and dropped sets the server names. A
    /// participant signs one view a round.
    pub fn sign_view(
        &mut self,
        request: &UnmaskRequest,
        signer: &dyn Signer,
    ) -> Result<SignedView, SecAggError> {
        self.check_request(request)?;
        if let Some(signed) = &self.signed_view
            && signed != request
        {
            return Err(SecAggError::Refused(
                "the server asked this participant to sign a second, different view of the round"
                    .into(),
            ));
        }
        let signature = signer.sign(&view_message(&self.digest, request))?;
        self.signed_view = Some(request.clone());
        Ok(SignedView {
            from: self.id,
            signature,
        })
    }

    /// Stage 5: reveals shares of survivors' seeds and dropped participants'
    /// keys, once, after the consistency check: the request must be the view
    /// this participant signed, and `views` must hold at least `threshold`
    /// signatures of that same view by distinct survivors. Any signature of
    /// another view (a server that told different participants different
    /// survivor sets) or one that does not verify aborts the round for this
    /// participant without revealing anything.
    pub fn unmask(
        &mut self,
        request: &UnmaskRequest,
        views: &[SignedView],
        verifier: &dyn Verifier,
    ) -> Result<UnmaskResponse, SecAggError> {
        self.check_request(request)?;
        if self.unmasked {
            return Err(SecAggError::Refused(
                "this participant already answered an unmasking request this round".into(),
            ));
        }
        match &self.signed_view {
            None => {
                return Err(SecAggError::Refused(
                    "no consistency check: this participant has not signed a view of the round"
                        .into(),
                ));
            }
            Some(signed) if signed != request => {
                return Err(SecAggError::Refused(
                    "the unmasking request differs from the survivor set this participant signed"
                        .into(),
                ));
            }
            Some(_) => {}
        }
        let message = view_message(&self.digest, request);
        let mut signers = BTreeSet::new();
        for view in views {
            if !request.survivors.contains(&view.from) {
                return Err(SecAggError::Refused(format!(
                    "participant {} signed a view of the round, but the survivor set this participant was given does not name it: the coordinator sent different views of the round; no share revealed",
                    view.from
                )));
            }
            if let Err(why) = verifier.verify(view.from, &message, &view.signature) {
                return Err(SecAggError::Refused(format!(
                    "participant {} did not sign the survivor set this participant was given ({why}): the coordinator sent different views of the round; no share revealed",
                    view.from
                )));
            }
            signers.insert(view.from);
        }
        if signers.len() < self.params.threshold {
            return Err(SecAggError::Refused(format!(
                "{} survivors signed this view of the round, {} needed",
                signers.len(),
                self.params.threshold
            )));
        }
        let survivors: BTreeSet<u32> = request.survivors.iter().copied().collect();
        let dropped: BTreeSet<u32> = request.dropped.iter().copied().collect();
        self.unmasked = true;
        let mut response = UnmaskResponse {
            from: self.id,
            seed_shares: Vec::new(),
            key_shares: Vec::new(),
        };
        for (peer, (b, s)) in &self.held {
            if survivors.contains(peer) {
                response.seed_shares.push((*peer, b.clone()));
            } else if dropped.contains(peer) {
                response.key_shares.push((*peer, s.clone()));
            }
        }
        Ok(response)
    }
}
