//! What the federation knows of its sites right now (liveness is kept in
//! memory, not in the database): for the live dashboard; and what a site is
//! asked to do next ([`TaskView`]).

use std::sync::Arc;

use tessera_core::ParameterSet;
use tessera_proto::pb;

use super::{Federation, ModelPart};

/// One joined site as the coordinator sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteView {
    /// Its name.
    pub site: String,
    /// `live` (heard from within the liveness period), `silent` (heard
    /// from, longer ago), or `not heard from` (since this coordinator
    /// started, or since it left the run).
    pub state: &'static str,
    /// When it was last heard from, microseconds since the Unix epoch.
    pub last_seen_unix_micros: Option<u64>,
}

impl Federation {
    /// Every joined site, by name, with its state and when it was last heard from.
    pub fn sites(&self) -> Vec<SiteView> {
        let now = self.now();
        self.roster
            .joined()
            .iter()
            .map(|site| {
                let seen = self.roster.last_seen(site);
                let state = match seen {
                    None => "not heard from",
                    Some(_) if self.roster.is_stale(site, now) => "silent",
                    Some(_) => "live",
                };
                SiteView {
                    site: site.clone(),
                    state,
                    last_seen_unix_micros: seen
                        .map(|t| self.run.created_unix_micros.saturating_add(t.0)),
                }
            })
            .collect()
    }

    /// The liveness period: silence after which a site counts as gone.
    pub fn liveness(&self) -> std::time::Duration {
        self.roster.liveness()
    }
}

/// What a participant should do next.
pub enum TaskView {
    /// Nothing yet: ask again when something changes.
    Wait,
    /// Train from `global` as the instructions in `header` say, and send an update.
    Fit {
        /// What the task is.
        header: pb::TaskHeader,
        /// The global parameters.
        global: Arc<ParameterSet>,
        /// The instructions' tensors (SCAFFOLD's server control variate).
        tensors: Option<Arc<ParameterSet>>,
        /// How `global` travels.
        model: ModelPart,
    },
    /// Evaluate `global`.
    Evaluate {
        /// What the task is.
        header: pb::TaskHeader,
        /// The parameters to evaluate.
        global: Arc<ParameterSet>,
        /// How `global` travels.
        model: ModelPart,
    },
    /// The run is over.
    Finished,
    /// Answer the analytics query in `header` (no model follows).
    Analyze {
        /// What the task is.
        header: pb::TaskHeader,
    },
    /// A rollout's task: `files` (model files) follow `header` as pieces.
    Rollout {
        /// What the task is.
        header: pb::TaskHeader,
        /// The model files, in the order the header names them.
        files: Vec<Arc<Vec<u8>>>,
    },
    /// The rollout is over: every site serves `serve`.
    RolloutOver {
        /// The version served.
        serve: pb::ServedModel,
        /// The decision, in words.
        reason: String,
    },
}
