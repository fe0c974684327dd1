//! A live run watched from outside: the Prometheus endpoint describes every
//! metric and its accuracy gauge is the report's, and the dashboard, loaded
//! in a real headless Chromium while the run goes on, shows the run's
//! rounds, its sites and the report's accuracy.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::procs::{HEART_SITES, Proc, coordinator, free_port, participant, wait_until};
use crate::util::{self, Scratch};
use crate::{LIMIT, evaluated_rounds, heart_plan, http_get};

/// The metric families of a scrape (histograms by their base name).
fn families(scraped: &str) -> Vec<String> {
    let mut names: Vec<String> = scraped
        .lines()
        .filter(|l| l.starts_with("tessera_"))
        .map(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    scraped
                        .contains(&format!("# TYPE {base} histogram"))
                        .then(|| base.to_string())
                })
                .unwrap_or_else(|| name.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The value of the unlabelled sample `name`.
fn sample(scraped: &str, name: &str) -> Option<f64> {
    scraped
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// The headless browser: Debian's `chromium` (or another Chromium on
/// PATH); `None` when there is none, unless CI requires it.
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        assert!(
            std::env::var_os("TESSERA_REQUIRE_CHROMIUM").is_none_or(|v| v != "1"),
            "TESSERA_REQUIRE_CHROMIUM=1 and no chromium on PATH: install Debian's chromium and \
             chromium-driver (apt-get install chromium chromium-driver, as .ci/run does)"
        );
    }
    found
}

/// Chromium, headless, on `url` with `args`; its stdout.
fn browse(chromium: &Path, profile: &Path, url: &str, args: &[&str]) -> String {
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The text of the element with `id` in a dumped DOM (no nested markup).
fn by_id(dom: &str, id: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[start..];
    let text = &rest[rest.find('>')? + 1..];
    Some(text[..text.find('<')?].to_string())
}

/// The live run, watched: `/metrics` has a `# HELP` and a `# TYPE` line for
/// every tessera_ metric, and its accuracy gauge equals the report's figure
/// for the round last evaluated; the dashboard, loaded in headless Chromium
/// during the run, shows the rounds closed, each site live, the report's
/// accuracy for a round, numbered chart axes, and the privacy line.
#[test]
fn metrics_and_the_dashboard_show_the_live_run() {
    if util::skip_e2e("metrics_and_the_dashboard_show_the_live_run") {
        return;
    }
    let s = Scratch::new("dashboard");
    let plan = heart_plan(&s);
    let metrics = format!("127.0.0.1:{}", free_port());
    let dashboard = format!("127.0.0.1:{}", free_port());
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("c.sqlite"),
        0,
        &[
            "--metrics",
            &metrics,
            "--dashboard",
            &dashboard,
            "--report",
            "dep.json",
        ],
    );
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| {
            // Slow enough that the run is still going while the browser looks.
            participant(&s.dir, &url, site, &["--pause-before-update", "0.4"])
        })
        .collect();
    let status = || -> serde_json::Value {
        let (line, body) = http_get(&dashboard, "/api/status");
        assert!(line.contains("200"), "{line}\n{body}");
        serde_json::from_str(&body).unwrap()
    };
    wait_until(LIMIT, "two rounds evaluated", || {
        evaluated_rounds(&status()) >= 2
    });
    // Each site's participation in the run so far, from the store.
    let live = status();
    let participation = live["participation"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(participation.len(), HEART_SITES.len(), "{live}");
    for p in &participation {
        let (asked, counted) = (p["asked"].as_u64().unwrap(), p["counted"].as_u64().unwrap());
        assert!(
            counted >= 2 && asked >= counted && asked <= counted + 1,
            "{p}"
        );
        assert_eq!(p["rejected"], 0, "{p}");
    }

    // The gauge as it stands between two reads on the federation's thread
    // that agree on how many rounds are evaluated.
    let (evaluated, scraped) = loop {
        let before = evaluated_rounds(&status());
        let (_, scraped) = http_get(&metrics, "/metrics");
        if evaluated_rounds(&status()) == before {
            break (before, scraped);
        }
    };
    let names = families(&scraped);
    for required in [
        "tessera_round_accuracy",
        "tessera_round_loss",
        "tessera_liveness_drops_total",
        "tessera_updates_accepted_total",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "no {required}:\n{scraped}"
        );
    }
    for name in &names {
        assert!(
            scraped.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{scraped}"
        );
        assert!(
            scraped.contains(&format!("# TYPE {name} ")),
            "no TYPE for {name}:\n{scraped}"
        );
    }
    let gauge = sample(&scraped, "tessera_round_accuracy").expect("an accuracy gauge");
    let loss = sample(&scraped, "tessera_round_loss").expect("a loss gauge");

    // The dashboard in a real browser, while the run goes on.
    let browser = chromium();
    let mut page = None;
    if let Some(chromium) = &browser {
        let address = format!("http://{dashboard}/");
        let profile = s.path("chromium-profile");
        let closed_before = status()["rounds"].as_array().unwrap().len();
        let dom = browse(chromium, &profile, &address, &["--dump-dom"]);
        let closed_after = status()["rounds"].as_array().unwrap().len();
        let shown: usize = by_id(&dom, "rounds-closed")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no round count on the page:\n{dom}"));
        assert!(
            (closed_before..=closed_after).contains(&shown),
            "{shown} rounds shown, {closed_before} to {closed_after} closed:\n{dom}"
        );
        for site in HEART_SITES {
            assert_eq!(
                by_id(&dom, &format!("site-{site}-state")).as_deref(),
                Some("live"),
                "{site}:\n{dom}"
            );
            let seen = by_id(&dom, &format!("site-{site}-seen")).unwrap();
            assert!(seen.ends_with(" UTC") && seen.starts_with("20"), "{seen}");
            // Its participation: every round it was asked in counted (no
            // site fails here), at least the two evaluated.
            let counted = by_id(&dom, &format!("site-{site}-counted")).unwrap_or_default();
            let (n, of) = counted
                .split_once(" of ")
                .and_then(|(n, of)| Some((n.parse::<u32>().ok()?, of.parse::<u32>().ok()?)))
                .unwrap_or_else(|| panic!("{site}: counted {counted:?}"));
            assert!(n >= 2 && of >= n && of <= n + 1, "{site}: {counted}");
            let refused = by_id(&dom, &format!("site-{site}-refused"));
            assert_eq!(refused.as_deref(), Some("0 / 0"), "{site}");
        }
        assert!(dom.contains("id=\"accuracy-svg\"") && dom.contains("class=\"x-tick\""));
        assert!(dom.contains("class=\"y-tick\""), "{dom}");
        assert!(by_id(&dom, "privacy-spent").is_some(), "{dom}");
        // What the run waits for, in words: its step, sites and since when.
        let waiting = by_id(&dom, "waiting").unwrap_or_default();
        assert!(
            !waiting.is_empty() && !waiting.contains('{') && !waiting.contains("unix"),
            "{waiting}"
        );
        let screenshot = s.path("dashboard.png");
        browse(
            chromium,
            &profile,
            &address,
            &[
                &format!("--screenshot={}", screenshot.display()),
                "--window-size=1200,1000",
                "--hide-scrollbars",
            ],
        );
        let png = std::fs::read(&screenshot).expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        if let Some(keep) = std::env::var_os("TESSERA_DASHBOARD_SCREENSHOT") {
            std::fs::copy(&screenshot, keep).unwrap();
        }
        page = Some(dom);
    } else {
        eprintln!(
            "metrics_and_the_dashboard_show_the_live_run: the browser part skipped: no chromium \
             on PATH (apt-get install chromium chromium-driver, as .ci/run does; \
             TESSERA_REQUIRE_CHROMIUM=1 makes this a failure)"
        );
    }

    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    let report = s.json("dep.json");
    let round = &report["rounds"][evaluated - 1];
    assert_eq!(round["round"], evaluated);
    assert_eq!(Some(gauge), round["accuracy"].as_f64(), "{scraped}");
    assert_eq!(Some(loss), round["loss"].as_f64(), "{scraped}");
    if let Some(dom) = page {
        // Every round the page showed evaluated, with the report's accuracy.
        let mut shown = 0;
        for r in report["rounds"].as_array().unwrap() {
            let id = format!("round-{}-accuracy", r["round"]);
            if let Some(text) = by_id(&dom, &id).filter(|t| t != "-") {
                assert_eq!(
                    text,
                    format!("{:.4}", r["accuracy"].as_f64().unwrap()),
                    "{id}"
                );
                shown += 1;
            }
        }
        assert!(shown >= 2, "{dom}");
    }
}

/// The feature catalog on the dashboard (`--catalog FILE`, written by
/// `tessera catalog --json`): `/api/catalog` is the file's document with
/// each feature's runs from the coordinator's own database (the live run
/// counts), and the page, in headless Chromium, shows each feature's sites,
/// quality and runs.
#[test]
fn the_dashboard_shows_the_feature_catalog_with_its_usage() {
    if util::skip_e2e("the_dashboard_shows_the_feature_catalog_with_its_usage") {
        return;
    }
    let s = Scratch::new("catalog-page");
    let plan = heart_plan(&s);
    s.run(&[
        "catalog",
        "--plan",
        plan.to_str().unwrap(),
        "--json",
        "catalog.json",
    ])
    .ok();
    let dashboard = format!("127.0.0.1:{}", free_port());
    let (mut coordinator, url) = coordinator(
        &s.dir,
        &plan,
        &s.path("c.sqlite"),
        0,
        &["--dashboard", &dashboard, "--catalog", "catalog.json"],
    );
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, &["--pause-before-update", "0.4"]))
        .collect();
    let (line, body) = http_get(&dashboard, "/api/catalog");
    assert!(line.contains("200"), "{line}\n{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let age = doc["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "age")
        .unwrap()
        .clone();
    assert_eq!(age["sites"].as_array().unwrap().len(), 4, "{age}");
    assert_eq!(
        age["used_by"].as_array().unwrap().len(),
        1,
        "the live run: {age}"
    );
    if let Some(chromium) = chromium() {
        let dom = browse(
            &chromium,
            &s.path("chromium-profile"),
            &format!("http://{dashboard}/catalog"),
            &["--dump-dom"],
        );
        assert_eq!(
            by_id(&dom, "feature-age-sites").as_deref(),
            Some("4/4"),
            "{dom}"
        );
        assert_eq!(
            by_id(&dom, "feature-age-runs").as_deref(),
            Some("1"),
            "{dom}"
        );
        let quality = by_id(&dom, "feature-age-quality").unwrap();
        assert!(quality.parse::<f64>().is_ok(), "{quality}");
    } else {
        eprintln!(
            "the_dashboard_shows_the_feature_catalog_with_its_usage: the browser part skipped: \
             no chromium on PATH"
        );
    }
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
}
