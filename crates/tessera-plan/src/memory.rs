//! How much memory a plan's model copies take, by whose memory it is.

use super::{Plan, PlanError};
use tessera_learn::OptimizerKind;

/// Whose memory [`Plan::memory_bytes`] estimates, by the model copies each
/// holds at least (4 bytes a parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryRole {
    /// The whole federation in one process: two copies a site (its model
    /// and update) and four more (the global model, the aggregate, the
    /// engine's working copies).
    Simulation,
    /// A deployed coordinator: four copies (global, aggregate, working,
    /// downlink), two more for SCAFFOLD's control variates, and one a site
    /// when it holds every update (robust rules) or masked vector (secure
    /// aggregation).
    Coordinator,
    /// A deployed site: four copies (the global and local models, update,
    /// gradient), and one or two more for the optimizer's state, two for
    /// SCAFFOLD, one for compression's error feedback, one for the masked
    /// vector under secure aggregation.
    Participant,
}

/// What the operating system says is available now (Linux's
/// `MemAvailable`), in bytes; `None` where it does not say.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

impl Plan {
    /// The least memory a simulation of this plan holds, in bytes, on data
    /// of `n_features` features and `n_classes` classes over `sites` sites:
    /// each site's model and update (two copies), the global model, the
    /// aggregate and the engine's working copies (four); `None` past 2^64.
    pub fn simulation_bytes(
        &self,
        n_features: usize,
        n_classes: usize,
        sites: usize,
    ) -> Option<u64> {
        self.memory_bytes(MemoryRole::Simulation, n_features, n_classes, sites)
    }

    /// The least memory `role` holds for this plan's model, in bytes, on
    /// data of `n_features` features and `n_classes` classes over `sites`
    /// sites (see [`MemoryRole`] for the copies each counts); `None` past
    /// 2^64.
    pub fn memory_bytes(
        &self,
        role: MemoryRole,
        n_features: usize,
        n_classes: usize,
        sites: usize,
    ) -> Option<u64> {
        let n = self.model.n_parameters(n_features, n_classes)?;
        let sites = sites as u64;
        let needs = self.federation.strategy.needs();
        // IFCA's global model and updates stack one model per cluster.
        let stack = self.clusters().map_or(1, |k| k as u64);
        let copies = match role {
            // Each site's model, and its update; the engine's copies.
            MemoryRole::Simulation => sites
                .checked_mul(1 + stack)?
                .checked_add(4u64.checked_mul(stack)?)?,
            MemoryRole::Coordinator => {
                let per_site = u64::from(
                    self.robust.rule.needs_all_updates() || self.secure_aggregation.enabled,
                );
                sites
                    .checked_mul(per_site)?
                    .checked_add(4 + needs.server_copies)?
                    .checked_mul(stack)?
            }
            MemoryRole::Participant => {
                let optimizer = match self.training.optimizer.optimizer {
                    OptimizerKind::Adam => 2,
                    OptimizerKind::Sgd => u64::from(self.training.optimizer.momentum != 0.0),
                };
                // Under IFCA the stacked global model, its clusters apart,
                // the stacked change and the last model kept.
                4 + 4 * (stack - 1)
                    + optimizer
                    + needs.site_copies
                    + u64::from(self.compression.is_active())
                    + u64::from(self.secure_aggregation.enabled)
            }
        };
        n.checked_mul(4)?.checked_mul(copies)
    }

    /// Refuses the plan when `role`'s model copies (see
    /// [`Plan::memory_bytes`]) need more than `limit` bytes (`whose`
    /// limit, said in the message); `None`: no limit known.
    pub fn check_memory(
        &self,
        role: MemoryRole,
        shape: (usize, usize, usize),
        limit: Option<(f64, &str)>,
    ) -> Result<(), PlanError> {
        let (features, classes, sites) = shape;
        let Some((limit, whose)) = limit else {
            return Ok(());
        };
        let needed = self.memory_bytes(role, features, classes, sites);
        if needed.is_some_and(|bytes| bytes as f64 <= limit) {
            return Ok(());
        }
        let params = self.model.n_parameters(features, classes);
        let copies = match role {
            MemoryRole::Simulation => {
                format!("the copies at each of {sites} sites and the engine's")
            }
            MemoryRole::Coordinator => "its copies at the coordinator".to_string(),
            MemoryRole::Participant => "its copies at a site".to_string(),
        };
        Err(PlanError::Invalid(format!(
            "the plan needs at least {} of memory (a model of {} parameters, {copies}), more \
             than {whose} ({:.1} GB): use a smaller model{}",
            needed.map_or("more than 2^64 bytes".to_string(), |b| format!(
                "{:.1} GB",
                b as f64 / 1e9
            )),
            params.map_or("more than 2^64".to_string(), |p| p.to_string()),
            limit / 1e9,
            if role == MemoryRole::Participant {
                ""
            } else {
                " or fewer sites"
            }
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifca_counts_its_cluster_models() {
        let mut plan = Plan::default();
        let copies = |plan: &Plan| {
            let bytes = plan.memory_bytes(MemoryRole::Simulation, 10, 2, 5).unwrap();
            bytes / (4 * plan.model.n_parameters(10, 2).unwrap())
        };
        assert_eq!(copies(&plan), 2 * 5 + 4);
        plan.federation.strategy = tessera_aggregate::StrategyKind::Ifca;
        plan.strategies.insert(
            "ifca".into(),
            tessera_aggregate::StrategyConfig {
                clusters: Some(7),
                ..Default::default()
            },
        );
        // Each site's model and its stacked update; the engine's copies,
        // stacked.
        assert_eq!(copies(&plan), 5 * (1 + 7) + 4 * 7);
        let coordinator = plan.memory_bytes(MemoryRole::Coordinator, 10, 2, 5);
        let n = plan.model.n_parameters(10, 2).unwrap();
        assert_eq!(coordinator, Some(4 * n * 4 * 7));
    }
}
