//! Shared by the integration tests: the bundled Fed-Heart-Disease rows and
//! a plan's generated rows, read as `tessera analyze` reads them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use tessera_analytics::{AnalyticsConfig, Schema, Settings, SiteTable};
use tessera_data::{DataConfig, Filesystem, load_records};

pub fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The `[data]` of a plan file under `examples/`, with `overrides` applied to the TOML.
pub fn records(plan: &str) -> (Schema, Vec<SiteTable>) {
    let path = root().join("examples").join(plan);
    let text = std::fs::read_to_string(&path).unwrap();
    let value: toml::Table = toml::from_str(&text).unwrap();
    let data: DataConfig = value["data"].clone().try_into().unwrap();
    let records = load_records(&data, path.parent().unwrap(), &Filesystem).unwrap();
    let schema = Schema::from_records(&records, &BTreeMap::new())
        .unwrap()
        .declare_levels(&data);
    (schema, records.sites)
}

pub fn exact() -> Settings {
    Settings::seeded(
        AnalyticsConfig {
            dp: false,
            min_group: 0.0,
            per_site: true,
            ..AnalyticsConfig::default()
        },
        0,
    )
}

pub fn noisy(epsilon: f64, seed: u64) -> Settings {
    Settings::seeded(
        AnalyticsConfig {
            dp: true,
            epsilon,
            delta: 1e-6,
            min_group: 0.0,
            per_site: true,
            ..AnalyticsConfig::default()
        },
        seed,
    )
}
