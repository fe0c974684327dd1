//! `tessera tune`: the bundled search space runs as-is on a fresh copy,
//! its result is a command that runs, a search stopped part way continues
//! without rerunning what it has, and a bad space or another search's
//! folder is refused naming the cause.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

const PLAN: &str = "examples/fed-heart-disease.toml";
const SPACE: &str = "examples/tune/fed-heart-disease.toml";

fn trials(s: &util::Scratch, out: &str) -> Vec<String> {
    std::fs::read_to_string(s.path(&format!("{out}/trials.jsonl")))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The example: Hyperband's three brackets (17 configurations, 399 rounds
/// over three seeds), the plan as given among them, the finalists again on
/// five seeds (300 rounds), every trial kept, the result compared on seeds
/// 1 to 15 and written with the command that runs it, which runs.
#[test]
fn the_bundled_space_tunes_fed_heart_disease_and_its_result_runs() {
    let s = util::fresh_copy("tune");
    let out = s
        .run(&["tune", "--plan", PLAN, "--space", SPACE, "--out", "t"])
        .ok();
    assert!(
        out.contains("brackets 9 at [2, 5, 15] rounds, 5 at [5, 15] rounds, 3 at [15] rounds"),
        "{out}"
    );
    assert!(out.contains("(the plan as given)"), "{out}");
    assert!(
        out.contains("86 trial(s) run now, 0 reused, 699 rounds in all"),
        "{out}"
    );
    // A header and one line a trial: 17 configurations' rungs over 3 seeds,
    // four finalists over 5.
    assert_eq!(trials(&s, "t").len(), 1 + 86);
    let result = s.json("t/tune.json");
    let comparison = result["comparison"].as_array().unwrap();
    assert_eq!(comparison.len(), 15);
    let best = result["search"]["best"].as_u64().unwrap() as usize;
    let settings: Vec<String> = result["best_settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        result["search"]["configurations"][best],
        serde_json::json!(settings)
    );
    // The finalists are each bracket's best and the plan as given; the
    // result is the best of the finals.
    let finals = result["search"]["finals"].as_array().unwrap();
    assert_eq!(finals.len(), 4);
    assert_eq!(finals[0]["configuration"].as_u64().unwrap() as usize, best);
    let brackets = result["search"]["brackets"].as_array().unwrap();
    let mut tops: Vec<u64> = brackets
        .iter()
        .map(|b| {
            b.as_array().unwrap().last().unwrap()["standings"][0]["configuration"]
                .as_u64()
                .unwrap()
        })
        .collect();
    tops.push(14);
    tops.sort_unstable();
    let mut finalists: Vec<u64> = finals
        .iter()
        .map(|f| f["configuration"].as_u64().unwrap())
        .collect();
    finalists.sort_unstable();
    assert_eq!(finalists, tops, "configuration 14 is the plan as given");
    assert!(
        result["search"]["configurations"][14]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The printed command runs, and gives the comparison's first seed.
    let command = result["command"].as_str().unwrap();
    let mut args: Vec<&str> = command
        .split_whitespace()
        .skip(1)
        .map(|w| w.trim_matches('\''))
        .collect();
    let seed = comparison[0]["seed"].to_string();
    args.extend(["-q", "--seed", &seed, "--report", "best.json"]);
    s.run(&args).ok();
    let report = s.json("best.json");
    assert_eq!(
        report["final"]["mean_site_accuracy"].as_f64().unwrap(),
        comparison[0]["tuned"].as_f64().unwrap()
    );
}

/// Stopped part way (its trials file cut after some lines, the last of
/// them half written), the search continues: it reruns only what is
/// missing and ends where an uninterrupted search ends.
#[test]
fn a_search_stopped_part_way_continues_where_it_stopped() {
    let s = util::fresh_copy("tune-resume");
    let space = s.write(
        "space.toml",
        "[search]\nmin_rounds = 5\nseeds = [7]\ncompare_seeds = [1]\n\
         [[param]]\nkey = \"strategies.fedavg.client_lr\"\nlog_uniform = [0.001, 0.1]\n",
    );
    let space = space.to_str().unwrap();
    let whole = s
        .run(&["tune", "-q", "--plan", PLAN, "--space", space, "--out", "a"])
        .ok();
    let lines = trials(&s, "a");
    assert!(lines.len() > 4, "{lines:?}");
    // The first rows kept, the next half written.
    std::fs::create_dir_all(s.path("b")).unwrap();
    let half = &lines[3][..lines[3].len() / 2];
    let cut = format!("{}\n{half}", lines[..3].join("\n"));
    std::fs::write(s.path("b/trials.jsonl"), cut).unwrap();
    let run = s.run(&["tune", "-q", "--plan", PLAN, "--space", space, "--out", "b"]);
    let again = run.ok();
    assert!(run.stderr().contains("was cut short"), "{}", run.stderr());
    assert!(
        again.contains("continuing: 2 trial(s) already done"),
        "{again}"
    );
    let ran = lines.len() - 1 - 2;
    assert!(
        again.contains(&format!("{ran} trial(s) run now, 2 reused")),
        "{again}"
    );
    assert_eq!(trials(&s, "b").len(), lines.len());
    let result = |dir: &str| {
        let mut r = s.json(&format!("{dir}/tune.json"));
        r["command"] = serde_json::Value::Null;
        r
    };
    assert_eq!(result("a"), result("b"));
    // A last line whole but without its newline (a crash between the two)
    // is cut too: it runs again, and the file stays readable.
    std::fs::create_dir_all(s.path("c")).unwrap();
    std::fs::write(s.path("c/trials.jsonl"), lines[..4].join("\n")).unwrap();
    let run = s.run(&["tune", "-q", "--plan", PLAN, "--space", space, "--out", "c"]);
    assert!(
        run.ok().contains("continuing: 2 trial(s)"),
        "{}",
        run.stdout()
    );
    assert_eq!(trials(&s, "c").len(), lines.len());
    assert_eq!(result("a"), result("c"));
    // A trial claiming an accuracy no run gives is refused, not reused.
    let mut forged = lines[..3].to_vec();
    forged[2] = forged[2].replace("\"mean_site_accuracy\":0.", "\"mean_site_accuracy\":7.");
    assert_ne!(forged[2], lines[2]);
    std::fs::create_dir_all(s.path("d")).unwrap();
    std::fs::write(s.path("d/trials.jsonl"), forged.join("\n") + "\n").unwrap();
    let e = s
        .run(&["tune", "--plan", PLAN, "--space", space, "--out", "d"])
        .fails();
    assert!(e.contains("line 3: an accuracy outside [0, 1]"), "{e}");
    // Changed data: the old trials are not reused.
    let va = s.path("data/uci-heart-disease/processed.va.data");
    let text = std::fs::read_to_string(&va).unwrap();
    std::fs::write(&va, text.replacen("63,", "64,", 1)).unwrap();
    let e = s
        .run(&["tune", "--plan", PLAN, "--space", space, "--out", "a"])
        .fails();
    std::fs::write(&va, text).unwrap();
    assert!(
        e.contains("another plan, search space, data or Tessera version"),
        "{e}"
    );
    // Run a third time, nothing is left to run.
    let third = s
        .run(&["tune", "-q", "--plan", PLAN, "--space", space, "--out", "b"])
        .ok();
    assert!(third.contains("0 trial(s) run now"), "{third}");
    // The same folder for another space is refused.
    let other = s.write(
        "other.toml",
        "[search]\nmin_rounds = 5\nseeds = [8]\ncompare_seeds = [1]\n\
         [[param]]\nkey = \"strategies.fedavg.client_lr\"\nlog_uniform = [0.001, 0.1]\n",
    );
    let e = s
        .run(&[
            "tune",
            "--plan",
            PLAN,
            "--space",
            other.to_str().unwrap(),
            "--out",
            "b",
        ])
        .fails();
    assert!(
        e.contains("holds the trials of another plan, search space"),
        "{e}"
    );
    assert!(whole.contains("searched:"), "{whole}");
}

/// Spaces that cannot be searched are refused before anything runs, each
/// naming its parameter or setting.
#[test]
fn a_bad_space_is_refused_naming_the_cause() {
    let s = util::fresh_copy("tune-bad");
    let cases = [
        (
            "[[param]]\nkey = \"data.split.test_fraction\"\nuniform = [0.1, 0.5]\n",
            "parameter 'data.split.test_fraction': the search tunes the learning on fixed data",
        ),
        (
            "[[param]]\nkey = \"federation.rounds\"\nchoice = [5, 10]\n",
            "the rounds are successive halving's budget",
        ),
        (
            "[search]\nseeds = [1, 2]\n[[param]]\nkey = \"training.steps\"\nchoice = [5]\n",
            "seed 1 is in both seeds and compare_seeds",
        ),
        (
            "[[param]]\nkey = \"training.lr\"\nlog_uniform = [0.0, 0.1]\n",
            "must be finite numbers, low below high, both above 0",
        ),
        (
            "[[param]]\nkey = \"training.lr\"\nlog_uniform = [0.01, 0.1]\nchoice = [0.1]\n",
            "give exactly one of choice, uniform, log_uniform, int_uniform",
        ),
        (
            "[[param]]\nkey = \"strategies.fedprox.mu\"\nchoice = [0.1]\n\
             when = \"federation.strategy=fedprox\"\n",
            "when names 'federation.strategy', which is not an earlier parameter",
        ),
        (
            "[[param]]\nkey = \"training.optimizer\"\nchoice = [\"sgd\", \"rmsprop\"]\n",
            "does not make a valid plan",
        ),
        (
            "[search]\neta = 1\n[[param]]\nkey = \"training.steps\"\nchoice = [5]\n",
            "eta must be 2 to 10",
        ),
        ("[search]\nrungs = 3\n", "unknown field `rungs`"),
        (
            "[[param]]\nkey = \"federation . rounds\"\nchoice = [1]\n",
            "give a plan key as --set takes it",
        ),
        (
            "[[param]]\nkey = \"federation\"\nchoice = [{ rounds = 1 }]\n",
            "the rounds are successive halving's budget",
        ),
        (
            "[[param]]\nkey = \"training.steps\"\nint_uniform = [-9223372036854775808, 9223372036854775807]\n",
            "the range at most 2^32 values",
        ),
        (
            "[[param]]\nkey = \"federation.strategy\"\nchoice = [\"fedavg\", \"fedprox\"]\n\
             [[param]]\nkey = \"strategies.fedprox.mu\"\nchoice = [0.1]\n\
             when = \"federation.strategy=FedProx\"\n",
            "when: 'federation.strategy' never draws 'FedProx'",
        ),
        (
            "[search]\nmin_rounds = 15\n[[param]]\nkey = \"training.steps\"\nchoice = [5]\n",
            "runs 1 configuration over the plan's 15 rounds and compares nothing",
        ),
        (
            "[search]\neta = 2\nmin_rounds = 1\n[[param]]\nkey = \"training.steps\"\nchoice = [5]\n",
            "more than 1000: raise min_rounds or eta",
        ),
    ];
    // Rounds enough for Hyperband to draw over a thousand configurations.
    let plan = std::fs::read_to_string(s.path(PLAN))
        .unwrap()
        .replace("rounds = 15", "rounds = 5000");
    s.write("examples/long.toml", &plan);
    for (text, expected) in cases {
        let plan = if expected.contains("raise min_rounds") {
            "examples/long.toml"
        } else {
            PLAN
        };
        s.write("space.toml", text);
        let e = s
            .run(&[
                "tune",
                "--plan",
                plan,
                "--space",
                "space.toml",
                "--out",
                "t",
            ])
            .fails();
        assert!(e.contains(expected), "{text}: {e}");
        assert!(!s.path("t/trials.jsonl").exists(), "{text}: nothing runs");
    }
}
