//! This site's own ledger of the releases of its data, kept on its own
//! disk (`ParticipantConfig::ledger`, `tessera participant --ledger`).
//!
//! The adversary is the coordinator: its ledger is the one the run's
//! budgets are checked against, and a coordinator that lies about it,
//! loses its database, or simply starts a new run of the same plan could
//! ask a site for answers without end. So the site counts for itself, per
//! plan (by the plan's hash, across runs and restarts of this process):
//! every training round it sends an update for (with central DP the plan's
//! round event, with local DP its own DP-SGD event) and every analytics
//! answer it masks. Before each release it checks the plan's `[privacy]`
//! budgets against that count and refuses past them, naming its file;
//! the entry is written (atomically, before the release leaves) so that a
//! crash cannot forget it. A release number of a run is answered once:
//! a different query under a number this site already answered is refused
//! (a coordinator reusing numbers would reuse secure rounds' numbers too).
//!
//! One process at a time keeps a file: the first takes an advisory lock
//! ([`lock`]) for its life, a second is refused saying so.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tessera_engine::{Plan, Site};
use tessera_privacy::{DpEvent, Ledger, LedgerEntry, PrivacyConfig, PrivacyMode};

use crate::ParticipantError;
use crate::supervisor::Failure;

pub mod summary;

/// The format written, and the only one read.
const FORMAT: &str = "tessera-site-ledger/1";

/// Entries without DP kept per plan (the newest): they bound nothing, and
/// only a recent release number needs to be known as answered.
const MAX_UNCHARGED: usize = 10_000;

/// The largest ledger file read (a day of queries is a few kilobytes).
const MAX_FILE_BYTES: u64 = 64 << 20;

/// What the file holds: every plan's entries for one site.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LedgerFile {
    format: String,
    site: String,
    /// By the plan's hash.
    plans: BTreeMap<String, PlanEntries>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct PlanEntries {
    /// The plan's name, for a reader.
    name: String,
    entries: Vec<SiteEntry>,
}

/// One release of this site's data.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SiteEntry {
    /// The coordinator's run id.
    run: String,
    /// `training` or `analytics`.
    kind: String,
    /// The round, or the analytics release number.
    release: u32,
    /// A query's SHA-256 (hex): the same number with another query is
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query: Option<String>,
    /// Seconds since the Unix epoch.
    recorded: u64,
    /// The DP event (`None`: a release without DP, which the plan said).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entry: Option<LedgerEntry>,
    /// `quality`: the data quality score released, sent again as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
}

/// This site's ledger for the run's plan.
pub(crate) struct SiteLedger {
    /// `None`: kept in memory only (a library caller gave no file).
    path: Option<PathBuf>,
    site: String,
    plan_hash: String,
    plan_name: String,
    run: String,
    file: LedgerFile,
    /// This plan's DP entries, all runs, with the plan's budgets.
    ledger: Ledger,
    /// With central DP, the event of each training round.
    central_round: Option<DpEvent>,
    /// The plan's rounds.
    rounds: u32,
}

/// Charges a profile of `site`'s columns at DP `event` to its ledger at
/// `path` under `plan` (taking the file's lock while it does): the site's
/// epsilon under the plan after it, or why it was refused (a budget, the
/// file).
pub fn charge_profile(path: &Path, site: &str, plan: &Plan, event: DpEvent) -> Result<f64, String> {
    charge_local(
        path,
        site,
        plan,
        "profile",
        "a profile of this site's columns",
        event,
    )
}

/// Charges a release of `site`'s data made at the site outside a run
/// (`kind`: `profile`, `synthetic`; `subject` describes it in messages) at
/// DP `event` to its ledger at `path` under `plan`, as
/// [`charge_profile`] does a profile.
pub fn charge_local(
    path: &Path,
    site: &str,
    plan: &Plan,
    kind: &str,
    subject: &str,
    event: DpEvent,
) -> Result<f64, String> {
    charge_local_all(path, site, plan, &[(kind, subject.to_string(), event)])
}

/// Charges several releases made together (`(kind, subject, event)`
/// each) as [`charge_local`] charges one: all of them, or, where one would
/// be refused, none (checked together first, under the file's lock).
pub fn charge_local_all(
    path: &Path,
    site: &str,
    plan: &Plan,
    releases: &[(&str, String, DpEvent)],
) -> Result<f64, String> {
    let _lock = lock(path)?;
    let mut ledger = SiteLedger::open(Some(path), site, plan, "local")?;
    let mut trial = ledger.ledger.clone();
    for (kind, subject, event) in releases {
        ledger.refuse_repeated(kind, &ledger.described(subject))?;
        trial
            .record_participant(0, kind, subject, site, *event)
            .map_err(|e| format!("{}: {e}", ledger.described(subject)))?;
    }
    let mut spent = ledger.epsilon();
    for (kind, subject, event) in releases {
        spent = ledger.record_local(kind, subject, *event)?;
    }
    Ok(spent)
}

/// Takes the advisory lock of the ledger at `path` for as long as the
/// returned file is kept: a second process of the same site and folder is
/// refused, since two writers would lose each other's entries.
pub(crate) fn lock(path: &Path) -> Result<std::fs::File, String> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            format!(
                "{}: cannot open this site's ledger lock (--ledger): {e}",
                lock_path.display()
            )
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "{}: this site's privacy ledger is in use by another participant process; one \
             process at a time keeps a site's ledger (give another --ledger file only for \
             another site's data)",
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!(
            "{}: cannot lock this site's ledger: {e}",
            lock_path.display()
        )),
    }
}

/// With `per_site`, `site`'s own answer's `event` (charged to it alone).
fn own(per_site: bool, site: &str, event: DpEvent) -> Vec<(String, DpEvent)> {
    if per_site {
        vec![(site.to_string(), event)]
    } else {
        Vec::new()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn query_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl SiteLedger {
    /// The ledger of `site` for `plan` in run `run`, read from `path`
    /// (created on the first release) or kept in memory without one.
    pub(crate) fn open(
        path: Option<&Path>,
        site: &str,
        plan: &Plan,
        run: &str,
    ) -> Result<Self, String> {
        let file = match path {
            Some(path) => read(path, site)?,
            None => LedgerFile {
                format: FORMAT.into(),
                site: site.into(),
                plans: BTreeMap::new(),
            },
        };
        let plan_hash = tessera_engine::model_file::plan_hash(plan);
        let mut ledger = plan.privacy.ledger();
        let shown = path.map_or_else(|| "memory".into(), |p| p.display().to_string());
        for e in file
            .plans
            .get(&plan_hash)
            .iter()
            .flat_map(|p| &p.entries)
            .filter_map(|e| e.entry.clone())
        {
            ledger
                .restore(e)
                .map_err(|e| format!("{shown}: this site's privacy ledger: {e}"))?;
        }
        let central_round = match plan.privacy.mode {
            PrivacyMode::Central => Some(PrivacyConfig::round_event(
                plan.privacy
                    .noise_multiplier_for(plan.federation.rounds)
                    .map_err(|e| format!("the plan's [privacy]: {e}"))?,
            )),
            _ => None,
        };
        let before = file.plans.get(&plan_hash).map_or(0, |p| p.entries.len());
        if before > 0 {
            tracing::info!(
                ledger = %shown,
                releases = before,
                epsilon = ledger.participant_epsilon(site),
                "this site's own ledger already counts releases under this plan"
            );
        }
        Ok(Self {
            path: path.map(Path::to_path_buf),
            site: site.into(),
            plan_hash,
            plan_name: plan.name.clone(),
            run: run.into(),
            file,
            ledger,
            central_round,
            rounds: plan.federation.rounds,
        })
    }

    /// Where it is kept, for messages.
    fn shown(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "memory".into(), |p| p.display().to_string())
    }

    /// This site's epsilon under the plan, all runs.
    pub(crate) fn epsilon(&self) -> f64 {
        self.ledger.participant_epsilon(&self.site)
    }

    fn find(&self, kind: &str, release: u32) -> Option<&SiteEntry> {
        self.file.plans.get(&self.plan_hash).and_then(|p| {
            p.entries
                .iter()
                .find(|e| e.run == self.run && e.kind == kind && e.release == release)
        })
    }

    /// Whether this site may answer `query` as release `release` with DP
    /// `event` (twice with `per_site`: the federation's sum and its own
    /// answer): not a number it answered before (each answer draws fresh
    /// noise, so answering a number again would be a new release under an
    /// old charge), within the budgets by its own count.
    pub(crate) fn check_query(
        &self,
        release: u32,
        query: &str,
        event: Option<DpEvent>,
        per_site: bool,
    ) -> Result<(), String> {
        if let Some(before) = self.find("analytics", release) {
            let same = before.query.as_deref() == Some(query_hash(query).as_str());
            return Err(format!(
                "release {release} of run {} was already answered by this site ({} query; its \
                 ledger {}): a release number is answered once, each answer being fresh noise",
                self.run,
                if same { "the same" } else { "another" },
                self.shown()
            ));
        }
        if let Some(event) = event {
            self.ledger
                .check(
                    &self.described(&format!("query {release}")),
                    &[event],
                    &own(per_site, &self.site, event),
                    std::slice::from_ref(&self.site),
                )
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Records the answer to `query` as release `release` (checked first),
    /// on disk before it leaves.
    pub(crate) fn record_query(
        &mut self,
        release: u32,
        query: &str,
        event: Option<DpEvent>,
        per_site: bool,
    ) -> Result<(), String> {
        self.check_query(release, query, event, per_site)?;
        let site = self.site.clone();
        let (entry, own_entry) = match event {
            Some(event) => {
                let entry = self
                    .ledger
                    .record_central(release, event, std::slice::from_ref(&site))
                    .map_err(|e| e.to_string())?
                    .clone();
                let own_entry = if per_site {
                    Some(
                        self.ledger
                            .record_participant(
                                release,
                                "analytics-site",
                                &format!("query {release}'s own answer"),
                                &site,
                                event,
                            )
                            .map_err(|e| e.to_string())?
                            .clone(),
                    )
                } else {
                    None
                };
                (Some(entry), own_entry)
            }
            None => (None, None),
        };
        let hash = query_hash(query);
        if let Some(own_entry) = own_entry {
            self.add(
                "analytics-site",
                release,
                Some(hash.clone()),
                Some(own_entry),
            );
        }
        self.push("analytics", release, Some(hash), entry)
    }

    /// This site's data quality score under the plan (`[contribution]`):
    /// the one it released before, in any run of the plan this file kept,
    /// else `draw`'s, written here before it leaves. One release a plan
    /// (and file), not one a process or a run.
    pub(crate) fn quality(
        &mut self,
        draw: impl FnOnce() -> Result<f64, String>,
    ) -> Result<f64, String> {
        let kept = self.file.plans.get(&self.plan_hash).and_then(|p| {
            p.entries
                .iter()
                .find(|e| e.kind == "quality")
                .and_then(|e| e.score)
        });
        if let Some(score) = kept {
            return Ok(score);
        }
        let score = draw()?;
        self.add("quality", 0, None, None);
        if let Some(last) = self
            .file
            .plans
            .get_mut(&self.plan_hash)
            .and_then(|p| p.entries.last_mut())
        {
            last.score = Some(score);
        }
        if let Some(path) = &self.path {
            write(path, &self.file)?;
        }
        Ok(score)
    }

    /// Records this site's training in round `round` (with local DP its
    /// own `local` event; with central DP the plan's round event) before
    /// its update leaves; refused past a budget by this site's count.
    pub(crate) fn record_training(
        &mut self,
        round: u32,
        local: Option<DpEvent>,
    ) -> Result<(), String> {
        // With central DP a round is one release (the coordinator's noised
        // aggregate), whatever this site sent for it; with local DP each
        // training is its own, with fresh noise: every one is charged.
        if local.is_none() && self.find("training", round).is_some() {
            return Ok(());
        }
        let what = self.described(&format!("round {round}"));
        let site = self.site.clone();
        let entry = match (local, self.central_round) {
            // One check, refused naming `what` (as `record_local` records).
            (Some(event), _) => Some(
                self.ledger
                    .record_participant(round, "local", &what, &site, event)
                    .map_err(|e| e.to_string())?
                    .clone(),
            ),
            (None, Some(event)) => {
                self.ledger
                    .check(&what, &[event], &[], std::slice::from_ref(&site))
                    .map_err(|e| e.to_string())?;
                Some(
                    self.ledger
                        .record_central(round, event, std::slice::from_ref(&site))
                        .map_err(|e| e.to_string())?
                        .clone(),
                )
            }
            (None, None) => return Ok(()),
        };
        self.push("training", round, None, entry)
    }

    /// Records this site's answers to the other sites for the plan's
    /// cross-silo feature (`event`: all of them) before the first leaves:
    /// refused past a budget by this site's count, together with the plan's
    /// central-DP rounds (which come after). Each computation of the
    /// feature is a new release, charged again.
    pub(crate) fn record_cross_silo(
        &mut self,
        event: DpEvent,
        feature: &str,
    ) -> Result<(), String> {
        let what = self.described(&format!("the cross-silo feature '{feature}'"));
        let site = self.site.clone();
        // Without a budget nothing bounds repeated computations (each fresh
        // noise, averaged away over runs): the feature is then computed
        // once under the plan, its own epsilon the cap.
        if self.repeated_without_budget("cross_silo") {
            return Err(format!(
                "{what}: it was already computed under this plan and the plan sets no privacy \
                 budget ([privacy] budget or participant_budgets) that would bound a second \
                 computation"
            ));
        }
        if let Some(round) = self.central_round {
            let rounds = DpEvent {
                steps: round.steps.saturating_mul(u64::from(self.rounds)),
                ..round
            };
            self.ledger
                .check(
                    &format!("{what}, with the plan's {} rounds after it", self.rounds),
                    &[rounds],
                    &[(site.clone(), event)],
                    std::slice::from_ref(&site),
                )
                .map_err(|e| e.to_string())?;
        }
        let entry = self
            .ledger
            .record_participant(0, "cross_silo", &what, &site, event)
            .map_err(|e| e.to_string())?
            .clone();
        self.push("cross_silo", 0, None, Some(entry))
    }

    /// `subject`, with where this site's count stands, for refusals.
    fn described(&self, subject: &str) -> String {
        format!(
            "{subject}, by this site's own ledger {} ({} releases under this plan, epsilon {:.4} \
             so far)",
            self.shown(),
            self.entries(),
            self.epsilon()
        )
    }

    /// Whether a release of `kind` was already made under this plan and
    /// the plan sets no budget that would bound another (each fresh noise,
    /// averaged away over releases).
    /// Refuses `what`, a release of `kind`, where the plan sets no budget
    /// and this site already made one: without a budget nothing would
    /// bound repeated releases (each fresh noise, averaged away), so one
    /// of a kind under the plan, then.
    fn refuse_repeated(&self, kind: &str, what: &str) -> Result<(), String> {
        if self.repeated_without_budget(kind) {
            return Err(format!(
                "{what}: this site already released a {kind} release under this plan, and the \
                 plan sets no privacy budget ([privacy] budget or participant_budgets) that \
                 would bound another"
            ));
        }
        Ok(())
    }

    fn repeated_without_budget(&self, kind: &str) -> bool {
        let budgets = self.ledger.budgets();
        let unbounded = budgets.run.is_none() && !budgets.participants.contains_key(&self.site);
        unbounded
            && self
                .file
                .plans
                .get(&self.plan_hash)
                .is_some_and(|p| p.entries.iter().any(|e| e.kind == kind))
    }

    /// Charges a profile of this site's columns (`tessera profile`, for
    /// harmonization) before it is written: refused past a budget by this
    /// site's own count under the plan (by the plan's hash: an edited plan
    /// counts afresh, as for every release), and refused a second time
    /// where the plan sets no budget. Each profile is a new release.
    fn record_local(&mut self, kind: &str, subject: &str, event: DpEvent) -> Result<f64, String> {
        let what = self.described(subject);
        let site = self.site.clone();
        self.refuse_repeated(kind, &what)?;
        let entry = self
            .ledger
            .record_participant(0, kind, &what, &site, event)
            .map_err(|e| e.to_string())?
            .clone();
        self.push(kind, 0, None, Some(entry))?;
        Ok(self.epsilon())
    }

    /// Checks, before a run's first training, that the plan's `rounds`
    /// fit the budgets on top of what this site's ledger holds (earlier
    /// runs of the plan): with local DP at `local` a round, with central
    /// DP at the plan's round event. A restart within the run (whose
    /// rounds this site may not all train) is left to the check before
    /// each release, a fresh ledger to the plan's own check.
    pub(crate) fn check_run(&self, rounds: u32, local: Option<DpEvent>) -> Result<(), String> {
        let this_run = self.file.plans.get(&self.plan_hash).is_some_and(|p| {
            // The cross-silo feature is charged before the rounds are
            // checked: it does not make the run one already under way.
            p.entries
                .iter()
                .any(|e| e.run == self.run && e.kind != "cross_silo")
        });
        if this_run || self.entries() == 0 {
            return Ok(());
        }
        let what = format!(
            "the plan's {rounds} rounds, on top of this site's own ledger {} ({} releases under \
             this plan, epsilon {:.4} so far)",
            self.shown(),
            self.entries(),
            self.epsilon()
        );
        let site = std::slice::from_ref(&self.site);
        // Rounds of one Gaussian compose as one event of that many steps.
        let times = |event: DpEvent| DpEvent {
            steps: event.steps.saturating_mul(u64::from(rounds)),
            ..event
        };
        match (local, self.central_round) {
            (Some(event), _) => {
                self.ledger
                    .check(&what, &[], &[(self.site.clone(), times(event))], site)
            }
            (None, Some(event)) => self.ledger.check(&what, &[times(event)], &[], site),
            (None, None) => Ok(()),
        }
        .map_err(|e| e.to_string())
    }

    fn entries(&self) -> usize {
        self.file
            .plans
            .get(&self.plan_hash)
            .map_or(0, |p| p.entries.len())
    }

    /// Adds an entry and writes the file.
    fn push(
        &mut self,
        kind: &str,
        release: u32,
        query: Option<String>,
        entry: Option<LedgerEntry>,
    ) -> Result<(), String> {
        self.add(kind, release, query, entry);
        match &self.path {
            Some(path) => write(path, &self.file),
            None => Ok(()),
        }
    }

    /// Adds an entry in memory; past [`MAX_UNCHARGED`] entries without DP
    /// under the plan the oldest of them goes (they bound nothing, and a
    /// plan without DP could otherwise grow the file without end).
    fn add(&mut self, kind: &str, release: u32, query: Option<String>, entry: Option<LedgerEntry>) {
        let name = &self.plan_name;
        let plan = self
            .file
            .plans
            .entry(self.plan_hash.clone())
            .or_insert_with(|| PlanEntries {
                name: name.clone(),
                entries: Vec::new(),
            });
        plan.entries.push(SiteEntry {
            run: self.run.clone(),
            kind: kind.into(),
            release,
            query,
            recorded: now_secs(),
            entry,
            score: None,
        });
        let uncharged = plan.entries.iter().filter(|e| e.entry.is_none()).count();
        if uncharged > MAX_UNCHARGED
            && let Some(oldest) = plan
                .entries
                .iter()
                .position(|e| e.entry.is_none() && e.kind != "quality")
        {
            plan.entries.remove(oldest);
        }
    }
}

impl crate::Ready {
    /// Refuses, before training, a plan whose rounds do not fit this
    /// site's own ledger (a new run of a plan it already spent on), with
    /// local DP at its event on `train_rows` rows (the declared rows of an
    /// external learner).
    pub(crate) fn check_run(&self, train_rows: usize) -> Result<(), Failure> {
        let local = match &self.site {
            Some(site) => site
                .local_dp_event(train_rows)
                .map_err(|e| Failure::Fatal(ParticipantError::Local(e.to_string())))?,
            None => None,
        };
        self.site_ledger
            .check_run(self.plan.federation.rounds, local)
            .map_err(|e| {
                tracing::error!(why = %e, "plan refused by this site's own ledger");
                Failure::Fatal(ParticipantError::Stop(crate::cause::Cause::PlanRefused(e)))
            })
    }
}

/// The file at `path` (an empty ledger where there is none), refused when
/// it is too large, not this format, or another site's.
fn read(path: &Path, site: &str) -> Result<LedgerFile, String> {
    let fail = |what: String| {
        format!(
            "{}: this site's privacy ledger (--ledger): {what}",
            path.display()
        )
    };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(LedgerFile {
                format: FORMAT.into(),
                site: site.into(),
                plans: BTreeMap::new(),
            });
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(fail(format!(
            "{} bytes, over the {} MiB a ledger may have",
            meta.len(),
            MAX_FILE_BYTES >> 20
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let file: LedgerFile = serde_json::from_str(&text).map_err(|e| {
        fail(format!(
            "not a ledger this version reads ({e}); it is not replaced: move it away only if \
             this site's earlier releases are counted elsewhere"
        ))
    })?;
    if file.format != FORMAT {
        return Err(fail(format!(
            "format '{}', expected '{FORMAT}'",
            file.format
        )));
    }
    if file.site != site {
        return Err(fail(format!(
            "it is site '{}''s ledger, and this is site '{site}'",
            file.site
        )));
    }
    Ok(file)
}

/// Writes `file` to `path` atomically (a temporary file beside it,
/// synced, renamed over it).
fn write(path: &Path, file: &LedgerFile) -> Result<(), String> {
    let fail = |e: std::io::Error| {
        format!(
            "{}: cannot write this site's privacy ledger: {e}",
            path.display()
        )
    };
    let text = serde_json::to_string(file).map_err(|e| e.to_string())?;
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(name);
    let _ = std::fs::remove_file(&tmp);
    // The owner's only, created anew (never through a link left there).
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(&tmp).map_err(fail)?;
    out.write_all(text.as_bytes()).map_err(fail)?;
    out.sync_all().map_err(fail)?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(fail)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// With local DP, training that would exceed this site's budget over the
/// plan's rounds (on `train_rows` rows) is refused up front.
pub(crate) fn check_local_budget(
    plan: &Plan,
    site_name: &str,
    site: &Site,
    train_rows: usize,
) -> Result<(), Failure> {
    if plan.privacy.mode != tessera_privacy::PrivacyMode::Local {
        return Ok(());
    }
    let local_error = |e: String| Failure::Fatal(ParticipantError::Local(e));
    if let Some(event) = site
        .local_dp_event(train_rows)
        .map_err(|e| local_error(e.to_string()))?
    {
        plan.privacy
            .ledger()
            .check_local_run(plan.federation.rounds, &[(site_name.to_string(), event)])
            .map_err(|e| local_error(e.to_string()))?;
        tracing::info!(
            noise_multiplier = event.noise_multiplier,
            sampling_rate = event.sampling_rate,
            "local DP-SGD"
        );
    }
    Ok(())
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
