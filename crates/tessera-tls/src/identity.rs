//! A site's identity beyond the TLS handshake: it signs protocol messages
//! with its certificate's key ([`SiteSigner`]), and checks other sites'
//! signatures against their certificates ([`SiteCertificates`]), each
//! certificate verified against the federation CA and revocation list of
//! the checking site's own folder, so that a relaying coordinator can
//! neither forge a site's message nor pass off its own key as a site's.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{SignatureScheme, sign::SigningKey};

use crate::config::{certificate_names_site, client_verifier};
use crate::{TlsError, TlsFiles, read};

/// Signs with the key of a site's certificate (ECDSA P-256 with SHA-256, as
/// `tessera ca` issues them).
pub struct SiteSigner {
    key: Arc<dyn SigningKey>,
    /// The site's certificate, in DER: what others check the signatures with.
    certificate: Vec<u8>,
}

impl std::fmt::Debug for SiteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteSigner").finish_non_exhaustive()
    }
}

impl SiteSigner {
    /// The signer of the site whose folder holds `files`.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let pem = read(&files.key)?;
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| TlsError::Certificate(format!("{}: {e}", files.key.display())))?;
        let key = rustls::crypto::ring::sign::any_ecdsa_type(&der)
            .map_err(|e| TlsError::Certificate(format!("{}: {e}", files.key.display())))?;
        let cert_pem = read(&files.cert)?;
        let certificate = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .ok_or_else(|| {
                TlsError::Certificate(format!("{}: no certificate", files.cert.display()))
            })?
            .map_err(|e| TlsError::Certificate(format!("{}: {e}", files.cert.display())))?
            .to_vec();
        Ok(Self { key, certificate })
    }

    /// The site's own certificate (DER).
    pub fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    /// The signature of `message` (ASN.1 DER ECDSA P-256 SHA-256).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, TlsError> {
        let signer = self
            .key
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .ok_or_else(|| {
                TlsError::Certificate("the site's key is not an ECDSA P-256 key".into())
            })?;
        signer.sign(message).map_err(TlsError::from)
    }
}

/// Checks other sites' certificates and signatures against the federation
/// CA and revocation list of one folder.
pub struct SiteCertificates {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for SiteCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteCertificates").finish_non_exhaustive()
    }
}

impl SiteCertificates {
    /// A checker trusting the CA and revocation list in `files`.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            verifier: client_verifier(files)?,
        })
    }

    /// Whether `certificate` (DER) is a valid, unrevoked site certificate
    /// of the federation that names `site`; the reason if not.
    pub fn check(&self, certificate: &[u8], site: &str) -> Result<(), String> {
        let der = CertificateDer::from(certificate);
        self.verifier
            .verify_client_cert(&der, &[], UnixTime::now())
            .map_err(|e| format!("site '{site}''s certificate is not accepted: {e}"))?;
        if !certificate_names_site(&der, site) {
            return Err(format!(
                "the certificate given for site '{site}' names another site"
            ));
        }
        Ok(())
    }
}

/// Whether `signature` is the key of `certificate` (DER, already checked
/// with [`SiteCertificates::check`]) signing `message`.
pub fn verify_signature(
    certificate: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let der = CertificateDer::from(certificate);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| format!("certificate: {e}"))?;
    cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, message, signature)
        .map_err(|e| format!("signature: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::CaDir;

    /// A site signs; another site checks the certificate against the CA and
    /// the signature against it. Another site's certificate, a changed
    /// message, another CA's certificate and a revoked certificate are all
    /// refused.
    #[test]
    fn a_site_signature_verifies_only_with_its_own_valid_certificate() {
        let dir = std::env::temp_dir().join(format!("tessera-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut ca = CaDir::init(&dir.join("ca"), "test", 30).unwrap();
        let a = TlsFiles::in_dir(&ca.issue_site("a", 30).unwrap());
        let b = TlsFiles::in_dir(&ca.issue_site("b", 30).unwrap());
        let mut other = CaDir::init(&dir.join("other"), "other", 30).unwrap();
        let stranger = TlsFiles::in_dir(&other.issue_site("a", 30).unwrap());

        let signer = SiteSigner::load(&a).unwrap();
        let signature = signer.sign(b"round 3 keys").unwrap();
        let checker = SiteCertificates::load(&b).unwrap();
        let a_cert = signer.certificate().to_vec();
        checker.check(&a_cert, "a").unwrap();
        verify_signature(&a_cert, b"round 3 keys", &signature).unwrap();
        assert!(verify_signature(&a_cert, b"round 4 keys", &signature).is_err());
        let e = checker.check(&a_cert, "b").unwrap_err();
        assert!(e.contains("names another site"), "{e}");
        let b_cert = SiteSigner::load(&b).unwrap().certificate().to_vec();
        assert!(verify_signature(&b_cert, b"round 3 keys", &signature).is_err());
        let foreign = SiteSigner::load(&stranger).unwrap().certificate().to_vec();
        let e = checker.check(&foreign, "a").unwrap_err();
        assert!(e.contains("not accepted"), "{e}");

        ca.revoke("a").unwrap();
        let checker = SiteCertificates::load(&b).unwrap();
        let e = checker.check(&a_cert, "a").unwrap_err();
        assert!(e.contains("Revoked"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
