//! `[[features]]`: feature flags for a cohort of sites, each bad flag
//! refused naming why, and a flagged feature on for its cohort only.

use tessera_plan::Plan;

const HEART: &str = include_str!("../../../examples/fed-heart-disease.toml");

fn plan(extra: &str) -> Result<Plan, String> {
    let text = format!("{HEART}\n{extra}\n");
    let plan = Plan::from_toml(&text, "features").map_err(|e| e.to_string())?;
    plan.validate().map_err(|e| e.to_string())?;
    Ok(plan)
}

const CODEC: &str = "[compression]\nupload = \"topk:0.3+q8\"\n";

fn flag(name: &str, sites: &str) -> String {
    format!("[[features]]\nname = \"{name}\"\nsites = [{sites}]\n")
}

#[test]
fn a_flagged_feature_is_on_for_its_cohort_only() {
    let p = plan(&format!(
        "{CODEC}{}",
        flag("compression.upload", "\"cleveland\"")
    ))
    .unwrap();
    assert!(p.feature_on("compression.upload", "cleveland"));
    assert!(!p.feature_on("compression.upload", "va"));
    assert_eq!(
        p.compression_for("cleveland").upload.to_string(),
        "topk:0.3+q8"
    );
    assert!(p.compression_for("va").upload.is_identity());
    // A feature no flag names is on everywhere.
    let p = plan(CODEC).unwrap();
    assert!(p.feature_on("compression.upload", "va"));
    assert!(!p.compression_for("va").upload.is_identity());
}

#[test]
fn bad_flags_are_refused_naming_why() {
    for (extra, expected) in [
        (
            format!("{CODEC}{}", flag("compression.download", "\"va\"")),
            "no feature 'compression.download' can be flagged",
        ),
        (
            format!("{CODEC}{}", flag("compression.upload", "")),
            "names 0 sites",
        ),
        (
            format!("{CODEC}{}", flag("compression.upload", "\"va\", \"va\"")),
            "names site 'va' twice",
        ),
        (
            format!("{CODEC}{}", flag("compression.upload", "\"mars\"")),
            "'mars', which is not among the plan's sites",
        ),
        (
            flag("compression.upload", "\"va\""),
            "there is nothing to turn on",
        ),
        (
            format!(
                "{CODEC}{}{}",
                flag("compression.upload", "\"va\""),
                flag("compression.upload", "\"va\"")
            ),
            "flagged twice",
        ),
        (
            format!(
                "[compression]\nupload = \"randk:0.3\"\n[secure_aggregation]\nenabled = true\n{}",
                flag("compression.upload", "\"va\"")
            ),
            "flag it without secure_aggregation",
        ),
        (
            format!(
                "[compression.adaptive]\nladder = [\"none\"]\ntarget_round_seconds = 5.0\n{}",
                flag("compression.upload", "\"va\"")
            ),
            "there is nothing to turn on",
        ),
        (
            format!(
                "{CODEC}{}",
                flag("compression.upload", &vec!["\"va\""; 100_001].join(","))
            ),
            "names 100001 sites",
        ),
        (
            format!(
                "{CODEC}[[features]]\nname = \"compression.upload\"\nsites = [\"va\"]\ncohort = 1\n"
            ),
            "unknown field",
        ),
    ] {
        let e = plan(&extra).expect_err(&extra);
        assert!(e.contains(expected), "{extra}\n-> {e}");
    }
}

#[test]
fn a_synthetic_plans_sites_are_checked_without_listing_them() {
    let mut p = Plan::default();
    p.compression.upload = "topk:0.3".parse().unwrap();
    // Many synthetic sites: a cohort is checked against them by name.
    p.data.synthetic.as_mut().unwrap().sites = 1 << 40;
    for (site, fits) in [
        ("site3", true),
        ("site1099511627775", true),
        ("site1099511627776", false),
        ("site03", false),
        ("mars", false),
    ] {
        assert_eq!(listed(&mut p, site), fits, "{site}");
    }
}

#[test]
fn a_tree_plan_and_a_partitioned_plans_names_are_checked() {
    let mut p = Plan::default();
    p.compression.upload = "topk:0.3".parse().unwrap();
    p.features = vec![tessera_plan::FeatureFlag {
        name: "compression.upload".into(),
        sites: vec!["site1".into()],
    }];
    assert!(p.conflicts().is_empty(), "{:?}", p.conflicts());
    p.topology.kind = tessera_plan::TopologyKind::Hierarchical;
    assert!(
        p.conflicts()
            .iter()
            .any(|c| c.reason.contains("topology is not flat")),
        "{:?}",
        p.conflicts()
    );
    // A partitioned plan's sites: site-01 to site-12.
    let mut p = plan(CODEC).unwrap();
    p.data.sites.clear();
    p.data.partition = Some(tessera_data::PartitionConfig {
        sites: 12,
        alpha: 1.0,
        seed: 0,
        min_rows: 1,
    });
    for (site, fits) in [
        ("site-01", true),
        ("site-12", true),
        ("site-13", false),
        ("site-1", false),
        ("site1", false),
    ] {
        assert_eq!(listed(&mut p, site), fits, "{site}");
    }
}

#[test]
fn a_cohort_name_the_data_does_not_have_is_refused() {
    let p = plan(&format!(
        "{CODEC}{}",
        flag("compression.upload", "\"cleveland\"")
    ))
    .unwrap();
    assert!(p.check_feature_sites(["cleveland", "va"]).is_ok());
    let e = p.check_feature_sites(["va"]).unwrap_err().to_string();
    assert!(
        e.contains("names site 'cleveland', which the data does not have"),
        "{e}"
    );
    assert!(plan(CODEC).unwrap().check_feature_sites([]).is_ok());
}

/// Whether a cohort of `site` alone passes as a site of `p`.
fn listed(p: &mut Plan, site: &str) -> bool {
    p.features = vec![tessera_plan::FeatureFlag {
        name: "compression.upload".into(),
        sites: vec![site.into()],
    }];
    p.conflicts()
        .iter()
        .all(|c| !c.reason.contains("not among the plan's sites"))
}
