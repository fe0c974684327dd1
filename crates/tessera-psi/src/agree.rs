//! The matching key of two sites, agreed over a relay: each site sends
//! `k G` for a fresh secret `k` (from the operating system), and both hash
//! the shared point `k_a k_b G` with a context both know (the join, the run,
//! the sites). The relay sees two public points and cannot compute the key
//! (computational Diffie-Hellman in ristretto255); it could put its own
//! points in their place unless the sites sign them, which the deployed
//! join does with each site's certificate key.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use sha2::{Digest, Sha256};

use crate::group::{decode, random_scalar};
use crate::{MatchingKey, POINT_BYTES, PsiError};

const KEY_DOMAIN: &[u8] = b"tessera-psi/matching-key/v1\0";

/// One site's half of a key agreement. Its `Debug` shows nothing secret.
pub struct KeyShare {
    secret: Scalar,
    public: [u8; POINT_BYTES],
}

impl std::fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyShare").finish_non_exhaustive()
    }
}

impl KeyShare {
    /// A fresh share, its secret from the operating system's random source.
    pub fn generate() -> Result<Self, PsiError> {
        let secret = random_scalar()?;
        let public = (&secret * RISTRETTO_BASEPOINT_TABLE).compress().to_bytes();
        Ok(Self { secret, public })
    }

    /// The point to send to the other site.
    pub fn public(&self) -> [u8; POINT_BYTES] {
        self.public
    }

    /// The matching key from the other site's point and a context both
    /// sites build the same way. Refuses an invalid point, the identity,
    /// and this site's own point sent back.
    pub fn agree(&self, peer: &[u8], context: &[u8]) -> Result<MatchingKey, PsiError> {
        if peer.len() != POINT_BYTES {
            return Err(PsiError::WrongLength {
                what: "key share",
                expected: POINT_BYTES,
                got: peer.len(),
            });
        }
        let point = decode("key share", peer, 0)?;
        if point.is_identity() || peer == self.public {
            return Err(PsiError::Malformed {
                what: "key share",
                detail: "the identity or this site's own share: refused".into(),
            });
        }
        let shared = (self.secret * point).compress().to_bytes();
        // Both orders of the two public points give the same key.
        let (low, high) = if self.public.as_slice() < peer {
            (self.public.as_slice(), peer)
        } else {
            (peer, self.public.as_slice())
        };
        let mut h = Sha256::new();
        h.update(KEY_DOMAIN);
        h.update((context.len() as u64).to_le_bytes());
        h.update(context);
        h.update(low);
        h.update(high);
        h.update(shared);
        Ok(MatchingKey::from_bytes(h.finalize().into()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn both_sites_agree_and_a_stranger_or_bad_point_does_not() {
        let a = KeyShare::generate().unwrap();
        let b = KeyShare::generate().unwrap();
        let c = KeyShare::generate().unwrap();
        let ka = a.agree(&b.public(), b"join").unwrap();
        let kb = b.agree(&a.public(), b"join").unwrap();
        assert_eq!(ka.to_bytes(), kb.to_bytes());
        assert_ne!(
            a.agree(&c.public(), b"join").unwrap().to_bytes(),
            ka.to_bytes()
        );
        assert_ne!(
            a.agree(&b.public(), b"other").unwrap().to_bytes(),
            ka.to_bytes()
        );
        assert!(a.agree(&a.public(), b"join").is_err());
        assert!(a.agree(&[0u8; 32], b"join").is_err());
        assert!(a.agree(&[1u8; 31], b"join").is_err());
    }
}
