//! Privacy-safe logging: a deployed run with every log line on (`trace`,
//! every crate) at the coordinator and at each site, over data whose rows
//! carry marked values, and not one line holds a marked value or a row;
//! nor does any span or span event the processes export over OTLP.

use crate::util::procs::{HEART_SITES, Proc, coordinator_env, heart_file, participant_env};
use crate::util::{self, Scratch};
use crate::{LIMIT, heart_text};

/// Each site's marks: an age and a cholesterol no row holds, put in the
/// site's first row.
fn marks(i: usize) -> (String, String) {
    (format!("58.31{i}15"), format!("271.82{i}18"))
}

#[test]
fn no_log_line_at_any_level_holds_a_marked_value() {
    if util::skip_e2e("no_log_line_at_any_level_holds_a_marked_value") {
        return;
    }
    let s = Scratch::new("deploy-logging");
    let plan = s.write("plan.toml", &heart_text(&s, 3));
    let trace = [("TESSERA_LOG", "trace")];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (otlp, exported) = crate::tracing::collector(&runtime);
    let (mut coordinator, url) = coordinator_env(
        &s.dir,
        &plan,
        &s.path("run.sqlite"),
        0,
        &["--report", "dep.json", "--otlp", &otlp],
        &trace,
    );
    let mut rows = Vec::new();
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .enumerate()
        .map(|(i, site)| {
            let text = std::fs::read_to_string(heart_file(site)).unwrap();
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let mut fields: Vec<String> = lines[0].split(',').map(str::to_string).collect();
            let (age, chol) = marks(i);
            fields[0] = age;
            fields[4] = chol;
            lines[0] = fields.join(",");
            rows.push(lines[0].clone());
            let data = s.write(&format!("{site}.data"), &(lines.join("\n") + "\n"));
            participant_env(&s.dir, &url, site, &data, &["--otlp", &otlp], &trace)
        })
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    let mut logs = vec![("coordinator".to_string(), coordinator.log())];
    for (p, site) in participants.iter_mut().zip(HEART_SITES) {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
        logs.push((site.to_string(), p.log()));
    }
    // The marks as the scan looks for them: seven characters, five
    // significant digits (a value logged rounded to fewer is not caught).
    let marked = |line: &str, i: usize| {
        let (age, chol) = marks(i);
        [&age[..7], &chol[..7]]
            .into_iter()
            .find(|m| line.contains(*m))
            .map(str::to_string)
            .or_else(|| line.contains(&rows[i]).then(|| "its row".to_string()))
    };
    // The scan finds them where they are: in the sites' own files.
    for (i, site) in HEART_SITES.iter().enumerate() {
        let file = std::fs::read_to_string(s.path(&format!("{site}.data"))).unwrap();
        assert!(file.lines().any(|l| marked(l, i).is_some()), "{site}");
    }
    let mut lines = 0;
    for (who, log) in &logs {
        // Trace is on: the logs are not empty of what they may say.
        assert!(log.lines().count() > 10, "{who}: {log}");
        for line in log.lines() {
            lines += 1;
            for (i, site) in HEART_SITES.iter().enumerate() {
                if let Some(mark) = marked(line, i) {
                    panic!("{who} logged {mark} of {site}: {line}");
                }
            }
        }
    }
    eprintln!("{lines} log lines at trace, none with a marked value or row");
    assert!(lines > 100, "{lines}");
    // What went out as traces: every span and event, from every process.
    let texts = crate::tracing::exported_text(&exported);
    for text in &texts {
        for (i, site) in HEART_SITES.iter().enumerate() {
            if let Some(mark) = marked(text, i) {
                panic!("a span held {mark} of {site}: {text}");
            }
        }
    }
    eprintln!(
        "{} spans and span events exported, none with a marked value",
        texts.len()
    );
    assert!(texts.len() > 100, "{}", texts.len());
}
