//! `tessera ca` as an operator runs it: issuing never silently revokes
//! (a live name needs `--replace`, which says what it revoked), the
//! coordinator and each aggregator have server certificates of their own,
//! and `ca list` shows dates in UTC and each certificate's status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use util::Scratch;

/// The `ca list` row of serial `serial`.
fn row(list: &str, serial: u64) -> String {
    list.lines()
        .find(|l| l.split_whitespace().nth(2) == Some(&serial.to_string()))
        .unwrap_or_else(|| panic!("no serial {serial} in:\n{list}"))
        .to_string()
}

#[test]
fn issuing_a_second_server_certificate_leaves_the_first_live() {
    let s = Scratch::new("ca-servers");
    s.run(&["ca", "init"]).ok();
    s.run(&[
        "ca",
        "issue",
        "--coordinator",
        "--host",
        "coord.example.org",
    ])
    .ok();
    let east = s
        .run(&[
            "ca",
            "issue",
            "--aggregator",
            "east",
            "--host",
            "east.example.org",
        ])
        .ok();
    assert!(
        east.contains("issued: tessera-ca/aggregators/east"),
        "{east}"
    );
    assert!(!east.contains("revoked"), "{east}");
    // Toward its parent the aggregator is a site of its own name.
    s.run(&["ca", "issue", "--site", "east"]).ok();
    let list = s.run(&["ca", "list"]).ok();
    for serial in 1..=3 {
        let line = row(&list, serial);
        assert!(line.contains(" live "), "{line}");
    }
    assert!(row(&list, 1).contains("coordinator"), "{list}");
    assert!(row(&list, 2).contains("aggregator"), "{list}");
    assert!(row(&list, 3).contains("site"), "{list}");
    for dir in ["coordinator", "aggregators/east", "sites/east"] {
        assert!(
            s.path("tessera-ca").join(dir).join("cert.pem").exists(),
            "{dir}"
        );
    }
}

#[test]
fn a_live_name_is_reissued_only_with_replace_which_names_what_it_revokes() {
    let s = Scratch::new("ca-replace");
    s.run(&["ca", "init"]).ok();
    s.run(&["ca", "issue", "--site", "va"]).ok();
    let cert = std::fs::read(s.path("tessera-ca/sites/va/cert.pem")).unwrap();
    let refused = s.run(&["ca", "issue", "--site", "va"]).fails();
    assert!(
        refused.starts_with("error: the site certificate 'va' (serial 1, valid from ")
            && refused.contains(" UTC until ")
            && refused.contains("is live")
            && refused.contains("give --replace"),
        "{refused}"
    );
    assert_eq!(
        cert,
        std::fs::read(s.path("tessera-ca/sites/va/cert.pem")).unwrap(),
        "a refusal writes nothing"
    );
    let list = s.run(&["ca", "list"]).ok();
    assert!(row(&list, 1).contains(" live "), "{list}");

    let replaced = s.run(&["ca", "issue", "--site", "va", "--replace"]).ok();
    assert!(
        replaced.contains("revoked: the site certificate 'va' (serial 1, valid from "),
        "{replaced}"
    );
    let list = s.run(&["ca", "list"]).ok();
    assert!(row(&list, 1).contains(" revoked "), "{list}");
    assert!(row(&list, 2).contains(" live "), "{list}");
    // Dates in UTC, as 2026-12-02 06:00:00 UTC.
    let line = row(&list, 2);
    let dates: Vec<&str> = line.matches(" UTC").collect();
    assert_eq!(dates.len(), 2, "{line}");
    assert!(
        line.split_whitespace()
            .any(|w| w.len() == 10 && w.as_bytes()[4] == b'-' && w.as_bytes()[7] == b'-'),
        "{line}"
    );
    let header = list.lines().next().unwrap();
    assert!(
        header.contains("status") && header.contains("expires"),
        "{header}"
    );
}
