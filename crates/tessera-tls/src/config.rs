//! TLS configuration from a certificate folder, and identity checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;

use crate::{TlsError, read};

/// The DNS name that stands for `site` in a certificate's subject alternative
/// names: `s-<hex of the name>.sites.tessera.invalid`, so that any site name
/// up to 29 bytes fits in one DNS label.
pub fn site_dns_name(site: &str) -> Result<String, TlsError> {
    if site.is_empty() || site.len() > 29 {
        return Err(TlsError::Invalid(format!(
            "site name '{site}' must be 1 to 29 bytes long to fit in a certificate"
        )));
    }
    let hex: String = site.bytes().map(|b| format!("{b:02x}")).collect();
    Ok(format!("s-{hex}.sites.tessera.invalid"))
}

/// Whether the (already verified) end-entity certificate `der` names `site`.
pub fn certificate_names_site(der: &CertificateDer<'_>, site: &str) -> bool {
    let Ok(name) = site_dns_name(site) else {
        return false;
    };
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    webpki::EndEntityCert::try_from(der)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&server_name).is_ok())
}

/// The files of one party's TLS folder (as `tessera ca issue` writes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `cert.pem`: this party's certificate.
    pub cert: PathBuf,
    /// `key.pem`: its private key.
    pub key: PathBuf,
    /// `ca.pem`: the federation CA to trust.
    pub ca: PathBuf,
    /// `crl.pem`: revoked certificates (coordinators only; may be absent).
    pub crl: PathBuf,
}

impl TlsFiles {
    /// The files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: dir.join("ca.pem"),
            crl: dir.join("crl.pem"),
        }
    }

    /// Reads `(cert, key, ca)` as PEM text, for clients.
    pub fn read_client(&self) -> Result<(String, String, String), TlsError> {
        Ok((read(&self.cert)?, read(&self.key)?, read(&self.ca)?))
    }
}

fn certificates(pem: &str, what: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate(format!("{}: {e}", what.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Certificate(format!(
            "{}: no certificate",
            what.display()
        )));
    }
    Ok(certs)
}

/// A coordinator's TLS: requires a client certificate from the federation CA,
/// checks the revocation list, and reloads the list when its file changes.
pub struct ServerTls {
    files: TlsFiles,
    crl_modified: Option<std::time::SystemTime>,
    config: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// Loads the folder's files.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let crl_modified = modified(&files.crl);
        let config = Arc::new(server_config(&files)?);
        Ok(Self {
            files,
            crl_modified,
            config,
        })
    }

    /// The configuration for the next connection, reloaded if the revocation list changed.
    pub fn current(&mut self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let now = modified(&self.files.crl);
        if now != self.crl_modified {
            self.config = Arc::new(server_config(&self.files)?);
            self.crl_modified = now;
        }
        Ok(Arc::clone(&self.config))
    }
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&read(&files.cert)?, &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(read(&files.key)?.as_bytes())
        .map_err(|e| TlsError::Certificate(format!("{}: {e}", files.key.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in certificates(&read(&files.ca)?, &files.ca)? {
        roots
            .add(ca)
            .map_err(|e| TlsError::Certificate(format!("{}: {e}", files.ca.display())))?;
    }
    let crls: Vec<CertificateRevocationListDer<'static>> = if files.crl.exists() {
        CertificateRevocationListDer::pem_slice_iter(read(&files.crl)?.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Certificate(format!("{}: {e}", files.crl.display())))?
    } else {
        Vec::new()
    };
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .with_crls(crls)
            .build()
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_names_become_dns_labels() {
        assert_eq!(site_dns_name("va").unwrap(), "s-7661.sites.tessera.invalid");
        assert!(site_dns_name("").is_err());
        assert!(site_dns_name(&"x".repeat(30)).is_err());
        assert!(ServerName::try_from(site_dns_name("Hôpital Nord 3").unwrap()).is_ok());
    }
}
