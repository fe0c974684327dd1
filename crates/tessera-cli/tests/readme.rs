//! README's commands run as written on a copy of the repository's
//! `examples/` and `data/`: every `tessera` command of the blocks marked
//! `<!-- checked -->` (at reduced size: `--rounds 2`, `synth --rows 20`),
//! and the Deployment block (`<!-- checked: deployment -->`) with real
//! processes, its participant line (a `--data` relative to the working
//! folder, beside `--plan-dir`) once per hospital. Gated by `TESSERA_E2E=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::time::Duration;

use util::procs::{HEART_SITES, Proc};
use util::{fresh_copy, root, skip_e2e};

/// The README's sh blocks with the marker just above them (`checked`,
/// `checked: deployment`; empty for unmarked blocks).
fn blocks() -> Vec<(String, Vec<String>)> {
    util::doc_blocks("README.md")
}

/// A block's commands as the shell would split them: continuation lines
/// joined, quotes removed, `#` comments dropped, `;` separating commands.
fn commands(lines: &[String]) -> Vec<Vec<String>> {
    let joined = lines.join("\n").replace("\\\n", " ");
    let mut commands = Vec::new();
    for line in joined.lines() {
        let (mut words, mut word, mut quote, mut started) =
            (Vec::new(), String::new(), None, false);
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => word.push(c),
                (None, '\'' | '"') => {
                    quote = Some(c);
                    started = true;
                }
                (None, '#') if !started => break,
                (None, ';') | (None, ' ' | '\t') => {
                    if started {
                        words.push(std::mem::take(&mut word));
                        started = false;
                    }
                    if c == ';' && !words.is_empty() {
                        commands.push(std::mem::take(&mut words));
                    }
                }
                (None, c) => {
                    word.push(c);
                    started = true;
                }
            }
        }
        if started {
            words.push(word);
        }
        if !words.is_empty() {
            commands.push(words);
        }
    }
    commands
}

/// The `tessera` commands of the blocks marked `marker`, without the
/// leading `tessera`.
fn tessera_commands(marker: &str) -> Vec<Vec<String>> {
    blocks()
        .into_iter()
        .filter(|(m, _)| m == marker)
        .flat_map(|(_, lines)| commands(&lines))
        .filter(|c| c[0] == "tessera")
        .map(|c| c[1..].to_vec())
        .collect()
}

/// The Python block (`checked: python`) is what `.ci/run` runs: each of its
/// commands is a line of `.ci/run`, as written.
#[test]
fn the_readme_python_commands_run_in_ci() {
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    let ci: Vec<&str> = ci.lines().map(str::trim).collect();
    let block: Vec<String> = blocks()
        .into_iter()
        .filter(|(m, _)| m == "checked: python")
        .flat_map(|(_, lines)| commands(&lines))
        .map(|words| words.join(" "))
        .collect();
    assert_eq!(block.len(), 2, "{block:?}");
    for command in &block {
        assert!(
            ci.contains(&command.as_str()),
            "README: {command} is not in .ci/run"
        );
    }
}

/// `args` with the value after `flag` set to `value` (added if absent).
fn with_value(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    match args.iter().position(|a| a == flag) {
        Some(i) if i + 1 < args.len() => args[i + 1] = value.to_string(),
        _ => args.extend([flag.to_string(), value.to_string()]),
    }
    args
}

#[test]
fn the_readme_is_parsed_into_its_commands() {
    let lines: Vec<String> = [
        "tessera simulate --set 'a.b={min=1e5,max=1e7}' \\",
        "    --rounds 3   # a comment",
        "cargo run -- x; tessera runs --db r.sqlite",
    ]
    .iter()
    .map(|l| l.to_string())
    .collect();
    assert_eq!(
        commands(&lines),
        vec![
            vec![
                "tessera",
                "simulate",
                "--set",
                "a.b={min=1e5,max=1e7}",
                "--rounds",
                "3"
            ],
            vec!["cargo", "run", "--", "x"],
            vec!["tessera", "runs", "--db", "r.sqlite"],
        ]
    );
    // The marked blocks are there: a README edit cannot drop them silently.
    assert!(tessera_commands("checked").len() >= 16);
    assert!(tessera_commands("checked: deployment").len() >= 9);
}

/// Every `tessera` command of the checked blocks succeeds in a fresh copy,
/// at reduced size.
#[test]
fn every_checked_readme_command_runs() {
    if skip_e2e("every_checked_readme_command_runs") {
        return;
    }
    let s = fresh_copy("readme");
    let all = tessera_commands("checked");
    for command in all {
        let command = match command[0].as_str() {
            "simulate" => with_value(command, "--rounds", "2"),
            "synth" => with_value(command, "--rows", "20"),
            _ => command,
        };
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let run = s.run(&args);
        assert!(
            run.output.status.success(),
            "README: tessera {}\n{}",
            command.join(" "),
            run.stderr()
        );
    }
}

/// The Deployment block as an operator types it, in a fresh copy: a CA, the
/// coordinator and the README's participant line (its `--data` relative to
/// the working folder, beside `--plan-dir examples`) for each hospital; the
/// run finishes and the operator commands read it. Before, `--data` was
/// read from `--plan-dir`, and the README's line failed.
#[test]
fn the_readme_deployment_runs_as_written() {
    if skip_e2e("the_readme_deployment_runs_as_written") {
        return;
    }
    let s = fresh_copy("readme-deploy");
    let commands = tessera_commands("checked: deployment");
    let mut url = None;
    let mut coordinator: Option<Proc> = None;
    let mut participants = Vec::new();
    let local = |args: &[String], port: Option<&str>| -> Vec<String> {
        args.iter()
            .map(|a| {
                let a = match port {
                    Some(port) => a.replace("coord.example.org:7000", &format!("127.0.0.1:{port}")),
                    None => a.clone(),
                };
                a.replace("coord.example.org", "127.0.0.1")
                    .replace("0.0.0.0:7000", "127.0.0.1:0")
                    .replace("127.0.0.1:9100", "127.0.0.1:0")
            })
            .collect()
    };
    for command in &commands {
        match command[0].as_str() {
            "coordinator" => {
                let args = local(command, None);
                let (tx, rx) = std::sync::mpsc::channel();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let proc = Proc::start("coordinator", &s.dir, &args, Some(tx));
                let address = rx
                    .recv_timeout(Duration::from_secs(60))
                    .unwrap_or_else(|_| panic!("no coordinator:\n{}", proc.log()));
                url = Some(address.rsplit(':').next().unwrap().to_string());
                coordinator = Some(proc);
            }
            "participant" | "ca"
                if command.contains(&"cleveland".to_string())
                    || command.iter().any(|a| a.contains("/cleveland")) =>
            {
                // The line for one hospital, typed for each.
                for site in HEART_SITES {
                    let args: Vec<String> = local(command, url.as_deref())
                        .iter()
                        .map(|a| a.replace("cleveland", site))
                        .collect();
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    if command[0] == "ca" {
                        s.run(&args).ok();
                    } else {
                        participants.push(Proc::start(site, &s.dir, &args, None));
                    }
                }
            }
            _ => {
                if let Some(mut c) = coordinator.take() {
                    // The operator commands read a finished run.
                    let status = c.wait(Duration::from_secs(300));
                    assert!(status.success(), "coordinator:\n{}", c.log());
                    assert!(c.log().contains("finished 15 rounds"), "{}", c.log());
                    for mut p in participants.drain(..) {
                        let status = p.wait(Duration::from_secs(60));
                        assert!(status.success(), "{}:\n{}", p.name, p.log());
                    }
                }
                let args = local(command, url.as_deref());
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let run = s.run(&args);
                assert!(
                    run.output.status.success(),
                    "README: tessera {}\n{}",
                    command.join(" "),
                    run.stderr()
                );
            }
        }
    }
    assert!(coordinator.is_none(), "the block ran its operator commands");
    assert!(url.is_some(), "the block started a coordinator");
}
