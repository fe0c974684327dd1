//! What a piece of the orchestrator asks its driver to do.

use tessera_core::Timestamp;

/// One entry for the run's audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// The site it concerns, if one.
    pub site: Option<String>,
    /// What happened, as a short stable name (`"refused"`, `"dropped"`...).
    pub event: String,
    /// Why, in words.
    pub detail: String,
}

/// Something a piece asks its driver to do; `P` is what the piece persists
/// (each piece names its own rows).
#[derive(Debug, Clone, PartialEq)]
pub enum Effect<P> {
    /// Write this to the run's store before answering anyone.
    Persist(P),
    /// Append to the audit log.
    Audit(Audit),
    /// Call the piece again at this time (a deadline).
    Wake(Timestamp),
    /// The run cannot go on: stop, and say why.
    Fatal(String),
}

impl<P> Effect<P> {
    /// An audit effect.
    pub fn audit(site: Option<&str>, event: &str, detail: impl Into<String>) -> Self {
        Effect::Audit(Audit {
            site: site.map(str::to_string),
            event: event.to_string(),
            detail: detail.into(),
        })
    }
}
