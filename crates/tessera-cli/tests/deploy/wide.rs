//! Wide coded rows (mostly one-hot indicators, held sparsely) deploy as they
//! simulate: each participant encodes its own rows sparsely, offers the
//! statistics of them (federation-scope standardisation), trains on them,
//! and the deployed model equals the simulated one bit for bit.

use crate::deployed_model;
use crate::util::{self, Scratch};

#[test]
fn wide_coded_sites_deploy_as_they_simulate() {
    if util::skip_e2e("wide_coded_sites_deploy_as_they_simulate") {
        return;
    }
    let s = Scratch::new("deploy-wide");
    s.run(&[
        "synth",
        "--coded",
        "2",
        "--levels",
        "30",
        "--features",
        "3",
        "--sites",
        "3",
        "--rows",
        "160",
        "--seed",
        "5",
        "--out",
        "wide.csv",
    ])
    .ok();
    let data = s.path("wide.csv");
    let plan = s.write(
        "wide.toml",
        &format!(
            r#"name = "wide"
seed = 4
[data]
path = "{}"
site_column = "site"
[data.schema]
target = "y"
[data.standardize]
scope = "federation"
[model]
kind = "logistic"
[training]
epochs = 2
batch_size = 16
lr = 0.3
[federation]
rounds = 3
min_participants = 3
[privacy]
site_metrics = "clear"
"#,
            data.display()
        ),
    );
    let (report, expected) = s.simulate(&plan, "sim.model");
    // 3 measurements and up to 60 indicators: held sparsely.
    let features = report["features"].as_array().map_or(0, Vec::len);
    assert!(features > 40, "{features} features");
    assert_eq!(
        deployed_model(&s, &plan, 3, 3),
        expected,
        "deployment differs from simulation"
    );
}
