//! Accepting mutual-TLS connections for a tonic server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::DigitallySignedStruct;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

use crate::config::{client_verifier, modified};
use crate::failure::{certificate_subject, handshake_failure};
use crate::{ServerTls, TlsFiles};

/// A handshake a server refused: who tried, what it presented, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRefusal {
    /// The peer's address and port.
    pub peer: String,
    /// Who the certificate the peer presented names
    /// ([`certificate_subject`](crate::certificate_subject)), when it
    /// presented one that could be read.
    pub subject: Option<String>,
    /// A short label of the cause, for metrics: one of
    /// [`Rejection::label`](crate::Rejection::label)'s, or `timeout`,
    /// `files` (the server's own TLS files cannot be loaded) or `other`.
    pub reason: &'static str,
    /// The whole reason, on one line, naming the peer and its certificate.
    pub message: String,
}

impl HandshakeRefusal {
    /// Who to audit the refusal under: the certificate's subject when one
    /// was presented, else the peer's address.
    pub fn who(&self) -> &str {
        self.subject.as_deref().unwrap_or(&self.peer)
    }
}

tokio::task_local! {
    /// The end-entity certificate the client presented in the handshake
    /// being accepted on this task (set by [`Recording`]).
    static PRESENTED: Arc<Mutex<Option<CertificateDer<'static>>>>;
}

/// A client verifier that notes the certificate it is asked about in the
/// accepting task's [`PRESENTED`], so that a refused handshake can name it.
#[derive(Debug)]
pub(crate) struct Recording(pub(crate) Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Recording {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let _ = PRESENTED.try_with(|slot| {
            *slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(end_entity.clone().into_owned());
        });
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The connections of `listener` without TLS (`--insecure`), each with
/// Nagle's algorithm off (`TCP_NODELAY`, as tonic's own listener sets it):
/// a small reply written in parts would otherwise wait for the peer's
/// delayed acknowledgement, about 40 ms a reply.
pub fn plain_incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(tcp) = &accepted {
            let _ = tcp.set_nodelay(true);
        }
        accepted
    })
}

/// The connections of `listener` that completed a mutual-TLS handshake with
/// `tls`'s current files. A failed handshake (unknown, expired or revoked
/// certificate, no certificate, plain text) goes to `refused`, naming the
/// peer, the certificate it presented and the cause; the connection is
/// dropped and the rest go on.
pub fn incoming(
    listener: tokio::net::TcpListener,
    mut tls: ServerTls,
    refused: impl Fn(HandshakeRefusal) + Send + Sync + Clone + 'static,
) -> impl tokio_stream::Stream<
    Item = Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            // Replies go out at once (Nagle's wait for the peer's delayed
            // acknowledgement cost a small reply about 40 ms).
            let _ = tcp.set_nodelay(true);
            let config = match tls.current() {
                Ok(config) => config,
                Err(e) => {
                    refused(HandshakeRefusal {
                        peer: peer.to_string(),
                        subject: None,
                        reason: "files",
                        message: format!("cannot load the TLS files; refusing connections: {e}"),
                    });
                    continue;
                }
            };
            let tx = tx.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let presented = Arc::new(Mutex::new(None));
                let accepting = tokio::time::timeout(
                    Duration::from_secs(10),
                    PRESENTED.scope(Arc::clone(&presented), acceptor.accept(tcp)),
                );
                let (reason, why) = match accepting.await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                        return;
                    }
                    Ok(Err(e)) => {
                        let found = handshake_failure(&e);
                        let reason = found.as_ref().map_or("other", |f| f.rejection.label());
                        let why = match found {
                            Some(f) if f.rejection == crate::Rejection::NotTls => {
                                format!("it does not speak TLS (plain text?): {e}")
                            }
                            _ => e.to_string(),
                        };
                        (reason, why)
                    }
                    Err(_) => ("timeout", "timed out".to_string()),
                };
                let subject = presented
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .as_ref()
                    .and_then(certificate_subject);
                let from = match &subject {
                    Some(subject) => format!("{peer} (a certificate naming '{subject}')"),
                    None => peer.to_string(),
                };
                refused(HandshakeRefusal {
                    peer: peer.to_string(),
                    subject,
                    reason,
                    message: format!("TLS handshake from {from} refused: {why}"),
                });
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

    /// Whether this is the explicit insecure mode (no caller is checked).
    pub fn is_insecure(&self) -> bool {
        self.files.is_none()
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
