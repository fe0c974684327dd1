//! Each connection's budget of refused calls: past it, its calls are
//! turned away unread until the rate falls.

use std::sync::Mutex;

use tonic::{Request, Status};

use crate::bucket::TokenBucket;

/// Refused calls a connection may make a second, sustained (the federation's
/// own refusals and those of this layer alike); beyond it, its calls are
/// turned away unread until the rate falls.
pub const REFUSED_CALLS_PER_SECOND: f64 = 10.0;
/// Refused calls a connection may make at once before the rate applies.
const REFUSED_CALLS_BURST: f64 = 20.0;
/// Connections whose refusals are tracked at once; past it, entries whose
/// budget has refilled are dropped, and a new connection beyond that is
/// left to the global limit on audited refusals.
const MAX_TRACKED_CONNECTIONS: usize = 10_000;

/// A token bucket of refused calls per connection (remote address and
/// port): bounded in memory by [`MAX_TRACKED_CONNECTIONS`].
#[derive(Default)]
pub(crate) struct ConnectionLimits {
    buckets: Mutex<std::collections::HashMap<std::net::SocketAddr, TokenBucket>>,
}

impl ConnectionLimits {
    /// Whether `peer` may make a call now.
    fn allows(&self, peer: std::net::SocketAddr) -> bool {
        let buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        buckets
            .get(&peer)
            .is_none_or(|b| b.level(std::time::Instant::now()) >= 1.0)
    }

    /// The caller's connection, if it may call now: one with more than
    /// [`REFUSED_CALLS_PER_SECOND`] refused calls a second is turned away
    /// before its call is read (counted, not audited: the global limit on
    /// audited refusals already covers it).
    pub(crate) fn admit<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<std::net::SocketAddr>, Status> {
        let peer = request.remote_addr();
        if let Some(peer) = peer
            && !self.allows(peer)
        {
            metrics::counter!(crate::telemetry::names::THROTTLED).increment(1);
            return Err(Status::resource_exhausted(format!(
                "more than {REFUSED_CALLS_PER_SECOND} refused calls a second on this \
                 connection: its calls are turned away until the rate falls"
            )));
        }
        Ok(peer)
    }

    /// `result`, with a refusal counted against `peer`'s connection.
    pub(crate) fn settle<R>(
        &self,
        peer: Option<std::net::SocketAddr>,
        result: Result<R, Status>,
    ) -> Result<R, Status> {
        if let (Some(peer), Err(status)) = (peer, &result)
            && is_refusal(status.code())
        {
            self.refused(peer);
        }
        result
    }

    /// Counts a refused call of `peer`.
    fn refused(&self, peer: std::net::SocketAddr) {
        let now = std::time::Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(&peer) && buckets.len() >= MAX_TRACKED_CONNECTIONS {
            buckets.retain(|_, b| !b.is_full(now));
            if buckets.len() >= MAX_TRACKED_CONNECTIONS {
                return;
            }
        }
        buckets
            .entry(peer)
            .or_insert_with(|| {
                TokenBucket::full(REFUSED_CALLS_PER_SECOND, REFUSED_CALLS_BURST, now)
            })
            .spend(now);
    }
}

fn is_refusal(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::AlreadyExists
            | Code::NotFound
            | Code::ResourceExhausted
    )
}
