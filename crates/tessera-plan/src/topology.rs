//! The plan's `[topology]`: flat (one coordinator), hierarchical (a tree of
//! aggregators of any depth), or gossip (no coordinator). The tree and the
//! gossip graphs built from it are the engine's.

use serde::{Deserialize, Serialize};

/// How sites are connected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// `flat`, `hierarchical` or `gossip`.
    #[serde(default)]
    pub kind: TopologyKind,
    /// Hierarchical: deal the sites (sorted by name) into this many regions
    /// `region-1`, `region-2`, ... of consecutive sites.
    #[serde(default)]
    pub regions: Option<usize>,
    /// Hierarchical: aggregators and their members (sites or other
    /// aggregators), any depth. The root's members are the aggregators and
    /// sites no aggregator lists.
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
    /// Gossip: the graph sites average over.
    #[serde(default)]
    pub graph: GossipGraph,
    /// Gossip: neighbours per site in a random regular graph.
    #[serde(default = "default_degree")]
    pub degree: usize,
    /// Gossip: averaging steps with the neighbours after each local training
    /// (each sends the model to every neighbour again).
    #[serde(default = "default_steps")]
    pub gossip_steps: u32,
    /// Simulation: sites lost for good from the start of a round.
    #[serde(default)]
    pub failures: Vec<FailureConfig>,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            kind: TopologyKind::Flat,
            regions: None,
            groups: Vec::new(),
            graph: GossipGraph::Ring,
            degree: default_degree(),
            gossip_steps: default_steps(),
            failures: Vec::new(),
        }
    }
}

fn default_degree() -> usize {
    3
}

fn default_steps() -> u32 {
    1
}

/// Which topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopologyKind {
    /// Every site reports to one coordinator.
    #[default]
    Flat,
    /// Sites report to aggregators, aggregators to theirs, up to the root.
    Hierarchical,
    /// No coordinator: each site averages with its neighbours.
    Gossip,
}

/// The graph of a gossip run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GossipGraph {
    /// Each site with the next and the previous (sorted by name).
    #[default]
    Ring,
    /// Each site with `degree` others, drawn from the run seed.
    RandomRegular,
    /// Each site with every other.
    Complete,
}

/// An aggregator and its members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Its name (distinct from every site's).
    pub name: String,
    /// Sites and aggregators below it.
    pub members: Vec<String>,
}

/// A site lost from round `round` on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureConfig {
    /// The site.
    pub site: String,
    /// The first round it misses.
    pub round: u32,
}
