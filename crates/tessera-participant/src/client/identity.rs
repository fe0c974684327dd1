//! How a site signs and checks secure-aggregation messages: its certificate key, the cohort's.

use std::collections::{BTreeMap, BTreeSet};

use crate::ParticipantError;

/// Whether the cohort's site names give id `id` to `site` (without TLS the
/// coordinator may send no names: then there is nothing to check).
pub(super) fn identity_is_own(sites: &[String], participants: &[u32], id: u32, site: &str) -> bool {
    if sites.is_empty() {
        return true;
    }
    participants
        .iter()
        .zip(sites)
        .any(|(p, s)| *p == id && s == site)
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
    pub(super) fn for_round(
        &self,
        participants: &[u32],
        sites: &[String],
        certificates: &[Vec<u8>],
        plan_sites: &[String],
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
            // A certificate of the federation CA is not enough where the
            // plan names its sites: whoever runs the CA could mint others
            // and fill a cohort with them.
            if !plan_sites.is_empty() && !plan_sites.iter().any(|s| s == site) {
                return Err(format!(
                    "site '{site}' of the cohort is not one of the plan's sites"
                ));
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

/// Secure joins (`crate::join`): the same identity signs and checks the
/// relayed messages.
impl SecureIdentity {
    /// Whether messages are signed (mutual TLS).
    pub(crate) fn signs(&self) -> bool {
        self.tls.is_some()
    }

    /// This site's certificate (DER; empty without TLS).
    pub(crate) fn certificate(&self) -> Vec<u8> {
        self.tls
            .as_ref()
            .map(|(signer, _)| signer.certificate().to_vec())
            .unwrap_or_default()
    }

    /// The signature of `message` with this site's certificate key (empty
    /// without TLS).
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        match &self.tls {
            Some((signer, _)) => signer.sign(message).map_err(|e| e.to_string()),
            None => Ok(Vec::new()),
        }
    }

    /// Checks that `certificate` is a valid, unrevoked certificate of the
    /// federation naming `site`, and that it signed `message`. Without TLS
    /// there is nothing to check against.
    pub(crate) fn check_signed(
        &self,
        site: &str,
        certificate: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), String> {
        let Some((_, files)) = &self.tls else {
            return Ok(());
        };
        if certificate.is_empty() || signature.is_empty() {
            return Err(format!(
                "site '{site}''s message is unsigned, and this site runs with mutual TLS"
            ));
        }
        let checker = tessera_tls::SiteCertificates::load(files).map_err(|e| e.to_string())?;
        checker.check(certificate, site)?;
        tessera_tls::verify_signature(certificate, message, signature).map_err(|e| {
            format!("site '{site}''s message does not verify ({e}): altered on the way")
        })
    }
}

/// A round's signer and the checker of the other participants' signatures.
pub(super) type RoundIdentity<'a> = (
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Whoever runs the federation CA can mint a certificate for any name:
    /// where the plan names its sites, a cohort holding a valid certificate
    /// of another name is refused, naming it; the plan's sites pass.
    #[test]
    fn a_cohort_site_outside_the_plan_is_refused_even_with_a_valid_certificate() {
        let dir = std::env::temp_dir().join(format!("tessera-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut ca = tessera_tls::CaDir::init(&dir, "test", 30).unwrap();
        let mut certs = Vec::new();
        for site in ["a", "b", "sybil"] {
            let folder = ca.issue_site(site, 30).unwrap();
            let pem = std::fs::read(folder.join("cert.pem")).unwrap();
            let der = rustls_pemfile_der(&pem);
            certs.push(der);
        }
        let files = tessera_tls::TlsFiles::in_dir(&ca.site_dir("a"));
        let me = SecureIdentity::load(Some(&files)).unwrap();
        let plan_sites = vec!["a".to_string(), "b".to_string()];
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(
            me.for_round(&[0, 1], &names(&["a", "b"]), &certs[..2], &plan_sites)
                .is_ok()
        );
        let e = me
            .for_round(
                &[0, 1, 2],
                &names(&["a", "b", "sybil"]),
                &certs,
                &plan_sites,
            )
            .err()
            .unwrap();
        assert!(e.contains("'sybil'") && e.contains("plan's sites"), "{e}");
        // A plan that does not name its sites checks the CA only.
        assert!(
            me.for_round(&[0, 1, 2], &names(&["a", "b", "sybil"]), &certs, &[])
                .is_ok()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The DER of the first certificate of a PEM file.
    fn rustls_pemfile_der(pem: &[u8]) -> Vec<u8> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(pem)
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }
}
