//! A plan with `[data.synthetic]` deploys as it simulates: each participant,
//! given no data file, generates the plan's rows and keeps its own site's,
//! and the deployed model equals the simulated one bit for bit.

use crate::util::{self, Scratch};
use crate::{deployed_model, simulated_model};

#[test]
fn synthetic_sites_generate_their_own_rows_and_deploy_as_they_simulate() {
    if util::skip_e2e("synthetic_sites_generate_their_own_rows_and_deploy_as_they_simulate") {
        return;
    }
    let s = Scratch::new("deploy-synthetic");
    let plan = s.write(
        "synthetic.toml",
        r#"name = "synthetic"
seed = 3

[data]
site_column = "site"

[data.synthetic]
sites = 3
rows = 80
features = 6
classes = 3
alpha = 0.5
beta = 0.5
seed = 7

[data.schema]
target = "y"

[model]
kind = "softmax"

[training]
epochs = 1
batch_size = 16
lr = 0.2

[federation]
rounds = 3

[privacy]
site_metrics = "clear"
"#,
    );
    let expected = simulated_model(&s, &plan, "sim.model");
    assert_eq!(
        deployed_model(&s, &plan, 3, 3),
        expected,
        "deployment differs from simulation"
    );
}
