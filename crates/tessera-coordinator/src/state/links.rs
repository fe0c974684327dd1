//! Each participant's link: the upload codec its tasks name, chosen from its
//! measured bandwidth when the plan's compression is adaptive, and the
//! traffic of the round in progress.

use std::collections::BTreeMap;
use std::time::Instant;

use tessera_compress::Codec;
use tessera_engine::Plan;
use tessera_engine::report::SiteTraffic;

/// Weight of the newest measurement in the running estimates.
const SMOOTHING: f64 = 0.5;

/// What the coordinator knows of the participants' links.
#[derive(Debug, Default)]
pub(crate) struct Links {
    /// Bytes per second of each site's uploads (exponentially smoothed).
    upload_rate: BTreeMap<String, f64>,
    /// Seconds from a task leaving to its update starting to arrive
    /// (download and training), smoothed.
    work_seconds: BTreeMap<String, f64>,
    /// When each site's last task left.
    task_sent: BTreeMap<String, Instant>,
    /// The codec each site's task of a round named.
    assigned: BTreeMap<String, (u32, Codec)>,
    /// The round in progress: each site's bytes and codec.
    pub traffic: BTreeMap<String, SiteTraffic>,
}

impl Links {
    /// The upload codec of `site`'s task in `round` for a model of
    /// `n_values`: the plan's, or the adaptive ladder's choice.
    pub fn assign(&mut self, plan: &Plan, site: &str, round: u32, n_values: usize) -> Codec {
        let compression = &plan.compression;
        let codec = match &compression.adaptive {
            Some(adaptive) => {
                let left = adaptive.target_round_seconds
                    - self.work_seconds.get(site).copied().unwrap_or(0.0);
                let ladder = adaptive.ladder();
                ladder.get(ladder.choose(n_values, self.upload_rate.get(site).copied(), left))
            }
            None => compression.upload,
        };
        self.assigned.insert(site.to_string(), (round, codec));
        self.task_sent.insert(site.to_string(), Instant::now());
        codec
    }

    /// The codec `site`'s update of `round` must use.
    pub fn expected(&self, plan: &Plan, site: &str, round: u32) -> Codec {
        match self.assigned.get(site) {
            Some((r, codec)) if *r == round => *codec,
            _ => plan.compression.upload,
        }
    }

    /// An update of `bytes` that took `upload_seconds` to arrive, its first
    /// part at `started`: the site's bandwidth, and its work time since the
    /// task left (download and training).
    pub fn observe_upload(
        &mut self,
        site: &str,
        bytes: usize,
        upload_seconds: f64,
        started: Instant,
    ) {
        let smooth = |old: Option<&f64>, new: f64| match old {
            Some(old) => (1.0 - SMOOTHING) * old + SMOOTHING * new,
            None => new,
        };
        if upload_seconds > 0.0 && bytes > 0 {
            let rate = bytes as f64 / upload_seconds;
            let rate = smooth(self.upload_rate.get(site), rate);
            self.upload_rate.insert(site.to_string(), rate);
            metrics::gauge!(crate::telemetry::names::UPLOAD_RATE, "site" => site.to_string())
                .set(rate);
        }
        if let Some(sent) = self.task_sent.get(site)
            && let Some(work) = started.checked_duration_since(*sent)
        {
            let work = smooth(self.work_seconds.get(site), work.as_secs_f64());
            self.work_seconds.insert(site.to_string(), work);
        }
    }

    /// Counts bytes `site` sent; `update` when they were its update.
    pub fn count_up(&mut self, site: &str, bytes: u64, update: Option<Codec>) {
        let entry = self.traffic.entry(site.to_string()).or_default();
        entry.up += bytes;
        if let Some(codec) = update {
            entry.update += bytes;
            entry.codec = Some(codec.to_string());
        }
    }

    /// Counts bytes sent to `site`.
    pub fn count_down(&mut self, site: &str, bytes: u64) {
        self.traffic.entry(site.to_string()).or_default().down += bytes;
    }
}
