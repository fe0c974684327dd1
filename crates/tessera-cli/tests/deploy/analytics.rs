//! Analytics queries against a deployed federation (`tessera analyze
//! --coordinator`): four heart-disease sites under mutual TLS with secure
//! aggregation train, then stay connected for `[analytics] serve_seconds`;
//! an analyst with a certificate of the federation CA asks queries, the
//! coordinator checks them and the run's budgets before any site sees
//! them, and the sites sum their noised contributions through SecAgg+.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tessera_coordinator::RunStore;

use crate::tls::heart_ca;
use crate::util::procs::{HEART_SITES, Proc, coordinator, participant};
use crate::util::status::status_of;
use crate::util::{self, Scratch};
use crate::{LIMIT, heart_text};

/// A run budget that fits one query at epsilon 1, not two.
const DP_TABLES: &str = "[privacy]\nbudget = 1.2\ndelta = 1e-6\n\n[analytics]\nepsilon = 1.0\n\
                         delta = 1e-6\nmin_group = 5\nanalysts = [\"alice\"]\nserve_seconds = 300\n";

const QUERY: &str = "SELECT cp, count(*), mean(age), stddev(chol), histogram(thalach, 4) \
                     FROM data GROUP BY cp CLAMP age 20 90 CLAMP chol 100 600 CLAMP thalach 60 220";

/// A federation of the bundled plan with 2 rounds, secure aggregation and
/// `analytics` appended, under mutual TLS: the coordinator and the four
/// sites (each pinning the plan), the plan, the database, the URL.
fn serve(s: &Scratch, analytics: &str) -> (Proc, Vec<Proc>, PathBuf, PathBuf, String) {
    let ca = heart_ca(s);
    for analyst in ["alice", "mallory"] {
        ca(&["issue", "--site", analyst]);
    }
    let text = heart_text(s, 2);
    let plan = s.write(
        "analytics.toml",
        &format!("{text}\n[secure_aggregation]\nenabled = true\n\n{analytics}\n"),
    );
    let db = s.path("c.sqlite");
    let (coordinator, sites, url) = federation(s, &plan, &db);
    (coordinator, sites, plan, db, url)
}

/// The coordinator of `plan` on database `db` and the four sites.
fn federation(
    s: &Scratch,
    plan: &std::path::Path,
    db: &std::path::Path,
) -> (Proc, Vec<Proc>, String) {
    let coordinator_tls = s.path("ca/coordinator");
    let (coordinator, url) = coordinator(
        &s.dir,
        plan,
        db,
        0,
        &["--tls", coordinator_tls.to_str().unwrap()],
    );
    let url = url.replace("http://", "https://");
    let sites = HEART_SITES
        .iter()
        .map(|site| {
            let dir = s.path(&format!("ca/sites/{site}"));
            participant(
                &s.dir,
                &url,
                site,
                &[
                    "--tls",
                    dir.to_str().unwrap(),
                    "--expect-plan",
                    plan.to_str().unwrap(),
                ],
            )
        })
        .collect();
    (coordinator, sites, url)
}

/// `tessera analyze --coordinator` as `analyst` (its certificate's folder).
fn ask(s: &Scratch, url: &str, analyst: &str, extra: &[&str]) -> util::Run {
    let tls = s.path(&format!("ca/sites/{analyst}"));
    let mut args = vec![
        "analyze",
        "--coordinator",
        url,
        "--tls",
        tls.to_str().unwrap(),
        "--analyst",
        analyst,
    ];
    args.extend_from_slice(extra);
    s.run(&args)
}

/// Asks until training is over (the coordinator refuses queries while it
/// trains, saying so).
fn ask_when_served(s: &Scratch, url: &str, extra: &[&str]) -> util::Run {
    let start = Instant::now();
    loop {
        let run = ask(s, url, "alice", extra);
        if !run.stderr().contains("still training") {
            return run;
        }
        assert!(start.elapsed() < LIMIT, "training never ended");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn close(s: &Scratch, url: &str, coordinator: &mut Proc, sites: &mut [Proc]) {
    let out = ask(s, url, "alice", &["--close"]).ok();
    assert!(out.contains("closed"), "{out}");
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in sites.iter_mut() {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
}

/// The entries of `site`'s own ledger (its working folder's default
/// file) under its one plan.
fn site_ledger(s: &Scratch, site: &str) -> Vec<serde_json::Value> {
    let ledger = s.json(&format!("tessera-ledger-{site}.json"));
    let plans = ledger["plans"].as_object().unwrap();
    assert_eq!(plans.len(), 1, "{ledger}");
    plans.values().next().unwrap()["entries"]
        .as_array()
        .unwrap()
        .clone()
}

fn answers_sent(sites: &[Proc]) -> usize {
    sites
        .iter()
        .map(|p| p.log().matches("answering an analytics query").count())
        .sum()
}

/// (a) and (d): an exact query (the plan says `dp = false` explicitly)
/// equals the simulated `tessera analyze` answer exactly, summed through
/// SecAgg+ by the sites; an analyst whose certificate the CA issued but
/// whom the plan does not list is refused, and nothing reaches the sites.
#[test]
fn an_exact_deployed_query_equals_simulation_and_an_unlisted_analyst_is_refused() {
    if util::skip_e2e(
        "an_exact_deployed_query_equals_simulation_and_an_unlisted_analyst_is_refused",
    ) {
        return;
    }
    let s = Scratch::new("deploy-analytics-exact");
    let (mut coordinator, mut sites, plan, db, url) = serve(
        &s,
        "[analytics]\ndp = false\nanalysts = [\"alice\"]\nserve_seconds = 300\n",
    );
    let out = ask_when_served(&s, &url, &["--query", QUERY, "--json", "dep.json"]).ok();
    assert!(out.contains("UNPROTECTED"), "{out}");
    assert!(out.contains("the secure sum of 4 of 4 sites"), "{out}");
    s.run(&[
        "analyze",
        "--plan",
        plan.to_str().unwrap(),
        "--query",
        QUERY,
        "--json",
        "sim.json",
    ])
    .ok();
    let (deployed, simulated) = (s.json("dep.json"), s.json("sim.json"));
    assert_eq!(
        deployed["answers"][0]["groups"], simulated["answers"][0]["groups"],
        "the deployed exact answer is the simulated one, bit for bit"
    );
    assert_eq!(deployed["answers"][0]["release"]["protected"], false);
    assert_eq!(deployed["secure_aggregation"], true);
    // An analyst the CA knows but the plan does not list.
    let refused = ask(&s, &url, "mallory", &["--query", QUERY]).fails();
    assert!(
        refused.contains("not among the plan's [analytics] analysts"),
        "{refused}"
    );
    // A certificate that names another analyst than the one claimed.
    let tls = s.path("ca/sites/mallory");
    let forged = s
        .run(&[
            "analyze",
            "--coordinator",
            &url,
            "--tls",
            tls.to_str().unwrap(),
            "--analyst",
            "alice",
            "--query",
            QUERY,
        ])
        .fails();
    assert!(forged.contains("refused"), "{forged}");
    assert_eq!(answers_sent(&sites), 4, "one query reached the sites");
    close(&s, &url, &mut coordinator, &mut sites);
    let stored = tessera_coordinator::SqliteStore::open(&db).unwrap();
    let run = stored.runs().unwrap()[0].id.clone();
    let rows = stored.analytics(&run).unwrap();
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].protected, "recorded as an unprotected release");
    let status = status_of(&db);
    assert!(
        status
            .ledger()
            .iter()
            .all(|e| e["kind"].as_str() != Some("analytics")),
        "an unprotected release has no ledger row"
    );
    assert_eq!(
        status.audit_count(|a| a.action == "analytics"
            && a.outcome == "refused"
            && a.site == "mallory"
            && a.detail.contains("not among")),
        1,
        "mallory"
    );
    assert_eq!(status.audited("analytics", "rejected"), 1, "a forged claim");
}

/// (b) and (c): a DP query carries its epsilon, delta and noise and is
/// recorded with its ledger row in the coordinator's store; the next one
/// would pass the run's budget and is refused naming it, before any site
/// is asked.
#[test]
fn a_deployed_dp_query_is_charged_and_one_past_the_budget_is_refused_before_dispatch() {
    if util::skip_e2e(
        "a_deployed_dp_query_is_charged_and_one_past_the_budget_is_refused_before_dispatch",
    ) {
        return;
    }
    let s = Scratch::new("deploy-analytics-dp");
    let (mut coordinator, mut sites, _plan, db, url) = serve(&s, DP_TABLES);
    let out = ask_when_served(&s, &url, &["--query", QUERY, "--json", "dp.json"]).ok();
    assert!(out.contains("epsilon 1 at delta 1e-6"), "{out}");
    let answer = s.json("dp.json");
    let release = &answer["answers"][0]["release"];
    assert_eq!(release["protected"], true);
    assert_eq!(release["epsilon"], 1.0);
    assert_eq!(release["delta"], 1e-6);
    let sigma = release["sigma"].as_f64().unwrap();
    let noise = release["noise_std"].as_f64().unwrap();
    // Each of the four sites adds sigma^2 / (t - 1) for the round's
    // threshold t (2 to 4): the sum carries 4 sigma^2 / (t - 1) >= sigma^2.
    assert!(sigma > 0.0 && noise >= sigma, "{release}");
    let t = 1.0 + 4.0 * (sigma / noise).powi(2);
    assert!(
        (t - t.round()).abs() < 1e-9 && (2.0..=4.0).contains(&t),
        "{release}"
    );
    assert_eq!(answer["ledger"].as_array().unwrap().len(), 1);
    assert_eq!(answers_sent(&sites), 4);

    let refused = ask(&s, &url, "alice", &["--query", QUERY]).fails();
    assert!(
        refused.contains("budget"),
        "the refusal names the budget: {refused}"
    );
    assert_eq!(answers_sent(&sites), 4, "nothing was dispatched");
    close(&s, &url, &mut coordinator, &mut sites);

    let stored = tessera_coordinator::SqliteStore::open(&db).unwrap();
    let run = stored.runs().unwrap()[0].id.clone();
    let rows = stored.analytics(&run).unwrap();
    assert_eq!(rows.len(), 1, "only the answered query is recorded");
    assert!(rows[0].protected && rows[0].epsilon == 1.0);
    let status = status_of(&db);
    let charged: Vec<_> = status
        .ledger()
        .iter()
        .filter(|e| e["kind"].as_str() == Some("analytics"))
        .collect();
    assert_eq!(charged.len(), 1, "{:?}", status.ledger());
    assert_eq!(status.audited("analytics", "dispatched"), 1);
    assert_eq!(status.audited("analytics", "answered"), 1);
    assert!(
        status.audit_count(|a| a.action == "analytics"
            && a.outcome == "refused"
            && a.detail.contains("budget"))
            == 1
    );
}

/// Without mutual TLS anyone could claim a listed analyst's name: a
/// coordinator running in the insecure mode refuses every deployed query,
/// saying why, and no site is asked.
#[test]
fn an_insecure_coordinator_refuses_deployed_queries() {
    if util::skip_e2e("an_insecure_coordinator_refuses_deployed_queries") {
        return;
    }
    let s = Scratch::new("deploy-analytics-insecure");
    let text = heart_text(&s, 1);
    let plan = s.write(
        "analytics.toml",
        &format!("{text}\n[analytics]\ndp = false\nanalysts = [\"alice\"]\nserve_seconds = 60\n"),
    );
    let db = s.path("c.sqlite");
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &db, 0, &[]);
    let refused = s
        .run(&[
            "analyze",
            "--coordinator",
            &url,
            "--insecure",
            "--analyst",
            "alice",
            "--query",
            QUERY,
        ])
        .fails();
    assert!(refused.contains("mutual TLS"), "{refused}");
    // One connection refused again and again: past its burst, its calls
    // are turned away unread (as the federation service's are).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let codes = runtime.block_on(async {
        use tessera_proto::pb;
        let mut client = pb::analytics_client::AnalyticsClient::connect(url.clone())
            .await
            .unwrap();
        let mut codes = Vec::new();
        for _ in 0..60 {
            let request = pb::AnalyticsRequest {
                analyst: "alice".into(),
                query: QUERY.into(),
                ..Default::default()
            };
            codes.push(client.query(request).await.unwrap_err().code());
        }
        codes
    });
    let turned_away = codes
        .iter()
        .filter(|c| **c == tonic::Code::ResourceExhausted)
        .count();
    assert!(
        codes[..20]
            .iter()
            .all(|c| *c == tonic::Code::PermissionDenied)
            && turned_away > 0,
        "{codes:?}"
    );
    coordinator.kill_9();
}

/// The attack on the budget: a coordinator that lost its database (or
/// starts a new run of the same plan) has an empty ledger and would let
/// the analyst ask again. Each site's own ledger (`--ledger`, by default
/// in its working folder) still counts the first answer: every site
/// refuses the query naming its ledger, and nothing is answered.
#[test]
fn a_coordinator_that_lost_its_ledger_cannot_make_the_sites_answer_past_the_budget() {
    if util::skip_e2e(
        "a_coordinator_that_lost_its_ledger_cannot_make_the_sites_answer_past_the_budget",
    ) {
        return;
    }
    let s = Scratch::new("deploy-analytics-site-ledger");
    let (mut coordinator, mut sites, plan, _db, url) = serve(&s, DP_TABLES);
    let out = ask_when_served(&s, &url, &["--query", QUERY]).ok();
    assert!(out.contains("epsilon 1 at delta 1e-6"), "{out}");
    close(&s, &url, &mut coordinator, &mut sites);
    for site in HEART_SITES {
        let entries = site_ledger(&s, site);
        assert_eq!(entries.len(), 1, "{site}: {entries:?}");
        assert_eq!(entries[0]["kind"], "analytics");
    }

    // A fresh database: the coordinator's ledger is empty, so it asks.
    let (mut coordinator, mut sites, url) = federation(&s, &plan, &s.path("fresh.sqlite"));
    let refused = ask_when_served(&s, &url, &["--query", QUERY]).fails();
    assert!(
        refused.contains("this site's own ledger") && refused.contains("budget"),
        "the sites refuse by their own ledgers: {refused}"
    );
    for p in &sites {
        assert!(
            p.log().contains("this site refuses the analytics query"),
            "{}",
            p.log()
        );
    }
    close(&s, &url, &mut coordinator, &mut sites);
}

const PER_SITE: &str = "SELECT count(*), mean(age), histogram(thalach, 4) FROM data PER SITE \
                        CLAMP age 20 90 CLAMP thalach 60 220";

/// The answer of `scope` in a report.
fn answer_of<'a>(report: &'a serde_json::Value, scope: &str) -> &'a serde_json::Value {
    report["answers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["scope"] == scope)
        .unwrap_or_else(|| panic!("no answer for {scope}: {report}"))
}

/// PER SITE deployed, where the plan allows it: besides the federation's
/// secure sum each site sends its own answer. Exact (the plan says
/// `dp = false`), every site's answer equals the simulated one bit for
/// bit; with DP, each site's own answer carries the full sigma and is
/// charged to that site besides the federation's release, in the
/// coordinator's ledger and in each site's own; a second query past a
/// site's budget is refused before dispatch, and an own answer sent when
/// no query is open is refused.
#[test]
fn per_site_answers_deployed_equal_simulation_and_are_charged_to_each_site() {
    if util::skip_e2e("per_site_answers_deployed_equal_simulation_and_are_charged_to_each_site") {
        return;
    }
    let s = Scratch::new("deploy-analytics-per-site");
    let (mut coordinator, mut sites, plan, _db, url) = serve(
        &s,
        "[analytics]\ndp = false\nper_site = true\nanalysts = [\"alice\"]\nserve_seconds = 300\n",
    );
    let out = ask_when_served(&s, &url, &["--query", PER_SITE, "--json", "dep.json"]).ok();
    assert!(out.contains("the own answers of 4 sites"), "{out}");
    close(&s, &url, &mut coordinator, &mut sites);
    s.run(&[
        "analyze",
        "--plan",
        plan.to_str().unwrap(),
        "--query",
        PER_SITE,
        "--json",
        "sim.json",
    ])
    .ok();
    let (deployed, simulated) = (s.json("dep.json"), s.json("sim.json"));
    assert_eq!(deployed["answers"].as_array().unwrap().len(), 5);
    for scope in ["federation", "cleveland", "hungarian", "switzerland", "va"] {
        assert_eq!(
            answer_of(&deployed, scope)["groups"],
            answer_of(&simulated, scope)["groups"],
            "{scope}: the deployed exact answer is the simulated one"
        );
    }

    // With DP, on a second plan.
    let s = Scratch::new("deploy-analytics-per-site-dp");
    let (mut coordinator, mut sites, _plan, db, url) = serve(
        &s,
        "[privacy]\nbudget = 1.6\ndelta = 1e-6\n\n[analytics]\nepsilon = 1.0\ndelta = 1e-6\n\
         per_site = true\nmin_group = 5\nanalysts = [\"alice\"]\nserve_seconds = 300\n",
    );
    let out = ask_when_served(&s, &url, &["--query", PER_SITE, "--json", "dp.json"]).ok();
    assert!(out.contains("the own answers of 4 sites"), "{out}");
    let answer = s.json("dp.json");
    let sigma = answer["answers"][0]["release"]["sigma"].as_f64().unwrap();
    for site in HEART_SITES {
        let own = &answer_of(&answer, site)["release"];
        assert_eq!(own["noise_std"].as_f64().unwrap(), sigma, "{site}: {own}");
    }
    let ledger = answer["ledger"].as_array().unwrap();
    assert_eq!(
        ledger.len(),
        5,
        "the federation's release and 4 own answers"
    );
    assert_eq!(
        ledger
            .iter()
            .filter(|e| e["participant"].is_string())
            .count(),
        4
    );
    // A second PER SITE query would pass each site's budget (two releases
    // each already): refused before any site is asked.
    let refused = ask(&s, &url, "alice", &["--query", PER_SITE]).fails();
    assert!(refused.contains("budget"), "{refused}");
    // Own answers from outside the protocol: no query is open now.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        use tessera_proto::pb;
        let tls = s.path("ca/sites/va");
        let files = tessera_tls::TlsFiles::in_dir(&tls);
        let channel = tessera_participant::client::endpoint(&url, Some(&files), None)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = pb::federation_client::FederationClient::new(channel);
        client
            .submit_site_answer(pb::SiteAnswer {
                site: "va".into(),
                release: 1,
                values: vec![7; 3],
            })
            .await
            .unwrap_err()
    });
    assert!(
        status.message().contains("no query 1 is being answered"),
        "{status:?}"
    );
    close(&s, &url, &mut coordinator, &mut sites);
    let status = status_of(&db);
    let charged: Vec<_> = status
        .ledger()
        .iter()
        .filter(|e| e["kind"].as_str() == Some("analytics"))
        .collect();
    assert_eq!(charged.len(), 5, "{charged:?}");
    for site in HEART_SITES {
        let entries = site_ledger(&s, site);
        let kinds: Vec<_> = entries
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["analytics-site", "analytics"], "{site}");
    }
}
