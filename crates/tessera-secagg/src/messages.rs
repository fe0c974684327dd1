//! The messages of a round's five stages.

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::{keys_message, view_message};

/// Stage 1: a participant's public keys, signed by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertiseKeys {
    /// Sender.
    pub from: u32,
    /// Key for share encryption.
    pub c_public: [u8; 32],
    /// Key for pairwise masks (fresh every round).
    pub s_public: [u8; 32],
    /// The sender's signature of [`keys_message`].
    pub signature: Vec<u8>,
}

/// Stage 4 (consistency check): a survivor's signature of the survivor and
/// dropped sets it was given ([`view_message`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedView {
    /// Signer.
    pub from: u32,
    /// Its signature.
    pub signature: Vec<u8>,
}

/// Stage 2: encrypted shares, one per neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareKeys {
    /// Sender.
    pub from: u32,
    /// `(recipient, ciphertext)`.
    pub shares: Vec<(u32, Vec<u8>)>,
}

/// Stage 3: the masked, quantised vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    /// Sender.
    pub from: u32,
    /// The masked vector in `Z_2^32`.
    pub values: Vec<u32>,
}

/// Stages 4 and 5, server to participants: whose self masks and whose
/// pairwise masks to reveal (signed by every survivor in stage 4, revealed
/// in stage 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// Participants whose masked input arrived.
    pub survivors: Vec<u32>,
    /// Participants who shared keys but sent no masked input.
    pub dropped: Vec<u32>,
}

/// Stage 5, participants to server: shares of survivors' self-mask seeds and
/// of the dropped participants' mask keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskResponse {
    /// Sender.
    pub from: u32,
    /// `(survivor, share of its self-mask seed)`.
    pub seed_shares: Vec<(u32, Vec<u8>)>,
    /// `(dropped participant, share of its mask key)`.
    pub key_shares: Vec<(u32, Vec<u8>)>,
}
