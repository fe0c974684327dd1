//! A session's small calls: the site's rows, the welcome's capabilities, withdrawing, agreeing.

use std::time::Duration;

use tessera_proto::pb::federation_client::FederationClient;
use tessera_proto::pb::{self, agree_reply};
use tonic::Status;
use tonic::transport::Channel;

use super::Failure;
use crate::ParticipantError;

/// Reads `site`'s rows from `file` (`None`: the plan's file for the site,
/// or the rows the plan generates), as the plan's `[data]` says, its
/// relative paths against `plan_dir` (through the site's `mapping`, if
/// any), off the async runtime.
pub async fn read_site(
    data: &tessera_data::DataConfig,
    site: &str,
    file: Option<&std::path::Path>,
    plan_dir: &std::path::Path,
    mapping: Option<&tessera_data::mapping::Mapping>,
) -> Result<tessera_data::LocalSite, ParticipantError> {
    let (data, site, file, plan_dir, mapping) = (
        data.clone(),
        site.to_string(),
        file.map(std::path::Path::to_path_buf),
        plan_dir.to_path_buf(),
        mapping.cloned(),
    );
    tokio::task::spawn_blocking(move || {
        let (file, schema) = (file.as_deref(), &data.schema);
        let fs = &tessera_data::Filesystem;
        tessera_data::mapping::with_mapping(fs, file, &plan_dir, mapping.as_ref(), schema, |s| {
            tessera_data::read_local_site(&data, &site, file, &plan_dir, s)
        })
    })
    .await
    .map_err(|e| ParticipantError::Local(format!("reading the data crashed: {e}")))?
    .map_err(|e| ParticipantError::Local(e.to_string()))
}

/// How often to tell the federation this client is at work, if it listens
/// (`heartbeat` capability): its interval, at most five seconds.
pub fn heartbeat_interval(welcome: &pb::Welcome) -> Option<Duration> {
    welcome
        .capabilities
        .iter()
        .any(|c| c == "heartbeat")
        .then(|| {
            Duration::from_millis(u64::from(welcome.heartbeat_millis.max(50)))
                .min(Duration::from_secs(5))
        })
}

/// Whether the federation takes withdrawals (`withdraw` capability, 1.4).
pub fn can_withdraw(welcome: &pb::Welcome) -> bool {
    welcome.capabilities.iter().any(|c| c == "withdraw")
}

/// Tells the federation that `site` leaves round `round` without an update
/// (and with `leaving`, the run), so the round stops waiting for it. True
/// when the round was waiting for it. `reason` is cut to the protocol's
/// limit.
pub async fn withdraw(
    client: &mut FederationClient<Channel>,
    site: &str,
    round: u32,
    reason: &str,
    leaving: bool,
) -> Result<bool, Status> {
    let reply = client
        .withdraw(pb::WithdrawRequest {
            site: site.to_string(),
            round,
            reason: tessera_proto::withdraw_reason(reason).to_string(),
            leaving,
        })
        .await?;
    Ok(reply.into_inner().withdrawn)
}

/// Offers one agreement step; waits for the federation's answer.
pub async fn agree(
    client: &mut FederationClient<Channel>,
    site: &str,
    offer: pb::agree_request::Offer,
) -> Result<agree_reply::Result, Failure> {
    let span = tracing::info_span!("agree", site);
    let mut request = tonic::Request::new(pb::AgreeRequest {
        site: site.to_string(),
        offer: Some(offer),
    });
    tessera_proto::trace::inject(&span, request.metadata_mut());
    let reply = tracing::Instrument::instrument(client.agree(request), span)
        .await?
        .into_inner();
    reply
        .result
        .ok_or_else(|| Failure::Retry("empty agreement reply".into()))
}
