//! One live process per site: a participant's `Join` carries its process's
//! session, and a second process of a site whose first is still live is
//! refused (and audited) until the first has been silent for the liveness
//! period or has left the run; then it takes over.

use tessera_orchestrator::Claim;

use super::{Federation, Refusal};

impl Federation {
    /// Whether the process with `session` may speak for `site` now (a join
    /// without a session is not checked). A refusal is audited and does
    /// not count as hearing from the site.
    pub(super) fn claim_session(
        &mut self,
        site: &str,
        session: Option<&str>,
    ) -> Result<(), Refusal> {
        let Some(session) = session.filter(|s| !s.is_empty()) else {
            return Ok(());
        };
        let now = self.now();
        match self.roster.claim(site, session, now) {
            Ok(Claim::Held) => Ok(()),
            Ok(Claim::TakenOver) => {
                self.audit(
                    site,
                    "join",
                    "took over",
                    &format!(
                        "a new process replaces one silent for more than the liveness period \
                         ({:.1} s) or gone",
                        self.roster.liveness().as_secs_f64()
                    ),
                );
                Ok(())
            }
            Err(in_use) => {
                let reason = format!(
                    "site '{site}' is already served by another live process (heard from {:.1} s \
                     ago): two processes of one site would take each other's tasks; stop the \
                     other one, or this one takes over once it has been silent for {:.1} s (the \
                     liveness period)",
                    in_use.heard.as_secs_f64(),
                    in_use.liveness.as_secs_f64()
                );
                self.audit(site, "join", "refused", &reason);
                tracing::warn!(%site, %reason, "second process refused");
                Err(Refusal::InUse(reason))
            }
        }
    }
}
