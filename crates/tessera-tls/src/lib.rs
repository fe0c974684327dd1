//! The federation's certificate authority and mutual TLS.
//!
//! [`CaDir`] manages a CA in a folder: `init`, `issue` (a site's client
//! certificate, the coordinator's or an aggregator's server certificate;
//! a live certificate of the same kind and name is replaced only when
//! asked), `revoke` (a
//! certificate revocation list signed by the CA) and `rotate` (a new CA key
//! and every live certificate re-issued under it). A participant's identity
//! is its certificate: the site name is encoded in the certificate's subject
//! alternative name ([`site_dns_name`]) and checked with webpki on every call
//! ([`certificate_names_site`], [`check_site`]). Site certificates serve
//! both ways (client and server authentication), so that gossip peers can
//! verify each other by name; [`incoming`] accepts a server's mTLS connections
//! and [`Connector`] makes a client's. Both check the revocation list of the
//! party's folder when it has one (`revoke` copies it into every folder the
//! CA holds).
//!
//! [`SiteSigner`] and [`SiteCertificates`] let a site sign protocol
//! messages with its certificate key and check other sites' signatures
//! (secure aggregation's key advertisements and views).
//!
//! Key design decision: exactly one crypto provider, ring, everywhere
//! (certificate generation, TLS, verification).
//!
//! `ServerTls` requires client certificates and reloads the CRL when its
//! file changes. `Connector` checks the server's certificate against the
//! CRL of the client's folder, read at each connection, and
//! `Connector::check_server` re-checks the certificate a live connection was
//! opened with. `Callers` is a server's per-call check: `check_site` and the
//! certificate still valid under the current CRL. `incoming` reports failed
//! handshakes and drops them, naming the certificate presented (a verifier
//! that records it in a task-local of the accepting task). `failure`
//! classifies a handshake failure from any error chain (an alert received,
//! this end's own verification, plain text), for clients and servers alike. `SiteCertificates` checks a relayed
//! certificate against the site's own CA and CRL, then the signature.
//!
//! *Invariants:* ring is the only crypto provider in the build. A
//! revocation reaches open connections: servers check every call, clients
//! every task or fetched model; `CaDir` writes files by rename, so a
//! reloading server never reads half a `crl.pem`.
#![deny(missing_docs)]

mod accept;
mod ca;
mod config;
mod connect;
mod failure;
mod identity;

pub use accept::{Callers, HandshakeRefusal, check_site, incoming, plain_incoming};
pub use ca::{CaDir, CertStatus, Issuance, Issued, IssuedKind, utc};
pub use config::{
    OutsidePems, ServerTls, TlsFiles, certificate_names_site, client_config, outside_pems,
    site_dns_name,
};
pub use connect::Connector;
pub use failure::{Handshake, Rejection, certificate_subject, handshake_failure};
pub use identity::{SiteCertificates, SiteSigner, verify_signature};

use thiserror::Error;

/// What went wrong with certificates or their files.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The request makes no sense (unknown name, name in use, bad site name...).
    #[error("{0}")]
    Invalid(String),
}

impl From<rcgen::Error> for TlsError {
    fn from(e: rcgen::Error) -> Self {
        TlsError::Certificate(e.to_string())
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Certificate(e.to_string())
    }
}

pub(crate) fn read(path: &std::path::Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Writes `path` whole or not at all (a temporary file renamed over it), so
/// that a server reloading it (`crl.pem`) never reads half a file; `secret`
/// files are readable by their owner only, from the start.
pub(crate) fn write(path: &std::path::Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(name);
    let _ = std::fs::remove_file(&temporary);
    std::fs::write(&temporary, "").map_err(io)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    std::fs::write(&temporary, contents).map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)?;
    Ok(())
}
