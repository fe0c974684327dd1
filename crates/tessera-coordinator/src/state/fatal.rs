//! A fatal failure: the database failed a write the engine had already
//! counted (an accepted update, its privacy-ledger release, a buffered
//! step). The engine's memory and the database now disagree, so nothing
//! more may be acknowledged: every call is refused as unavailable (the
//! participants retry), the serving loop stops and returns
//! [`crate::CoordinatorError::Fatal`], and a restart on the same database
//! resumes from what it holds.

use super::{Federation, Refusal};

impl Federation {
    /// Why the coordinator stopped on a fatal database failure, if it did
    /// (the first one): the serving loop then stops at once and returns it.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// Records the fatal failure `what` (`error`) met after the engine
    /// counted the call: logs and audits it, keeps the first reason, and
    /// gives the refusal for the caller, which retries once the coordinator
    /// restarted.
    pub(super) fn fail(&mut self, what: &str, error: impl std::fmt::Display) -> Refusal {
        let reason = format!("{what}: {error}");
        tracing::error!(%reason, "fatal database failure: the coordinator stops");
        self.audit("-", "coordinator", "fatal", &reason);
        self.fatal.get_or_insert(reason);
        // Calls waiting for a change ask again, and are refused.
        self.version += 1;
        self.stopping()
    }

    /// Refuses every call once the coordinator failed fatally.
    pub(super) fn refuse_if_fatal(&self) -> Result<(), Refusal> {
        match self.fatal {
            Some(_) => Err(self.stopping()),
            None => Ok(()),
        }
    }

    fn stopping(&self) -> Refusal {
        let reason = self.fatal.as_deref().unwrap_or("a database failure");
        Refusal::Unavailable(format!(
            "the coordinator is stopping: {reason}; try again once it has restarted"
        ))
    }
}
