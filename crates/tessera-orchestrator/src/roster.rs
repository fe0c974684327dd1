//! Who takes part: the sites expected, those that joined, when each was last
//! heard from, and whether each one's update counted in the last closed round
//! it was in. Liveness is decided here from the time the driver passes in.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tessera_core::Timestamp;

/// Who must offer before the data agreement closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The plan's sites (or an aggregator's members), by name.
    Named(BTreeSet<String>),
    /// This many sites, whoever they are.
    Count(usize),
}

impl Expected {
    /// How many sites are expected.
    pub fn len(&self) -> usize {
        match self {
            Expected::Named(names) => names.len(),
            Expected::Count(n) => *n,
        }
    }

    /// Whether no site is expected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `site` may join: it is named, or names are not fixed.
    pub fn admits(&self, site: &str) -> bool {
        match self {
            Expected::Named(names) => names.contains(site),
            Expected::Count(_) => true,
        }
    }

    /// Whether the sites in `offered` are everyone expected.
    pub fn complete(&self, offered: &BTreeSet<&str>) -> bool {
        match self {
            Expected::Named(names) => names.iter().all(|n| offered.contains(n.as_str())),
            Expected::Count(n) => offered.len() >= *n,
        }
    }
}

/// The sites of a run and their liveness.
#[derive(Debug, Clone)]
pub struct Roster {
    expected: Expected,
    joined: BTreeSet<String>,
    last_seen: BTreeMap<String, Timestamp>,
    /// Per site: the last closed round it was in the cohort of, and whether
    /// its update counted.
    counted: BTreeMap<String, (u32, bool)>,
    liveness: Duration,
    /// Per site: the session of the process that speaks for it (a join
    /// without one is not recorded).
    sessions: BTreeMap<String, String>,
}

/// Whether a process may speak for a site ([`Roster::claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The process that already speaks for it (a reconnection), or the
    /// first one.
    Held,
    /// Another process spoke for it, but has been silent for longer than
    /// the liveness period (or left the run): this one replaces it.
    TakenOver,
}

/// Another live process speaks for the site: heard from this long ago,
/// within the liveness period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InUse {
    /// How long ago the process that holds the site was heard from.
    pub heard: Duration,
    /// The liveness period: silent this long, it may be replaced.
    pub liveness: Duration,
}

impl Roster {
    /// An empty roster expecting `expected`; a site not heard from for
    /// longer than `liveness` is stale.
    pub fn new(expected: Expected, liveness: Duration) -> Self {
        Self {
            expected,
            joined: BTreeSet::new(),
            last_seen: BTreeMap::new(),
            counted: BTreeMap::new(),
            liveness,
            sessions: BTreeMap::new(),
        }
    }

    /// Who is expected.
    pub fn expected(&self) -> &Expected {
        &self.expected
    }

    /// The liveness period.
    pub fn liveness(&self) -> Duration {
        self.liveness
    }

    /// How often participants must show they are alive: a quarter of the
    /// liveness period, so that three missed signs still leave a margin.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.liveness / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// How long an evaluation waits for answers: the round deadline
    /// (`deadline_seconds`), or ten liveness periods without one.
    pub fn evaluation_wait(&self, deadline_seconds: Option<f64>) -> Duration {
        deadline_seconds.map_or(self.liveness * 10, tessera_core::duration_from_secs)
    }

    /// Adds `site` to those that joined; true when it had not joined before.
    pub fn join(&mut self, site: &str) -> bool {
        self.joined.insert(site.to_string())
    }

    /// Takes back a join that could not be recorded.
    pub fn unjoin(&mut self, site: &str) {
        self.joined.remove(site);
        self.last_seen.remove(site);
        self.sessions.remove(site);
    }

    /// Whether the process with `session` may speak for `site` at `now`:
    /// the one that holds it, or the first, may; another may only once the
    /// holder has been silent for longer than the liveness period (or left
    /// the run), and then replaces it. Two live processes of one site
    /// would take each other's tasks.
    pub fn claim(&mut self, site: &str, session: &str, now: Timestamp) -> Result<Claim, InUse> {
        let claim = match self.sessions.get(site) {
            None => Claim::Held,
            Some(held) if held == session => Claim::Held,
            Some(_) => match self.last_seen.get(site) {
                Some(&seen) if now.since(seen) <= self.liveness => {
                    return Err(InUse {
                        heard: now.since(seen),
                        liveness: self.liveness,
                    });
                }
                _ => Claim::TakenOver,
            },
        };
        self.sessions.insert(site.to_string(), session.to_string());
        Ok(claim)
    }

    /// Sets who joined (a resumed run's participants, as stored).
    pub fn set_joined(&mut self, joined: impl IntoIterator<Item = String>) {
        self.joined = joined.into_iter().collect();
    }

    /// Whether `site` joined.
    pub fn is_joined(&self, site: &str) -> bool {
        self.joined.contains(site)
    }

    /// The sites that joined.
    pub fn joined(&self) -> &BTreeSet<String> {
        &self.joined
    }

    /// `site` was heard from at `now`.
    pub fn seen(&mut self, site: &str, now: Timestamp) {
        self.last_seen.insert(site.to_string(), now);
    }

    /// Every joined site counts as heard from at `now` (a resumed run gives
    /// each a full liveness period to come back).
    pub fn seen_all(&mut self, now: Timestamp) {
        for site in &self.joined {
            self.last_seen.insert(site.clone(), now);
        }
    }

    /// When `site` was last heard from (`None`: never, or it left since).
    pub fn last_seen(&self, site: &str) -> Option<Timestamp> {
        self.last_seen.get(site).copied()
    }

    /// `site` left the run: it is stale until it is heard from again.
    pub fn left(&mut self, site: &str) {
        self.last_seen.remove(site);
    }

    /// Whether `site` has not been heard from within the liveness period
    /// before `now` (or has left, or was never heard from).
    pub fn is_stale(&self, site: &str, now: Timestamp) -> bool {
        self.last_seen
            .get(site)
            .is_none_or(|&seen| now.since(seen) > self.liveness)
    }

    /// The joined sites heard from within the liveness period.
    pub fn live(&self, now: Timestamp) -> BTreeSet<String> {
        self.joined
            .iter()
            .filter(|s| !self.is_stale(s, now))
            .cloned()
            .collect()
    }

    /// The joined sites that are stale at `now`.
    pub fn stale(&self, now: Timestamp) -> BTreeSet<String> {
        self.joined
            .iter()
            .filter(|s| self.is_stale(s, now))
            .cloned()
            .collect()
    }

    /// `site` was in the cohort of closed round `round`; `counted`: its
    /// update counted.
    pub fn record_round(&mut self, site: &str, round: u32, counted: bool) {
        self.counted.insert(site.to_string(), (round, counted));
    }

    /// The last closed round `site` was in, and whether its update counted
    /// (`(0, false)` before any).
    pub fn previous(&self, site: &str) -> (u32, bool) {
        self.counted.get(site).copied().unwrap_or((0, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: u64) -> Timestamp {
        Timestamp(millis * 1000)
    }

    fn roster() -> Roster {
        Roster::new(Expected::Count(2), Duration::from_secs(3))
    }

    #[test]
    fn a_second_live_process_of_a_site_is_refused_until_the_first_is_silent() {
        let mut r = roster();
        assert_eq!(r.claim("va", "first", at(0)), Ok(Claim::Held));
        r.join("va");
        r.seen("va", at(0));
        // The first reconnects: still its own.
        assert_eq!(r.claim("va", "first", at(1000)), Ok(Claim::Held));
        r.seen("va", at(2000));
        // A second process while the first is live.
        assert_eq!(
            r.claim("va", "second", at(2500)),
            Err(InUse {
                heard: Duration::from_millis(500),
                liveness: Duration::from_secs(3)
            })
        );
        // Refusing it did not count as hearing from the site.
        assert_eq!(
            r.claim("va", "second", at(5000)),
            Err(InUse {
                heard: Duration::from_secs(3),
                liveness: Duration::from_secs(3)
            })
        );
        // Silent for longer than the liveness period: the second replaces it,
        // and now the first is the stranger.
        assert_eq!(r.claim("va", "second", at(5001)), Ok(Claim::TakenOver));
        r.seen("va", at(5001));
        assert!(r.claim("va", "first", at(5100)).is_err());
        // Other sites are not concerned.
        assert_eq!(r.claim("cleveland", "second", at(5100)), Ok(Claim::Held));
    }

    #[test]
    fn a_site_that_left_may_come_back_as_a_new_process_at_once() {
        let mut r = roster();
        r.claim("va", "first", at(0)).unwrap();
        r.join("va");
        r.seen("va", at(0));
        r.left("va");
        assert_eq!(r.claim("va", "restarted", at(10)), Ok(Claim::TakenOver));
        // A join that could not be recorded forgets the process too.
        r.unjoin("va");
        assert_eq!(r.claim("va", "another", at(20)), Ok(Claim::Held));
    }
}
