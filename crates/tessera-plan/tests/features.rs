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
                "{CODEC}[secure_aggregation]\nenabled = true\n{}",
                flag("compression.upload", "\"va\"")
            ),
            "flag it without secure_aggregation",
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
        p.features = vec![tessera_plan::FeatureFlag {
            name: "compression.upload".into(),
            sites: vec![site.into()],
        }];
        let listed = p
            .conflicts()
            .iter()
            .all(|c| !c.reason.contains("not among the plan's sites"));
        assert_eq!(listed, fits, "{site}");
    }
}
