//! TLS configuration from a certificate folder, and identity checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
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
    /// `crl.pem`: revoked certificates (may be absent: then none is checked).
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

pub(crate) fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The verifier of client certificates: the folder's CA, and its revocation list when it has one.
pub(crate) fn client_verifier(
    files: &TlsFiles,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiClientVerifier::builder_with_provider(roots(files)?, provider)
        .with_crls(crls(files)?)
        .build()
        .map_err(|e| TlsError::Certificate(e.to_string()))
}

fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(crate::accept::Recording(client_verifier(files)?));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(files)?, private_key(files)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client's TLS from `files`: its certificate toward the server, the
/// federation CA as the only root, and the revocation list when the folder
/// holds one (a revoked server certificate is refused at the handshake).
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = server_verifier(files)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain(files)?, private_key(files)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The verifier of server certificates: the folder's CA, and its revocation list when it has one.
pub(crate) fn server_verifier(files: &TlsFiles) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiServerVerifier::builder_with_provider(roots(files)?, provider)
        .with_crls(crls(files)?)
        .build()
        .map_err(|e| TlsError::Certificate(e.to_string()))
}

fn chain(files: &TlsFiles) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certificates(&read(&files.cert)?, &files.cert)
}

fn private_key(files: &TlsFiles) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(read(&files.key)?.as_bytes())
        .map_err(|e| TlsError::Certificate(format!("{}: {e}", files.key.display())))
}

fn roots(files: &TlsFiles) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in certificates(&read(&files.ca)?, &files.ca)? {
        roots
            .add(ca)
            .map_err(|e| TlsError::Certificate(format!("{}: {e}", files.ca.display())))?;
    }
    Ok(Arc::new(roots))
}

/// The PEM text of a folder for TLS toward a server outside the federation
/// (a trace collector): the roots that verify the server and, where the
/// server asks for a client certificate, the certificate and key to present.
#[derive(Debug, Clone)]
pub struct OutsidePems {
    /// `ca.pem`: the roots (one or more certificates) to verify the server by.
    pub ca: String,
    /// `cert.pem` and `key.pem`, when the folder holds both.
    pub identity: Option<(String, String)>,
}

/// `dir`'s `ca.pem` and, when present, `cert.pem` with `key.pem`, each
/// parsed here so that a missing or wrong file is named before any
/// connection; one of `cert.pem` and `key.pem` without the other is refused.
pub fn outside_pems(dir: &Path) -> Result<OutsidePems, TlsError> {
    let files = TlsFiles::in_dir(dir);
    let ca = read(&files.ca)?;
    // A system bundle may hold a certificate the verifier cannot take:
    // skipped, as the connection's own loading skips it, with one left.
    let (usable, _) =
        rustls::RootCertStore::empty().add_parsable_certificates(certificates(&ca, &files.ca)?);
    if usable == 0 {
        return Err(TlsError::Certificate(format!(
            "{}: no certificate usable as a root",
            files.ca.display()
        )));
    }
    let identity = match (files.cert.exists(), files.key.exists()) {
        (false, false) => None,
        (true, true) => {
            chain(&files)?;
            private_key(&files)?;
            Some((read(&files.cert)?, read(&files.key)?))
        }
        (has_cert, _) => {
            let (present, absent) = if has_cert {
                ("cert.pem", "key.pem")
            } else {
                ("key.pem", "cert.pem")
            };
            return Err(TlsError::Invalid(format!(
                "{}: {present} without {absent} (a client certificate needs both; \
                 leave both out where the server asks for none)",
                dir.display()
            )));
        }
    };
    Ok(OutsidePems { ca, identity })
}

/// The folder's revocation list; none when it has no `crl.pem`.
fn crls(files: &TlsFiles) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    if !files.crl.exists() {
        return Ok(Vec::new());
    }
    let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(read(&files.crl)?.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate(format!("{}: {e}", files.crl.display())))?;
    if crls.is_empty() {
        return Err(TlsError::Certificate(format!(
            "{}: no revocation list",
            files.crl.display()
        )));
    }
    Ok(crls)
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

    #[test]
    fn a_client_checks_the_revocation_list_of_its_folder_when_there_is_one() {
        let dir = std::env::temp_dir().join(format!("tessera-tls-client-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut ca = crate::CaDir::init(&dir, "test", 30).unwrap();
        let files = TlsFiles::in_dir(&ca.issue_site("va", 30).unwrap());
        assert!(
            files.crl.exists(),
            "issuing writes the list into the site's folder"
        );
        client_config(&files).unwrap();
        std::fs::write(&files.crl, "not a list").unwrap();
        let err = client_config(&files).unwrap_err().to_string();
        assert!(err.contains("crl.pem"), "the file is named: {err}");
        std::fs::remove_file(&files.crl).unwrap();
        client_config(&files).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
