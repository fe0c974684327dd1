//! Leaving a run on the site operator's word (SIGTERM, Ctrl-C): the
//! coordinator is told the site is gone for good, with the reason, so that
//! no round waits for it.

use std::time::Duration;

use tessera_proto::pb::federation_client::FederationClient;

use crate::client::{self, chain};
use crate::{ParticipantConfig, ParticipantError};

/// Tells the coordinator of `config` that this site leaves its run for
/// good, because of `reason`: one attempt over a fresh connection, within
/// `within`. Whether the coordinator was waiting for the site in a round
/// comes back (`Ok(true)`); an error says why it could not be told.
pub async fn leave(
    config: &ParticipantConfig,
    reason: &str,
    within: Duration,
) -> Result<bool, ParticipantError> {
    // The coordinator and its standbys in turn: one that is not leading
    // does not listen, and the first that takes the withdrawal ends it.
    let urls = std::iter::once(&config.coordinator).chain(&config.standbys);
    let mut why = Vec::new();
    for url in urls {
        match leave_at(config, url, reason, within).await {
            Ok(told) => return Ok(told),
            Err(e) => why.push(e.to_string()),
        }
    }
    Err(ParticipantError::Refused(why.join("; ")))
}

async fn leave_at(
    config: &ParticipantConfig,
    url: &str,
    reason: &str,
    within: Duration,
) -> Result<bool, ParticipantError> {
    let endpoint = client::endpoint(url, config.tls.as_ref(), config.tls_domain.as_deref())?;
    let told = async {
        let channel = endpoint.connect().await.map_err(|e| {
            ParticipantError::Refused(format!(
                "cannot reach {url} to leave the run: {}",
                chain(&e)
            ))
        })?;
        let mut client = FederationClient::new(channel);
        client::withdraw(&mut client, &config.site, 0, reason, true)
            .await
            .map_err(|status| {
                ParticipantError::Refused(format!(
                    "the coordinator did not take the withdrawal: {}",
                    status.message()
                ))
            })
    };
    match tokio::time::timeout(within, told).await {
        Ok(told) => told,
        Err(_) => Err(ParticipantError::Refused(format!(
            "{url} did not answer the withdrawal within {within:?}"
        ))),
    }
}
