//! Intersection among three or more sites through a leader.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::collections::BTreeSet;
use tessera_psi::*;

fn check(lists: &[Vec<String>]) {
    let prepared: Vec<PreparedSet> = lists.iter().map(|l| tokens(l)).collect();
    let sites: Vec<&[Token]> = prepared.iter().map(|p| p.tokens.as_slice()).collect();
    let out = intersect_sites_seeded_for_tests(PsiConfig::new(Mode::Both), &sites, 42).unwrap();
    let mut want: BTreeSet<String> = lists[0].iter().map(|s| normalise(s)).collect();
    let mut prefixes = Vec::new();
    for l in &lists[1..] {
        let other: BTreeSet<String> = l.iter().map(|s| normalise(s)).collect();
        want = want.intersection(&other).cloned().collect();
        prefixes.push(want.len());
    }
    assert_eq!(
        out.chain_sizes, prefixes,
        "the leader's prefix intersections"
    );
    assert_eq!(out.intersection.len(), lists.len());
    for (k, (l, p)) in lists.iter().zip(&prepared).enumerate() {
        assert_eq!(names(l, p, &out.intersection[k]), want, "site {k}");
    }
    assert!(out.bytes > 0);
}

#[test]
fn three_sites_find_the_common_identifiers() {
    check(&[ids(0..500), ids(200..800), ids(300..1000)]);
}

#[test]
fn four_sites_with_duplicates_and_an_empty_result() {
    let mut a = ids(0..300);
    a.extend(ids(0..50));
    check(&[a, ids(100..400), ids(150..260), ids(250..255)]);
    check(&[ids(0..100), ids(50..150), ids(100..200)]);
}

#[test]
fn two_sites_and_a_lone_site() {
    check(&[ids(0..100), ids(40..90)]);
    let lone = tokens(&ids(0..10));
    let out =
        intersect_sites_seeded_for_tests(PsiConfig::new(Mode::Both), &[&lone.tokens], 1).unwrap();
    assert_eq!(out.intersection, vec![(0..10).collect::<Vec<_>>()]);
    assert!(intersect_sites(PsiConfig::new(Mode::Both), &[]).is_err());
}
