//! Secure asynchronous buffers in deployment (1.28, `secure-buffers`): in
//! an asynchronous run under secure aggregation no update arrives in the
//! clear. A site that has trained from model version `base` joins a buffer
//! (`SecAggBufferJoin`) and waits; when `buffer_size` live sites wait, the
//! first of them (in the order they joined) are seated in a SecAgg+ round of
//! their own (`SecAggSeat`: its number and each one's staleness, taken
//! then), each multiplies its update by the plan's staleness discount at its
//! site and masks it, and the engine steps with the recovered sum over the
//! survivors' number ([`tessera_engine::BufferedEngine::submit_sum`]), as
//! the simulation's secure buffers do (`tessera-sim` `asynchronous.rs`).
//!
//! One secure round at a time: the next buffer fills while one runs. Its
//! stages are the synchronous rounds' ([`super::secure`]); a site that drops
//! after sharing its keys has its masks removed and its update left out, and
//! a site that withdraws from the round is not waited for. Nothing of a
//! buffer is stored before its step: after a coordinator restart seated
//! sites are told their round is over and train again, waiting ones join
//! again as they poll; round numbers go on above every one the audit log
//! shows seated (a site's key ring refuses a round it has answered).
//!
//! Adversaries: a site cannot send its update in the clear (refused: it
//! would void the buffer's sum), join with a model version from the future,
//! past the staleness bound or older than the one it waits with (refused,
//! naming which), nor be seated twice in one buffer. A member that is not a
//! survivor of a round that took no step (every member, when the sum did
//! not fit what the survivors declared) is seated after the other waiting
//! sites until it survives one or is passed over once, so a site that
//! fails rounds on purpose fails at most about every other buffer, and no
//! honest site waits for ever. Ten rounds in a row without a step (no
//! seating leaves the failures out: a buffer of every site, say) stop the
//! run, saying why. Who is held back is not stored: a restart forgets it.
//! A coordinator that lies about a site's staleness
//! changes only that site's weight, within the plan's bound, which the site
//! checks; it learns each buffer's sum, as a synchronous secure round's. A
//! site's own weight is bounded by the plan's clipping only: one that skips
//! its discount counts as a fresh update.

use std::collections::{BTreeMap, BTreeSet};

use tessera_core::{ParticipantId, Timestamp};
use tessera_proto::pb;
use tessera_proto::pb::sec_agg_reply::State as Reply;

use super::secure::SecureRound;
use super::{Federation, Refusal};
use crate::telemetry::names;

/// The sites waiting for a buffer and those seated in the open one.
#[derive(Default)]
pub(super) struct SecureBuffers {
    /// Sites waiting, with the model version their update was trained
    /// from, in the order they joined.
    waiting: Vec<(String, u32)>,
    /// The open buffer round's number and its members with their
    /// staleness, in the order they joined.
    seated: Option<(u32, Vec<(String, u32)>)>,
    /// Sites refused after they joined (their update became too stale
    /// before their buffer filled), and why: told at their next join.
    refused: BTreeMap<String, String>,
    /// The last buffer round opened: each takes a new number.
    opened: u32,
    /// Members that did not survive a round that took no step: seated after
    /// the other waiting sites until they survive one or are passed over once.
    held_back: BTreeSet<String>,
    /// Buffer rounds in a row that took no step.
    failures: u32,
}

/// Buffer rounds in a row without a step before the run stops, saying why.
/// Those that fail them are held back and seated in turn, so a site that
/// fails rounds on purpose fails at most about every other one; this many in
/// a row means no seating leaves the failures out (a buffer of every site,
/// say), and the run would turn for ever.
const MAX_FAILURES: u32 = 10;

/// How the audit log names a buffer round when it seats it (read back at a
/// restart, [`Federation::restore_buffer_rounds`]).
const SEATED: &str = "buffer round ";

impl SecureBuffers {
    /// The seat of `site` in the open buffer round, if it has one.
    fn seat_of(&self, site: &str) -> Option<pb::SecAggSeat> {
        let (round, members) = self.seated.as_ref()?;
        let staleness = members.iter().find(|(s, _)| s == site)?.1;
        Some(pb::SecAggSeat {
            round: *round,
            staleness,
        })
    }
}

impl Federation {
    /// Whether this run sums its asynchronous buffers securely.
    pub(super) fn has_secure_buffers(&self) -> bool {
        self.plan.secure_aggregation.enabled && self.training.is_async()
    }

    /// `site` has an update trained from model version `base` and waits for
    /// a buffer: its seat once the buffer is full, `Wait` until then, `Done`
    /// when every step is taken. Refused when the run has no secure buffers,
    /// or the update is from the future or past the staleness bound.
    pub(super) fn buffer_join(
        &mut self,
        site: &str,
        base: u32,
        now: Timestamp,
    ) -> Result<Reply, Refusal> {
        if let Some(seat) = self.buffers.seat_of(site) {
            return Ok(Reply::Seat(seat));
        }
        if let Some(why) = self.buffers.refused.remove(site) {
            // Audited when it was decided.
            return Err(Refusal::Invalid(why));
        }
        if !self.has_secure_buffers() {
            let why = "this run has no secure buffers (they serve asynchronous runs under \
                       secure aggregation)";
            self.audit(site, "buffer", "rejected", why);
            return Err(Refusal::Invalid(why.into()));
        }
        let Some(buffered) = self.training.buffered() else {
            return Err(Refusal::Invalid("no model yet".into()));
        };
        if buffered.is_finished() || self.stop_requested.is_some() {
            self.buffers.waiting.retain(|(s, _)| s != site);
            return Ok(Reply::Done(true));
        }
        let known = self.buffers.waiting.iter().position(|(s, _)| s == site);
        if let Some(held) = known.map(|i| self.buffers.waiting[i].1)
            && base < held
        {
            // Only a newer update replaces the one it waits with (each
            // change is audited: bounded by the steps taken).
            let why = format!(
                "'{site}' waits with an update from model {held}; one from model {base} cannot \
                 replace it"
            );
            self.audit(site, "buffer", "rejected", &why);
            return Err(Refusal::Invalid(why));
        }
        if known.is_none_or(|i| self.buffers.waiting[i].1 != base) {
            if let Err(rejection) = buffered.admit(base) {
                metrics::counter!(names::REJECTED, "reason" => rejection.label()).increment(1);
                let reason = rejection.to_string();
                self.audit(
                    site,
                    "buffer",
                    "rejected",
                    &format!("from model {base}: {reason}"),
                );
                return Err(Refusal::Invalid(reason));
            }
            match known {
                // Another update of the site's replaces the one it waited with.
                Some(i) => self.buffers.waiting[i].1 = base,
                None => self.buffers.waiting.push((site.to_string(), base)),
            }
            self.audit(site, "buffer", "joined", &format!("from model {base}"));
            self.version += 1;
        }
        self.open_buffer(now);
        Ok(match self.buffers.seat_of(site) {
            Some(seat) => Reply::Seat(seat),
            None => Reply::Wait(true),
        })
    }

    /// Opens the next buffer's secure round when none runs and enough live
    /// sites wait: the first `buffer_size` of them, each with its staleness
    /// now. A site whose update has become too stale is refused (told at its
    /// next join) and the others wait on.
    pub(super) fn open_buffer(&mut self, now: Timestamp) {
        if self.secure.is_some() || self.buffers.seated.is_some() || !self.has_secure_buffers() {
            return;
        }
        let Some(buffered) = self.training.buffered() else {
            return;
        };
        if buffered.is_finished() || self.stop_requested.is_some() || self.stopped.is_some() {
            return;
        }
        let size = buffered.buffer_size();
        if self.buffers.waiting.len() < size {
            return;
        }
        // A site silent past the liveness period would drop out of the
        // round at once: it waits no longer (it joins again when it calls).
        let live = self.live(now);
        self.buffers.waiting.retain(|(s, _)| live.contains(s));
        if self.buffers.waiting.len() < size {
            return;
        }
        // Those held back after a failed round last, each in join order.
        let held = &self.buffers.held_back;
        self.buffers
            .waiting
            .sort_by_key(|(s, _)| held.contains(s.as_str()));
        let mut members = Vec::with_capacity(size);
        let mut refused = Vec::new();
        for (site, base) in self.buffers.waiting.drain(..size) {
            match buffered.admit(base) {
                Ok(staleness) => members.push((site, base, staleness)),
                Err(rejection) => refused.push((site, base, rejection.to_string())),
            }
        }
        // A site held back and passed over once is seated in its turn next
        // time: no site waits for ever.
        for (site, _) in &self.buffers.waiting {
            self.buffers.held_back.remove(site.as_str());
        }
        for (site, base, reason) in refused {
            self.audit(
                &site,
                "buffer",
                "rejected",
                &format!("from model {base}: {reason}"),
            );
            self.buffers.refused.insert(site, reason);
        }
        if members.len() < size {
            // Back to the front, in their order, for the next buffer.
            let back = members.into_iter().map(|(site, base, _)| (site, base));
            self.buffers.waiting.splice(0..0, back);
            self.version += 1;
            return;
        }
        let version = buffered.current().1;
        let n_values = buffered.current().0.n_values();
        let round = self.buffers.opened.max(version) + 1;
        self.buffers.opened = round;
        let members: Vec<(String, u32)> = members
            .into_iter()
            .map(|(site, _, staleness)| (site, staleness))
            .collect();
        let mut names: Vec<&str> = members.iter().map(|(s, _)| s.as_str()).collect();
        names.sort_unstable();
        let made = self.open_training_stages(round, names.into_iter(), n_values, now);
        self.version += 1;
        match made {
            Ok((stages, effects)) => {
                let who: Vec<&str> = members.iter().map(|(s, _)| s.as_str()).collect();
                let detail = format!(
                    "{SEATED}{round} for step {}: {}",
                    version + 1,
                    who.join(", ")
                );
                self.audit("-", "buffer", "seated", &detail);
                self.secure = Some(SecureRound::of_stages(round, stages));
                self.buffers.seated = Some((round, members));
                self.apply_secure(effects);
            }
            Err(e) => {
                // Cannot happen with a plan that passed its checks; the
                // members are told, and train again.
                let reason = format!("buffer round {round} cannot start: {e}");
                tracing::error!(round, %e, "a secure buffer cannot start");
                self.audit("-", "secure-aggregation", "failed", &reason);
                for (site, _) in members {
                    self.buffers.refused.insert(site, reason.clone());
                }
            }
        }
    }

    /// The buffer round `secure` is over: the engine steps with its
    /// survivors' sum, over their number. A round whose sum cannot be
    /// recovered, or whose sums do not fit what its survivors declared,
    /// takes no step; its members train again.
    pub(super) fn finish_buffer(&mut self, secure: &SecureRound, now: Timestamp) {
        let round = secure.round;
        let members = match self.buffers.seated.take() {
            Some((seated, members)) if seated == round => members,
            other => {
                self.buffers.seated = other;
                return;
            }
        };
        let stages = secure.stages();
        let Some(global) = self.training.buffered().map(|b| b.current().0) else {
            return;
        };
        let names = stages.survivor_names();
        // A sum that does not fit what the survivors declared: one of them
        // lied, and which one cannot be told.
        let mut implausible = false;
        let result = self
            .recover_checked(stages, round, &global, &format!("buffer round {round}"))
            .map_err(|(reason, lied)| {
                implausible = lied;
                reason
            });
        let contributions: Vec<(ParticipantId, u32)> = members
            .iter()
            .filter(|(s, _)| names.contains(&s.as_str()))
            .map(|(s, staleness)| (ParticipantId::new(s.as_str()), *staleness))
            .collect();
        self.version += 1;
        // The operator stopped the run (or its last step came) while the
        // round ran: the run takes no more steps, and nothing failed.
        if self.stop_requested.is_some()
            || !matches!(self.phase, super::Phase::Training)
            || self.training.buffered().is_none_or(|b| b.is_finished())
        {
            let detail = format!("buffer round {round}: no step, the run takes no more");
            self.audit("-", "secure-aggregation", "ended", &detail);
            return;
        }
        let stepped = result.and_then(|sum| {
            let buffered = self
                .training
                .buffered_mut()
                .ok_or_else(|| "no model".to_string())?;
            buffered
                .submit_sum(contributions, &sum)
                .map_err(|e| e.to_string())
        });
        match stepped {
            Ok(step) => {
                self.buffers.failures = 0;
                for (site, _) in &step.contributions {
                    self.buffers.held_back.remove(site.as_str());
                }
                let detail = format!(
                    "buffer round {round}: the sum of {} of {} updates; step {} taken",
                    step.contributions.len(),
                    members.len(),
                    step.version
                );
                self.audit("-", "secure-aggregation", "completed", &detail);
                metrics::counter!(names::ACCEPTED).increment(step.contributions.len() as u64);
                // A database that cannot hold the step stops the coordinator.
                let _ = self.commit_step(step, now);
            }
            Err(e) => {
                tracing::warn!(round, %e, "a secure buffer took no step");
                self.audit(
                    "-",
                    "secure-aggregation",
                    "failed",
                    &format!("buffer round {round}: {e}; its members train again"),
                );
                for (site, _) in &members {
                    if implausible || !names.contains(&site.as_str()) {
                        self.buffers.held_back.insert(site.clone());
                    }
                }
                self.buffers.failures += 1;
                if self.buffers.failures >= MAX_FAILURES && self.stopped.is_none() {
                    let reason = format!(
                        "{MAX_FAILURES} secure buffer rounds in a row took no step (the sites \
                         cannot be seated so as to leave out the ones that fail them); the \
                         last: {e}"
                    );
                    tracing::error!(%reason, "the run stops");
                    self.audit("-", "run", "stopped", &reason);
                    self.stopped = Some(reason);
                }
            }
        }
    }

    /// `site` withdraws from buffer round `round` (its checks of the round
    /// failed), or with `leaving` from the run: it waits no longer. True
    /// when it is seated in that round (or leaving and seated), which then
    /// stops waiting for it.
    pub(super) fn buffer_withdraw(&mut self, site: &str, round: u32, leaving: bool) -> bool {
        if !self.has_secure_buffers() {
            return false;
        }
        if leaving {
            self.buffers.waiting.retain(|(s, _)| s != site);
        }
        let seated = self.buffers.seated.as_ref().is_some_and(|(r, members)| {
            (*r == round || leaving) && members.iter().any(|(s, _)| s == site)
        });
        if seated {
            self.version += 1;
        }
        seated
    }

    /// At a restart: buffer rounds go on above every one the audit log
    /// shows seated, so that no site is asked into a round it answered.
    pub(super) fn restore_buffer_rounds(&mut self, run: &str) -> Result<(), crate::StoreError> {
        if !self.has_secure_buffers() {
            return Ok(());
        }
        let highest = self
            .store
            .audit_log(run)?
            .into_iter()
            .filter(|a| a.action == "buffer" && a.outcome == "seated")
            .filter_map(|a| {
                let rest = a.detail.strip_prefix(SEATED)?;
                rest.split(' ').next()?.parse::<u32>().ok()
            })
            .max()
            .unwrap_or(0);
        self.buffers.opened = self.buffers.opened.max(highest);
        Ok(())
    }
}
