//! The run's lifecycle as its operator drives it. `tessera stop` (end the
//! run once the open round closes) and `tessera abort` (end it now) are
//! written into the database by another process; the serving loop reads
//! them here every second. An abort is also marked in the run's status at
//! once, so that a run whose coordinator is gone for good can be ended, and
//! a restart never resumes it.

use super::{Federation, Phase, Refusal};
use crate::store::{Control, RunStatus};

impl Federation {
    /// Reads the operators' requests for this run that the database holds
    /// and acts on new ones: a stop ends the run once the open round (and
    /// its evaluation) closes, keeping that round's model; an abort ends it
    /// now, and every later call is refused with its reason.
    pub fn check_control(&mut self) {
        if self.aborted.is_some() || self.fatal.is_some() || self.is_finished() {
            return;
        }
        // Another coordinator leads now (a shared database): this one stops
        // at once, exit 70, and restarted waits as a standby.
        if let Some(why) = self.store.lease_lost() {
            let _ = self.fail("this coordinator no longer leads", why);
            return;
        }
        let controls = match self.store.controls(&self.run.id) {
            Ok(controls) => controls,
            Err(e) => {
                tracing::warn!(%e, "cannot read the operators' requests");
                return;
            }
        };
        let new: Vec<_> = controls.into_iter().skip(self.controls_seen).collect();
        self.controls_seen += new.len();
        for control in new {
            let reason = if control.reason.is_empty() {
                "no reason given".to_string()
            } else {
                tessera_core::shown(&control.reason, 200).into_owned()
            };
            match control.action {
                Control::Stop if self.stop_requested.is_none() => {
                    tracing::warn!(
                        %reason,
                        "the operator stops the run: it ends once the open round closes"
                    );
                    self.audit("-", "run", "stop requested", &reason);
                    self.stop_requested = Some(reason);
                    // Nothing to finish yet: the run ends at once.
                    if matches!(self.phase, Phase::Agreeing) {
                        self.abort("stopped by its operator before the first round".to_string());
                    }
                    self.version += 1;
                }
                Control::Stop => {}
                Control::Abort => {
                    self.abort(reason);
                    return;
                }
            }
        }
    }

    fn abort(&mut self, reason: String) {
        tracing::error!(%reason, "the operator aborted the run");
        self.audit("-", "run", "aborted", &reason);
        if let Err(e) = self.store.end_run(&self.run.id, RunStatus::Aborted) {
            tracing::error!(%e, "cannot mark the run aborted");
        }
        self.aborted = Some(reason);
        self.version += 1;
    }

    /// Why the run was aborted by its operator, if it was: the serving loop
    /// then tells the sites for a few seconds and stops.
    pub fn aborted(&self) -> Option<&str> {
        self.aborted.as_deref()
    }

    /// Whether the operator asked the run to stop after the open round.
    pub(super) fn stopping_after_round(&self) -> bool {
        self.stop_requested.is_some()
    }

    /// The run's status once its last round is done: finished, or stopped
    /// early by its operator.
    pub(super) fn end_status(&self) -> RunStatus {
        match self.stop_requested {
            Some(_) => RunStatus::Stopped,
            None => RunStatus::Finished,
        }
    }

    /// Ends the run after its last round (the plan's last, or the open one
    /// when the operator asked to stop): stored, audited, told.
    pub(super) fn end_after_last_round(
        &mut self,
        what: &str,
    ) -> Result<(), crate::CoordinatorError> {
        let status = self.end_status();
        self.store.end_run(&self.run.id, status)?;
        let detail = match &self.stop_requested {
            Some(reason) => format!("{what}; stopped early by its operator: {reason}"),
            None => what.to_string(),
        };
        self.audit("-", "run", status.as_str(), &detail);
        self.phase = Phase::Finished;
        self.start_serving();
        self.version += 1;
        Ok(())
    }

    /// Audits that a signal stopped this coordinator (the run resumes when
    /// it starts again).
    pub fn audit_stop(&mut self, signal: &str) {
        self.audit(
            "-",
            "coordinator",
            "stopped",
            &format!("by {signal}; the run resumes when the coordinator starts again"),
        );
    }

    /// Refuses every call once the operator aborted the run.
    pub(super) fn refuse_if_aborted(&self) -> Result<(), Refusal> {
        match &self.aborted {
            Some(reason) => Err(Refusal::Denied(format!(
                "the run was aborted by its operator: {reason}"
            ))),
            None => Ok(()),
        }
    }
}
