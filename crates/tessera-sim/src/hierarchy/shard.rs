//! A simulator shard: one aggregator of a plan's tree whose member sites are
//! simulated in this process, so that a simulation spans several machines
//! by running one shard on each under a deployed coordinator (the
//! deployment's own runtime above the shards; `tessera shard` is the
//! transport). Each round of the parent's is this aggregator's round as the
//! single-process simulation runs it (`Context::node_answer`: the same
//! engine, profiles, dropouts on the virtual clock, instructions, exact
//! sums), so a run over shards gives the single-process run's model bit for
//! bit.
//!
//! What a shard cannot carry yet is refused when it opens, naming why:
//! secure aggregation (its members' masked round and its own masked update
//! upward), central DP at the aggregator (its mechanism and ledger across
//! rounds), members that are aggregators, personalization, asynchronous
//! rounds, a round deadline (the root's, kept on the virtual clock in one
//! process), federation-wide standardisation (statistics merged shard by
//! shard are summed in another order).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tessera_core::{ParameterSet, Timestamp, Update};
use tessera_data::FederatedData;
use tessera_engine::{FitTask, Member, Mode, Node, Plan, PlanError, Site, TopologyKind, Tree};
use tessera_learn::Evaluation;
use tessera_orchestrator::privacy::{Place, PrivacyBook};

use super::{Context, Traffic};
use crate::SimError;
use crate::profile::Profile;
use crate::run::{initial_model, plain_sites};

/// One aggregator's member sites, simulated (see the module's docs).
pub struct Shard {
    plan: Plan,
    data: FederatedData,
    /// The root, then this aggregator (node 1) over the data's sites.
    tree: Tree,
    sites: Vec<Mutex<Site>>,
    profiles: Vec<Profile>,
    node_profiles: Vec<Profile>,
    book: PrivacyBook,
}

/// What a shard's round sends up.
#[derive(Debug)]
pub struct ShardRound {
    /// The members' weighted mean update carrying their examples; `None`
    /// when the round closed without one (every member dropped or failed).
    pub update: Option<Update>,
    /// What went wrong at members (a site's training that failed).
    pub errors: Vec<String>,
}

impl Shard {
    /// Aggregator `name` of `plan`'s tree over `data`, its member sites
    /// (prepared with the federation's agreement). Refuses a plan a shard
    /// cannot run and data that is not exactly its members'.
    pub fn new(plan: &Plan, name: &str, data: FederatedData) -> Result<Self, SimError> {
        let refuse = |why: String| refused(name, why);
        if plan.secure_aggregation.enabled {
            return Err(refuse(
                "secure aggregation does not run across simulator shards yet (run the \
                 aggregator with deployed sites, or the whole simulation in one process)"
                    .into(),
            ));
        }
        if plan.personalizes() {
            return Err(refuse(
                "personalization does not run across simulator shards yet".into(),
            ));
        }
        if plan.federation.mode != Mode::Sync {
            return Err(refuse("simulator shards run synchronous rounds".into()));
        }
        if plan.federation.deadline_seconds.is_some() {
            // The single process closes the root's round at its deadline on
            // the virtual clock, which a deployed root does not keep.
            return Err(refuse(
                "a round deadline (federation.deadline_seconds) is kept on the virtual clock in \
                 one process, not across shards"
                    .into(),
            ));
        }
        let standardize = &plan.data.standardize;
        if standardize.enabled && standardize.scope == tessera_data::ScaleScope::Federation {
            // Merged shard by shard, the statistics are summed in another
            // order than one process's site by site: not the same bits.
            return Err(refuse(
                "federation-wide standardisation (data.standardize.scope = \"federation\") \
                 merges statistics shard by shard, not to the single process's bits: use \
                 scope = \"site\""
                    .into(),
            ));
        }
        let members = Self::members(plan, name)?;
        let names: Vec<String> = data.sites.iter().map(|s| s.name.clone()).collect();
        if names != members {
            let missing: Vec<&String> = members.iter().filter(|m| !names.contains(m)).collect();
            return Err(refuse(format!(
                "its data holds sites [{}], its members are [{}] (missing: [{}])",
                names.join(", "),
                members.join(", "),
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let tree = Tree {
            nodes: vec![
                Node {
                    name: String::new(),
                    members: vec![Member::Node(1)],
                    depth: 0,
                },
                Node {
                    name: name.to_string(),
                    members: (0..names.len()).map(Member::Site).collect(),
                    depth: 1,
                },
            ],
            sites: names.clone(),
        };
        let book = crate::run::privacy_book(plan)?;
        if book
            .central_cohort(Place::Node {
                tree: &tree,
                node: 1,
            })
            .is_some()
        {
            return Err(refuse(
                "central DP at an aggregator does not run across simulator shards yet".into(),
            ));
        }
        let initial = initial_model(plan, &data)?;
        let (sites, profiles) = plain_sites(plan, initial.as_ref(), &names);
        let node_profiles = tree
            .nodes
            .iter()
            .map(|n| Profile::draw(&plan.simulation, plan.seed, &n.name))
            .collect();
        Ok(Self {
            plan: plan.clone(),
            data,
            tree,
            sites,
            profiles,
            node_profiles,
            book,
        })
    }

    /// The sites of aggregator `name` of `plan`'s `[[topology.groups]]`,
    /// sorted; refused where it is not one, or where a member is an
    /// aggregator.
    pub fn members(plan: &Plan, name: &str) -> Result<Vec<String>, SimError> {
        if plan.topology.kind != TopologyKind::Hierarchical {
            return Err(refused(
                name,
                "a shard is an aggregator of a hierarchical plan ([topology] kind = \
                 \"hierarchical\")"
                    .into(),
            ));
        }
        let group = plan
            .topology
            .groups
            .iter()
            .find(|g| g.name == name)
            .ok_or_else(|| {
                refused(
                    name,
                    "a shard is an aggregator the plan's [[topology.groups]] name, with its \
                     sites listed"
                        .into(),
                )
            })?;
        let groups: std::collections::BTreeSet<&str> = plan
            .topology
            .groups
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        if let Some(inner) = group.members.iter().find(|m| groups.contains(m.as_str())) {
            return Err(refused(
                name,
                format!("its member '{inner}' is an aggregator: a shard's members are sites"),
            ));
        }
        let mut members = group.members.clone();
        members.sort();
        Ok(members)
    }

    /// The member sites' names, sorted.
    pub fn sites(&self) -> &[String] {
        &self.tree.sites
    }

    /// The parent's round `round` from `global`: this aggregator's round
    /// over its members, as the single-process simulation runs it.
    pub fn fit(&self, round: u32, global: Arc<ParameterSet>) -> Result<ShardRound, SimError> {
        let training = self.plan.local_training();
        let context = Context {
            plan: &self.plan,
            data: &self.data,
            tree: &self.tree,
            sites: &self.sites,
            profiles: &self.profiles,
            node_profiles: &self.node_profiles,
            schedule: training.schedule()?,
            batch_size: training.batch_size,
            book: &self.book,
            privacy: Mutex::new(BTreeMap::new()),
            rings: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
        };
        let task = FitTask {
            round,
            global,
            instructions: Default::default(),
            deadline: None,
        };
        let traffic = Mutex::new(Traffic {
            site_up: vec![0; self.tree.sites.len()],
            ..Traffic::default()
        });
        let regional = Mutex::new(BTreeMap::new());
        // Times are relative to the model reaching this aggregator: which
        // members make its deadline does not depend on when that was.
        let answer = context.node_answer(1, &task, Timestamp::ZERO, &traffic, &regional)?;
        let errors = context
            .errors
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(ShardRound {
            update: answer.update,
            errors,
        })
    }

    /// Each member site's evaluation of `model` on its test rows, by name.
    pub fn evaluate(&self, model: &ParameterSet) -> Result<Vec<(String, Evaluation)>, SimError> {
        let evaluations = crate::sites::evaluate_all(&self.sites, &self.data, model)?;
        Ok(self.tree.sites.iter().cloned().zip(evaluations).collect())
    }
}

fn refused(name: &str, why: String) -> SimError {
    SimError::Plan(PlanError::Invalid(format!("shard '{name}': {why}")))
}
