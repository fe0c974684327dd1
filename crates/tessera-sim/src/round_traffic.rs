//! A simulated round's traffic, counted by site index: one slot a site
//! rather than a map keyed by site name built up one site at a time (a
//! million sites' names copied into a map every round, and the map built
//! again for the round's record, were a tenth of a million-site run's
//! memory). The record gets the very map [`tessera_orchestrator::RoundTraffic`]
//! gives: the sites that sent or received anything, by name.

use std::collections::BTreeMap;

use tessera_engine::report::SiteTraffic;

/// The round in progress: each site's bytes, `None` where it had none.
pub(crate) struct IndexedTraffic {
    sites: Vec<Option<SiteTraffic>>,
}

impl IndexedTraffic {
    /// No traffic yet among `n` sites.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            sites: vec![None; n],
        }
    }

    fn site(&mut self, site: usize) -> &mut SiteTraffic {
        self.sites[site].get_or_insert_with(SiteTraffic::default)
    }

    /// Site `site` sent `bytes`.
    pub(crate) fn up(&mut self, site: usize, bytes: u64) {
        self.site(site).up += bytes;
    }

    /// Site `site` sent `bytes` of its update (counted in its `up` too).
    pub(crate) fn update(&mut self, site: usize, bytes: u64) {
        let entry = self.site(site);
        entry.up += bytes;
        entry.update += bytes;
    }

    /// Of what site `site` already sent, `bytes` were its update.
    pub(crate) fn update_within(&mut self, site: usize, bytes: u64) {
        self.site(site).update += bytes;
    }

    /// Site `site`'s update is encoded with `codec`.
    pub(crate) fn codec(&mut self, site: usize, codec: String) {
        self.site(site).codec = Some(codec);
    }

    /// Site `site` received `bytes`.
    pub(crate) fn down(&mut self, site: usize, bytes: u64) {
        self.site(site).down += bytes;
    }

    /// The round's bytes up, over every site.
    pub(crate) fn bytes_up(&self) -> u64 {
        self.sites.iter().flatten().map(|t| t.up).sum()
    }

    /// The round's bytes down, over every site.
    pub(crate) fn bytes_down(&self) -> u64 {
        self.sites.iter().flatten().map(|t| t.down).sum()
    }

    /// The traffic per site by name (`names[i]` is site `i`'s), for the
    /// round's record.
    pub(crate) fn into_map(self, names: &[&str]) -> BTreeMap<String, SiteTraffic> {
        names
            .iter()
            .zip(self.sites)
            .filter_map(|(name, t)| Some(((*name).to_string(), t?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_what_the_named_map_gives() {
        let names = ["b", "a", "c"];
        let mut indexed = IndexedTraffic::new(3);
        let mut named = tessera_orchestrator::RoundTraffic::default();
        indexed.down(0, 10);
        named.down("b", 10);
        indexed.update(1, 7);
        named.update("a", 7, None);
        indexed.codec(1, "topk".into());
        named.codec("a", "topk".into());
        indexed.up(0, 3);
        named.up("b", 3);
        indexed.update_within(0, 2);
        named.update_within("b", 2);
        assert_eq!(indexed.bytes_up(), named.bytes_up());
        assert_eq!(indexed.bytes_down(), named.bytes_down());
        // Site c had no traffic: no entry, as in the named map.
        assert_eq!(indexed.into_map(&names), named.take());
    }
}
