//! One join's conversation with the other site through the coordinator:
//! each message sent is sealed (signed with this site's certificate key)
//! and numbered; each received one is checked (sender, recipient, kind,
//! number, certificate, signature) and written to the transcript, kind,
//! sizes and bytes, so that what this site received can be audited.

use std::time::{Duration, Instant};

use serde::Serialize;
use tessera_proto::pb;
use tessera_proto::pb::federation_client::FederationClient;
use tonic::transport::Channel;

use super::envelope::{Envelope, Header, seal, signed_bytes};
use crate::client::SecureIdentity;

/// How long a join waits for the other site's next message.
pub(crate) const JOIN_WAIT: Duration = Duration::from_secs(600);
/// How often it asks.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How often it says what it waits for.
const SAY_EVERY: Duration = Duration::from_secs(10);

/// One received message, as the transcript keeps it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Received {
    pub from: String,
    pub kind: String,
    pub seq: u32,
    pub envelope_bytes: usize,
    pub payload_bytes: usize,
    pub signed: bool,
    /// The payload, hexadecimal.
    pub payload_hex: String,
}

/// Why a join stopped early.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The other site refused, with its reason.
    Refused(String),
    /// Anything else, named.
    Failed(String),
}

pub(crate) struct Relay<'a> {
    pub client: &'a mut FederationClient<Channel>,
    pub identity: &'a SecureIdentity,
    pub run: String,
    pub join: String,
    pub site: String,
    pub peer: String,
    sent: u32,
    received: u32,
    /// Messages fetched from the coordinator, read or not.
    cursor: u32,
    pending: std::collections::VecDeque<pb::JoinMessage>,
    pub transcript: Vec<Received>,
    pub insecure_relay: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<'a> Relay<'a> {
    pub(crate) fn new(
        client: &'a mut FederationClient<Channel>,
        identity: &'a SecureIdentity,
        run: &str,
        join: &str,
        site: &str,
        peer: &str,
    ) -> Self {
        Self {
            client,
            identity,
            run: run.into(),
            join: join.into(),
            site: site.into(),
            peer: peer.into(),
            sent: 0,
            received: 0,
            cursor: 0,
            pending: Default::default(),
            transcript: Vec::new(),
            insecure_relay: false,
        }
    }

    /// Seals and sends a message of `kind` to the other site.
    pub(crate) async fn send(&mut self, kind: &str, payload: &[u8]) -> Result<(), Stop> {
        let header = Header {
            run: self.run.clone(),
            join: self.join.clone(),
            from: self.site.clone(),
            to: self.peer.clone(),
            kind: kind.into(),
            seq: self.sent,
        };
        let signed = signed_bytes(&header, payload, &self.identity.certificate());
        let signature = self.identity.sign(&signed).map_err(Stop::Failed)?;
        let envelope = seal(signed, &signature);
        self.client
            .post_join_message(pb::JoinPost {
                site: self.site.clone(),
                join: self.join.clone(),
                to: self.peer.clone(),
                kind: kind.into(),
                envelope,
                report: None,
            })
            .await
            .map_err(|s| {
                Stop::Failed(format!(
                    "the coordinator did not relay a {kind}: {}",
                    s.message()
                ))
            })?;
        self.sent += 1;
        Ok(())
    }

    /// Reports to the coordinator.
    pub(crate) async fn report(&mut self, report: pb::JoinReport) -> Result<(), String> {
        self.client
            .post_join_message(pb::JoinPost {
                site: self.site.clone(),
                join: self.join.clone(),
                to: String::new(),
                kind: "report".into(),
                envelope: Vec::new(),
                report: Some(report),
            })
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_string())
    }

    /// The other site's next message, which must be of `kind` (or its
    /// refusal): checked, recorded, its payload.
    pub(crate) async fn receive(&mut self, kind: &str) -> Result<Vec<u8>, Stop> {
        let started = Instant::now();
        let mut said = Instant::now();
        let message = loop {
            if let Some(m) = self.pending.pop_front() {
                break m;
            }
            let reply = self
                .client
                .poll_join_messages(pb::JoinPollRequest {
                    site: self.site.clone(),
                    join: self.join.clone(),
                    next: self.cursor,
                })
                .await
                .map_err(|s| {
                    Stop::Failed(format!(
                        "the coordinator did not answer a poll: {}",
                        s.message()
                    ))
                })?
                .into_inner();
            if reply.insecure && !self.insecure_relay {
                self.insecure_relay = true;
                tracing::warn!(join = %self.join, "the coordinator relays this join without TLS: its messages are unsigned and it could alter them undetected");
            }
            if reply.messages.is_empty() {
                if started.elapsed() > JOIN_WAIT {
                    return Err(Stop::Failed(format!(
                        "site '{}' sent no {kind} within {} s",
                        self.peer,
                        JOIN_WAIT.as_secs()
                    )));
                }
                if said.elapsed() > SAY_EVERY {
                    tracing::info!(join = %self.join, waiting_for = %format!("site '{}''s {kind}", self.peer), "join waiting");
                    said = Instant::now();
                }
                tokio::time::sleep(POLL_EVERY).await;
                continue;
            }
            self.cursor = self.cursor.saturating_add(reply.messages.len() as u32);
            self.pending.extend(reply.messages);
        };
        if message.from != self.peer {
            return Err(Stop::Failed(format!(
                "the coordinator relayed a message from '{}' in a join with '{}'",
                tessera_proto::shown(&message.from, 64),
                self.peer
            )));
        }
        let envelope = Envelope::parse(&message.envelope).map_err(Stop::Failed)?;
        let expected = Header {
            run: self.run.clone(),
            join: self.join.clone(),
            from: self.peer.clone(),
            to: self.site.clone(),
            kind: kind.into(),
            seq: self.received,
        };
        envelope.expect(&expected).map_err(Stop::Failed)?;
        self.identity
            .check_signed(
                &self.peer,
                &envelope.certificate,
                envelope.signed(),
                &envelope.signature,
            )
            .map_err(Stop::Failed)?;
        self.received += 1;
        self.transcript.push(Received {
            from: self.peer.clone(),
            kind: envelope.header.kind.clone(),
            seq: envelope.header.seq,
            envelope_bytes: message.envelope.len(),
            payload_bytes: envelope.payload.len(),
            signed: self.identity.signs(),
            payload_hex: hex(&envelope.payload),
        });
        if envelope.header.kind == "refuse" {
            return Err(Stop::Refused(
                String::from_utf8_lossy(&envelope.payload)
                    .chars()
                    .take(1000)
                    .collect(),
            ));
        }
        Ok(envelope.payload)
    }
}
