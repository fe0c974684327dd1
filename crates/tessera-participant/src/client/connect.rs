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
    let channel = endpoint.connect().await.map_err(|e| {
        endpoint
            .stop(&e, url)
            .unwrap_or_else(|| Failure::Retry(format!("cannot connect to {url}: {}", chain(&e))))
    })?;
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

    /// With TLS, what a new connection that only listens hears (a refusal
    /// of this client's certificate that an HTTP/2 connection lost), named
    /// for the server at `url`.
    async fn probe(&self, url: &str) -> Option<Failure> {
        let connector = self.tls.as_ref()?;
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
