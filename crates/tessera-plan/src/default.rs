//! The default plan: a federation that needs no file.

use tessera_data::{DataConfig, SchemaConfig, SyntheticConfig};
use tessera_learn::{ModelConfig, ModelKind, TrainingConfig};

use crate::{FederationConfig, Plan, SimulationConfig, default_name, default_seed};

impl Default for Plan {
    /// Ten sites of generated data (FedProx's Synthetic(0.5, 0.5): 200 rows
    /// of 60 features and 10 classes each, columns `site`, `x0..`, `y`), a
    /// softmax model, and every other section at its default: FedAvg, ten
    /// synchronous rounds over every site, no privacy, no robust rule, no
    /// secure aggregation, no compression, a flat topology. It validates,
    /// and runs anywhere, since it reads no file.
    ///
    /// This is not what `tessera simulate` runs without a plan: that is the
    /// bundled Fed-Heart-Disease plan (`examples/fed-heart-disease.toml`),
    /// whose data files the binary carries.
    fn default() -> Self {
        Plan {
            name: default_name(),
            seed: default_seed(),
            data: DataConfig {
                path: None,
                site_column: Some("site".into()),
                partition: None,
                sites: Vec::new(),
                schema: SchemaConfig::inferred("y"),
                split: Default::default(),
                standardize: Default::default(),
                synthetic: Some(SyntheticConfig {
                    sites: 10,
                    rows: 200,
                    features: 60,
                    classes: 10,
                    alpha: 0.5,
                    beta: 0.5,
                    seed: 1,
                    departments: 0,
                    department_variance: 1.0,
                }),
                cross_silo: None,
            },
            model: ModelConfig::of_kind(ModelKind::Softmax),
            training: TrainingConfig::default(),
            federation: FederationConfig::default(),
            strategies: Default::default(),
            baselines: None,
            simulation: SimulationConfig::default(),
            privacy: Default::default(),
            robust: Default::default(),
            secure_aggregation: Default::default(),
            compression: Default::default(),
            topology: Default::default(),
            analytics: Default::default(),
            personalization: Default::default(),
            multitask: None,
            features: Vec::new(),
            contribution: Default::default(),
            baseline_choice: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_default_plan_validates() {
        let plan = Plan::default();
        plan.validate().unwrap();
        plan.check_cohort(10).unwrap();
    }

    #[test]
    fn the_default_plan_reads_back_as_itself() {
        // Written as TOML and read as a plan file would be, the default is
        // the same plan: every key it sets is a key a plan file may set.
        let plan = Plan::default();
        let text = toml::to_string(&plan).unwrap();
        let read = Plan::from_toml(&text, "default").unwrap();
        assert_eq!(read, plan);
    }

    #[test]
    fn a_default_plan_with_an_impossible_setting_is_refused() {
        let mut plan = Plan::default();
        plan.federation.rounds = 0;
        let e = plan.validate().unwrap_err().to_string();
        assert!(e.contains("federation.rounds must be at least 1"), "{e}");
    }
}
