//! The rows the store reads and writes, typed.

use tessera_aggregate::RoundAggregate;
use tessera_core::{ParameterSet, ParticipantId, Timestamp, Update};

pub use tessera_orchestrator::privacy::LedgerRow;

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// Run id.
    pub id: String,
    /// Plan name.
    pub name: String,
    /// Plan text.
    pub plan: String,
    /// Strategy.
    pub strategy: String,
    /// Seed.
    pub seed: u64,
    /// Planned rounds.
    pub rounds: u32,
    /// Creation time, microseconds since the Unix epoch: the run clock's zero.
    pub created_unix_micros: u64,
    /// `running` or `finished`.
    pub status: String,
}

/// Everything stored when a round closes.
#[derive(Debug, Clone, Copy)]
pub struct RoundClose<'a> {
    /// The round.
    pub round: u32,
    /// The aggregate the strategy applied (completed rounds).
    pub aggregate: Option<&'a RoundAggregate>,
    /// The model after the round.
    pub model: &'a ParameterSet,
    /// How it ended.
    pub status: &'a str,
    /// Its report line, JSON.
    pub record_json: &'a str,
    /// Its cohort.
    pub cohort: &'a [String],
    /// Whose updates counted.
    pub counted: &'a [String],
    /// When it closed.
    pub at: Timestamp,
    /// With central DP: the release's ledger row.
    pub privacy: Option<&'a LedgerRow>,
}

/// A closed round's cohort and whose updates counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CohortRow {
    /// The round.
    pub round: u32,
    /// Its cohort.
    pub cohort: Vec<String>,
    /// Whose updates counted.
    pub counted: Vec<String>,
}

/// An accepted update as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUpdate {
    /// Who sent it.
    pub site: ParticipantId,
    /// The model version it trained from.
    pub base: u32,
    /// The update.
    pub update: Update,
    /// When it was accepted (run clock).
    pub at: Timestamp,
}

/// Offers of an agreement step: (site, encoded offer).
pub type Offers = Vec<(String, Vec<u8>)>;

/// An audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Run clock, microseconds.
    pub at_micros: u64,
    /// Who.
    pub site: String,
    /// What they did.
    pub action: String,
    /// `accepted`, `rejected`, ...
    pub outcome: String,
    /// Why, or what.
    pub detail: String,
}
