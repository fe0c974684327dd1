//! Outgoing mutual-TLS connections for gRPC clients (participants,
//! aggregators toward their parent, gossip peers toward their neighbours).
//!
//! tonic's own client TLS cannot check a revocation list, so clients connect
//! through [`Connector`]: TCP, then rustls with [`client_config`], read again
//! from the folder at every connection so that a new `crl.pem` counts from
//! the next connection on.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{client_config, server_verifier};
use crate::{TlsError, TlsFiles};

/// Connects to a server whose certificate must name `server_name` and chain
/// to the federation CA in `files`, and must not be revoked by the folder's
/// `crl.pem`; presents the folder's certificate. For
/// `tonic::transport::Endpoint::connect_with_connector` (with an `http://`
/// URI: the connector does the TLS).
#[derive(Clone)]
pub struct Connector {
    files: TlsFiles,
    server_name: ServerName<'static>,
    /// The chain the server presented at the last handshake.
    seen: Arc<Mutex<Option<Vec<CertificateDer<'static>>>>>,
}

impl Connector {
    /// A connector for `server_name`; the files are checked now, and read
    /// again at every connection.
    pub fn new(files: TlsFiles, server_name: &str) -> Result<Self, TlsError> {
        client_config(&files)?;
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| TlsError::Invalid(format!("'{server_name}' is not a server name: {e}")))?;
        Ok(Self {
            files,
            server_name,
            seen: Arc::default(),
        })
    }

    /// Checks the certificate the server presented at the last handshake
    /// against the folder's CA and revocation list as they are now: a
    /// connection opened before a revocation stays open, and this tells
    /// the caller not to trust what comes over it. `Ok` before any connection.
    pub fn check_server(&self) -> Result<(), TlsError> {
        let chain = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some((end_entity, intermediates)) = chain.as_deref().and_then(|c| c.split_first())
        else {
            return Ok(());
        };
        server_verifier(&self.files)?
            .verify_server_cert(
                end_entity,
                intermediates,
                &self.server_name,
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
            .map_err(TlsError::from)
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<TlsStream<TcpStream>>, TlsError>> + Send>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = TlsError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TlsError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Connecting {
        let (files, server_name, seen) = (
            self.files.clone(),
            self.server_name.clone(),
            Arc::clone(&self.seen),
        );
        Box::pin(async move {
            open(&files, server_name, &seen, &uri)
                .await
                .map(TokioIo::new)
        })
    }
}

impl Connector {
    /// Opens a connection to `uri` and waits up to `wait` for the server's
    /// first words: a TLS 1.3 server refuses a client's certificate after
    /// the client's side of the handshake is done, with an alert that an
    /// HTTP/2 connection may lose when it closes. Its error names the
    /// refusal; `Ok` when the server said nothing against this client.
    pub async fn probe(&self, uri: &http::Uri, wait: Duration) -> Result<(), TlsError> {
        use tokio::io::AsyncReadExt;
        let mut tls = open(&self.files, self.server_name.clone(), &self.seen, uri).await?;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(wait, tls.read(&mut byte)).await {
            Ok(Err(source)) => Err(TlsError::Io {
                path: uri.to_string(),
                source,
            }),
            _ => Ok(()),
        }
    }
}

/// TCP, then the TLS handshake with the folder's files as they are now;
/// notes the chain the server presented in `seen`.
async fn open(
    files: &TlsFiles,
    server_name: ServerName<'static>,
    seen: &Mutex<Option<Vec<CertificateDer<'static>>>>,
    uri: &http::Uri,
) -> Result<TlsStream<TcpStream>, TlsError> {
    let host = uri
        .host()
        .ok_or_else(|| TlsError::Invalid(format!("'{uri}' names no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let config = client_config(files)?;
    let io = |source| TlsError::Io {
        path: uri.to_string(),
        source,
    };
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(io)?;
    tcp.set_nodelay(true).map_err(io)?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(io)?;
    if let Some(chain) = tls.get_ref().1.peer_certificates() {
        *seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(chain.iter().map(|c| c.clone().into_owned()).collect());
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;
    use tower_service::Service;

    use super::*;
    use crate::{CaDir, ServerTls, site_dns_name};

    /// A connection made, then the server's certificate revoked: the
    /// connection is not touched, and `check_server` says it is revoked.
    #[tokio::test]
    async fn a_server_revoked_after_the_handshake_is_no_longer_accepted() {
        let dir = std::env::temp_dir().join(format!("tessera-connect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut ca = CaDir::init(&dir, "test", 30).unwrap();
        let client = TlsFiles::in_dir(&ca.issue_site("a", 30).unwrap());
        let server = TlsFiles::in_dir(&ca.issue_site("b", 30).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut incoming = Box::pin(crate::incoming(
            listener,
            ServerTls::load(server).unwrap(),
            |_| {},
        ));
        let mut connector = Connector::new(client, &site_dns_name("b").unwrap()).unwrap();
        connector.check_server().unwrap();
        let uri: http::Uri = format!("http://{address}").parse().unwrap();
        let (connected, accepted) = tokio::join!(connector.call(uri), incoming.next());
        connected.unwrap();
        let accepted = accepted.unwrap().unwrap();
        // Replies go out without Nagle's wait.
        assert!(accepted.get_ref().0.nodelay().unwrap());
        connector.check_server().unwrap();
        ca.revoke("b").unwrap();
        let err = connector.check_server().unwrap_err().to_string();
        assert!(err.contains("Revoked"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Without TLS too, an accepted connection sends without Nagle's wait
    /// (a small reply written in parts would wait for the peer's delayed
    /// acknowledgement).
    #[tokio::test]
    async fn accepted_connections_send_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut incoming = Box::pin(crate::plain_incoming(listener));
        let (connected, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(address), incoming.next());
        connected.unwrap();
        assert!(accepted.unwrap().unwrap().nodelay().unwrap());
    }
}
