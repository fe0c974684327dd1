//! Reaching a federation: its endpoint (with mutual TLS), joining it, still trusting it.

use std::time::Duration;

use tessera_proto::pb;
use tessera_proto::pb::federation_client::FederationClient;
use tessera_proto::{CAPABILITIES, MAJOR, MINOR};
use tonic::transport::{Channel, Endpoint};

use super::Failure;
use crate::ParticipantError;

/// Connects to the federation at `url` (through `endpoint`) and joins it as
/// `site`: the client and the federation's welcome. A welcome of another
/// major version is a refusal.
pub async fn join(
    endpoint: &Remote,
    url: &str,
    site: &str,
) -> Result<(FederationClient<Channel>, pb::Welcome), Failure> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Failure::Retry(format!("cannot connect to {url}: {}", chain(&e))))?;
    let mut client = FederationClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let welcome = client
        .join(pb::Hello {
            major: MAJOR,
            minor: MINOR,
            capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            site: site.to_string(),
        })
        .await?
        .into_inner();
    if welcome.major != MAJOR {
        return Err(Failure::Fatal(ParticipantError::Refused(format!(
            "{url} speaks protocol {}.{}, this build {MAJOR}.{MINOR}",
            welcome.major, welcome.minor
        ))));
    }
    Ok((client, welcome))
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
