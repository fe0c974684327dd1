//! Accepting mutual-TLS connections for a tonic server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

use crate::config::{client_verifier, modified};
use crate::{ServerTls, TlsFiles};

/// The connections of `listener` that completed a mutual-TLS handshake with
/// `tls`'s current files. A failed handshake (unknown, expired or revoked
/// certificate, no certificate) goes to `refused` with the peer and the
/// reason; the connection is dropped and the rest go on.
pub fn incoming(
    listener: tokio::net::TcpListener,
    mut tls: ServerTls,
    refused: impl Fn(String, String) + Send + Sync + Clone + 'static,
) -> impl tokio_stream::Stream<
    Item = Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let config = match tls.current() {
                Ok(config) => config,
                Err(e) => {
                    refused(
                        peer.to_string(),
                        format!("cannot load the TLS files; refusing connections: {e}"),
                    );
                    continue;
                }
            };
            let tx = tx.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        refused(
                            peer.to_string(),
                            format!("TLS handshake from {peer} refused: {e}"),
                        );
                    }
                    Err(_) => refused(
                        peer.to_string(),
                        format!("TLS handshake from {peer} timed out"),
                    ),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Checks that a caller may speak for `claimed`: with mutual TLS its
/// verified client certificate (`certs`) must name that site; without TLS
/// (the explicit insecure mode, `None`) anyone may.
pub fn check_site(certs: Option<&[CertificateDer<'_>]>, claimed: &str) -> Result<(), String> {
    let Some(certs) = certs else {
        return Ok(());
    };
    match certs.first() {
        Some(cert) if crate::certificate_names_site(cert, claimed) => Ok(()),
        _ => Err(format!(
            "the client certificate does not name site '{claimed}'"
        )),
    }
}

/// Who may make a call: with mutual TLS, the caller's certificate must name
/// the site it claims ([`check_site`]) and must still be valid under the
/// folder's CA and revocation list as they are now (read again when
/// `crl.pem` changes). The handshake checked the certificate when the
/// connection opened; this checks it again at every call, so a revocation
/// (or an expiry) reaches connections that were already open.
pub struct Callers {
    files: Option<TlsFiles>,
    verifier: Mutex<Option<Verifier>>,
}

/// A verifier, and when the revocation list it was built with was modified.
type Verifier = (Option<SystemTime>, Arc<dyn ClientCertVerifier>);

impl Callers {
    /// Anyone may speak for any site (the explicit insecure mode).
    pub fn insecure() -> Self {
        Self {
            files: None,
            verifier: Mutex::new(None),
        }
    }

    /// Callers checked against `files` (the server's own folder).
    pub fn new(files: TlsFiles) -> Self {
        Self {
            files: Some(files),
            verifier: Mutex::new(None),
        }
    }

    /// Whether the caller that presented `certs` may speak for `claimed`;
    /// the reason when it may not.
    pub fn check(&self, certs: Option<&[CertificateDer<'_>]>, claimed: &str) -> Result<(), String> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        let Some((end_entity, intermediates)) = certs.and_then(|c| c.split_first()) else {
            return Err("the caller presented no client certificate".into());
        };
        check_site(certs, claimed)?;
        let verifier = {
            let mut current = self
                .verifier
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = modified(&files.crl);
            match &*current {
                Some((at, verifier)) if *at == now => Arc::clone(verifier),
                _ => {
                    let verifier = client_verifier(files)
                        .map_err(|e| format!("cannot check the caller's certificate: {e}"))?;
                    *current = Some((now, Arc::clone(&verifier)));
                    verifier
                }
            }
        };
        verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| format!("the client certificate is no longer accepted: {e}"))
    }
}
