//! The secure joins' relay calls (1.11, `join-relay`): checked here (the
//! caller's identity, sizes), carried and audited on the federation's
//! thread (`state/joins.rs`).

use prost::Message;
use tessera_proto::pb;
use tonic::{Request, Response, Status};

use super::{Service, refused};

impl Service {
    pub(super) async fn post_join_message_call(
        &self,
        request: Request<pb::JoinPost>,
    ) -> Result<Response<pb::JoinPostReply>, Status> {
        let site = self.caller(&request, &request.get_ref().site).await?;
        let tls = request.peer_certs().is_some();
        let size = request.get_ref().encoded_len();
        let post = request.into_inner();
        let reply = self
            .shared
            .call(move |f| {
                f.count_up(&site, size);
                f.join_post(&site, post, tls)
            })
            .await?
            .map_err(refused)?;
        Ok(Response::new(reply))
    }

    pub(super) async fn poll_join_messages_call(
        &self,
        request: Request<pb::JoinPollRequest>,
    ) -> Result<Response<pb::JoinPollReply>, Status> {
        let site = self.caller(&request, &request.get_ref().site).await?;
        let tls = request.peer_certs().is_some();
        let poll = request.into_inner();
        let reply = self
            .shared
            .call(move |f| {
                let reply = f.join_poll(&site, &poll, tls)?;
                f.count_down(&site, reply.encoded_len());
                Ok(reply)
            })
            .await?
            .map_err(refused)?;
        Ok(Response::new(reply))
    }
}

impl Service {
    /// A site's own answer to a PER SITE query (1.12,
    /// `analytics-per-site`): checked and kept on the federation's thread
    /// (`Federation::site_answer`).
    pub(super) async fn submit_site_answer_call(
        &self,
        request: Request<pb::SiteAnswer>,
    ) -> Result<Response<pb::SiteAnswerReply>, Status> {
        let site = self.caller(&request, &request.get_ref().site).await?;
        let size = request.get_ref().encoded_len();
        let pb::SiteAnswer {
            release, values, ..
        } = request.into_inner();
        self.shared
            .call(move |f| {
                f.count_up(&site, size);
                f.site_answer(&site, release, values)
            })
            .await?
            .map_err(refused)?;
        Ok(Response::new(pb::SiteAnswerReply {}))
    }
}
