//! Each participant's link: the upload codec its task names, chosen from
//! its bandwidth and the time left of the plan's target round time when
//! compression is adaptive. The coordinator measures bandwidth and work
//! time from the uploads it sees; the simulator knows them from the sites'
//! profiles; both choose with [`upload_codec`].

use std::collections::BTreeMap;

use tessera_compress::{Codec, CompressionConfig};
use tessera_core::Timestamp;

/// Weight of the newest measurement in the running estimates.
const SMOOTHING: f64 = 0.5;

/// The upload codec for a model of `n_values` sent over `bandwidth` (bytes
/// per second, if known) by a site that has already spent `spent_seconds`
/// of the round (download and training): the plan's codec, or the adaptive
/// ladder's choice for what is left of the target round time.
pub fn upload_codec(
    compression: &CompressionConfig,
    n_values: usize,
    bandwidth: Option<f64>,
    spent_seconds: f64,
) -> Codec {
    match &compression.adaptive {
        Some(adaptive) => {
            let left = adaptive.target_round_seconds - spent_seconds;
            let ladder = adaptive.ladder();
            ladder.get(ladder.choose(n_values, bandwidth, left))
        }
        None => compression.upload,
    }
}

/// What the coordinator measures of the participants' links.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// Bytes per second of each site's uploads (exponentially smoothed).
    upload_rate: BTreeMap<String, f64>,
    /// Seconds from a task leaving to its update starting to arrive
    /// (download and training), smoothed.
    work_seconds: BTreeMap<String, f64>,
    /// When each site's last task left.
    task_sent: BTreeMap<String, Timestamp>,
    /// The codec each site's task of a round named.
    assigned: BTreeMap<String, (u32, Codec)>,
}

impl Links {
    /// The upload codec of `site`'s task in `round` for a model of
    /// `n_values`, the task leaving at `now`.
    pub fn assign(
        &mut self,
        compression: &CompressionConfig,
        site: &str,
        round: u32,
        n_values: usize,
        now: Timestamp,
    ) -> Codec {
        let codec = upload_codec(
            compression,
            n_values,
            self.upload_rate.get(site).copied(),
            self.work_seconds.get(site).copied().unwrap_or(0.0),
        );
        self.assigned.insert(site.to_string(), (round, codec));
        self.task_sent.insert(site.to_string(), now);
        codec
    }

    /// The codec `site`'s update of `round` must use.
    pub fn expected(&self, compression: &CompressionConfig, site: &str, round: u32) -> Codec {
        match self.assigned.get(site) {
            Some((r, codec)) if *r == round => *codec,
            _ => compression.upload,
        }
    }

    /// An update of `bytes` that took `upload_seconds` to arrive, its first
    /// part at `started`: the site's work time since its task left
    /// (download and training) and, returned when measured, its bandwidth.
    pub fn observe_upload(
        &mut self,
        site: &str,
        bytes: usize,
        upload_seconds: f64,
        started: Timestamp,
    ) -> Option<f64> {
        let smooth = |old: Option<&f64>, new: f64| match old {
            Some(old) => (1.0 - SMOOTHING) * old + SMOOTHING * new,
            None => new,
        };
        let mut measured = None;
        if upload_seconds > 0.0 && bytes > 0 {
            let rate = bytes as f64 / upload_seconds;
            let rate = smooth(self.upload_rate.get(site), rate);
            self.upload_rate.insert(site.to_string(), rate);
            measured = Some(rate);
        }
        if let Some(&sent) = self.task_sent.get(site)
            && started >= sent
        {
            let work = smooth(
                self.work_seconds.get(site),
                started.since(sent).as_secs_f64(),
            );
            self.work_seconds.insert(site.to_string(), work);
        }
        measured
    }

    /// The smoothed bandwidth of `site`'s uploads, once measured.
    pub fn upload_rate(&self, site: &str) -> Option<f64> {
        self.upload_rate.get(site).copied()
    }

    /// The smoothed work time of `site`, once measured.
    pub fn work_seconds(&self, site: &str) -> Option<f64> {
        self.work_seconds.get(site).copied()
    }
}
