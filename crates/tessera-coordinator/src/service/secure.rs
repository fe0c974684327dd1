//! The secure-aggregation call (SecAgg+ and homomorphic rounds): each step
//! runs on the federation's thread; a poll that would be told to wait is
//! held until the federation changes (1.30, `long-poll`).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prost::Message;
use tessera_proto::pb;
use tessera_proto::pb::sec_agg_reply::State;
use tessera_proto::pb::sec_agg_request::Step;
use tonic::{Request, Response, Status};

use super::{Service, end_entity, refused};

/// The longest a poll is held: a site held is not heard from meanwhile, so
/// it is also at most the heartbeat interval (a quarter of the liveness
/// period).
const MAX_HOLD: Duration = Duration::from_secs(1);

/// Held polls a site may have at once.
const MAX_HELD: usize = 4;

/// One of a site's held polls, given back when dropped.
struct HeldSlot<'a> {
    counts: &'a Mutex<BTreeMap<String, usize>>,
    site: String,
}

impl<'a> HeldSlot<'a> {
    /// A slot for `site`, or `None` when it holds `MAX_HELD` polls already.
    fn take(counts: &'a Mutex<BTreeMap<String, usize>>, site: &str) -> Option<Self> {
        let mut held = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(site.to_string()).or_default();
        if *n >= MAX_HELD {
            return None;
        }
        *n += 1;
        Some(Self {
            counts,
            site: site.to_string(),
        })
    }
}

impl Drop for HeldSlot<'_> {
    fn drop(&mut self) {
        let mut held = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.site) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.site);
            }
        }
    }
}

fn waits(reply: &pb::SecAggReply) -> bool {
    matches!(reply.state, Some(State::Wait(_)))
}

/// Whether a held poll's answer ends its hold: a refusal, or not a wait.
fn settled<E>(answer: &Result<pb::SecAggReply, E>) -> bool {
    answer.as_ref().map_or(true, |r| !waits(r))
}

impl Service {
    pub(super) async fn secure_aggregation_call(
        &self,
        request: Request<pb::SecAggRequest>,
    ) -> Result<Response<pb::SecAggReply>, Status> {
        let site = self.caller(&request, &request.get_ref().site).await?;
        let certificate = end_entity(&request);
        let size = request.get_ref().encoded_len();
        let message = request.into_inner();
        // A masked input is the site's update, unless the round sums
        // evaluations (its top bit set).
        let masked = matches!(message.step, Some(Step::Masked(_) | Step::HeReveal(_)))
            && message.round & tessera_secagg::EVALUATION_ROUND == 0
            && message.round & tessera_secagg::ANALYTICS_ROUND == 0;
        // Polls (a stage's message, a key holder's task) change nothing, nor
        // does a buffer join repeated with the same model version: asked
        // again on each change while the answer is "wait".
        let again = match &message.step {
            Some(step @ (Step::Poll(_) | Step::HeHolder(_) | Step::Buffer(_))) => {
                Some(step.clone())
            }
            _ => None,
        };
        // At most `MAX_HELD` held polls a site at once: a site's polls
        // (its contributions', its key holder's) are a few; more are
        // answered at once, so that no site multiplies the work each change
        // brings.
        let slot = again
            .as_ref()
            .and_then(|_| HeldSlot::take(&self.shared.held_polls, &site));
        let again = again.filter(|_| slot.is_some());
        let held_able = again.is_some();
        let changes = self.shared.subscribe();
        let round = message.round;
        let who = site.clone();
        let (reply, hold) = self
            .shared
            .call(move |f| {
                f.remember_certificate(&site, certificate);
                if masked {
                    // The masked input is this site's update.
                    let codec = f.expected_codec(&site, message.round);
                    f.count_update(&site, size, codec, 0.0, std::time::Instant::now());
                } else {
                    f.count_up(&site, size);
                }
                let reply = f.secure_step(&site, message.round, message.step);
                if let Ok(reply) = &reply
                    && !(held_able && waits(reply))
                {
                    f.count_down(&site, reply.encoded_len());
                }
                (reply, f.heartbeat_interval().min(MAX_HOLD))
            })
            .await?;
        let reply = reply.map_err(refused)?;
        let Some(step) = again.filter(|_| waits(&reply)) else {
            return Ok(Response::new(reply));
        };
        let counted = who.clone();
        let held = self
            .shared
            .call_on_change(
                changes,
                hold,
                move |f| {
                    let reply = f.secure_step(&who, round, Some(step.clone()))?;
                    if !waits(&reply) {
                        f.count_down(&who, reply.encoded_len());
                    }
                    Ok(reply)
                },
                settled,
            )
            .await?;
        drop(slot);
        match held {
            Some(answer) if settled(&answer) => answer.map(Response::new).map_err(refused),
            // Held in vain: ask again at once.
            _ => {
                let reply = pb::SecAggReply {
                    state: Some(State::Wait(false)),
                };
                let len = reply.encoded_len();
                self.shared.post(move |f| f.count_down(&counted, len));
                Ok(Response::new(reply))
            }
        }
    }
}
