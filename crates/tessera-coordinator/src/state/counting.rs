//! What each site sent and received: the run's traffic, per site for the
//! sites that joined, and the metrics beside it.

use std::time::Instant;

use tessera_core::Timestamp;

use super::Federation;
use crate::telemetry::names;

impl Federation {
    /// Counts bytes a participant sent.
    pub fn count_up(&mut self, site: &str, bytes: usize) {
        self.count_sent_by(site, bytes, None);
    }

    /// Counts an update's bytes, encoded with `codec`, and when it took
    /// `upload_seconds` from its first part (at `started`) to its last, the
    /// site's bandwidth.
    pub fn count_update(
        &mut self,
        site: &str,
        bytes: usize,
        codec: tessera_compress::Codec,
        upload_seconds: f64,
        started: Instant,
    ) {
        self.count_sent_by(site, bytes, Some(codec));
        self.traffic.update_received(bytes as u64);
        if !self.roster.is_joined(site) {
            return;
        }
        metrics::counter!(names::UPDATE_BYTES, "site" => site.to_string(), "codec" => codec.to_string())
            .increment(bytes as u64);
        // When its first part came, on the run clock.
        let now = self.now();
        let started = Timestamp(
            now.0
                .saturating_sub(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)),
        );
        if let Some(rate) = self
            .links
            .observe_upload(site, bytes, upload_seconds, started)
        {
            metrics::gauge!(names::UPLOAD_RATE, "site" => site.to_string()).set(rate);
        }
    }

    fn count_sent_by(&mut self, site: &str, bytes: usize, update: Option<tessera_compress::Codec>) {
        metrics::counter!(names::BYTES_RECEIVED).increment(bytes as u64);
        // Per site only for sites that joined: a name nobody verified gets
        // no counter, label or map entry.
        let member = self.roster.is_joined(site);
        self.traffic
            .received(site, bytes as u64, member, update.map(|c| c.to_string()));
        if member {
            metrics::counter!(names::SITE_BYTES_RECEIVED, "site" => site.to_string())
                .increment(bytes as u64);
        }
    }

    /// Counts bytes sent to `site`.
    pub fn count_down(&mut self, site: &str, bytes: usize) {
        metrics::counter!(names::BYTES_SENT).increment(bytes as u64);
        let member = self.roster.is_joined(site);
        self.traffic.sent(site, bytes as u64, member);
        if member {
            metrics::counter!(names::SITE_BYTES_SENT, "site" => site.to_string())
                .increment(bytes as u64);
        }
    }

    /// The codec `site`'s update of `round` must use.
    pub fn expected_codec(&self, site: &str, round: u32) -> tessera_compress::Codec {
        self.links
            .expected(&self.plan.compression_for(site), site, round)
    }
}
