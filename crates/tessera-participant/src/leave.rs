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
    // The coordinator and its standbys in turn, all within `within`: one
    // that is not leading does not listen; the first reached answers.
    let deadline = tokio::time::Instant::now() + within;
    let mut unreachable = Vec::new();
    for url in std::iter::once(&config.coordinator).chain(&config.standbys) {
        let endpoint = client::endpoint(url, config.tls.as_ref(), config.tls_domain.as_deref())?;
        let channel = match tokio::time::timeout_at(deadline, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => {
                unreachable.push(format!(
                    "cannot reach {url} to leave the run: {}",
                    chain(&e)
                ));
                continue;
            }
            Err(_) => break,
        };
        let mut client = FederationClient::new(channel);
        let told = client::withdraw(&mut client, &config.site, 0, reason, true);
        return match tokio::time::timeout_at(deadline, told).await {
            Ok(Ok(waited)) => Ok(waited),
            Ok(Err(status)) => Err(ParticipantError::Refused(format!(
                "the coordinator did not take the withdrawal: {}",
                status.message()
            ))),
            Err(_) => Err(ParticipantError::Refused(format!(
                "{url} did not answer the withdrawal within {within:?}"
            ))),
        };
    }
    if unreachable.is_empty() {
        unreachable.push(format!("no coordinator answered within {within:?}"));
    }
    Err(ParticipantError::Refused(unreachable.join("; ")))
}
