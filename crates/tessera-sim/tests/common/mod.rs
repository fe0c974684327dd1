//! What the simulation tests share: Synthetic(0.5, 0.5) with 10 classes and 60
//! features over 47 sites of 200 rows, generated in memory for an example plan.

use std::io::Read;
use std::path::Path;

use tessera_data::synth::{SynthConfig, write_synthetic};
use tessera_data::{FederatedData, FileSource};
use tessera_engine::Plan;

/// Serves one in-memory file whatever path is asked for.
pub struct Memory(pub Vec<u8>);

impl FileSource for Memory {
    fn open(&self, _path: &Path) -> std::io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.0.as_slice()))
    }
}

/// `examples/<plan>` with its data: Li et al.'s Synthetic(0.5, 0.5), 47 sites.
#[allow(dead_code)] // not every test binary uses both
pub fn synthetic_10class(plan: &str) -> (Plan, FederatedData) {
    synthetic_sites(plan, 47)
}

/// `examples/<plan>` with Synthetic(0.5, 0.5) data over `sites` sites of 200 rows.
#[allow(dead_code)]
pub fn synthetic_sites(plan: &str, sites: usize) -> (Plan, FederatedData) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(plan);
    let plan = Plan::from_file(&path).expect("example plan");
    let mut csv = Vec::new();
    let config = SynthConfig {
        sites,
        rows_per_site: 200,
        features: 60,
        classes: 10,
        alpha: 0.5,
        beta: 0.5,
        seed: 1,
    };
    write_synthetic(&config, &mut csv).expect("synthetic data");
    let data = tessera_data::load(&plan.data, Path::new(""), &Memory(csv)).expect("load");
    (plan, data)
}
