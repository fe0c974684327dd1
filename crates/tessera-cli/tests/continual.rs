//! `tessera simulate --continue-from`: a run continues from an earlier
//! run's model file, with elastic weight consolidation from the importance
//! that run wrote, and reports what it kept of the earlier data; mismatched
//! files are refused with one line naming the problem.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use util::{Scratch, root};

/// The flat Synthetic(0.5, 0.5) plan of 12 sites, drawn with `seed`.
fn args(seed: u64) -> Vec<String> {
    let plan = root().join("examples/synthetic-hierarchical.toml");
    let mut a: Vec<String> = vec![
        "simulate".into(),
        "--plan".into(),
        plan.display().to_string(),
    ];
    for set in [
        "topology.kind=flat",
        "model.kind=mlp",
        "model.hidden=[32]",
        "data.synthetic.sites=12",
    ] {
        a.extend(["--set".into(), set.into()]);
    }
    a.extend([
        "--set".into(),
        format!("data.synthetic.seed={seed}"),
        "--seed".into(),
        seed.to_string(),
        "--rounds".into(),
        "20".into(),
    ]);
    a
}

fn run(s: &Scratch, seed: u64, more: &[&str]) -> util::Run {
    let mut a = args(seed);
    a.extend(more.iter().map(|m| m.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    s.run(&a)
}

/// The one line a refused run prints.
fn refused(s: &Scratch, seed: u64, more: &[&str]) -> String {
    let mut more = more.to_vec();
    more.push("-q");
    run(s, seed, &more).fails()
}

#[test]
fn a_run_continues_from_a_model_file_and_reports_what_it_forgot() {
    let s = Scratch::new("continual");
    run(
        &s,
        17,
        &[
            "--model-out",
            "m1.model",
            "--importance-out",
            "m1.importance",
            "--site-importance-out",
            "m1.sites",
            "--report",
            "r1.json",
        ],
    )
    .ok();
    let inspect = s.run(&["model", "inspect", "m1.importance"]).ok();
    assert!(inspect.contains("importance"), "{inspect}");
    let mut forgot = Vec::new();
    for (name, extra) in [
        ("plain", vec![]),
        (
            "ewc",
            vec!["--ewc-lambda", "1", "--importance", "m1.importance"],
        ),
        (
            "own",
            vec!["--ewc-lambda", "1", "--site-importance", "m1.sites"],
        ),
    ] {
        let report = format!("{name}.json");
        let model = format!("{name}.model");
        let mut more = vec![
            "--continue-from",
            "m1.model",
            "--earlier",
            "data.synthetic.seed=17",
            "--report",
            &report,
            "--model-out",
            &model,
        ];
        more.extend(extra);
        let out = run(&s, 18, &more).ok();
        assert!(out.contains("continued ("), "{out}");
        let c = &s.json(&report)["continual"];
        assert_eq!(c["from"], "m1.model");
        assert_eq!(c["from_round"], 20);
        let earlier = &c["earlier"];
        assert_eq!(earlier["settings"][0], "data.synthetic.seed=17");
        let before = earlier["before"].as_f64().unwrap();
        // The earlier run's own final accuracy, computed again.
        assert_eq!(
            before,
            s.json("r1.json")["final"]["accuracy"].as_f64().unwrap()
        );
        assert!(c["new_after"].as_f64().unwrap() > c["new_before"].as_f64().unwrap() + 0.5);
        forgot.push(before - earlier["after"].as_f64().unwrap());
        println!("{name}: {out}");
    }
    assert!(
        forgot[1] < forgot[0] / 2.0,
        "forgot: plain {}, EWC {}",
        forgot[0],
        forgot[1]
    );
    // Each site held by its own importance (as deployed sites are) forgets
    // less than plain continued training too.
    assert!(
        forgot[2] < forgot[0],
        "forgot: plain {}, EWC by site {}",
        forgot[0],
        forgot[2]
    );
    assert_eq!(s.json("own.json")["continual"]["ewc_importance"], "site");
    assert_eq!(
        s.json("ewc.json")["continual"]["ewc_importance"],
        "federation"
    );
    // Every site's own importance is needed.
    std::fs::remove_file(s.path("m1.sites/site3.importance")).unwrap();
    let line = refused(
        &s,
        18,
        &[
            "--continue-from",
            "m1.model",
            "--ewc-lambda",
            "1",
            "--site-importance",
            "m1.sites",
        ],
    );
    assert!(line.contains("site3.importance"), "{line}");
    // The continued model's lineage names the model it continued from.
    let inspect = s.run(&["model", "inspect", "ewc.model"]).ok();
    assert!(inspect.contains("m1.model (round 20 of plan"), "{inspect}");
    // The importance of another model of the same plan and round is refused.
    let line = refused(
        &s,
        18,
        &[
            "--continue-from",
            "ewc.model",
            "--ewc-lambda",
            "1",
            "--importance",
            "m1.importance",
        ],
    );
    assert!(line.contains("not the importance of ewc.model"), "{line}");
}

#[test]
fn mismatched_continuations_are_refused_naming_why() {
    let s = Scratch::new("continual-bad");
    run(
        &s,
        17,
        &[
            "--model-out",
            "m1.model",
            "--importance-out",
            "m1.importance",
        ],
    )
    .ok();
    run(
        &s,
        19,
        &[
            "--model-out",
            "m3.model",
            "--importance-out",
            "m3.importance",
        ],
    )
    .ok();
    const FROM: [&str; 2] = ["--continue-from", "m1.model"];
    let with = |more: &[&'static str]| -> Vec<&'static str> { [&FROM[..], more].concat() };
    let cases: [(&str, Vec<&str>, &str); 6] = [
        (
            "another run's importance",
            with(&["--ewc-lambda", "1", "--importance", "m3.importance"]),
            "not the importance of m1.model",
        ),
        (
            "a model file as importance",
            with(&["--ewc-lambda", "1", "--importance", "m1.model"]),
            "not the importance of m1.model",
        ),
        (
            "another model",
            with(&["--set", "model.hidden=[16]"]),
            "m1.model: a Mlp model with hidden layers [32]",
        ),
        (
            "a lambda without its importance",
            with(&["--ewc-lambda", "1"]),
            "--importance",
        ),
        (
            "a negative lambda",
            with(&["--ewc-lambda", "-1", "--importance", "m1.importance"]),
            "ewc_lambda must be a number >= 0",
        ),
        (
            "a personalized strategy",
            with(&["--strategy", "fedper"]),
            "personalized strategy fedper is not supported",
        ),
    ];
    for (what, more, why) in cases {
        let line = refused(&s, 18, &more);
        assert!(line.contains(why), "{what}: {line}");
    }
    // Another dataset's features.
    let line = s
        .run(&["simulate", "-q", "--continue-from", "m1.model"])
        .fails();
    assert!(
        line.contains("m1.model: its 60 features are not this data's"),
        "{line}"
    );
    // A typo in --earlier (refused before the run), and the importance
    // under DP.
    let line = refused(
        &s,
        18,
        &[
            "--continue-from",
            "m1.model",
            "--earlier",
            "data.synthetic.seeed=17",
            "--report",
            "typo.json",
        ],
    );
    assert!(line.contains("--earlier"), "{line}");
    assert!(!s.path("typo.json").exists(), "refused before the run");
    let line = refused(
        &s,
        17,
        &[
            "--set",
            "privacy.mode=local",
            "--set",
            "privacy.noise_multiplier=1.0",
            "--importance-out",
            "dp.importance",
        ],
    );
    assert!(
        line.contains("--importance-out: the importance is a statistic"),
        "{line}"
    );
    // Not a model file at all.
    s.write("junk.model", "not a model");
    let line = refused(&s, 18, &["--continue-from", "junk.model"]);
    assert!(line.contains("junk.model"), "{line}");
}
