//! Analysts' queries to the deployed federation (`tessera analyze
//! --coordinator`, the `Analytics` service): answered after the last
//! training round, while `[analytics] serve_seconds` keeps the sites
//! connected (the run's status is already finished; its tasks are queries
//! or waiting, and the sites are told the run is over when the period ends
//! or an analyst closes it).
//!
//! A query is checked here before anything is sent: the analyst is listed
//! in `[analytics] analysts`, the run is serving, the query parses and
//! compiles against the agreed schema under the plan's `[analytics]`, it is
//! PER SITE only where the plan allows it (each site then also sends its
//! own answer with its own full noise, `site_answer`, charged to it),
//! at least three sites are connected, and its release fits
//! the run's and each site's budget of the ledger training is charged to
//! (read from the store, as `tessera analyze --db` reads it). Then each
//! connected site gets it as a `TASK_KIND_ANALYZE` task and masks its
//! contribution plus its own noise share in secure round `release |
//! ANALYTICS_ROUND` (`state/secure.rs` drives it like a training round's):
//! the coordinator unmasks only the sum. The answer, its ledger rows and
//! its query are recorded in the store before the analyst sees them. A
//! site that refuses the query withdraws from its round with the reason,
//! which the answer's note (or refusal) carries.

use std::collections::BTreeMap;
use std::time::Duration;

use tessera_analytics::deployed::{
    Prepared, check_budgets, deployed_answer, prepare, site_own_answer,
};
use tessera_analytics::{Report, Schema};
use tessera_core::Timestamp;
use tessera_orchestrator::privacy::LedgerRow;
use tessera_orchestrator::secure::SecureRound as SecureStages;
use tessera_proto::pb;
use tessera_secagg::ANALYTICS_ROUND;

use super::secure::SecureRound;
use super::{Federation, Phase, Refusal, TaskView};
use crate::store::AnalyticsRow;

/// The longest query text, in bytes.
pub const MAX_QUERY: usize = 10_000;

/// Finished answers kept for analysts who have not collected them.
const KEPT_OUTCOMES: usize = 16;

/// The serving period and the query being answered.
#[derive(Default)]
pub(super) struct Serving {
    /// When the serving period ends, once training is over.
    until: Option<Timestamp>,
    /// An analyst ended it early.
    closed: bool,
    /// Whether the sites were told (by a version change) that it is over.
    announced: bool,
    /// The query being answered.
    open: Option<OpenQuery>,
    /// Answers (or why there is none) by release, until collected.
    outcomes: BTreeMap<u32, Result<pb::AnalyticsReply, String>>,
    /// The last release number sent to the sites, answered or not: a
    /// number is never given to two queries (the sites refuse a number
    /// they answered with another query).
    last_release: u32,
}

struct OpenQuery {
    release: u32,
    text: String,
    analyst: String,
    prepared: Prepared,
    /// The sites asked, charged for the release.
    cohort: Vec<String>,
    threshold: usize,
    /// Sites that refused it, and why.
    refusals: Vec<(String, String)>,
    /// With PER SITE: each site's own answer, as it sent it.
    own: BTreeMap<String, Vec<u64>>,
}

fn micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Federation {
    /// Opens the serving period when the last round ends (a flat run whose
    /// plan sets `[analytics] serve_seconds`).
    pub(super) fn start_serving(&mut self) {
        let seconds = self.plan.analytics.serve_seconds;
        if seconds == 0 || self.tree.is_some() || self.analytics.until.is_some() {
            return;
        }
        let until = self.now().plus(Duration::from_secs(seconds));
        self.analytics.until = Some(until);
        tracing::info!(
            seconds,
            "training is over: the sites stay connected for analytics queries"
        );
        self.audit(
            "-",
            "analytics",
            "serving",
            &format!("queries are answered for {seconds} s ([analytics] serve_seconds)"),
        );
    }

    /// Whether the sites are kept for queries: training is over, the
    /// period has not ended (or a query is still being answered).
    pub fn serving_queries(&self) -> bool {
        let Some(until) = self.analytics.until else {
            return false;
        };
        matches!(self.phase, Phase::Finished)
            && (self.analytics.open.is_some() || (!self.analytics.closed && self.now() < until))
    }

    /// The serving period's time-driven steps: the open query's secure
    /// round, and the period's end told to the waiting sites.
    pub(super) fn analytics_step(&mut self, now: Timestamp) {
        if self.analytics.open.is_some() {
            self.advance_secure(now);
        }
        if self.analytics.until.is_some() && !self.analytics.announced && !self.serving_queries() {
            self.analytics.announced = true;
            let why = if self.analytics.closed {
                "closed by an analyst"
            } else {
                "[analytics] serve_seconds elapsed"
            };
            self.audit("-", "analytics", "closed", why);
            self.version += 1;
        }
    }

    /// What `site` does while training is over: a query to answer, wait,
    /// or (once the serving period is over) stop.
    pub(super) fn analytics_task(&self, site: &str) -> TaskView {
        if !self.serving_queries() {
            return TaskView::Finished;
        }
        let Some(open) = &self.analytics.open else {
            return TaskView::Wait;
        };
        let round = open.release | ANALYTICS_ROUND;
        let asked = self.secure.as_ref().is_some_and(|s| {
            s.round == round
                && s.stages().id_of(site).is_some()
                && !s.has_joined(site)
                && !s.has_refused(site)
        });
        if !asked {
            return TaskView::Wait;
        }
        TaskView::Analyze {
            header: pb::TaskHeader {
                round,
                kind: pb::TaskKind::Analyze as i32,
                analytics: Some(pb::AnalyticsTask {
                    release: open.release,
                    query: open.text.clone(),
                }),
                ..Default::default()
            },
        }
    }

    /// An analyst's request: `close` ends the serving period (after the
    /// query, if one is given); a query is checked and sent to the sites.
    /// The release number to wait for, or `None` after a close alone.
    pub fn ask_query(
        &mut self,
        analyst: &str,
        text: &str,
        close: bool,
    ) -> Result<Option<u32>, Refusal> {
        self.refuse_if_fatal()?;
        self.refuse_if_aborted()?;
        let refused = |f: &Self, r: Refusal| {
            f.audit(analyst, "analytics", "refused", &r.to_string());
            tracing::warn!(%analyst, reason = %r, "analytics query refused");
            Err(r)
        };
        let config = self.plan.analytics.clone();
        if config.analysts.is_empty() {
            return refused(
                self,
                Refusal::Denied(
                    "deployed queries are refused: the plan's [analytics] analysts lists no \
                     analyst (name the certificates that may query)"
                        .into(),
                ),
            );
        }
        if !config.analysts.iter().any(|a| a == analyst)
            || self.roster.joined().contains(analyst)
            || self.plan.data.named_sites().iter().any(|s| s == analyst)
        {
            return refused(
                self,
                Refusal::Denied(format!(
                    "'{analyst}' is not among the plan's [analytics] analysts ({}), or is a site",
                    config.analysts.join(", ")
                )),
            );
        }
        if config.serve_seconds == 0 {
            return refused(
                self,
                Refusal::Invalid(
                    "the plan keeps no sites for queries ([analytics] serve_seconds = 0): a \
                     deployed query is answered after the last training round, while \
                     serve_seconds keeps the sites connected"
                        .into(),
                ),
            );
        }
        if !matches!(self.phase, Phase::Finished) {
            return refused(
                self,
                Refusal::Invalid(format!(
                    "the run is still training (round {} of {}): deployed queries are answered \
                     after the last round, for [analytics] serve_seconds = {}",
                    self.records.len(),
                    self.plan.federation.rounds,
                    config.serve_seconds
                )),
            );
        }
        if !self.serving_queries() {
            return refused(
                self,
                Refusal::Invalid("the run's serving period for queries is over".into()),
            );
        }
        if text.trim().is_empty() {
            if close {
                self.analytics.closed = true;
                self.audit(analyst, "analytics", "close requested", "");
                self.version += 1;
                return Ok(None);
            }
            return refused(self, Refusal::Invalid("an empty query".into()));
        }
        if text.len() > MAX_QUERY {
            return refused(
                self,
                Refusal::Invalid(format!(
                    "a query is at most {MAX_QUERY} bytes, got {}",
                    text.len()
                )),
            );
        }
        if let Some(open) = &self.analytics.open {
            return refused(
                self,
                Refusal::Invalid(format!(
                    "query {} is being answered; ask again when it is done",
                    open.release
                )),
            );
        }
        match self.open_query(analyst, text) {
            Ok(release) => {
                if close {
                    self.analytics.closed = true;
                }
                Ok(Some(release))
            }
            Err(r) => refused(self, r),
        }
    }

    /// Checks `text` and the budgets, then opens its secure round.
    fn open_query(&mut self, analyst: &str, text: &str) -> Result<u32, Refusal> {
        let config = self.plan.analytics.clone();
        let Some(agreement) = &self.agreement else {
            return Err(Refusal::Invalid("the run has no data agreement".into()));
        };
        let invalid = |e: tessera_analytics::AnalyticsError| Refusal::Invalid(e.to_string());
        let schema =
            Schema::of_agreement(&self.plan.data, agreement, &config.bounds).map_err(invalid)?;
        let prepared =
            prepare(text, &schema, &config, self.plan.privacy.accountant).map_err(invalid)?;
        let now = self.now();
        let live = self.live(now);
        let cohort: Vec<String> = self
            .roster
            .joined()
            .iter()
            .filter(|s| live.contains(*s))
            .cloned()
            .collect();
        let needed = self.plan.federation.min_participants.max(3);
        if cohort.len() < needed {
            return Err(Refusal::Invalid(format!(
                "deployed queries are summed with secure aggregation over at least {needed} \
                 connected sites (3, and the plan's min_participants); {} are connected ({})",
                cohort.len(),
                cohort.join(", ")
            )));
        }
        let (ledger, release) = self.analytics_ledger()?;
        check_budgets(&ledger, &prepared, &config, release, &cohort).map_err(invalid)?;
        let round = release | ANALYTICS_ROUND;
        let index: BTreeMap<String, u32> = cohort
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        let ids: Vec<u32> = index.values().copied().collect();
        let dimension = prepared.layout.len() * tessera_analytics::secure::LIMBS;
        let (stages, effects, threshold) = self
            .plan
            .secure_aggregation
            .round_params(round, &ids, self.plan.secagg_graph_seed(round), dimension)
            .map_err(|e| e.to_string())
            .and_then(|params| {
                let threshold = params.threshold;
                SecureStages::open(now, round, index, params, self.roster.liveness())
                    .map(|(stages, effects)| (stages, effects, threshold))
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| Refusal::Invalid(format!("the query's secure round: {e}")))?;
        if self.secure.is_some() {
            return Err(Refusal::Unavailable(
                "a secure round is still open; ask again".into(),
            ));
        }
        self.secure = Some(SecureRound::of_stages(round, stages));
        self.apply_secure(effects);
        let detail = format!(
            "query {release} from {analyst} sent to {} sites: {}",
            cohort.len(),
            tessera_proto::shown(text, 600)
        );
        tracing::info!(release, %analyst, sites = cohort.len(), "analytics query sent");
        self.audit(analyst, "analytics", "dispatched", &detail);
        self.analytics.last_release = release;
        self.analytics.open = Some(OpenQuery {
            release,
            text: text.to_string(),
            analyst: analyst.to_string(),
            prepared,
            cohort,
            threshold,
            refusals: Vec::new(),
            own: BTreeMap::new(),
        });
        self.version += 1;
        Ok(release)
    }

    /// The run's ledger as the store holds it (training's releases and
    /// earlier answers), and the next analytics release number.
    fn analytics_ledger(&self) -> Result<(tessera_privacy::Ledger, u32), Refusal> {
        let unavailable = |e: crate::store::StoreError| {
            Refusal::Unavailable(format!(
                "the coordinator's database failed ({e}); try again"
            ))
        };
        let mut ledger = self.plan.privacy.ledger();
        for row in self
            .store
            .privacy_ledger(&self.run.id)
            .map_err(unavailable)?
        {
            ledger
                .restore(row.entry)
                .map_err(|e| Refusal::Invalid(format!("the run's stored ledger: {e}")))?;
        }
        let stored = self
            .store
            .answered_queries(&self.run.id)
            .map_err(unavailable)?
            .iter()
            .map(|r| r.release)
            .max()
            .unwrap_or(0);
        let kept = self.analytics.outcomes.keys().max().copied().unwrap_or(0);
        let release = stored.max(kept).max(self.analytics.last_release) + 1;
        if release >= ANALYTICS_ROUND {
            return Err(Refusal::Invalid("the run has answered 2^30 queries".into()));
        }
        Ok((ledger, release))
    }

    /// `site`'s own answer to the PER SITE query of `release`, kept for
    /// the answer: refused unless that query is open, PER SITE, asked of
    /// `site`, not answered by it already, and `values` has the query's
    /// slots.
    pub fn site_answer(
        &mut self,
        site: &str,
        release: u32,
        values: Vec<u64>,
    ) -> Result<(), Refusal> {
        let Some(open) = self
            .analytics
            .open
            .as_mut()
            .filter(|o| o.release == release)
        else {
            return Err(Refusal::Invalid(format!(
                "no query {release} is being answered"
            )));
        };
        if !open.prepared.query.per_site {
            return Err(Refusal::Invalid(format!(
                "query {release} is not PER SITE: a site's own answer is not taken"
            )));
        }
        if !open.cohort.iter().any(|s| s == site) {
            return Err(Refusal::Denied(format!(
                "'{site}' is not asked query {release}"
            )));
        }
        if open.own.contains_key(site) {
            return Err(Refusal::InUse(format!(
                "'{site}' already sent its own answer to query {release}"
            )));
        }
        if values.len() != open.prepared.layout.len() {
            return Err(Refusal::Invalid(format!(
                "query {release} has {} slots, '{site}' sent {} values",
                open.prepared.layout.len(),
                values.len()
            )));
        }
        open.own.insert(site.to_string(), values);
        self.audit(
            site,
            "analytics",
            "own answer",
            &format!("query {release}: this site's own answer (PER SITE)"),
        );
        self.touch(site);
        self.version += 1;
        Ok(())
    }

    /// `site` refuses the query of secure round `round`, saying why: it is
    /// not waited for. True when that query was open and had `site`.
    pub(super) fn analytics_refused(&mut self, site: &str, round: u32, reason: &str) -> bool {
        let release = round & !ANALYTICS_ROUND;
        tracing::warn!(%site, release, %reason, "a site refused the analytics query");
        self.audit(
            site,
            "analytics",
            "refused by site",
            &format!("query {release}: {reason}"),
        );
        let refused = self
            .secure
            .as_mut()
            .is_some_and(|s| s.round == round && s.stages_mut().refuse(site));
        if let Some(open) = self
            .analytics
            .open
            .as_mut()
            .filter(|o| o.release == release)
            && !open.refusals.iter().any(|(s, _)| s == site)
        {
            open.refusals.push((
                site.to_string(),
                tessera_proto::shown(reason, 300).into_owned(),
            ));
        }
        self.touch(site);
        self.version += 1;
        refused
    }

    /// The query's secure round is over: the answer from the sum, charged
    /// and recorded before anyone sees it.
    pub(super) fn finish_analytics(&mut self, secure: &SecureRound) {
        let Some(open) = self.analytics.open.take() else {
            return;
        };
        let outcome = self.answer_of(&open, secure);
        match &outcome {
            Ok(reply) => self.audit(&open.analyst, "analytics", "answered", &reply.note),
            Err(reason) => self.audit(&open.analyst, "analytics", "failed", reason),
        }
        self.analytics.outcomes.insert(open.release, outcome);
        while self.analytics.outcomes.len() > KEPT_OUTCOMES {
            self.analytics.outcomes.pop_first();
        }
        self.version += 1;
    }

    fn answer_of(
        &self,
        open: &OpenQuery,
        secure: &SecureRound,
    ) -> Result<pb::AnalyticsReply, String> {
        let refusals: Vec<String> = open
            .refusals
            .iter()
            .map(|(s, why)| format!("{s} refused: {why}"))
            .collect();
        let federation = secure.stages().finish().map_err(|e| {
            let mut why = format!("query {}: the secure sum failed: {e}", open.release);
            if !refusals.is_empty() {
                why.push_str(&format!(" ({})", refusals.join("; ")));
            }
            why
        });
        // The sites' own answers stand without the federation's sum.
        if open.own.is_empty()
            && let Err(why) = &federation
        {
            return Err(why.clone());
        }
        let config = &self.plan.analytics;
        let mut answers = Vec::new();
        let mut summed = 0;
        if let Ok((sum, n)) = &federation {
            summed = *n;
            let sum = tessera_analytics::secure::recombine(sum);
            answers.push(deployed_answer(
                &open.prepared,
                &sum,
                summed,
                open.threshold,
                config,
            ));
        }
        for (site, values) in &open.own {
            answers.push(
                site_own_answer(&open.prepared, values, site, config).map_err(|e| e.to_string())?,
            );
        }
        let (mut ledger, _) = self.analytics_ledger().map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        if let Some(event) = open.prepared.event {
            if federation.is_ok() {
                let entry = ledger
                    .record_central(open.release, event, &open.cohort)
                    .map_err(|e| e.to_string())?;
                entries.push(tessera_privacy::LedgerEntry {
                    kind: "analytics".into(),
                    ..entry.clone()
                });
            }
            for site in open.own.keys() {
                let entry = ledger
                    .record_participant(
                        open.release,
                        "analytics",
                        &format!("query {}'s own answer at '{site}'", open.release),
                        site,
                        event,
                    )
                    .map_err(|e| e.to_string())?;
                entries.push(entry.clone());
            }
        }
        let report = Report {
            query: open.text.clone(),
            answers,
            ledger: entries.clone(),
            secure_aggregation: true,
            experiment: None,
        };
        let json = serde_json::to_string(&report).map_err(|e| e.to_string())?;
        let release_info = &report.answers[0].release;
        let now = micros_now();
        let rows: Vec<LedgerRow> = entries
            .into_iter()
            .map(|entry| LedgerRow {
                entry,
                delta: ledger.budgets().delta,
                clip_norm: release_info.sensitivity,
                next_clip_norm: release_info.sensitivity,
                noise_std: release_info.noise_std,
                updates: summed as u64,
                recorded_micros: now,
            })
            .collect();
        self.store
            .record_answer(
                &self.run.id,
                &AnalyticsRow {
                    release: open.release,
                    query: open.text.clone(),
                    answer: json.clone(),
                    protected: release_info.protected,
                    epsilon: release_info.epsilon.unwrap_or(0.0),
                    delta: release_info.delta.unwrap_or(0.0),
                    noise_std: release_info.noise_std,
                    recorded_micros: now,
                },
                &rows,
            )
            .map_err(|e| {
                format!(
                    "query {}: the answer could not be recorded ({e}); it is not shown",
                    open.release
                )
            })?;
        let mut note = match &federation {
            Ok(_) => format!(
                "query {}: the secure sum of {summed} of {} sites' contributions",
                open.release,
                open.cohort.len()
            ),
            Err(why) => format!("{why}; no federation answer"),
        };
        if !open.own.is_empty() {
            note.push_str(&format!(
                "; the own answers of {} sites (PER SITE)",
                open.own.len()
            ));
        }
        if !refusals.is_empty() {
            note.push_str(&format!("; {}", refusals.join("; ")));
        }
        Ok(pb::AnalyticsReply {
            release: open.release,
            report_json: json,
            run_id: self.run.id.clone(),
            run_epsilon: ledger.run_epsilon(),
            note,
        })
    }

    /// The outcome of release `release`, once its round is over (taken:
    /// each is given once).
    pub fn query_outcome(&mut self, release: u32) -> Option<Result<pb::AnalyticsReply, String>> {
        self.analytics.outcomes.remove(&release)
    }
}
