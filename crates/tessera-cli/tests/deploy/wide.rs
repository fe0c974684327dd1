//! Wide coded rows (mostly one-hot indicators, held sparsely) deploy as they
//! simulate: each participant encodes its own rows sparsely, offers the
//! statistics of them (federation-scope standardisation), trains on them,
//! and the deployed model equals the simulated one bit for bit.

use crate::LIMIT;
use crate::util::procs::{Proc, coordinator};
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
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("c.sqlite"),
        0,
        &["--model-out", "dep.model"],
    );
    let mut sites: Vec<Proc> = (0..3)
        .map(|i| {
            let site = format!("site{i}");
            Proc::start(
                &site,
                &s.dir,
                &[
                    "participant",
                    "--coordinator",
                    &url,
                    "--site",
                    &site,
                    "--insecure",
                ],
                None,
            )
        })
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut sites {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
        assert!(p.log().contains("done: 3 updates accepted"), "{}", p.log());
    }
    assert_eq!(
        util::model(&s.path("dep.model")),
        expected,
        "deployment differs from simulation"
    );
}
