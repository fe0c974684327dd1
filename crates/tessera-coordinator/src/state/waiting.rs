//! What a run waits for, and each site's last call: the step it is in
//! (an agreement step, a round to open, a training round, a secure stage,
//! an evaluation), the sites that step waits for and since when. Logged at
//! each change and every [`REMIND_EVERY`] while it lasts, exposed as
//! metrics, and kept in the store as the run's live view, which `tessera
//! status` reads. The view is a report, not the run's progress: a view the
//! database cannot take is logged and written again later.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use tessera_core::{ParticipantId, Timestamp};

use super::{Federation, Phase, Training};
use crate::store::AgreementStep;
use crate::telemetry::names;

/// How often a run that still waits says so again in the log.
pub const REMIND_EVERY: Duration = Duration::from_secs(30);
/// How often the waiting is looked at when nothing has changed.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How often the live view is written while it changes.
const WRITE_EVERY: Duration = Duration::from_secs(2);

/// A step that waits.
#[derive(Debug, Clone, PartialEq)]
struct Wait {
    step: String,
    sites: Vec<String>,
    detail: String,
    /// When the step began to wait, on the run clock.
    since: Timestamp,
    /// When it was last logged.
    logged: Timestamp,
}

/// Who was heard from when, who left and why, and what the run waits for.
#[derive(Debug, Default)]
pub(super) struct Watch {
    /// Each site's last call, on the run clock.
    last_seen: BTreeMap<String, Timestamp>,
    /// Sites that left the run or were dropped, and why, until they call again.
    departed: BTreeMap<String, String>,
    current: Option<Wait>,
    /// When the waiting was last looked at, and the federation's version then.
    looked: Option<(Timestamp, u64)>,
    /// When the live view was last written, and whether it changed since.
    written: Option<Timestamp>,
    dirty: bool,
    /// A site left since the waiting was last logged.
    news: bool,
}

impl Watch {
    /// `site` called at `now`.
    pub(super) fn seen(&mut self, site: &str, now: Timestamp) {
        self.last_seen.insert(site.to_string(), now);
        self.departed.remove(site);
    }

    /// `site` left the run, or was dropped from it, because of `why`.
    pub(super) fn departed(&mut self, site: &str, why: String) {
        self.departed.insert(site.to_string(), why);
        self.dirty = true;
        self.news = true;
    }
}

impl Federation {
    fn unix(&self, t: Timestamp) -> u64 {
        self.run.created_unix_micros.saturating_add(t.0)
    }

    /// The step the run is in and the sites it waits for there, with a
    /// detail; `None` when it waits for nobody (finished, asynchronous).
    fn awaited_now(&self, now: Timestamp) -> Option<(String, Vec<String>, String)> {
        let names = |ids: Vec<ParticipantId>| -> Vec<String> {
            ids.into_iter().map(|p| p.as_str().to_string()).collect()
        };
        if let Some(secure) = &self.secure
            && let (stage, sites) = secure.awaited()
            && !sites.is_empty()
        {
            let what = if tessera_secagg::is_rollout_round(secure.round) {
                "secure canary comparison of version"
            } else if secure.is_evaluation() {
                "secure evaluation of round"
            } else {
                "secure aggregation of round"
            };
            let round = secure.round & !tessera_secagg::ROLLOUT_ROUND;
            return Some((
                format!("{what} {round}: stage {stage}"),
                sites,
                String::new(),
            ));
        }
        if let Some((step, sites)) = self.homomorphic_awaited() {
            return Some((step, sites, String::new()));
        }
        match &self.phase {
            Phase::Finished => None,
            Phase::Agreeing if self.in_rollout() => self.rollout_awaited(now),
            Phase::Agreeing => {
                let (step, name) = if self.plan.model.kind.is_external() {
                    (AgreementStep::External, "external layouts and row counts")
                } else if self.kinds.is_none() {
                    (AgreementStep::Kinds, "column kinds")
                } else {
                    (AgreementStep::Levels, "levels and row counts")
                };
                let offered: BTreeSet<String> = self
                    .store
                    .offers(&self.run.id, step)
                    .ok()?
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect();
                let candidates: BTreeSet<String> = match self.roster.expected() {
                    tessera_orchestrator::Expected::Named(all) => all.clone(),
                    tessera_orchestrator::Expected::Count(_) => self.roster.joined().clone(),
                };
                let sites: Vec<String> = candidates.difference(&offered).cloned().collect();
                let detail = format!(
                    "{} of {} sites have offered",
                    offered.len(),
                    self.roster.expected().len()
                );
                Some((format!("agreement: {name}"), sites, detail))
            }
            Phase::Evaluating { evaluation, .. } => {
                let sites = evaluation
                    .targets()
                    .iter()
                    .filter(|s| evaluation.awaits(s))
                    .cloned()
                    .collect();
                Some((
                    format!("evaluation of round {}", evaluation.round()),
                    sites,
                    String::new(),
                ))
            }
            Phase::Training => match &self.training {
                Training::Async(_) => None,
                Training::Sync(_) | Training::Relay(_) => {
                    let engine = self.training.rounds()?;
                    if let Some(round) = engine.open_round() {
                        let detail = match engine.deadline() {
                            Some(d) => format!("deadline {}", tessera_core::utc(self.unix(d))),
                            None => String::new(),
                        };
                        return Some((
                            format!("training round {round}"),
                            names(engine.awaited()),
                            detail,
                        ));
                    }
                    if engine.is_finished() {
                        return None;
                    }
                    let round = engine.rounds_closed() + 1;
                    if self.is_aggregator() {
                        return Some((
                            format!("round {round} to open"),
                            Vec::new(),
                            "the parent's task".into(),
                        ));
                    }
                    let live = self.roster.live(now);
                    let mut sites: BTreeSet<String> =
                        self.roster.joined().difference(&live).cloned().collect();
                    if let tessera_orchestrator::Expected::Named(all) = self.roster.expected() {
                        sites.extend(all.difference(self.roster.joined()).cloned());
                    }
                    let f = &self.plan.federation;
                    let detail = format!(
                        "a round opens with at least {} live participants (min_participants {}, \
                         quorum {}); {} are live",
                        f.min_participants.max(f.quorum),
                        f.min_participants,
                        f.quorum,
                        live.len()
                    );
                    Some((
                        format!("round {round} to open"),
                        sites.into_iter().collect(),
                        detail,
                    ))
                }
            },
        }
    }

    /// Looks at what the run waits for: logs a change, reminds every
    /// [`REMIND_EVERY`], sets the metrics, writes the live view.
    pub(super) fn watch(&mut self) {
        let now = self.now();
        let fresh = self
            .watch
            .looked
            .is_none_or(|(at, version)| version != self.version || now.since(at) >= LOOK_EVERY);
        if !fresh || self.fatal.is_some() {
            return;
        }
        self.watch.looked = Some((now, self.version));
        let awaited = self.awaited_now(now);
        let previous = self.watch.current.take();
        let news = std::mem::take(&mut self.watch.news);
        // A new step, an end of waiting or a site that left is written at once.
        let urgent = news || previous.as_ref().map(|p| &p.step) != awaited.as_ref().map(|a| &a.0);
        let current = match (awaited, previous) {
            (None, None) => None,
            (None, Some(_)) => {
                tracing::info!("waiting for nobody");
                self.watch.dirty = true;
                None
            }
            (Some((step, sites, detail)), previous) => {
                let same_step = previous.as_ref().is_some_and(|p| p.step == step);
                let since = previous
                    .as_ref()
                    .filter(|_| same_step)
                    .map_or(now, |p| p.since);
                let changed = news
                    || previous
                        .as_ref()
                        .is_none_or(|p| p.step != step || p.sites != sites);
                let remind = previous
                    .as_ref()
                    .is_some_and(|p| now.since(p.logged) >= REMIND_EVERY);
                let mut wait = Wait {
                    step,
                    sites,
                    detail,
                    since,
                    logged: previous.as_ref().map_or(now, |p| p.logged),
                };
                if changed || remind {
                    self.log_wait(&wait, now, !changed);
                    wait.logged = now;
                }
                self.watch.dirty |= changed;
                Some(wait)
            }
        };
        self.watch.current = current;
        self.wait_metrics(now);
        let due = self
            .watch
            .written
            .is_none_or(|at| now.since(at) >= WRITE_EVERY);
        if self.watch.dirty && (due || urgent) || self.watch.written.is_none() {
            self.watch.written = Some(now);
            self.watch.dirty = false;
            let view = self.live_view().to_string();
            if let Err(e) = self.store.put_live_view(&self.run.id, &view) {
                tracing::warn!(%e, "cannot write the run's live view; writing it again later");
                self.watch.dirty = true;
            }
        }
    }

    fn log_wait(&self, wait: &Wait, now: Timestamp, reminder: bool) {
        let sites: Vec<String> = wait
            .sites
            .iter()
            .map(|s| match self.watch.departed.get(s) {
                Some(why) => format!("{s} ({why})"),
                None if self.roster.is_joined(s) && self.stale(s, now) => {
                    let seen = self.watch.last_seen.get(s).map_or_else(
                        || "never heard from".to_string(),
                        |t| format!("last seen {}", tessera_core::utc(self.unix(*t))),
                    );
                    format!("{s} (silent, {seen})")
                }
                None if !self.roster.is_joined(s) => format!("{s} (not joined)"),
                None => s.clone(),
            })
            .collect();
        let since = tessera_core::utc(self.unix(wait.since));
        let sites = if sites.is_empty() {
            "-".to_string()
        } else {
            sites.join(", ")
        };
        if reminder {
            let seconds = now.since(wait.since).as_secs();
            tracing::warn!(step = %wait.step, %sites, %since, seconds, detail = %wait.detail, "still waiting");
        } else {
            tracing::info!(step = %wait.step, %sites, %since, detail = %wait.detail, "waiting");
        }
    }

    fn wait_metrics(&self, now: Timestamp) {
        let awaited: BTreeSet<&str> = self
            .watch
            .current
            .iter()
            .flat_map(|w| w.sites.iter().map(String::as_str))
            .collect();
        metrics::gauge!(names::WAITING_SITES).set(awaited.len() as f64);
        metrics::gauge!(names::WAITING_SECONDS).set(
            self.watch
                .current
                .as_ref()
                .map_or(0.0, |w| now.since(w.since).as_secs_f64()),
        );
        for site in self.roster.joined() {
            let awaited = f64::from(u8::from(awaited.contains(site.as_str())));
            metrics::gauge!(names::SITE_AWAITED, "site" => site.clone()).set(awaited);
            if let Some(seen) = self.watch.last_seen.get(site) {
                metrics::gauge!(names::SITE_LAST_SEEN, "site" => site.clone())
                    .set(self.unix(*seen) as f64 / 1e6);
            }
        }
    }

    /// The run's live view: what it waits for, and every site's state and
    /// last call (wall-clock microseconds since the Unix epoch).
    pub fn live_view(&self) -> Value {
        let now = self.now();
        let waiting = self.watch.current.as_ref().map(|w| {
            json!({
                "step": w.step,
                "sites": w.sites,
                "detail": w.detail,
                "since_unix_micros": self.unix(w.since),
            })
        });
        let mut names: BTreeSet<&String> = self.roster.joined().iter().collect();
        if let tessera_orchestrator::Expected::Named(all) = self.roster.expected() {
            names.extend(all);
        }
        let sites: Vec<Value> = names
            .into_iter()
            .map(|site| {
                let (state, note) = match self.watch.departed.get(site) {
                    _ if !self.roster.is_joined(site) => ("not joined", None),
                    Some(why) => ("left", Some(why.clone())),
                    None if self.stale(site, now) => ("silent", None),
                    None => ("live", None),
                };
                json!({
                    "site": site,
                    "state": state,
                    "note": note,
                    "last_seen_unix_micros": self.watch.last_seen.get(site).map(|t| self.unix(*t)),
                })
            })
            .collect();
        json!({
            "updated_unix_micros": self.unix(now),
            "waiting": waiting,
            "sites": sites,
        })
    }
}
