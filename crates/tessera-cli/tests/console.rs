//! What `tessera simulate` says on its console beyond the round table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use util::Scratch;

/// Updates refused in a round are said on the console, not only in the
/// report: asynchronous steps with no staleness allowed refuse the slow
/// sites' updates, and each round that refused some says how many.
#[test]
fn refused_updates_are_said_on_the_console() {
    let s = Scratch::new("refused-console");
    let plan = util::root().join("examples/synthetic-async.toml");
    let out = s
        .run(&[
            "simulate",
            "--plan",
            plan.to_str().unwrap(),
            "--rounds",
            "40",
            "--set",
            "federation.max_staleness=0",
            "--report",
            "r.json",
        ])
        .ok();
    let report = s.json("r.json");
    let refused: u64 = report["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rejected"].as_u64().unwrap())
        .sum();
    assert!(refused > 0, "no update was refused");
    let said: u64 = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("warning: "))
        .filter_map(|l| {
            l.strip_suffix(
                " updates refused this round (the report's rounds[].rejected; site_errors say why)",
            )
        })
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert_eq!(said, refused, "{out}");
}
