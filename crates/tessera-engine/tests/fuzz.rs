//! Fuzz harness for the plan parser: `Plan::from_toml`, then, for a plan it
//! accepts, `validate`, `check_cohort` over 1 to 49 sites, the memory
//! estimate and the other derived settings (strategy, central DP, secure
//! coordinates, topology).
//!
//! Hostile plans are made by mutating every bundled `examples/*.toml`
//! (numbers and values replaced with extreme ones, lines deleted, duplicated
//! and swapped, tables duplicated, settings of other sections inserted,
//! random byte edits) and from random text. Each case asserts only that
//! nothing panics, and that an error is one line.
//!
//! cargo-fuzz needs a nightly toolchain, so this is proptest-driven. By
//! default each test runs 2000 cases (about a second in a debug build); run
//! longer with `PROPTEST_CASES` (which applies to each test), e.g. for about
//! three minutes:
//!
//! ```text
//! PROPTEST_CASES=600000 cargo test -p tessera-engine --test fuzz
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::LazyLock;
use tessera_engine::PlanBuild;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use tessera_engine::{Plan, PlanError, TopologyKind, Tree};

/// Cases per test when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 2000;

/// proptest's default configuration (which reads `PROPTEST_CASES`), with
/// other cases than its 256 when the variable is not set.
fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    config
}

/// The text of every bundled plan.
static SEEDS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 6, "{paths:?}");
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
});

/// Extreme and malformed values for a number or any value.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "4",
    "46",
    "1000",
    "0.0",
    "-0.0",
    "0.5",
    "1.0",
    "1.5",
    "-1.0",
    "1e308",
    "-1e308",
    "1e-300",
    "5e-324",
    "1e-9",
    "3.5e38",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "4294967295",
    "4294967296",
    "2147483648",
    "65536",
    "nan",
    "+nan",
    "-nan",
    "inf",
    "+inf",
    "-inf",
    "\"NaN\"",
    "\"inf\"",
    "\"\"",
    "\"x\"",
    "\"topk:0.5+q8\"",
    "\"randk:1e-300\"",
    "\"topk:1e308\"",
    "\"q2\"",
    "\"none\"",
    "true",
    "false",
    "[]",
    "[0]",
    "[18446744073709551615]",
    "[1000000, 1000000, 1000000]",
    "{}",
    "{ min = 0.0, max = 0.0 }",
    "{ min = 1e308, max = -1e308 }",
    "{ min = nan, max = nan }",
    "1979-05-27T07:32:00Z",
    "'''\nmulti\nline'''",
];

/// Extreme unsigned integers.
const UINTS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "46",
    "1000",
    "65536",
    "2147483648",
    "4294967295",
    "4294967296",
    "1099511627776",
    "9223372036854775807",
];

/// Extreme floats.
const FLOATS: &[&str] = &[
    "0.0", "-0.0", "1e-300", "5e-324", "1e-45", "1e-9", "0.001", "0.5", "0.999999", "1.0", "1.5",
    "2.0", "100.0", "3.5e38", "1e308", "-1.0", "-1e308", "nan", "-nan", "inf", "-inf",
];

/// Strings the plan's string settings might take, good and bad.
const STRINGS: &[&str] = &[
    "\"\"",
    "\"x\"",
    "\"cleveland\"",
    "\"num\"",
    "\"none\"",
    "\"q2\"",
    "\"q8\"",
    "\"f16\"",
    "\"topk:0.5+q8\"",
    "\"topk:1e-300\"",
    "\"topk:1e308\"",
    "\"randk:0\"",
    "\"randk:nan\"",
    "\",\"",
    "\"\\u0000\"",
    "\"a\\nb\"",
];

/// Settings inserted into a table (replacing the ones it has) or appended
/// as a new table; `{u}`, `{f}`, `{s}` and `{v}` are replaced by an
/// unsigned integer, a float, a string and any value.
const SNIPPETS: &[(&str, &str)] = &[
    (
        "secure_aggregation",
        "enabled = true\nclip_range = {f}\nneighbours = {u}\nthreshold = {u}",
    ),
    (
        "secure_aggregation",
        "enabled = true\ndropout_tolerance = {f}\nmax_dropout = {f}",
    ),
    (
        "privacy",
        "mode = \"central\"\nepsilon = {f}\ndelta = {f}\nclip_norm = {f}",
    ),
    (
        "privacy",
        "mode = \"central\"\nnoise_multiplier = {f}\nclip_norm = {f}\naccountant = \"pld\"\nbudget = {f}",
    ),
    (
        "privacy",
        "mode = \"central\"\nepsilon = {f}\nadaptive_clipping = {v}",
    ),
    (
        "privacy",
        "mode = \"local\"\nnoise_multiplier = {f}\nclip_norm = {f}\nbudget = {f}",
    ),
    ("privacy", "site_metrics = \"dp\"\nmetrics_epsilon = {f}"),
    ("privacy", "participant_budgets = { cleveland = {f} }"),
    ("robust", "rule = \"krum\"\nassumed_malicious = {u}"),
    (
        "robust",
        "rule = \"multi_krum\"\nassumed_malicious = {u}\nmulti_krum_m = {u}",
    ),
    ("robust", "rule = \"trimmed_mean\"\ntrim_fraction = {f}"),
    ("robust", "rule = \"median\"\nnorm_bound = {f}"),
    (
        "compression",
        "upload = {s}\ndownload = {s}\nerror_feedback = true",
    ),
    (
        "compression.adaptive",
        "target_round_seconds = {f}\nladder = [\"none\", {s}, \"topk:0.5+q4\"]",
    ),
    ("topology", "kind = \"hierarchical\"\nregions = {u}"),
    (
        "topology",
        "kind = \"gossip\"\ngraph = \"random_regular\"\ndegree = {u}\ngossip_steps = {u}",
    ),
    (
        "topology",
        "kind = \"gossip\"\ngraph = \"ring\"\ndegree = {u}",
    ),
    (
        "[topology.groups]",
        "name = {s}\nmembers = [\"cleveland\", \"va\", {s}]",
    ),
    ("[topology.failures]", "site = {s}\nround = {u}"),
    (
        "simulation",
        "dropout = {f}\nmax_memory_gb = {f}\nexamples_per_second = { min = {f}, max = {f} }",
    ),
    (
        "simulation",
        "latency_seconds = { min = {f}, max = {f} }\nbandwidth_bytes_per_second = { min = {f}, max = {f} }",
    ),
    (
        "federation",
        "mode = \"async\"\nbuffer_size = {u}\nmax_staleness = {u}\nstaleness = \"constant\"",
    ),
    (
        "federation",
        "rounds = {u}\nfraction = {f}\nmin_participants = {u}\nquorum = {u}",
    ),
    ("federation", "deadline_seconds = {f}"),
    ("federation", "strategy = \"scaffold\""),
    ("federation", "strategy = \"fedadam\""),
    ("model", "kind = \"mlp\"\nhidden = [{u}, {u}]"),
    ("model", "kind = \"softmax\"\ninit = \"zeros\""),
    (
        "training",
        "steps = {u}\nbatch_size = {u}\nlr = {f}\noptimizer = \"adam\"",
    ),
    (
        "training",
        "epochs = {u}\nmomentum = {f}\nweight_decay = {f}\neps = {f}",
    ),
    ("baselines", "epochs = {u}\nbatch_size = {u}\nlr = {f}"),
    (
        "strategies.fedadam",
        "client_lr = {f}\nserver_lr = {f}\nbeta1 = {f}\nbeta2 = {f}\ntau = {f}",
    ),
    ("strategies.fedprox", "mu = {f}"),
    ("strategies.fedavgm", "momentum = {f}"),
    ("data.partition", "sites = {u}\nalpha = {f}\nmin_rows = {u}"),
    (
        "data.split",
        "test_fraction = {f}\nstratify = false\nseed = {u}",
    ),
    (
        "data.standardize",
        "scope = \"federation\"\nddof = {u}\nepsilon = {f}",
    ),
    (
        "data.schema",
        "delimiter = {s}\ntarget = {s}\nmissing_policy = \"impute_mean\"",
    ),
    ("[data.sites]", "name = {s}\npath = {s}"),
    ("", "seed = {u}\nname = {s}"),
    ("", "seed = {v}"),
];

/// One edit of a plan's text.
#[derive(Debug, Clone)]
enum Edit {
    /// Replace the n-th number with a number of its type, or any value.
    Number(Index, Index, bool),
    /// Replace the value of the n-th `key = value` line.
    Value(Index, Index),
    /// Delete a line.
    DelLine(Index),
    /// Duplicate a line.
    DupLine(Index),
    /// Swap two lines.
    SwapLines(Index, Index),
    /// Append a copy of a table (its header and its lines).
    DupTable(Index),
    /// Insert a snippet's settings, with these values.
    Snippet(Index, Vec<Index>),
    /// Flip one bit.
    Flip(Index, u8),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Delete up to this many bytes.
    Delete(Index, usize),
    /// Cut the text short.
    Truncate(Index),
}

/// Edits that keep the text TOML: values replaced, settings inserted,
/// lines deleted.
fn gentle_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<Index>(), any::<Index>(), prop::bool::weighted(0.8))
            .prop_map(|(i, v, typed)| Edit::Number(i, v, typed)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(i, v)| Edit::Value(i, v)),
        5 => (any::<Index>(), prop::collection::vec(any::<Index>(), 5))
            .prop_map(|(s, v)| Edit::Snippet(s, v)),
        1 => any::<Index>().prop_map(Edit::DelLine),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => (any::<Index>(), any::<Index>(), any::<bool>())
            .prop_map(|(i, v, typed)| Edit::Number(i, v, typed)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(i, v)| Edit::Value(i, v)),
        2 => any::<Index>().prop_map(Edit::DelLine),
        1 => any::<Index>().prop_map(Edit::DupLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        1 => any::<Index>().prop_map(Edit::DupTable),
        6 => (any::<Index>(), prop::collection::vec(any::<Index>(), 5))
            .prop_map(|(s, v)| Edit::Snippet(s, v)),
        1 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => (any::<Index>(), 1usize..32).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

/// The byte ranges of each line, newline included.
fn lines(text: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &b) in text.iter().enumerate() {
        if b == b'\n' {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < text.len() {
        out.push((start, text.len()));
    }
    out
}

/// The byte ranges of the numbers in `text`.
fn numbers(text: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let starts = text[i].is_ascii_digit()
            || (matches!(text[i], b'-' | b'+') && text.get(i + 1).is_some_and(u8::is_ascii_digit));
        let after_word = i > 0 && (text[i - 1].is_ascii_alphanumeric() || text[i - 1] == b'_');
        if starts && !after_word {
            let start = i;
            i += 1;
            while i < text.len() {
                let sign_of_exponent =
                    matches!(text[i], b'-' | b'+') && matches!(text[i - 1], b'e' | b'E');
                if !(text[i].is_ascii_digit()
                    || matches!(text[i], b'.' | b'e' | b'E' | b'_')
                    || sign_of_exponent)
                {
                    break;
                }
                i += 1;
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

fn line_starts_with(line: &[u8], prefix: &[u8]) -> bool {
    line.trim_ascii_start().starts_with(prefix)
}

fn value(i: &Index) -> &'static str {
    VALUES[i.index(VALUES.len())]
}

fn apply(text: &mut Vec<u8>, edit: &Edit) {
    let len = text.len();
    match edit {
        Edit::Number(i, v, typed) => {
            let n = numbers(text);
            if !n.is_empty() {
                let (s, e) = n[i.index(n.len())];
                let float = text[s..e].iter().any(|b| matches!(b, b'.' | b'e' | b'E'));
                let replacement = match (typed, float) {
                    (false, _) => value(v),
                    (true, true) => FLOATS[v.index(FLOATS.len())],
                    (true, false) => UINTS[v.index(UINTS.len())],
                };
                text.splice(s..e, replacement.bytes());
            }
        }
        Edit::Value(i, v) => {
            let assignments: Vec<(usize, usize)> = lines(text)
                .into_iter()
                .filter(|&(s, e)| {
                    let line = &text[s..e];
                    !line_starts_with(line, b"#") && line.contains(&b'=')
                })
                .collect();
            if !assignments.is_empty() {
                let (s, e) = assignments[i.index(assignments.len())];
                let eq = s + text[s..e].iter().position(|&b| b == b'=').unwrap();
                let end = if text[e - 1] == b'\n' { e - 1 } else { e };
                let mut replacement = b" ".to_vec();
                replacement.extend_from_slice(value(v).as_bytes());
                text.splice(eq + 1..end, replacement);
            }
        }
        Edit::DelLine(i) => {
            let l = lines(text);
            if !l.is_empty() {
                let (s, e) = l[i.index(l.len())];
                text.drain(s..e);
            }
        }
        Edit::DupLine(i) => {
            let l = lines(text);
            if !l.is_empty() {
                let (s, e) = l[i.index(l.len())];
                let mut line = text[s..e].to_vec();
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                text.splice(e..e, line);
            }
        }
        Edit::SwapLines(a, b) => {
            let l = lines(text);
            if l.len() > 1 {
                let (x, y) = (a.index(l.len()), b.index(l.len()));
                let (x, y) = (x.min(y), x.max(y));
                if x != y {
                    let (xs, xe) = l[x];
                    let (ys, ye) = l[y];
                    let mut out = text[..xs].to_vec();
                    out.extend_from_slice(&text[ys..ye]);
                    if out.last() != Some(&b'\n') {
                        out.push(b'\n');
                    }
                    out.extend_from_slice(&text[xe..ys]);
                    out.extend_from_slice(&text[xs..xe]);
                    out.extend_from_slice(&text[ye..]);
                    *text = out;
                }
            }
        }
        Edit::DupTable(i) => {
            let l = lines(text);
            let headers: Vec<usize> = (0..l.len())
                .filter(|&k| line_starts_with(&text[l[k].0..l[k].1], b"["))
                .collect();
            if !headers.is_empty() {
                let first = headers[i.index(headers.len())];
                let last = (first + 1..l.len())
                    .find(|&k| line_starts_with(&text[l[k].0..l[k].1], b"["))
                    .unwrap_or(l.len());
                let mut table = b"\n".to_vec();
                table.extend_from_slice(&text[l[first].0..l[last - 1].1]);
                text.extend_from_slice(&table);
            }
        }
        Edit::Snippet(s, values) => {
            let (section, template) = SNIPPETS[s.index(SNIPPETS.len())];
            let mut settings = String::new();
            let mut values = values.iter().cycle();
            let mut rest = template;
            while let Some(open) = rest.find('{') {
                let kind = rest[open + 1..].chars().next();
                let close = open + 2;
                if rest[close..].starts_with('}') {
                    let v = values.next().unwrap();
                    settings.push_str(&rest[..open]);
                    // Half the numbers are ordinary, so that more plans
                    // pass their other checks.
                    let sane = |extreme: &'static [&'static str],
                                ordinary: &'static [&'static str]| {
                        let k = v.index(2 * extreme.len());
                        if k < extreme.len() {
                            extreme[k]
                        } else {
                            ordinary[k % ordinary.len()]
                        }
                    };
                    settings.push_str(match kind {
                        Some('u') => sane(UINTS, &["1", "2", "3", "4", "10"]),
                        Some('f') => sane(FLOATS, &["0.5", "1.0", "1e-5", "8.0", "0.1"]),
                        Some('s') => STRINGS[v.index(STRINGS.len())],
                        _ => value(v),
                    });
                    rest = &rest[close + 1..];
                } else {
                    settings.push_str(&rest[..=open]);
                    rest = &rest[open + 1..];
                }
            }
            settings.push_str(rest);
            settings.push('\n');
            if section.is_empty() {
                // Top-level keys go first.
                text.splice(0..0, settings.into_bytes());
                return;
            }
            // `[x]` for a table, `[[x]]` for an array of tables.
            let header = format!("[{section}]");
            let l = lines(text);
            let existing = l
                .iter()
                .position(|&(s, e)| text[s..e].trim_ascii() == header.as_bytes());
            match existing {
                Some(at) if !section.starts_with('[') => {
                    // The table's lines: a setting it has is replaced, one
                    // it lacks is added after its header.
                    let end = (at + 1..l.len())
                        .find(|&k| line_starts_with(&text[l[k].0..l[k].1], b"["))
                        .unwrap_or(l.len());
                    let mut table: Vec<Vec<u8>> = l[at + 1..end]
                        .iter()
                        .map(|&(s, e)| text[s..e].to_vec())
                        .collect();
                    for setting in settings.lines() {
                        let key = setting.split('=').next().unwrap_or("").trim();
                        let mut line = setting.as_bytes().to_vec();
                        line.push(b'\n');
                        let same = table.iter().position(|t| {
                            let t = t.trim_ascii_start();
                            t.starts_with(key.as_bytes())
                                && t[key.len()..].trim_ascii_start().starts_with(b"=")
                        });
                        match same {
                            Some(k) => table[k] = line,
                            None => table.insert(0, line),
                        }
                    }
                    let start = l[at].1;
                    let stop = if end < l.len() { l[end].0 } else { text.len() };
                    let mut body = table.concat();
                    if stop == text.len() && body.last() != Some(&b'\n') {
                        body.push(b'\n');
                    }
                    text.splice(start..stop, body);
                }
                _ => {
                    let mut table = format!("\n{header}\n{settings}").into_bytes();
                    if text.last().is_some_and(|&b| b != b'\n') {
                        table.insert(0, b'\n');
                    }
                    text.extend_from_slice(&table);
                }
            }
        }
        Edit::Flip(i, bit) if len > 0 => text[i.index(len)] ^= 1 << bit,
        Edit::Insert(i, b) => {
            let p = i.index(len + 1);
            text.splice(p..p, b.iter().copied());
        }
        Edit::Delete(i, n) if len > 0 => {
            let p = i.index(len);
            text.drain(p..(p + n).min(len));
        }
        Edit::Truncate(i) => text.truncate(i.index(len + 1)),
        _ => {}
    }
}

fn one_line(e: &PlanError) {
    let text = e.to_string();
    assert!(
        !text.contains('\n') && !text.contains('\r'),
        "error is not one line: {text:?}"
    );
}

/// Parses `text` as a plan, and exercises what a plan that parses offers.
fn check(text: &str, sizes: (usize, usize, usize)) {
    let plan = match Plan::from_toml(text, "fuzz") {
        Ok(plan) => plan,
        Err(e) => {
            one_line(&e);
            return;
        }
    };
    plan.validate().unwrap();
    for n in 1..50 {
        if let Err(e) = plan.check_cohort(n) {
            one_line(&e);
        }
    }
    let (features, classes, sites) = sizes;
    for (f, c, s) in [
        (features, classes, sites),
        (13, 2, 4),
        (usize::MAX, usize::MAX, usize::MAX),
        (0, 0, 0),
    ] {
        let _ = plan.simulation_bytes(f, c, s);
    }
    if let Err(e) = plan.strategy() {
        one_line(&e);
    }
    let _ = plan.local_training();
    let _ = plan.baseline_training();
    let _ = plan.masked_update_bound();
    let _ = plan.secagg_graph_seed(u32::MAX);
    for n in [0, 1, 4, 47] {
        if let Err(e) = plan.central_dp([7; 32], n) {
            one_line(&e);
        }
    }
    for (round, n_values) in [(0, 0), (1, 1), (u32::MAX, 1000)] {
        let _ = plan.secure_coordinates(round, n_values);
    }
    // The initial model, when it is small enough to build here.
    if plan
        .simulation_bytes(13, 2, 1)
        .is_some_and(|b| b < 64 << 20)
    {
        // Built or refused alike, and the same parameters both ways.
        let learner = plan.learner(13, 2);
        let parameters = plan.initial_parameters(13, 2);
        match (learner, parameters) {
            (Ok(learner), Ok(parameters)) => assert_eq!(learner.parameters(), &parameters),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("learner {:?} but parameters {:?}", a.is_ok(), b.is_ok()),
        }
    }
    match plan.topology.kind {
        TopologyKind::Hierarchical => {
            if let Err(e) = Tree::of_plan(&plan) {
                one_line(&e);
            }
            let names: Vec<String> = (0..sites % 64).map(|k| format!("site{k}")).collect();
            if let Err(e) = Tree::build(&plan.topology, &names) {
                one_line(&e);
            }
        }
        TopologyKind::Gossip => {
            for n in [0, 1, 2, 5, sites % 64] {
                if let Err(e) = tessera_engine::gossip_neighbours(
                    plan.topology.graph,
                    n,
                    plan.topology.degree,
                    plan.seed,
                ) {
                    one_line(&e);
                }
            }
        }
        TopologyKind::Flat => {}
    }
}

fn sizes() -> impl Strategy<Value = (usize, usize, usize)> {
    (
        prop_oneof![0usize..2000, Just(usize::MAX)],
        prop_oneof![0usize..20, Just(usize::MAX)],
        prop_oneof![0usize..100, Just(usize::MAX)],
    )
}

#[test]
fn seeds_parse() {
    for text in SEEDS.iter() {
        check(text, (13, 2, 4));
        Plan::from_toml(text, "seed").unwrap();
    }
}

proptest! {
    #![proptest_config(config())]

    /// Every bundled plan, mutated.
    #[test]
    fn mutated_plans(
        seed in any::<Index>(),
        edits in prop_oneof![
            3 => prop::collection::vec(gentle_edit(), 1..6),
            1 => prop::collection::vec(edit(), 1..8),
        ],
        sizes in sizes(),
    ) {
        let mut text = SEEDS[seed.index(SEEDS.len())].clone().into_bytes();
        for e in &edits {
            apply(&mut text, e);
        }
        check(&String::from_utf8_lossy(&text), sizes);
    }

    /// Random bytes.
    #[test]
    fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(&String::from_utf8_lossy(&bytes), (13, 2, 4));
    }

    /// Random TOML-like text.
    #[test]
    fn random_text(text in "([a-z_.\\[\\]]{0,12}( = )?[-0-9a-z_.\"\\[\\]{},=]{0,16}\n){0,40}") {
        check(&text, (13, 2, 4));
    }
}
