//! What the federation knows of its sites right now (liveness is kept in
//! memory, not in the database): for the live dashboard.

use super::Federation;

/// One joined site as the coordinator sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteView {
    /// Its name.
    pub site: String,
    /// `live` (heard from within the liveness period), `silent` (heard
    /// from, longer ago), or `not heard from` (since this coordinator
    /// started, or since it left the run).
    pub state: &'static str,
    /// When it was last heard from, microseconds since the Unix epoch.
    pub last_seen_unix_micros: Option<u64>,
}

impl Federation {
    /// Every joined site, by name, with its state and when it was last heard from.
    pub fn sites(&self) -> Vec<SiteView> {
        let now = self.now();
        self.roster
            .joined()
            .iter()
            .map(|site| {
                let seen = self.roster.last_seen(site);
                let state = match seen {
                    None => "not heard from",
                    Some(_) if self.roster.is_stale(site, now) => "silent",
                    Some(_) => "live",
                };
                SiteView {
                    site: site.clone(),
                    state,
                    last_seen_unix_micros: seen
                        .map(|t| self.run.created_unix_micros.saturating_add(t.0)),
                }
            })
            .collect()
    }

    /// The liveness period: silence after which a site counts as gone.
    pub fn liveness(&self) -> std::time::Duration {
        self.roster.liveness()
    }
}
