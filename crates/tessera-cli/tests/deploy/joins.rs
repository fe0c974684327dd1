//! Secure joins between deployed sites (`[[analytics.joins]]`): two site
//! processes and a coordinator on 127.0.0.1 with mutual TLS, synthetic CSVs
//! with a `patient_id` column and a numeric column, a known overlap.

use std::path::Path;

use crate::LIMIT;
use crate::util::procs::{Proc, coordinator, participant_with};
use crate::util::status::status_of;
use crate::util::{self, Scratch};

/// North holds patients 0..60, south 40..100 (written in lower case): 20
/// shared.
pub(crate) const NORTH: std::ops::Range<u32> = 0..60;
pub(crate) const SOUTH: std::ops::Range<u32> = 40..100;

pub(crate) fn identifier(k: u32, lower: bool) -> String {
    let id = format!("PAT-{k:06}-QX");
    if lower { id.to_lowercase() } else { id }
}

/// A site's length of stay for patient `k`: two decimals, distinct per site.
fn stay(k: u32, site: u32) -> String {
    format!(
        "{}.{:02}",
        3 + (k * 37 + site * 11) % 50,
        (k * 13 + site * 7) % 100
    )
}

fn write_site(
    s: &Scratch,
    name: &str,
    range: std::ops::Range<u32>,
    site: u32,
) -> Vec<(String, String)> {
    let mut csv = String::from("patient_id,age,los,y\n");
    let mut rows = Vec::new();
    for k in range {
        let id = identifier(k, site == 1);
        let los = stay(k, site);
        csv.push_str(&format!("{id},{},{los},{}\n", 30 + k % 40, (k + site) % 2));
        rows.push((id, los));
    }
    s.write(name, &csv);
    rows
}

fn plan_text() -> String {
    plan_text_min(10)
}

fn plan_text_min(min_elements: usize) -> String {
    format!("{}{}", base_plan(), stays_join(min_elements))
}

/// The plan without its joins.
pub(crate) fn base_plan() -> &'static str {
    r#"name = "joins"
seed = 7

[data.schema]
target = "y"
negative = ["0"]
columns = [{ name = "patient_id", type = "ignore" }]

[[data.sites]]
name = "north"
path = "north.csv"

[[data.sites]]
name = "south"
path = "south.csv"

[data.standardize]
enabled = false

[model]
kind = "logistic"

[training]
epochs = 1
batch_size = 16
lr = 0.05

[federation]
rounds = 2
min_participants = 2

[privacy]
site_metrics = "clear"

"#
}

/// The join `shared-stays`: count and mean of `los`.
fn stays_join(min_elements: usize) -> String {
    r#"[[analytics.joins]]
name = "shared-stays"
sites = ["north", "south"]
identifier = "patient_id"
value = "los"
value_bounds = [0, 100]
decimals = 2
max_elements = 1000
min_elements = MIN
"#
    .replace("MIN", &min_elements.to_string())
}

fn decode_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The mean of the stays of the shared patients at a site, from its rows.
fn shared_mean(rows: &[(String, String)], shared: &[u32], lower: bool) -> f64 {
    let ids: Vec<String> = shared.iter().map(|&k| identifier(k, lower)).collect();
    let values: Vec<f64> = rows
        .iter()
        .filter(|(id, _)| ids.contains(id))
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .collect();
    values.iter().sum::<f64>() / values.len() as f64
}

pub(crate) struct Federation {
    pub(crate) s: Scratch,
    coordinator: Proc,
    north: Proc,
    south: Proc,
    pub(crate) rows: [Vec<(String, String)>; 2],
}

fn federation(name: &str, south_consents: bool) -> Federation {
    federation_min(name, south_consents, 10)
}

fn federation_min(name: &str, south_consents: bool, min_elements: usize) -> Federation {
    let plan = format!("{}{}", base_plan(), stays_join(min_elements));
    let consent: &[&str] = if south_consents {
        &["shared-stays"]
    } else {
        &[]
    };
    federation_with(name, &plan, &["shared-stays"], consent)
}

/// North and south with `plan`, consenting to the joins `north_consents`
/// and `south_consents`.
pub(crate) fn federation_with(
    name: &str,
    plan: &str,
    north_consents: &[&str],
    south_consents: &[&str],
) -> Federation {
    let s = Scratch::new(name);
    let ca = |args: &[&str]| {
        let mut all = vec!["ca", "--dir", "ca"];
        all.extend_from_slice(args);
        s.run(&all).ok();
    };
    ca(&["init"]);
    ca(&["issue", "--site", "north"]);
    ca(&["issue", "--site", "south"]);
    ca(&["issue", "--coordinator", "--host", "127.0.0.1"]);
    let rows = [
        write_site(&s, "north.csv", NORTH, 0),
        write_site(&s, "south.csv", SOUTH, 1),
    ];
    let plan = s.write("joins.toml", plan);
    let tls = s.path("ca/coordinator");
    let (coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("c.sqlite"),
        0,
        &["--tls", tls.to_str().unwrap()],
    );
    let url = url.replace("http://", "https://");
    let site = |name: &str, consent: &[&str]| {
        let tls = s.path(&format!("ca/sites/{name}"));
        let out = s.path(&format!("{name}-out"));
        std::fs::create_dir_all(&out).unwrap();
        let mut extra = vec![
            "--tls".to_string(),
            tls.to_str().unwrap().to_string(),
            "--join-out".to_string(),
            out.to_str().unwrap().to_string(),
        ];
        for join in consent {
            extra.extend(["--consent-join".to_string(), join.to_string()]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        participant_with(&s.dir, &url, name, &s.path(&format!("{name}.csv")), &extra)
    };
    let north = site("north", north_consents);
    let south = site("south", south_consents);
    Federation {
        s,
        coordinator,
        north,
        south,
        rows,
    }
}

pub(crate) fn finish(f: &mut Federation) {
    assert!(
        f.coordinator.wait(LIMIT).success(),
        "{}",
        f.coordinator.log()
    );
    assert!(f.north.wait(LIMIT).success(), "{}", f.north.log());
    assert!(f.south.wait(LIMIT).success(), "{}", f.south.log());
}

fn join_file(dir: &Path, site: &str) -> serde_json::Value {
    join_file_named(dir, site, "shared-stays")
}

/// What `site` wrote for the join `join`.
pub(crate) fn join_file_named(dir: &Path, site: &str, join: &str) -> serde_json::Value {
    let path = dir.join(format!("{site}-out/join-{join}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Against a curious coordinator and a curious site: both sites learn the
/// exact number of shared patients and the mean stay at each site over
/// them, and nothing else. What each site received is, in order, the other
/// site's signed key share, blinded points and ciphertexts of the expected
/// counts, one decryption share and the other's result; none of the other
/// site's identifiers or values is in it. The coordinator's database, audit
/// log and log hold no identifier and no per-record value: only kinds,
/// sizes, consents and the result, recorded as an unprotected release.
#[test]
fn two_deployed_sites_learn_the_count_and_means_over_shared_patients_and_nothing_else() {
    if util::skip_e2e(
        "two_deployed_sites_learn_the_count_and_means_over_shared_patients_and_nothing_else",
    ) {
        return;
    }
    let mut f = federation("deploy-joins", true);
    finish(&mut f);
    let shared: Vec<u32> = (SOUTH.start..NORTH.end).collect();
    let north_mean = shared_mean(&f.rows[0], &shared, false);
    let south_mean = shared_mean(&f.rows[1], &shared, true);
    for (me, other, own_rows, other_rows) in [
        ("north", "south", &f.rows[0], &f.rows[1]),
        ("south", "north", &f.rows[1], &f.rows[0]),
    ] {
        let file = join_file(&f.s.dir, me);
        assert_eq!(file["status"], "done", "{me}: {file}");
        assert_eq!(file["count"], shared.len() as u64, "{me}");
        assert_eq!(file["signed"], true);
        assert_eq!(file["protected"], false);
        let means = &file["means"];
        assert!(
            (means["north"].as_f64().unwrap() - north_mean).abs() < 1e-9,
            "{me}: {means}"
        );
        assert!(
            (means["south"].as_f64().unwrap() - south_mean).abs() < 1e-9,
            "{me}: {means}"
        );
        assert_eq!(file["own_elements"], own_rows.len() as u64);
        assert_eq!(file["peer_elements"], other_rows.len() as u64);
        // What arrived, in order.
        let received = file["received"].as_array().unwrap();
        let kinds: Vec<&str> = received
            .iter()
            .map(|r| r["kind"].as_str().unwrap())
            .collect();
        let expected = if me == "north" {
            [
                "hello",
                "response",
                "decrypt-share",
                "query",
                "decrypt-request",
                "result",
            ]
        } else {
            [
                "hello",
                "query",
                "decrypt-request",
                "response",
                "decrypt-share",
                "result",
            ]
        };
        assert_eq!(kinds, expected, "{me}");
        let (n_own, n_other) = (own_rows.len() as u32, other_rows.len() as u32);
        let mut payloads = Vec::new();
        for r in received {
            assert_eq!(r["from"], other);
            assert_eq!(r["signed"], true);
            let payload = decode_hex(r["payload_hex"].as_str().unwrap());
            match r["kind"].as_str().unwrap() {
                "hello" | "decrypt-share" | "decrypt-request" => {
                    assert!(payload.len() <= 64, "{me}: {r}");
                }
                "query" => {
                    let q = tessera_psi::SumQuery::from_bytes(&payload).unwrap();
                    assert_eq!(q.count, n_other);
                    assert_eq!(q.points.len(), 32 * n_other as usize);
                }
                "response" => {
                    let resp = tessera_psi::SumResponse::from_bytes(&payload).unwrap();
                    assert_eq!(resp.doubly_count, n_own);
                    assert_eq!(resp.doubly.len(), 32 * n_own as usize);
                    assert_eq!(resp.entry_count, n_other);
                    assert_eq!(resp.entries.len(), 96 * n_other as usize);
                }
                "result" => assert_eq!(payload.len(), 16),
                k => panic!("{me}: unexpected kind {k}"),
            }
            payloads.push(payload);
        }
        // Each payload is searched alone: across a boundary, a share's last
        // random byte (0x20) and the result's count (20 as eight bytes) make
        // 51.52 in fixed point one run in 256.
        let any_holds = |needle: &[u8]| payloads.iter().any(|p| contains(p, needle));
        let transcript = serde_json::to_string(received).unwrap();
        for (id, value) in other_rows {
            for form in [id.clone(), id.to_lowercase(), id.to_uppercase()] {
                assert!(!any_holds(form.as_bytes()), "{me} received {form}");
                assert!(!transcript.contains(&form), "{me} received {form}");
            }
            assert!(
                !transcript.contains(value.as_str()),
                "{me} received the value {value}"
            );
            let fixed = (value.parse::<f64>().unwrap() * 100.0).round() as u64;
            assert!(
                !any_holds(&fixed.to_le_bytes()),
                "{me} received {value} in fixed point"
            );
            assert!(!any_holds(&value.parse::<f64>().unwrap().to_le_bytes()));
        }
    }
    // The coordinator: the result, consents and relays in the audit log,
    // and no identifier or per-record value anywhere.
    let db = f.s.path("c.sqlite");
    let status = status_of(&db);
    let audit = status.audit();
    for site in ["north", "south"] {
        assert!(
            audit
                .iter()
                .any(|a| a.site == site && a.action == "join" && a.outcome == "consented"),
            "{audit:?}"
        );
        assert!(
            audit
                .iter()
                .any(|a| a.site == site && a.outcome == "relayed" && a.detail.contains("bytes")),
            "{audit:?}"
        );
    }
    let store = tessera_coordinator::store::SqliteStore::open_existing(&db).unwrap();
    let run = status.0["run"]["id"].as_str().unwrap().to_string();
    let answers = store.analytics(&run).unwrap();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(!answers[0].protected);
    let answer: serde_json::Value = serde_json::from_str(&answers[0].answer).unwrap();
    assert_eq!(answer["count"], shared.len() as u64);
    assert!((answer["means"]["north"].as_f64().unwrap() - north_mean).abs() < 1e-9);
    let privacy = f.s.run(&["privacy", "--db", db.to_str().unwrap()]).ok();
    assert!(privacy.contains("UNPROTECTED"), "{privacy}");
    let database = std::fs::read(&db).unwrap();
    let details: String = audit
        .iter()
        .map(|a| format!("{} {}\n", a.outcome, a.detail))
        .collect();
    let log = f.coordinator.log();
    for (id, value) in f.rows.iter().flatten() {
        for form in [id.clone(), id.to_lowercase(), id.to_uppercase()] {
            assert!(
                !contains(&database, form.as_bytes()),
                "the database holds {form}"
            );
            assert!(!log.contains(&form), "the coordinator's log holds {form}");
        }
        assert!(
            !details.contains(value.as_str()),
            "the audit log holds the value {value}"
        );
        assert!(
            !answers[0].answer.contains(value.as_str()),
            "the answer holds {value}"
        );
    }
}

/// A curious site that brings few of its own identifiers besides the ones
/// it targets would learn the other site's values from a small
/// intersection: with fewer shared identifiers than `min_elements` (here 20
/// shared, 25 required) neither site records a count or a mean, nothing is
/// reported to the coordinator, and training goes on.
#[test]
fn an_intersection_below_min_elements_releases_nothing() {
    if util::skip_e2e("an_intersection_below_min_elements_releases_nothing") {
        return;
    }
    let mut f = federation_min("deploy-joins-small", true, 25);
    finish(&mut f);
    for (me, log) in [("north", f.north.log()), ("south", f.south.log())] {
        let file = join_file(&f.s.dir, me);
        assert!(file["count"].is_null(), "{me}: {file}");
        assert_ne!(file["status"], "done", "{me}: {file}");
        let means = file["means"].as_object().map_or(0, |m| m.len());
        assert_eq!(means, 0, "{me}: {file}");
        assert!(log.contains("min_elements"), "{me}: {log}");
    }
    let db = f.s.path("c.sqlite");
    let status = status_of(&db);
    let store = tessera_coordinator::store::SqliteStore::open_existing(&db).unwrap();
    let run = status.0["run"]["id"].as_str().unwrap().to_string();
    assert!(
        store.analytics(&run).unwrap().is_empty(),
        "nothing recorded"
    );
    assert!(!status.rounds().is_empty(), "training went on");
}

/// A site that did not consent refuses the join: it says why at the site
/// and to the coordinator (audited), the other site's join reports the
/// refusal, and training goes on.
#[test]
fn a_site_without_consent_refuses_the_join_and_says_why() {
    if util::skip_e2e("a_site_without_consent_refuses_the_join_and_says_why") {
        return;
    }
    let mut f = federation("deploy-joins-refused", false);
    finish(&mut f);
    let south = join_file(&f.s.dir, "south");
    assert_eq!(south["status"], "refused", "{south}");
    assert!(
        south["reason"]
            .as_str()
            .unwrap()
            .contains("--consent-join shared-stays")
    );
    assert!(south["count"].is_null());
    let north = join_file(&f.s.dir, "north");
    assert_eq!(north["status"], "refused-by-peer", "{north}");
    assert!(
        north["reason"]
            .as_str()
            .unwrap()
            .contains("has not consented"),
        "{north}"
    );
    assert!(north["count"].is_null());
    assert!(
        f.south.log().contains("has not consented"),
        "{}",
        f.south.log()
    );
    let status = status_of(&f.s.path("c.sqlite"));
    let audit = status.audit();
    assert!(
        audit.iter().any(|a| a.site == "south"
            && a.outcome == "refused"
            && a.detail.contains("has not consented")),
        "{audit:?}"
    );
    assert!(!status.rounds().is_empty(), "training went on");
}

/// A rogue site against the relay: a join the plan does not list, a
/// message to itself or of an unknown kind, an envelope over the bound,
/// more messages than a mailbox holds, a report with a count above the
/// join's bound. Each is refused with its reason and audited; the relay
/// keeps at most its bound, and without TLS its audit says the messages
/// are unsigned.
#[test]
fn the_relay_refuses_what_a_rogue_site_posts_and_stays_bounded() {
    if util::skip_e2e("the_relay_refuses_what_a_rogue_site_posts_and_stays_bounded") {
        return;
    }
    use tessera_proto::pb;
    use tessera_proto::pb::federation_client::FederationClient;

    let s = Scratch::new("deploy-joins-rogue");
    let plan = s.write("joins.toml", &plan_text());
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &db, 0, &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let post = |join: &str, to: &str, kind: &str, envelope: Vec<u8>| pb::JoinPost {
        site: "north".into(),
        join: join.into(),
        to: to.into(),
        kind: kind.into(),
        envelope,
        report: None,
    };
    let (refusals, relayed, polled) = runtime.block_on(async {
        let mut client = FederationClient::connect(url.clone())
            .await
            .unwrap()
            .max_encoding_message_size(32 << 20);
        client.join(crate::hello("north")).await.unwrap();
        let mut refusals = Vec::new();
        for bad in [
            post("no-such-join", "south", "hello", vec![1]),
            post("shared-stays", "north", "hello", vec![1]),
            post("shared-stays", "south", "bogus", vec![1]),
            post("shared-stays", "south", "query", vec![0; (15 << 20) + 1]),
        ] {
            let status = client.post_join_message(bad).await.unwrap_err();
            refusals.push(status.message().to_string());
        }
        let mut relayed = 0;
        for _ in 0..40 {
            if client
                .post_join_message(post("shared-stays", "south", "hello", vec![7; 32]))
                .await
                .is_ok()
            {
                relayed += 1;
            }
        }
        let lying = pb::JoinPost {
            report: Some(pb::JoinReport {
                status: "done".into(),
                count: 1_000_000,
                ..Default::default()
            }),
            ..post("shared-stays", "", "report", Vec::new())
        };
        let status = client.post_join_message(lying).await.unwrap_err();
        refusals.push(status.message().to_string());
        // North reads nothing (all went to south); a stranger reads nothing.
        let polled = client
            .poll_join_messages(pb::JoinPollRequest {
                site: "north".into(),
                join: "shared-stays".into(),
                next: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(polled.insecure);
        (refusals, relayed, polled.messages.len())
    });
    assert!(refusals[0].contains("lists no such join"), "{refusals:?}");
    assert!(refusals[1].contains("not another site"), "{refusals:?}");
    assert!(refusals[2].contains("kind is one of"), "{refusals:?}");
    assert!(refusals[3].contains("at most"), "{refusals:?}");
    assert!(refusals[4].contains("max_elements"), "{refusals:?}");
    assert_eq!(relayed, 32, "a mailbox holds at most 32 messages");
    assert_eq!(polled, 0);
    coordinator.kill_9();
    let audit = status_of(&db).audit();
    let rejected = audit
        .iter()
        .filter(|a| a.action == "join" && a.outcome == "rejected")
        .count();
    assert!(rejected >= 5, "{audit:?}");
    assert!(
        audit
            .iter()
            .any(|a| a.outcome == "relayed" && a.detail.contains("without TLS")),
        "{audit:?}"
    );
}
