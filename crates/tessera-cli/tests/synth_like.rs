//! `tessera synth --like`: a site's DP synthetic sample reads as the plan
//! says (the site's preflight passes on it), keeps the columns' marginals
//! and a strong correlation, holds none of the file's identifiers or marked
//! values, and is charged to the site's ledger before it is written; a
//! release past the budget writes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use util::Scratch;

const PLAN: &str = r#"
name = "synth-like"
seed = 1

[data.schema]
header = true
missing = ["?"]
target = "label"
columns = [
  { name = "id", type = "ignore" },
  { name = "x", type = "numeric" },
  { name = "y", type = "numeric" },
  { name = "grp", type = "categorical", levels = ["a", "b", "c"] },
  { name = "ward", type = "categorical" },
  { name = "label", type = "categorical" },
]

[[data.sites]]
name = "s"
path = "s.csv"

[model]
kind = "logistic"

[training]
epochs = 1
batch_size = 32
lr = 0.1

[federation]
rounds = 1

[privacy]
budget = 20
"#;

/// A marked value: in the file once, and nowhere else (a ward no other
/// row has, in a column whose levels the plan does not declare).
const MARK: &str = "ward-x91";

/// 3000 rows: x ~ N(60, 10) whole; y = 0.8 x' + 0.6 e at 100 + 20 y; grp
/// a/b/c at 50/30/20%; label yes/no by x; a unique id.
fn data() -> String {
    let mut rng = tessera_core::SeededRng::new(5);
    let mut out = String::from("id,x,y,grp,ward,label\n");
    for i in 0..3000 {
        let a = rng.normal();
        let b = 0.8 * a + 0.6 * rng.normal();
        let grp = match rng.next_f64() {
            u if u < 0.5 => "a",
            u if u < 0.8 => "b",
            _ => "c",
        };
        let y = format!("{:.2}", 100.0 + 20.0 * b);
        let ward = if i == 7 {
            MARK
        } else if i % 2 == 0 {
            "w1"
        } else {
            "w2"
        };
        let label = if a + 0.5 * rng.normal() > 0.0 {
            "yes"
        } else {
            "no"
        };
        out.push_str(&format!(
            "mrn-{i:06}-{},{:.0},{y},{grp},{ward},{label}\n",
            rng.next_u64() % 100_000,
            60.0 + 10.0 * a
        ));
    }
    out
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn a_synthetic_sample_reads_as_the_site_and_holds_none_of_its_rows() {
    let s = Scratch::new("synth-like");
    s.write("plan.toml", PLAN);
    let source = data();
    s.write("s.csv", &source);
    let out = s
        .run(&[
            "synth",
            "--like",
            "s.csv",
            "--plan",
            "plan.toml",
            "--site",
            "s",
            "--epsilon",
            "6",
            "--out",
            "synthetic.csv",
        ])
        .ok();
    assert!(out.contains("marginals and numeric correlations"), "{out}");
    assert!(out.contains("1 the plan ignores written missing"), "{out}");
    let text = std::fs::read_to_string(s.path("synthetic.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id,x,y,grp,ward,label"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!((2800..3200).contains(&rows.len()), "{}", rows.len());
    // Nothing of the file: the identifiers withheld, the mark absent.
    assert!(rows.iter().all(|r| r[0] == "?"), "ids withheld");
    assert!(!text.contains("mrn-") && !text.contains(MARK));
    // Marginals and the correlation.
    let num = |c: usize| -> Vec<f64> { rows.iter().filter_map(|r| r[c].parse().ok()).collect() };
    let (x, y) = (num(1), num(2));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    // Drawn uniformly within five-a-decade bins: a few points of bias.
    assert!((mean(&x) - 60.0).abs() < 5.0, "{}", mean(&x));
    assert!((mean(&y) - 100.0).abs() < 10.0, "{}", mean(&y));
    assert!(
        x.iter().all(|v| v.fract() == 0.0),
        "whole numbers stay whole"
    );
    let pairs: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r[1].parse().ok()?, r[2].parse().ok()?)))
        .collect();
    let (a, b): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
    let r = pearson(&a, &b);
    assert!(r > 0.5, "correlation {r}");
    let share = rows.iter().filter(|r| r[3] == "a").count() as f64 / rows.len() as f64;
    assert!((share - 0.5).abs() < 0.05, "{share}");
    for (column, level) in [(4, "w1"), (4, "w2"), (5, "yes"), (5, "no")] {
        assert!(rows.iter().any(|r| r[column] == level), "{level}");
    }
    // The site's preflight passes on the sample: a failure can be
    // reproduced with it.
    let check = s
        .run(&[
            "check",
            "--plan",
            "plan.toml",
            "--site",
            "s",
            "--data",
            "synthetic.csv",
        ])
        .ok();
    assert!(check.contains("ready for plan 'synth-like'"), "{check}");
    // Charged to the ledger, one entry a release.
    let ledger = s.json("tessera-ledger-s.json");
    let entries: Vec<String> = ledger["plans"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p["entries"].as_array().unwrap().clone())
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(entries, ["synthetic_count", "synthetic", "synthetic_pairs"]);

    // Past the budget (20, about 6 spent): refused, nothing written, and
    // nothing charged (the releases are checked together).
    let before = std::fs::read_to_string(s.path("tessera-ledger-s.json")).unwrap();
    let err = s
        .run(&[
            "synth",
            "--like",
            "s.csv",
            "--plan",
            "plan.toml",
            "--site",
            "s",
            "--epsilon",
            "30",
            "--out",
            "again.csv",
        ])
        .fails();
    assert!(err.contains("the sample was not written"), "{err}");
    assert!(!s.path("again.csv").exists());
    let after = std::fs::read_to_string(s.path("tessera-ledger-s.json")).unwrap();
    assert_eq!(before, after, "a refused release charged nothing");
    // A file without the header the plan says it has: its first row would
    // be written out as names; refused.
    let body: String = source.lines().skip(1).map(|l| format!("{l}\n")).collect();
    s.write("nohdr.csv", &body);
    let err = s
        .run(&[
            "synth",
            "--like",
            "nohdr.csv",
            "--plan",
            "plan.toml",
            "--site",
            "s",
            "--epsilon",
            "1",
            "--out",
            "h.csv",
        ])
        .fails();
    assert!(
        err.contains("is not a header naming the plan's columns"),
        "{err}"
    );
    assert!(!err.contains("mrn-"), "{err}");
    // Flags that belong together.
    let err = s
        .run(&["synth", "--like", "s.csv", "--out", "x.csv"])
        .fails();
    assert!(
        err.contains("--like needs --plan, --site and --epsilon"),
        "{err}"
    );
    let err = s
        .run(&["synth", "--epsilon", "1", "--out", "x.csv"])
        .fails();
    assert!(err.contains("--epsilon is for --like"), "{err}");
}
