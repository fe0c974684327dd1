//! One trace a round across gossip peers. With no coordinator to root a
//! round, every peer derives the round's trace id (and the id of a parent
//! span that no one exports) from the same inputs: each peer's nonce, drawn
//! at its start and sent in its welcome, in site order, and the round. A
//! new run draws new nonces, so its rounds are new traces. A peer restarted
//! mid-run draws a new nonce and greets peers that keep the run's old ones:
//! its later rounds are traces of their own. Tracing only: nothing here
//! decides anything.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// The length of a nonce; one of any other length counts as none.
pub(crate) const NONCE_BYTES: usize = 16;

/// 16 bytes of the operating system's randomness; none where it fails
/// (the run goes on, its traces shared with other runs of no nonce).
pub(crate) fn draw_nonce() -> Vec<u8> {
    let mut nonce = vec![0u8; NONCE_BYTES];
    match getrandom::fill(&mut nonce) {
        Ok(()) => nonce,
        Err(e) => {
            tracing::warn!(%e, "no randomness for the trace nonce: traces may mix with other runs'");
            Vec::new()
        }
    }
}

/// The run's key to its rounds' trace ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoundTraces {
    key: [u8; 32],
}

impl RoundTraces {
    /// From every peer's nonce, this one's included, by site.
    pub(crate) fn of(nonces: &BTreeMap<String, Vec<u8>>) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"tessera gossip round traces\n");
        for (site, nonce) in nonces {
            let nonce: &[u8] = if nonce.len() == NONCE_BYTES {
                nonce
            } else {
                &[]
            };
            hash.update((site.len() as u64).to_le_bytes());
            hash.update(site.as_bytes());
            hash.update((nonce.len() as u64).to_le_bytes());
            hash.update(nonce);
        }
        Self {
            key: hash.finalize().into(),
        }
    }

    /// Round `round`'s trace id and its (never exported) root span's id.
    pub(crate) fn ids(&self, round: u32) -> ([u8; 16], [u8; 8]) {
        let mut hash = Sha256::new();
        hash.update(self.key);
        hash.update(round.to_le_bytes());
        let digest: [u8; 32] = hash.finalize().into();
        let mut trace = [0u8; 16];
        let mut parent = [0u8; 8];
        trace.copy_from_slice(&digest[..16]);
        parent.copy_from_slice(&digest[16..24]);
        (trace, parent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonces(list: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
        list.iter()
            .map(|(s, n)| (s.to_string(), n.to_vec()))
            .collect()
    }

    #[test]
    fn every_peer_with_the_same_nonces_derives_the_same_round_traces() {
        let a = [1u8; 16];
        let b = [2u8; 16];
        let run = RoundTraces::of(&nonces(&[("a", &a), ("b", &b)]));
        // The same nonces learned in another order.
        assert_eq!(run, RoundTraces::of(&nonces(&[("b", &b), ("a", &a)])));
        assert_ne!(run.ids(1), run.ids(2));
        // Another run (another nonce), or the nonces under other names.
        let other = RoundTraces::of(&nonces(&[("a", &a), ("b", &[3u8; 16])]));
        assert_ne!(run.ids(1), other.ids(1));
        let swapped = RoundTraces::of(&nonces(&[("a", &b), ("b", &a)]));
        assert_ne!(run.ids(1), swapped.ids(1));
        // A nonce of another length counts as none.
        let long = RoundTraces::of(&nonces(&[("a", &a), ("b", &[2u8; 17])]));
        let none = RoundTraces::of(&nonces(&[("a", &a), ("b", &[])]));
        assert_eq!(long, none);
        assert_eq!(draw_nonce().len(), NONCE_BYTES);
        assert_ne!(draw_nonce(), draw_nonce());
    }
}
