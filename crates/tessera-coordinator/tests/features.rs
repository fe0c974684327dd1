//! Feature flags at the coordinator: a flagged feature's capabilities are
//! asked only of the cohort's sites, the cohort alone gets the feature in
//! its tasks, and the update each site must send follows its task.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Db, SITES, hello, plan};
use tessera_coordinator::TaskView;
use tessera_proto::pb;

/// The heart plan, its upload codec on for `SITES[0]` only.
fn flagged() -> (tessera_engine::Plan, String) {
    plan(&format!(
        "\n[compression]\nupload = \"topk:0.3+q8\"\n\n[[features]]\nname = \
         \"compression.upload\"\nsites = [\"{}\"]\n",
        SITES[0].name
    ))
}

/// `site`'s hello without the capabilities named in `without`.
fn hello_without(site: &str, without: &[&str]) -> pb::Hello {
    let mut h = hello(site);
    h.capabilities.retain(|c| !without.contains(&c.as_str()));
    h
}

#[test]
fn the_flagged_features_capabilities_are_asked_of_the_cohort_only() {
    let db = Db::new();
    let mut f = db.open(&flagged());
    let codecs = ["compression", "codec-topk", "codec-q8"];
    // Outside the cohort, a participant without the codecs joins...
    f.join(&SITES[1].name, &hello_without(&SITES[1].name, &codecs))
        .unwrap();
    // ...in it, it is refused, naming what it lacks.
    let e = f
        .join(&SITES[0].name, &hello_without(&SITES[0].name, &codecs))
        .unwrap_err()
        .to_string();
    assert!(e.contains("codec-topk"), "{e}");
    // Every site must read the plan's flags.
    let e = f
        .join(
            &SITES[2].name,
            &hello_without(&SITES[2].name, &["feature-flags"]),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("feature-flags"), "{e}");
    // Without a flag, the codecs are asked of every site.
    let plain = Db::new();
    let mut g = plain.open(&plan("\n[compression]\nupload = \"topk:0.3+q8\"\n"));
    let e = g
        .join(&SITES[1].name, &hello_without(&SITES[1].name, &codecs))
        .unwrap_err()
        .to_string();
    assert!(e.contains("codec-topk"), "{e}");
}

#[test]
fn only_the_cohort_is_asked_for_compressed_updates() {
    let db = Db::new();
    let mut f = db.open(&flagged());
    common::agree(&mut f);
    for (i, site) in SITES.iter().enumerate() {
        let Ok(TaskView::Fit { header, .. }) = f.task_for(&site.name, None) else {
            panic!("{} has no training task", site.name);
        };
        let expected = f.expected_codec(&site.name, header.round).to_string();
        if i == 0 {
            assert_eq!(header.upload_codec, "topk:0.3+q8");
            assert_eq!(expected, "topk:0.3+q8");
        } else {
            assert_eq!(header.upload_codec, "", "{}", site.name);
            assert!(
                tessera_compress::Codec::NONE.to_string() == expected,
                "{}: {expected}",
                site.name
            );
        }
    }
}
