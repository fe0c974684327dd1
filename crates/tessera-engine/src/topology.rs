//! What the plan's `[topology]` builds: the aggregation tree of a
//! hierarchical run (aggregators of any depth) and the graph of a gossip run.

use std::collections::{BTreeMap, BTreeSet};

use tessera_core::ParameterSet;
use tessera_plan::{GossipGraph, GroupConfig, TopologyConfig};

use crate::PlanError;

/// A member of an aggregator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Member {
    /// A site, by index into the sorted sites.
    Site(usize),
    /// An aggregator, by index into [`Tree::nodes`].
    Node(usize),
}

/// An aggregator of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// Its members.
    pub members: Vec<Member>,
    /// Its depth below the root (root: 0).
    pub depth: usize,
}

/// The aggregation tree: node 0 is the root.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    /// Every aggregator, the root first.
    pub nodes: Vec<Node>,
    /// The sites, sorted by name ([`Member::Site`] indexes them).
    pub sites: Vec<String>,
}

impl Tree {
    /// The tree of `config` over `sites` (sorted names).
    pub fn build(config: &TopologyConfig, sites: &[String]) -> Result<Tree, PlanError> {
        let invalid = |m: String| PlanError::Invalid(format!("topology: {m}"));
        let mut groups = config.groups.clone();
        if let Some(n) = config.regions {
            if !groups.is_empty() {
                return Err(invalid("give `regions` or `groups`, not both".into()));
            }
            if n == 0 || n > sites.len() {
                return Err(invalid(format!(
                    "regions must be between 1 and the {} sites, got {n}",
                    sites.len()
                )));
            }
            for r in 0..n {
                let (start, end) = (r * sites.len() / n, (r + 1) * sites.len() / n);
                groups.push(GroupConfig {
                    name: format!("region-{}", r + 1),
                    members: sites[start..end].to_vec(),
                });
            }
        }
        if groups.is_empty() {
            return Err(invalid(
                "a hierarchical topology needs `regions` or `groups`".into(),
            ));
        }
        let site_index: BTreeMap<&str, usize> = sites
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect();
        let group_index: BTreeMap<&str, usize> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.as_str(), i + 1))
            .collect();
        if group_index.len() != groups.len() {
            return Err(invalid("an aggregator name appears twice".into()));
        }
        if let Some(g) = groups
            .iter()
            .find(|g| site_index.contains_key(g.name.as_str()))
        {
            return Err(invalid(format!(
                "aggregator '{}' has a site's name",
                g.name
            )));
        }
        let mut placed: BTreeSet<Member> = BTreeSet::new();
        let mut nodes = vec![Node {
            name: "root".into(),
            members: Vec::new(),
            depth: 0,
        }];
        for g in &groups {
            if g.members.is_empty() {
                return Err(invalid(format!("aggregator '{}' has no members", g.name)));
            }
            let mut members = Vec::new();
            for m in &g.members {
                let member = match (site_index.get(m.as_str()), group_index.get(m.as_str())) {
                    (Some(&s), _) => Member::Site(s),
                    (None, Some(&n)) => Member::Node(n),
                    (None, None) => {
                        return Err(invalid(format!(
                            "aggregator '{}' lists '{m}', neither a site nor an aggregator",
                            g.name
                        )));
                    }
                };
                if !placed.insert(member) {
                    return Err(invalid(format!("'{m}' is a member of two aggregators")));
                }
                members.push(member);
            }
            nodes.push(Node {
                name: g.name.clone(),
                members,
                depth: 0,
            });
        }
        // The root holds what no aggregator lists.
        let root: Vec<Member> = (1..nodes.len())
            .map(Member::Node)
            .chain((0..sites.len()).map(Member::Site))
            .filter(|m| !placed.contains(m))
            .collect();
        if !root.iter().any(|m| matches!(m, Member::Node(_))) && !placed.is_empty() {
            return Err(invalid("the aggregators form a cycle".into()));
        }
        nodes[0].members = root;
        // Depths, and every aggregator reachable from the root (no cycles).
        let mut stack = vec![(0usize, 0usize)];
        let mut seen = BTreeSet::new();
        while let Some((n, depth)) = stack.pop() {
            if !seen.insert(n) {
                return Err(invalid("the aggregators form a cycle".into()));
            }
            nodes[n].depth = depth;
            for m in &nodes[n].members {
                if let Member::Node(c) = m {
                    stack.push((*c, depth + 1));
                }
            }
        }
        if seen.len() != nodes.len() {
            return Err(invalid("the aggregators form a cycle".into()));
        }
        Ok(Tree {
            nodes,
            sites: sites.to_vec(),
        })
    }

    /// The tree a deployment runs: over the plan's named sites, or without
    /// them over the group members that name no group.
    pub fn of_plan(plan: &crate::Plan) -> Result<Tree, PlanError> {
        let mut sites: Vec<String> = plan.data.named_sites();
        if sites.is_empty() {
            let groups: BTreeSet<&str> = plan
                .topology
                .groups
                .iter()
                .map(|g| g.name.as_str())
                .collect();
            sites = plan
                .topology
                .groups
                .iter()
                .flat_map(|g| &g.members)
                .filter(|m| !groups.contains(m.as_str()))
                .cloned()
                .collect();
        }
        if sites.is_empty() {
            return Err(PlanError::Invalid(
                "topology: a hierarchical deployment needs the sites' names: list them \
                 ([[data.sites]]) or give the aggregators' `groups`"
                    .into(),
            ));
        }
        sites.sort();
        sites.dedup();
        Tree::build(&plan.topology, &sites)
    }

    /// Central DP in a tree: the aggregators that hold sites hold only
    /// sites, and the root holds none, so that every site's update is
    /// clipped and noised by exactly one aggregator and everything above
    /// sees only noised sums.
    pub fn check_privacy_layers(&self) -> Result<(), PlanError> {
        for node in &self.nodes {
            let sites = node
                .members
                .iter()
                .filter(|m| matches!(m, Member::Site(_)))
                .count();
            if sites > 0 && node.depth == 0 {
                return Err(PlanError::Invalid(
                    "topology: with central DP every site belongs to an aggregator (the root holds sites here)"
                        .into(),
                ));
            }
            if sites > 0 && sites < node.members.len() {
                return Err(PlanError::Invalid(format!(
                    "topology: with central DP an aggregator holds sites or aggregators, not both ('{}' holds both)",
                    node.name
                )));
            }
        }
        Ok(())
    }

    /// Secure aggregation at every aggregator: each needs at least three
    /// members (with two, each would learn the other's update from the sum).
    pub fn check_secure_sizes(&self) -> Result<(), PlanError> {
        match self.nodes.iter().find(|n| n.members.len() < 3) {
            Some(node) => Err(PlanError::Invalid(format!(
                "topology: with secure aggregation every aggregator needs at least 3 members \
                 ('{}' has {})",
                node.name,
                node.members.len()
            ))),
            None => Ok(()),
        }
    }

    /// Whether aggregator `n` holds sites (with central DP, it adds the noise).
    pub fn holds_sites(&self, n: usize) -> bool {
        self.nodes[n]
            .members
            .iter()
            .any(|m| matches!(m, Member::Site(_)))
    }

    /// The aggregator called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The names of node `n`'s members.
    pub fn member_names(&self, n: usize) -> Vec<String> {
        self.nodes[n]
            .members
            .iter()
            .map(|m| match *m {
                Member::Site(s) => self.sites[s].clone(),
                Member::Node(c) => self.nodes[c].name.clone(),
            })
            .collect()
    }

    /// The sites below node `n`, sorted.
    pub fn sites_below(&self, n: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut stack = vec![n];
        while let Some(n) = stack.pop() {
            for m in &self.nodes[n].members {
                match *m {
                    Member::Site(s) => out.push(s),
                    Member::Node(c) => stack.push(c),
                }
            }
        }
        out.sort_unstable();
        out
    }
}

/// One Metropolis-Hastings averaging step at a site of degree `degree` (its
/// living neighbours): each neighbour's model (with that neighbour's own
/// degree) weighs `1 / (1 + max(degree, theirs))`, the rest stays on `own`.
/// The weights are symmetric and sum to one, so the sites' mean is kept.
/// Neighbours are summed in the order given (simulation and peers both give
/// them sorted by name, so both compute the same bits).
pub fn metropolis_mix<'a>(
    own: &ParameterSet,
    degree: usize,
    neighbours: impl IntoIterator<Item = (&'a ParameterSet, usize)>,
) -> Result<ParameterSet, tessera_core::CoreError> {
    let mut out = own.clone();
    let mut self_weight = 1.0f32;
    let mut mixed = own.zeros_like();
    for (theirs, their_degree) in neighbours {
        let w = 1.0 / (1.0 + degree.max(their_degree) as f32);
        self_weight -= w;
        mixed.add_scaled(theirs, w)?;
    }
    for v in out.values_mut() {
        *v *= self_weight;
    }
    out.add_scaled(&mixed, 1.0)?;
    Ok(out)
}

/// Each site's neighbours (sorted) in a gossip graph over `n` sites; random
/// regular graphs are drawn from `seed` (pairing model, redrawn until simple).
pub fn gossip_neighbours(
    graph: GossipGraph,
    n: usize,
    degree: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>, PlanError> {
    let invalid = |m: String| PlanError::Invalid(format!("topology: {m}"));
    let mut out = vec![BTreeSet::new(); n];
    match graph {
        GossipGraph::Complete => {
            for (i, set) in out.iter_mut().enumerate() {
                set.extend((0..n).filter(|&j| j != i));
            }
        }
        GossipGraph::Ring => {
            for (i, set) in out.iter_mut().enumerate() {
                for j in [(i + 1) % n, (i + n - 1) % n] {
                    if j != i {
                        set.insert(j);
                    }
                }
            }
        }
        GossipGraph::RandomRegular => {
            if degree == 0 || degree >= n || (n * degree) % 2 == 1 {
                return Err(invalid(format!(
                    "a random {degree}-regular graph over {n} sites needs 0 < degree < sites and \
                     sites x degree even"
                )));
            }
            let mut rng = tessera_core::SeededRng::derived(seed, &[crate::streams::TOPOLOGY]);
            let mut drawn = false;
            for _ in 0..10_000 {
                let mut stubs: Vec<usize> = (0..n)
                    .flat_map(|i| std::iter::repeat_n(i, degree))
                    .collect();
                rng.shuffle(&mut stubs);
                let mut sets = vec![BTreeSet::new(); n];
                let simple = stubs.chunks(2).all(|pair| {
                    let (a, b) = (pair[0], pair[1]);
                    a != b && sets[a].insert(b) && sets[b].insert(a)
                });
                if simple {
                    out = sets;
                    drawn = true;
                    break;
                }
            }
            if !drawn {
                return Err(invalid(format!(
                    "no simple random {degree}-regular graph over {n} sites was drawn"
                )));
            }
        }
    }
    Ok(out.into_iter().map(|s| s.into_iter().collect()).collect())
}
