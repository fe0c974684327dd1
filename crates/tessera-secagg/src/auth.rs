//! Signatures of the protocol's messages: signers, verifiers and the bytes they sign.

use std::collections::BTreeMap;

use crate::{SecAggError, UnmaskRequest};

/// Signs this participant's protocol messages with a key whose public half
/// the other participants know without the coordinator's word (from the
/// federation CA's certificates in deployment), so that the coordinator can
/// neither substitute a participant's keys nor forge its view of a round.
pub trait Signer: Send + Sync {
    /// The signature of `message`.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SecAggError>;
}

/// Checks other participants' signatures.
pub trait Verifier: Send + Sync {
    /// `Ok` when `signature` is participant `who`'s on `message`; the reason
    /// otherwise.
    fn verify(&self, who: u32, message: &[u8], signature: &[u8]) -> Result<(), String>;
}

/// An Ed25519 signing key (simulation and tests; deployment signs with the
/// site's certificate key).
pub struct Ed25519Signer(ed25519_dalek::SigningKey);

impl Ed25519Signer {
    /// The key of a 32-byte secret.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&secret))
    }

    /// The public key others verify with.
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
}

impl Signer for Ed25519Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SecAggError> {
        use ed25519_dalek::Signer as _;
        Ok(self.0.sign(message).to_bytes().to_vec())
    }
}

/// Ed25519 public keys by participant id.
#[derive(Debug, Clone, Default)]
pub struct Ed25519Directory(BTreeMap<u32, ed25519_dalek::VerifyingKey>);

impl Ed25519Directory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds participant `id`'s public key.
    pub fn insert(&mut self, id: u32, public: [u8; 32]) -> Result<(), SecAggError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public)
            .map_err(|e| SecAggError::Config(format!("participant {id}'s public key: {e}")))?;
        self.0.insert(id, key);
        Ok(())
    }
}

impl Verifier for Ed25519Directory {
    fn verify(&self, who: u32, message: &[u8], signature: &[u8]) -> Result<(), String> {
        let key = self
            .0
            .get(&who)
            .ok_or_else(|| format!("no public key is known for participant {who}"))?;
        let signature = ed25519_dalek::Signature::from_slice(signature)
            .map_err(|_| format!("participant {who}'s signature is malformed"))?;
        key.verify_strict(message, &signature)
            .map_err(|_| format!("participant {who}'s signature does not verify"))
    }
}

/// No authentication: signs nothing and accepts everything. Only for a
/// deployment that explicitly runs without TLS, where participants have no
/// keys to sign with; the coordinator can then substitute keys and forge
/// views, and secure aggregation protects against an honest-but-curious
/// coordinator only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unauthenticated;

impl Signer for Unauthenticated {
    fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, SecAggError> {
        Ok(Vec::new())
    }
}

impl Verifier for Unauthenticated {
    fn verify(&self, _who: u32, _message: &[u8], _signature: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// The bytes a participant signs to advertise its keys.
pub fn keys_message(
    params_digest: &[u8; 32],
    from: u32,
    c_public: &[u8; 32],
    s_public: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(22 + 32 + 4 + 64);
    m.extend_from_slice(b"tessera secagg keys v1");
    m.extend_from_slice(params_digest);
    m.extend_from_slice(&from.to_le_bytes());
    m.extend_from_slice(c_public);
    m.extend_from_slice(s_public);
    m
}

/// The bytes a survivor signs in the consistency check: the round's
/// parameters and the survivor and dropped sets it was given.
pub fn view_message(params_digest: &[u8; 32], request: &UnmaskRequest) -> Vec<u8> {
    let mut m =
        Vec::with_capacity(22 + 32 + 16 + 4 * (request.survivors.len() + request.dropped.len()));
    m.extend_from_slice(b"tessera secagg view v1");
    m.extend_from_slice(params_digest);
    for set in [&request.survivors, &request.dropped] {
        m.extend_from_slice(&(set.len() as u64).to_le_bytes());
        for id in set {
            m.extend_from_slice(&id.to_le_bytes());
        }
    }
    m
}
