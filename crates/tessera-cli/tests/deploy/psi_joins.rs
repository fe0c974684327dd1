//! The PSI reveals of deployed joins (`reveal = "members"`,
//! `"members_first"`, `"count"`): north holds patients 0..60, south 40..100
//! (south writes them in lower case), 20 shared; both consent to three
//! joins run one after the other before training.

use std::collections::BTreeSet;

use crate::joins::{NORTH, SOUTH, base_plan, federation_with, finish, identifier, join_file_named};
use crate::util;
use crate::util::status::status_of;

fn psi_join(name: &str, reveal: &str) -> String {
    format!(
        "[[analytics.joins]]\nname = \"{name}\"\nsites = [\"north\", \"south\"]\n\
         identifier = \"patient_id\"\nreveal = \"{reveal}\"\nmax_elements = 1000\n\
         min_elements = 10\n\n"
    )
}

/// Each mode tells each site what it says and nothing more: with
/// `members` each site lists exactly its own identifiers that the other
/// holds (as its file spells them: north upper case, south lower case);
/// with `members_first` north lists them and south learns neither the
/// list nor the count; with `count` both learn the count (20) and no list.
/// The coordinator records each result, and the run trains after them.
#[test]
fn psi_joins_reveal_the_members_to_both_to_the_first_or_only_the_count() {
    if util::skip_e2e("psi_joins_reveal_the_members_to_both_to_the_first_or_only_the_count") {
        return;
    }
    let plan = format!(
        "{}{}{}{}",
        base_plan(),
        psi_join("both", "members"),
        psi_join("first", "members_first"),
        psi_join("size", "count")
    );
    let joins = ["both", "first", "size"];
    let mut f = federation_with("deploy-psi-joins", &plan, &joins, &joins);
    finish(&mut f);
    let shared: Vec<u32> = (SOUTH.start..NORTH.end).collect();
    let expected = |lower: bool| -> Vec<String> {
        let set: BTreeSet<String> = shared.iter().map(|&k| identifier(k, lower)).collect();
        set.into_iter().collect()
    };
    let listed = |v: &serde_json::Value| -> Option<Vec<String>> {
        v["shared"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
    };
    for (site, lower, own, peer) in [
        ("north", false, NORTH.len(), SOUTH.len()),
        ("south", true, SOUTH.len(), NORTH.len()),
    ] {
        let both = join_file_named(&f.s.dir, site, "both");
        assert_eq!(both["status"], "done", "{site}: {both}");
        assert_eq!(both["count"], 20);
        assert_eq!(listed(&both), Some(expected(lower)), "{site}");
        assert_eq!(both["own_elements"], own as u64);
        assert_eq!(both["peer_elements"], peer as u64);

        let size = join_file_named(&f.s.dir, site, "size");
        assert_eq!(size["status"], "done", "{site}: {size}");
        assert_eq!(size["count"], 20);
        assert_eq!(listed(&size), None, "{site}: no list with count");
    }
    let first_north = join_file_named(&f.s.dir, "north", "first");
    assert_eq!(first_north["status"], "done", "{first_north}");
    assert_eq!(listed(&first_north), Some(expected(false)));
    let first_south = join_file_named(&f.s.dir, "south", "first");
    assert_eq!(first_south["status"], "done", "{first_south}");
    assert!(first_south["count"].is_null(), "{first_south}");
    assert_eq!(listed(&first_south), None);
    // What south received in members_first: the query, nothing after it.
    let kinds: Vec<&str> = first_south["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["hello", "query"], "{first_south}");

    // The lists are patient identifiers: the site's user only.
    for site in ["north", "south"] {
        use std::os::unix::fs::PermissionsExt;
        let path = f.s.path(&format!("{site}-out/join-both.json"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    let status = status_of(&f.s.path("c.sqlite"));
    assert_eq!(status.audited("join", "done"), 6, "each site of each join");
    // No identifier reached the coordinator's store.
    let db = std::fs::read(f.s.path("c.sqlite")).unwrap();
    for k in shared {
        for lower in [false, true] {
            let id = identifier(k, lower);
            assert!(
                !db.windows(id.len()).any(|w| w == id.as_bytes()),
                "{id} in the coordinator's database"
            );
        }
    }
}
