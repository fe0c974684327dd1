//! Accepting mutual-TLS connections for a tonic server.

use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::ServerTls;

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
