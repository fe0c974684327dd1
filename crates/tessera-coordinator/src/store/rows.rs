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
    /// `running`, `finished`, `stopped` (ended early by its operator,
    /// after a round) or `aborted` (ended at once by its operator): see
    /// [`RunStatus`].
    pub status: String,
}

/// Where a run stands, as `runs.status` stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Rounds run, or will when the coordinator starts again.
    Running,
    /// Every round of the plan ran.
    Finished,
    /// Its operator ended it after a round (`tessera stop`): the last
    /// completed round's model is the run's.
    Stopped,
    /// Its operator ended it at once (`tessera abort`), a coordinator
    /// running or not: it never resumes.
    Aborted,
}

impl RunStatus {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Stopped => "stopped",
            RunStatus::Aborted => "aborted",
        }
    }

    /// The status stored as `text`, if known.
    pub fn parse(text: &str) -> Option<Self> {
        [
            RunStatus::Running,
            RunStatus::Finished,
            RunStatus::Stopped,
            RunStatus::Aborted,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// What an operator asks of a running run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// End the run once the open round closes.
    Stop,
    /// End the run now.
    Abort,
}

impl Control {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Control::Stop => "stop",
            Control::Abort => "abort",
        }
    }

    /// The request stored as `text`; unknown text is a damaged record.
    pub fn stored(text: &str) -> Result<Self, super::StoreError> {
        match text {
            "stop" => Ok(Control::Stop),
            "abort" => Ok(Control::Abort),
            other => Err(super::StoreError::Damaged(format!(
                "unknown run control '{}'",
                tessera_core::shown(other, 40)
            ))),
        }
    }
}

/// An operator's request, as stored (`tessera stop`, `tessera abort`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlRow {
    /// What was asked.
    pub action: Control,
    /// Why, in the operator's words.
    pub reason: String,
    /// When, microseconds since the Unix epoch.
    pub at_unix_micros: u64,
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
    /// Its test rows and test-loss gradient at the round's start, where the
    /// plan attributes (`[contribution]`).
    pub test_gradient: Option<(u64, ParameterSet)>,
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

/// A step of the data agreement. Stored as its number (1, 2, 3, 4), as
/// coordinators always stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AgreementStep {
    /// Each site's column kinds.
    Kinds,
    /// Each site's sets of levels and declared row counts: the vocabulary.
    Levels,
    /// Each site's feature statistics (federation-scope standardisation).
    Statistics,
    /// An external model's one step: each site's row counts and initial
    /// parameters; its result the agreed layout (`ExternalAgreement`).
    External,
}

impl AgreementStep {
    /// Every step, in order.
    pub const ALL: [AgreementStep; 4] =
        [Self::Kinds, Self::Levels, Self::Statistics, Self::External];

    /// Its number in the database.
    pub fn code(self) -> u32 {
        match self {
            Self::Kinds => 1,
            Self::Levels => 2,
            Self::Statistics => 3,
            Self::External => 4,
        }
    }

    /// The step numbered `code`.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Its name in logs and `tessera status`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kinds => "kinds",
            Self::Levels => "levels",
            Self::Statistics => "statistics",
            Self::External => "external",
        }
    }
}

impl std::fmt::Display for AgreementStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The open round as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRoundRow {
    /// The round (or asynchronous step).
    pub round: u32,
    /// Its cohort.
    pub cohort: Vec<ParticipantId>,
    /// When it opened (run clock).
    pub opened: Timestamp,
}

/// A closed round's report line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundRow {
    /// The round.
    pub round: u32,
    /// How it ended.
    pub status: String,
    /// Its report line, JSON.
    pub record: String,
    /// Whether its evaluation finished (the line is final).
    pub evaluated: bool,
}

/// A site's evaluation of a round's model, as it sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluationRow {
    /// The site.
    pub site: String,
    /// Its report, encoded.
    pub report: Vec<u8>,
}

/// A stored model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelRow {
    /// The version (rounds applied).
    pub version: u32,
    /// Its size, bytes encoded.
    pub bytes: u64,
    /// When it was stored (run clock).
    pub created: Timestamp,
}
