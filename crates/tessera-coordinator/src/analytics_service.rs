//! The `Analytics` service beside `Federation`: an analyst's query, checked
//! and sent to the sites on the federation's thread
//! (`Federation::ask_query`, `state/analytics.rs`), then awaited until its
//! secure round is over. The caller is authenticated as a site is: under
//! mutual TLS its certificate must name the analyst it claims to be.

use std::sync::Arc;
use std::time::Duration;

use tessera_proto::pb;
use tessera_proto::pb::analytics_server::Analytics;
use tonic::{Request, Response, Status};

use crate::service::ConnectionLimits;
use crate::shared::Shared;
use crate::state::Refusal;

/// The longest an analyst's call waits for its answer.
const ANSWER_WAIT: Duration = Duration::from_secs(600);

/// The service.
pub struct AnalyticsService {
    shared: Arc<Shared>,
    callers: Arc<tessera_tls::Callers>,
    /// Refused calls per connection, limited as the federation service's.
    connections: ConnectionLimits,
}

impl AnalyticsService {
    /// A service over `shared`, its callers checked by `callers`.
    pub fn new(shared: Arc<Shared>, callers: Arc<tessera_tls::Callers>) -> Self {
        Self {
            shared,
            callers,
            connections: ConnectionLimits::default(),
        }
    }
}

fn refused(refusal: Refusal) -> Status {
    match refusal {
        Refusal::Invalid(m) => Status::failed_precondition(m),
        Refusal::Denied(m) => Status::permission_denied(m),
        Refusal::Unavailable(m) => Status::unavailable(m),
        Refusal::InUse(m) => Status::already_exists(m),
    }
}

#[tonic::async_trait]
impl Analytics for AnalyticsService {
    async fn query(
        &self,
        request: Request<pb::AnalyticsRequest>,
    ) -> Result<Response<pb::AnalyticsReply>, Status> {
        // A caller whose calls keep being refused (an unlisted analyst, a
        // query past the budget, again and again) is turned away unread
        // beyond a rate, before anything is checked or audited.
        let peer = self.connections.admit(&request)?;
        let result = self.answer(request).await;
        self.connections.settle(peer, result)
    }
}

impl AnalyticsService {
    async fn answer(
        &self,
        request: Request<pb::AnalyticsRequest>,
    ) -> Result<Response<pb::AnalyticsReply>, Status> {
        let claimed = request.get_ref().analyst.clone();
        if claimed.is_empty()
            || claimed.len() > tessera_proto::MAX_SITE_NAME
            || claimed.chars().any(char::is_control)
        {
            return Err(Status::invalid_argument(format!(
                "an analyst's name is 1 to {} bytes without control characters",
                tessera_proto::MAX_SITE_NAME
            )));
        }
        if self.callers.is_insecure() {
            return Err(Status::permission_denied(
                "deployed analytics queries need mutual TLS (tessera coordinator --tls DIR): \
                 without it anyone could claim an analyst's name, and the sites refuse to answer",
            ));
        }
        let certs = request.peer_certs();
        if let Err(reason) = self
            .callers
            .check(certs.as_deref().map(Vec::as_slice), &claimed)
        {
            let (who, why) = (claimed.clone(), reason.clone());
            self.shared
                .call(move |f| f.reject_audit(&who, "analytics", &why))
                .await?;
            return Err(Status::permission_denied(reason));
        }
        let pb::AnalyticsRequest { query, close, .. } = request.into_inner();
        let who = claimed.clone();
        let release = self
            .shared
            .call(move |f| f.ask_query(&who, &query, close))
            .await?
            .map_err(refused)?;
        let Some(release) = release else {
            return Ok(Response::new(pb::AnalyticsReply {
                note: "the serving period is closed: the sites are told the run is over".into(),
                ..Default::default()
            }));
        };
        let mut changes = self.shared.subscribe();
        let started = std::time::Instant::now();
        loop {
            let outcome = self.shared.call(move |f| f.query_outcome(release)).await?;
            match outcome {
                Some(Ok(reply)) => return Ok(Response::new(reply)),
                Some(Err(reason)) => return Err(Status::aborted(reason)),
                None if started.elapsed() > ANSWER_WAIT => {
                    return Err(Status::deadline_exceeded(format!(
                        "query {release} was not answered within {} s",
                        ANSWER_WAIT.as_secs()
                    )));
                }
                None => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
                }
            }
        }
    }
}
