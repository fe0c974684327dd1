//! Outgoing mutual-TLS connections for gRPC clients (participants,
//! aggregators toward their parent, gossip peers toward their neighbours).
//!
//! tonic's own client TLS cannot check a revocation list, so clients connect
//! through [`Connector`]: TCP, then rustls with [`client_config`], read again
//! from the folder at every connection so that a new `crl.pem` counts from
//! the next connection on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::client_config;
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
}

impl Connector {
    /// A connector for `server_name`; the files are checked now, and read
    /// again at every connection.
    pub fn new(files: TlsFiles, server_name: &str) -> Result<Self, TlsError> {
        client_config(&files)?;
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| TlsError::Invalid(format!("'{server_name}' is not a server name: {e}")))?;
        Ok(Self { files, server_name })
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
        let files = self.files.clone();
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| TlsError::Invalid(format!("'{uri}' names no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let config = client_config(&files)?;
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
            Ok(TokioIo::new(tls))
        })
    }
}
