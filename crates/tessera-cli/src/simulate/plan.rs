//! The plan of an ad-hoc run (`--data`) and the flags that change a plan.

use std::path::Path;

use anyhow::bail;
use tessera_aggregate::StrategyKind;
use tessera_data::{ColumnKind, ColumnSpec, DataConfig, SchemaConfig};
use tessera_engine::Plan;
use tessera_learn::{ModelConfig, ModelKind};

use super::SimulateArgs;

/// A plan for one CSV file with a site column, every other column a feature.
pub(super) fn ad_hoc_plan(args: &SimulateArgs, data: &Path) -> anyhow::Result<Plan> {
    let (Some(site_column), Some(target)) = (&args.site_column, &args.target) else {
        bail!("--data needs --site-column and --target");
    };
    let kind: ModelKind = match &args.model {
        Some(m) => m.parse().map_err(anyhow::Error::msg)?,
        None => ModelKind::Logistic,
    };
    let mut model = ModelConfig::of_kind(kind);
    if !args.hidden.is_empty() {
        model.hidden = args.hidden.clone();
    }
    let mut schema = SchemaConfig::inferred(target.clone());
    schema.positive = args.positive.iter().cloned().collect();
    schema.columns = args
        .ignore
        .iter()
        .map(|name| ColumnSpec {
            name: name.clone(),
            kind: ColumnKind::Ignore,
            levels: None,
            drop_first: false,
            min: None,
            max: None,
        })
        .collect();
    let name = data
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("data")
        .to_string();
    Ok(Plan {
        name,
        data: DataConfig {
            path: Some(data.to_path_buf()),
            site_column: Some(site_column.clone()),
            partition: None,
            sites: Vec::new(),
            schema,
            split: Default::default(),
            standardize: Default::default(),
            synthetic: None,
            cross_silo: None,
        },
        model,
        ..Plan::default()
    })
}

pub(super) fn apply_overrides(plan: &mut Plan, args: &SimulateArgs) -> anyhow::Result<()> {
    if let Some(name) = &args.strategy {
        plan.federation.strategy = name.parse::<StrategyKind>().map_err(anyhow::Error::msg)?;
    }
    if let Some(seed) = args.seed {
        plan.seed = seed;
    }
    if let Some(rounds) = args.rounds {
        plan.federation.rounds = rounds;
    }
    if let Some(target) = args.target_accuracy
        && !(0.0..=1.0).contains(&target)
    {
        bail!("--target-accuracy must be between 0 and 1, got {target}");
    }
    if args.data.is_none() && (args.model.is_some() || !args.hidden.is_empty()) {
        bail!("--model and --hidden describe ad-hoc data; a plan sets them in [model]");
    }
    Ok(())
}
