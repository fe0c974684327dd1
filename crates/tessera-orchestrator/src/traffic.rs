//! Traffic: the bytes each site sent and received, per round (for the
//! round's record) and over the run (for the report), counted the same way
//! in deployment and in simulation.

use std::collections::BTreeMap;

use tessera_engine::report::SiteTraffic;

/// The traffic of the round in progress, per site.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundTraffic {
    sites: BTreeMap<String, SiteTraffic>,
}

impl RoundTraffic {
    /// `site` sent `bytes` (a protocol message, an evaluation...).
    pub fn up(&mut self, site: &str, bytes: u64) {
        self.site(site).up += bytes;
    }

    /// `site` sent `bytes` of its update (counted in its `up` too); `codec`:
    /// the update's encoding, when one is named.
    pub fn update(&mut self, site: &str, bytes: u64, codec: Option<String>) {
        let entry = self.site(site);
        entry.up += bytes;
        entry.update += bytes;
        if codec.is_some() {
            entry.codec = codec;
        }
    }

    /// Of what `site` already sent, `bytes` were its update (a masked update
    /// counted in its protocol messages).
    pub fn update_within(&mut self, site: &str, bytes: u64) {
        self.site(site).update += bytes;
    }

    /// `site`'s update is encoded with `codec`.
    pub fn codec(&mut self, site: &str, codec: String) {
        self.site(site).codec = Some(codec);
    }

    /// `site` received `bytes`.
    pub fn down(&mut self, site: &str, bytes: u64) {
        self.site(site).down += bytes;
    }

    /// The round's bytes up, over every site.
    pub fn bytes_up(&self) -> u64 {
        self.sites.values().map(|t| t.up).sum()
    }

    /// The round's bytes down, over every site.
    pub fn bytes_down(&self) -> u64 {
        self.sites.values().map(|t| t.down).sum()
    }

    /// The traffic per site, to read.
    pub fn sites(&self) -> &BTreeMap<String, SiteTraffic> {
        &self.sites
    }

    /// The traffic per site, for the round's record; the next round starts
    /// from nothing.
    pub fn take(&mut self) -> BTreeMap<String, SiteTraffic> {
        // Built again from its sorted entries: full nodes, about half the
        // room of a map grown one site at a time, which a run keeps for
        // every round.
        std::mem::take(&mut self.sites).into_iter().collect()
    }

    fn site(&mut self, site: &str) -> &mut SiteTraffic {
        self.sites.entry(site.to_string()).or_default()
    }
}

/// The run's traffic: totals, per site, and the round in progress.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Traffic {
    /// Every byte received, from anyone (also from a caller that never
    /// joined).
    pub bytes_up: u64,
    /// Every byte sent.
    pub bytes_down: u64,
    /// Of `bytes_up`, the updates'.
    pub update_bytes_up: u64,
    /// Bytes received per site that joined.
    pub bytes_up_per_site: BTreeMap<String, u64>,
    /// The round in progress.
    pub round: RoundTraffic,
}

impl Traffic {
    /// `bytes` came from `site`; `member`: it joined (only members are
    /// counted per site); `update`: they were its update, in this codec.
    pub fn received(&mut self, site: &str, bytes: u64, member: bool, update: Option<String>) {
        self.bytes_up += bytes;
        if !member {
            return;
        }
        *self.bytes_up_per_site.entry(site.to_string()).or_default() += bytes;
        match update {
            Some(codec) => self.round.update(site, bytes, Some(codec)),
            None => self.round.up(site, bytes),
        }
    }

    /// `bytes` of an update came (counted by [`Traffic::received`] too).
    pub fn update_received(&mut self, bytes: u64) {
        self.update_bytes_up += bytes;
    }

    /// `bytes` went to `site`; `member`: it joined.
    pub fn sent(&mut self, site: &str, bytes: u64, member: bool) {
        self.bytes_down += bytes;
        if member {
            self.round.down(site, bytes);
        }
    }
}
