//! Out-of-range validities and bad coordinator hosts are refused with a
//! message naming them, never a panic, and nothing is issued.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Scratch, refused};
use tessera_tls::CaDir;
use time::OffsetDateTime;

/// Whole days from now to 9999-12-31T23:59:59Z.
fn days_left() -> u32 {
    let latest = OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap();
    u32::try_from((latest - OffsetDateTime::now_utc()).whole_days()).unwrap()
}

#[test]
fn huge_days_are_refused_without_a_panic() {
    let s = Scratch::new("ca-limits", "huge");
    for days in [3_000_000, u32::MAX, days_left() + 1] {
        let message = refused(CaDir::init(&s.0, "test", days));
        assert!(
            message.starts_with(&format!(
                "--days {days} is too far: the CA certificate must expire by 9999-12-31 \
                 (X.509 GeneralizedTime), at most"
            )),
            "{message}"
        );
        assert!(!s.0.join("ca.json").exists(), "nothing is created");
    }

    let mut ca = CaDir::init(&s.0, "test", 30).unwrap();
    for days in [3_000_000, u32::MAX, days_left() + 1] {
        let expected = format!(
            "--days {days} is too far: a certificate must expire by 9999-12-31 \
             (X.509 GeneralizedTime), at most"
        );
        let message = refused(ca.issue_site("va", days));
        assert!(message.starts_with(&expected), "{message}");
        let message = refused(ca.issue_coordinator(&["localhost".into()], days));
        assert!(message.starts_with(&expected), "{message}");
    }
    assert!(ca.issued().is_empty(), "nothing is issued");

    // The last whole day before the end of 9999 still works.
    ca.issue_site("va", days_left() - 1).unwrap();
    ca.issue_coordinator(&["localhost".into()], days_left() - 1)
        .unwrap();
    assert_eq!(ca.issued().len(), 2);
    let reopened = CaDir::open(&s.0).unwrap();
    assert_eq!(reopened.issued().len(), 2);
}

#[test]
fn zero_days_are_refused() {
    let s = Scratch::new("ca-limits", "zero");
    assert_eq!(
        refused(CaDir::init(&s.0, "test", 0)),
        "--days 0: the CA certificate must be valid for at least 1 day"
    );
    assert!(!s.0.join("ca.json").exists(), "nothing is created");
    let mut ca = CaDir::init(&s.0, "test", 1).unwrap();
    let expected = "--days 0: a certificate must be valid for at least 1 day";
    assert_eq!(refused(ca.issue_site("va", 0)), expected);
    assert_eq!(
        refused(ca.issue_coordinator(&["localhost".into()], 0)),
        expected
    );
    assert!(ca.issued().is_empty(), "nothing is issued");
}

#[test]
fn bad_coordinator_hosts_are_refused_by_name() {
    let s = Scratch::new("ca-limits", "bad-hosts");
    let mut ca = CaDir::init(&s.0, "test", 30).unwrap();
    let long = format!("{}.example.org", "a".repeat(300));
    let cases: &[(&str, &str)] = &[
        (
            "",
            "coordinator host '' is empty: give a DNS name or an IP address",
        ),
        (
            "a b",
            "coordinator host 'a b' is neither an IP address nor a DNS name: ' ' is not \
             allowed (letters, digits, '-' and '.' only; an international name in its xn-- form)",
        ),
        (
            " ",
            "coordinator host ' ' is neither an IP address nor a DNS name: ' ' is not \
             allowed (letters, digits, '-' and '.' only; an international name in its xn-- form)",
        ),
        (
            "a..b",
            "coordinator host 'a..b' is neither an IP address nor a DNS name: an empty label \
             (a leading, trailing or doubled '.')",
        ),
        (
            "example.org.",
            "coordinator host 'example.org.' is neither an IP address nor a DNS name: an \
             empty label (a leading, trailing or doubled '.')",
        ),
        (
            "-a",
            "coordinator host '-a' is neither an IP address nor a DNS name: label '-a' \
             starts or ends with '-'",
        ),
        (
            "a-.example.org",
            "coordinator host 'a-.example.org' is neither an IP address nor a DNS name: \
             label 'a-' starts or ends with '-'",
        ),
        (
            &long,
            "coordinator host 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa…' \
             (312 characters) is neither an IP address nor a DNS name: longer than the 253 \
             characters a DNS name may have",
        ),
        (
            "1.2.3.999",
            "coordinator host '1.2.3.999' is neither an IP address nor a DNS name: its last \
             label is all digits",
        ),
        (
            "[::1]",
            "coordinator host '[::1]' is neither an IP address nor a DNS name: '[' is not \
             allowed (letters, digits, '-' and '.' only; an international name in its xn-- form)",
        ),
        (
            "a\nb",
            "coordinator host 'a\\nb' is neither an IP address nor a DNS name: '\\n' is not \
             allowed (letters, digits, '-' and '.' only; an international name in its xn-- form)",
        ),
    ];
    for (host, expected) in cases {
        let hosts = vec!["localhost".to_string(), (*host).to_string()];
        assert_eq!(&refused(ca.issue_coordinator(&hosts, 30)), expected);
    }
    let label = format!("{}.org", "b".repeat(64));
    assert_eq!(
        refused(ca.issue_coordinator(&[label], 30)),
        "coordinator host 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb…' \
         (68 characters) is neither an IP address nor a DNS name: a label of 64 characters, \
         more than 63"
    );
    assert!(ca.issued().is_empty(), "nothing is issued");
    assert!(!ca.coordinator_dir().exists(), "nothing is written");
}

#[test]
fn good_coordinator_hosts_are_accepted() {
    let s = Scratch::new("ca-limits", "good-hosts");
    let mut ca = CaDir::init(&s.0, "test", 30).unwrap();
    let hosts: Vec<String> = [
        "localhost",
        "127.0.0.1",
        "::1",
        "coordinator.example.org",
        "xn--hpital-nord-deb.example",
        "a-b.c0",
        &format!("{}.org", "c".repeat(63)),
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    ca.issue_coordinator(&hosts, 30).unwrap();
    assert_eq!(ca.issued()[0].hosts, hosts);
    assert!(ca.coordinator_dir().join("cert.pem").exists());
    // Rotation re-issues them under the new key.
    assert_eq!(ca.rotate().unwrap(), vec!["coordinator".to_string()]);
}
