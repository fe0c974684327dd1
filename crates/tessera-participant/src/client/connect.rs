//! Reaching a federation: its endpoint (with mutual TLS), joining it, still trusting it.

use std::time::Duration;

use tessera_proto::pb;
use tessera_proto::pb::federation_client::FederationClient;
use tessera_proto::{CAPABILITIES, MAJOR, MINOR};
use tonic::transport::{Channel, Endpoint};

use super::Failure;
use crate::ParticipantError;
use crate::cause::Cause;

/// Connects to the federation at `url` (through `endpoint`) and joins it as
/// `site`, with this process's `session` when it has one: the client and
/// the federation's welcome. A failure retrying cannot fix (a certificate,
/// TLS against plain text, another major version) stops, named
/// ([`crate::cause`]); a network failure is retried.
pub async fn join(
    endpoint: &Remote,
    url: &str,
    site: &str,
    session: Option<&str>,
) -> Result<(FederationClient<Channel>, pb::Welcome), Failure> {
    join_with(endpoint, url, site, session, false, Vec::new()).await
}

/// [`join`], saying whether the site tries candidate models first
/// (`canary`) and which registered versions it serves (`serving`).
pub async fn join_with(
    endpoint: &Remote,
    url: &str,
    site: &str,
    session: Option<&str>,
    canary: bool,
    serving: Vec<pb::ServedModel>,
) -> Result<(FederationClient<Channel>, pb::Welcome), Failure> {
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => {
            if let Some(stopped) = endpoint.stop(&e, url) {
                return Err(stopped);
            }
            if let Some(stopped) = endpoint.probe(url).await {
                return Err(stopped);
            }
            return Err(Failure::Retry(format!(
                "cannot connect to {url}: {}",
                chain(&e)
            )));
        }
    };
    let mut client = FederationClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let mut request = tonic::Request::new(pb::Hello {
        major: MAJOR,
        minor: MINOR,
        capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        site: site.to_string(),
        canary,
        serving,
    });
    if let Some(value) = session.and_then(|s| s.parse().ok()) {
        request
            .metadata_mut()
            .insert(tessera_proto::SESSION_HEADER, value);
    }
    // The join is a trace of its own; the coordinator's span links to it.
    let span = tracing::info_span!("join", site);
    tessera_proto::trace::inject(&span, request.metadata_mut());
    let welcome = match tracing::Instrument::instrument(client.join(request), span).await {
        Ok(welcome) => welcome.into_inner(),
        // A TLS 1.3 server refuses the client's certificate after the
        // client's side of the handshake: it arrives with the first call,
        // or, when HTTP/2 lost it as the connection closed, a new
        // connection that only listens hears it.
        Err(status) => {
            if let Some(stopped) = endpoint.stop(&status, url) {
                return Err(stopped);
            }
            let failure = join_failure(&status, url);
            if matches!(failure, Failure::Retry(_))
                && std::error::Error::source(&status).is_some()
                && let Some(stopped) = endpoint.probe(url).await
            {
                return Err(stopped);
            }
            return Err(failure);
        }
    };
    if welcome.major != MAJOR {
        return Err(stop(Cause::Version(format!(
            "{url} speaks protocol {}.{}, this build {MAJOR}.{MINOR}",
            welcome.major, welcome.minor
        ))));
    }
    Ok((client, welcome))
}

/// A refused join's failure: another protocol version stops; other
/// refusals stop, a transport error is retried with what it wraps.
fn join_failure(status: &tonic::Status, url: &str) -> Failure {
    if status.code() == tonic::Code::InvalidArgument
        && status.message().starts_with("incompatible protocol")
    {
        return stop(Cause::Version(format!("{url}: {}", status.message())));
    }
    match Failure::from(status.clone()) {
        Failure::Retry(_) => {
            let mut reason = format!("{}: {}", status.code(), status.message());
            if let Some(source) = std::error::Error::source(status) {
                reason.push_str(": ");
                reason.push_str(&chain(source));
            }
            Failure::Retry(reason)
        }
        refused => refused,
    }
}

fn stop(cause: Cause) -> Failure {
    Failure::Fatal(ParticipantError::Stop(cause))
}

/// A server to connect to: its endpoint, and with mutual TLS the connector
/// that does the handshake (tonic's own TLS cannot check a revocation list).
#[derive(Clone)]
pub struct Remote {
    endpoint: Endpoint,
    tls: Option<tessera_tls::Connector>,
}

impl Remote {
    /// A new connection.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match &self.tls {
            Some(connector) => {
                self.endpoint
                    .connect_with_connector(connector.clone())
                    .await
            }
            None => self.endpoint.connect().await,
        }
    }

    /// The failure retrying cannot fix in `error` (a connection's, or the
    /// first call's), named for the server at `url`, if there is one.
    fn stop(&self, error: &(dyn std::error::Error + 'static), url: &str) -> Option<Failure> {
        let server = format!("the coordinator at {url}");
        crate::cause::classify_error(error, &server, self.tls.is_some()).map(stop)
    }

    /// What a new connection that only listens hears, named for the server
    /// at `url`: with TLS, a refusal of this client's certificate that an
    /// HTTP/2 connection lost; in plain text, a TLS alert (the server
    /// speaks TLS), which HTTP/2 loses when the server resets a connection
    /// whose bytes it left unread.
    async fn probe(&self, url: &str) -> Option<Failure> {
        let Some(connector) = self.tls.as_ref() else {
            return plain_probe(self.endpoint.uri(), Duration::from_secs(1))
                .await
                .then(|| {
                    stop(Cause::PlainTextToTls {
                        server: format!("the coordinator at {url}"),
                    })
                });
        };
        let error = connector
            .probe(self.endpoint.uri(), Duration::from_secs(1))
            .await
            .err()?;
        self.stop(&error, url)
    }

    /// Whether the server's certificate, as presented when the connection
    /// opened, is still accepted under the TLS folder as it is now (a
    /// revocation since); the reason when it is not. Always without TLS.
    pub fn check_server(&self) -> Result<(), String> {
        match &self.tls {
            Some(connector) => connector.check_server().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// Whether the server at `uri` answers plain text with a TLS record: sends
/// one record header's worth of HTTP/2's preface (five bytes, all of which
/// a TLS server reads, so it closes without a reset) and reads what comes
/// back within `wait`. A TLS server answers an alert (content type 21,
/// version 3.x); an HTTP/2 server waits for the rest of the preface.
async fn plain_probe(uri: &tonic::codegen::http::Uri, wait: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let heard = async {
        let mut tcp = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        tcp.write_all(b"PRI *").await.ok()?;
        let mut head = [0u8; 2];
        tcp.read_exact(&mut head).await.ok()?;
        Some(head)
    };
    matches!(
        tokio::time::timeout(wait, heard).await,
        Ok(Some([21 | 22, 3]))
    )
}

/// Stops (a refusal) when `remote`'s certificate was revoked since the
/// connection opened: nothing more goes to a server no longer trusted.
pub fn still_trusted(remote: &Remote, what: &str) -> Result<(), Failure> {
    remote.check_server().map_err(|reason| {
        Failure::Fatal(ParticipantError::Refused(format!(
            "{what}'s certificate is no longer accepted: {reason}"
        )))
    })
}

/// The server at `url`, with mutual TLS from `tls` (the server's name in its
/// certificate: `domain`, else the URL's host; with TLS the URL starts with
/// `https://`). The folder's `crl.pem`, when there is one, is read at every
/// connection: a revoked server certificate fails the handshake.
pub fn endpoint(
    url: &str,
    tls: Option<&tessera_tls::TlsFiles>,
    domain: Option<&str>,
) -> Result<Remote, ParticipantError> {
    let parse = |url: &str| {
        Endpoint::from_shared(url.to_string())
            .map_err(|e| ParticipantError::Config(format!("URL '{url}': {e}")))
    };
    let mut endpoint = parse(url)?;
    let connector = match tls {
        None => None,
        Some(files) => {
            let Some(rest) = url.strip_prefix("https://") else {
                return Err(ParticipantError::Config(format!(
                    "with mutual TLS the URL starts with https://, got '{url}'"
                )));
            };
            let domain = match domain {
                Some(d) => d.to_string(),
                None => endpoint.uri().host().unwrap_or("localhost").to_string(),
            };
            let domain = domain.trim_start_matches('[').trim_end_matches(']');
            // The connector does the TLS: tonic sees a plain stream.
            endpoint = parse(&format!("http://{rest}"))?;
            Some(
                tessera_tls::Connector::new(files.clone(), domain)
                    .map_err(|e| ParticipantError::Config(format!("TLS: {e}")))?,
            )
        }
    };
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(Remote {
        endpoint,
        tls: connector,
    })
}

/// An error with its causes, on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn uri(port: u16) -> tonic::codegen::http::Uri {
        format!("http://127.0.0.1:{port}").parse().unwrap()
    }

    /// A coordinator's real TLS listener answers the probe's plain text
    /// with an alert, every time (the race an HTTP/2 connection loses,
    /// the server resetting it with bytes unread, cannot happen here).
    #[tokio::test]
    async fn a_tls_server_is_heard_by_the_plain_probe() {
        let dir = std::env::temp_dir().join(format!("tessera-plain-probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut ca = tessera_tls::CaDir::init(&dir, "probe", 2).unwrap();
        let coordinator = ca.issue_coordinator(&["127.0.0.1".into()], 2).unwrap();
        let tls =
            tessera_tls::ServerTls::load(tessera_tls::TlsFiles::in_dir(&coordinator)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _connections = tessera_tls::incoming(listener, tls, |_| {});
        for _ in 0..20 {
            assert!(plain_probe(&uri(port), Duration::from_secs(5)).await);
        }
        let remote = endpoint(&format!("http://127.0.0.1:{port}"), None, None).unwrap();
        let failure = remote.probe("X").await;
        assert!(
            matches!(
                &failure,
                Some(Failure::Fatal(ParticipantError::Stop(
                    Cause::PlainTextToTls { .. }
                )))
            ),
            "{failure:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A server that speaks no TLS (one that waits for the rest of the
    /// preface, one that answers HTTP/2 bytes, one that closes), and no
    /// server at all, are not taken for TLS: the site retries.
    #[tokio::test]
    async fn what_is_not_tls_is_not_taken_for_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for answer in [
            None,
            Some(&[0u8, 0, 6, 4, 0, 0, 0, 0, 0][..]),
            Some(&[][..]),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = tokio::spawn(async move {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut preface = [0u8; 5];
                tcp.read_exact(&mut preface).await.unwrap();
                match answer {
                    Some(bytes) => tcp.write_all(bytes).await.unwrap(),
                    None => tokio::time::sleep(Duration::from_secs(2)).await,
                }
            });
            assert!(!plain_probe(&uri(port), Duration::from_millis(300)).await);
            server.abort();
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        assert!(!plain_probe(&uri(port), Duration::from_millis(300)).await);
    }
}
