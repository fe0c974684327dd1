//! Fuzz harness for the CSV reader and loader (`tessera_data::load`).
//!
//! Hostile inputs are made by mutating real seeds (the four UCI heart
//! files and FLamby's membership file, as the bundled
//! `examples/fed-heart-disease.toml` reads them, and the same rows as one
//! headed CSV with a site column) and from random bytes. Each case asserts
//! only that loading does not panic, and that an error is one line.
//!
//! cargo-fuzz needs a nightly toolchain, so this is proptest-driven. By
//! default each test runs 1000 cases (a few seconds in a debug build); run
//! longer with `PROPTEST_CASES` (which applies to each test), e.g. for about
//! three minutes:
//!
//! ```text
//! PROPTEST_CASES=60000 cargo test -p tessera-data --test fuzz
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use tessera_data::InMemory as Files;
use tessera_data::{DataConfig, load};

/// Cases per test when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 1000;

/// proptest's default configuration (which reads `PROPTEST_CASES`), with
/// fewer cases when the variable is not set.
fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    config
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A configuration and the seed files it reads, by the path it asks for.
struct Seed {
    config: DataConfig,
    files: Vec<(PathBuf, Vec<u8>)>,
}

const BASE: &str = "examples";

/// The `[data]` table of the bundled heart plan.
fn heart_config() -> DataConfig {
    let text = std::fs::read_to_string(repo().join("examples/fed-heart-disease.toml")).unwrap();
    let plan: toml::Table = toml::from_str(&text).unwrap();
    plan["data"].clone().try_into().unwrap()
}

fn read_seed(relative: &Path) -> (PathBuf, Vec<u8>) {
    let bytes = std::fs::read(repo().join(BASE).join(relative)).unwrap();
    (Path::new(BASE).join(relative), bytes)
}

/// The heart plan's four files and its membership file.
fn heart_seed(config: DataConfig) -> Seed {
    let mut files: Vec<_> = config.sites.iter().map(|s| read_seed(&s.path)).collect();
    if let Some(m) = &config.split.membership {
        files.push(read_seed(&m.path));
    }
    Seed { config, files }
}

/// The four heart files as one headed CSV with a site column.
fn combined_csv(heart: &DataConfig) -> Vec<u8> {
    let mut out =
        b"site,age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num\n"
            .to_vec();
    for site in &heart.sites {
        let rows = std::fs::read(repo().join(BASE).join(&site.path)).unwrap();
        for line in rows.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            out.extend_from_slice(site.name.as_bytes());
            out.push(b',');
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out
}

fn data_config(text: &str) -> DataConfig {
    toml::from_str(text).unwrap()
}

/// The seeds: the heart plan as bundled; without its membership file (a
/// seeded, stratified split); the combined file with every column inferred;
/// the combined file dealt to synthetic sites (Dirichlet partition);
/// federation-scope standardisation with the "impute" policy.
static SEEDS: LazyLock<Vec<Seed>> = LazyLock::new(|| {
    let heart = heart_config();
    let mut random_split = heart.clone();
    random_split.split.membership = None;
    let all = combined_csv(&heart);
    let combined = |config: DataConfig| Seed {
        config,
        files: vec![(Path::new(BASE).join("all.csv"), all.clone())],
    };
    vec![
        heart_seed(heart.clone()),
        heart_seed(random_split),
        combined(data_config(
            "path = \"all.csv\"\nsite_column = \"site\"\n\
             [schema]\ntarget = \"num\"\nmissing = [\"?\"]\n",
        )),
        combined(data_config(
            "path = \"all.csv\"\n\
             [partition]\nsites = 5\nalpha = 0.5\nmin_rows = 3\n\
             [schema]\ntarget = \"num\"\nmissing = [\"?\"]\nnegative = [\"0\"]\n\
             [standardize]\nscope = \"federation\"\n",
        )),
        combined(data_config(
            "path = \"all.csv\"\nsite_column = \"site\"\n\
             [schema]\ntarget = \"num\"\nmissing = [\"?\", \"\"]\npositive = [\"1\", \"2\"]\n\
             missing_policy = \"impute_mean\"\n\
             columns = [{ name = \"cp\", type = \"categorical\" }, { name = \"age\", type = \"numeric\" }]\n\
             [split]\ntest_fraction = 0.3\n\
             [standardize]\nscope = \"federation\"\nddof = 1\n",
        )),
    ]
});

/// Replacement fields: extreme and malformed numbers, quotes, separators,
/// non-UTF-8 bytes, very long fields.
static TOKENS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let mut t: Vec<Vec<u8>> = [
        "",
        "?",
        "0",
        "-0",
        "-1",
        "1e308",
        "-1e308",
        "1e309",
        "1e39",
        "3.4028235e38",
        "3.4028236e38",
        "1e-320",
        "1e-300",
        "NaN",
        "nan",
        "-nan",
        "inf",
        "-inf",
        "+Inf",
        "infinity",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "4294967295",
        "0x1F",
        "1_000",
        "1.",
        ".",
        "-",
        "+",
        "e",
        "1e",
        "\"",
        "\"\"",
        "\"a,b\"",
        "\"1\n2\"",
        "\"unterminated",
        "\u{feff}",
        "\0",
        "é",
        "𝕏",
        " 1 ",
        "1,2",
        ",",
        ",,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,",
        "\n",
        "\r\n",
        "\r",
        "\t",
        ";",
        "site",
        "num",
        "cleveland",
        "train",
        "test",
        "dropped",
        "center",
        "row_in_file",
        "flamby_split",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    t.push(vec![0xff, 0xfe]);
    t.push(vec![0xc3]);
    t.push(vec![b'\xed', b'\xa0', b'\x80']);
    t.push(vec![b'9'; 400]);
    t.push(vec![b'7'; 100_000]);
    t.push(vec![b'a'; 70_000]);
    t.push(format!("0.{}1", "0".repeat(5000)).into_bytes());
    t.push(format!("\"{}\"", "x,".repeat(20_000)).into_bytes());
    t
});

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    /// Flip one bit.
    Flip(Index, u8),
    /// Overwrite one byte.
    Set(Index, u8),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Delete up to this many bytes.
    Delete(Index, usize),
    /// Replace the field around a position with a token.
    Token(Index, Index),
    /// Replace the field around a position with a token that keeps the
    /// row's fields (no separators or quotes).
    Value(Index, Index),
    /// Insert a token.
    InsertToken(Index, Index),
    /// Duplicate a line (n times).
    DupLine(Index, usize),
    /// Delete a line.
    DelLine(Index),
    /// Swap two lines.
    SwapLines(Index, Index),
    /// Cut the text short.
    Truncate(Index),
    /// Copy a stretch of the text elsewhere.
    Splice(Index, Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        4 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Edit::Token(i, t)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Edit::InsertToken(i, t)),
        1 => (any::<Index>(), 1usize..40).prop_map(|(i, n)| Edit::DupLine(i, n)),
        2 => any::<Index>().prop_map(Edit::DelLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), any::<Index>(), 1usize..200).prop_map(|(a, b, n)| Edit::Splice(a, b, n)),
    ]
}

/// Edits that keep each row's fields: values replaced, lines duplicated,
/// deleted and swapped.
fn gentle_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Edit::Value(i, t)),
        1 => (any::<Index>(), 1usize..40).prop_map(|(i, n)| Edit::DupLine(i, n)),
        1 => any::<Index>().prop_map(Edit::DelLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

/// The tokens without separators or quotes.
static VALUE_TOKENS: LazyLock<Vec<&'static [u8]>> = LazyLock::new(|| {
    TOKENS
        .iter()
        .filter(|t| !t.iter().any(|&b| matches!(b, b',' | b'\n' | b'\r' | b'"')))
        .map(Vec::as_slice)
        .collect()
});

fn is_separator(b: u8) -> bool {
    matches!(b, b',' | b'\n' | b'\r')
}

/// The start of each line and its end (before the newline).
fn lines(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < bytes.len() {
        out.push((start, bytes.len()));
    }
    out
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    let len = bytes.len();
    // Positions in 0..=len for insertions, 0..len for the others.
    let at = |i: &Index| i.index(len + 1);
    match edit {
        Edit::Flip(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
        Edit::Set(i, b) if len > 0 => bytes[i.index(len)] = *b,
        Edit::Insert(i, b) => {
            let p = at(i);
            bytes.splice(p..p, b.iter().copied());
        }
        Edit::Delete(i, n) if len > 0 => {
            let p = i.index(len);
            bytes.drain(p..(p + n).min(len));
        }
        Edit::Token(i, t) | Edit::Value(i, t) => {
            let token = match edit {
                Edit::Value(..) => VALUE_TOKENS[t.index(VALUE_TOKENS.len())],
                _ => &TOKENS[t.index(TOKENS.len())],
            };
            let p = at(i).min(len);
            let mut start = p;
            while start > 0 && !is_separator(bytes[start - 1]) {
                start -= 1;
            }
            let mut end = p;
            while end < len && !is_separator(bytes[end]) {
                end += 1;
            }
            bytes.splice(start..end, token.iter().copied());
        }
        Edit::InsertToken(i, t) => {
            let p = at(i);
            bytes.splice(p..p, TOKENS[t.index(TOKENS.len())].iter().copied());
        }
        Edit::DupLine(i, n) => {
            let l = lines(bytes);
            if !l.is_empty() {
                let (s, e) = l[i.index(l.len())];
                let mut line = bytes[s..e].to_vec();
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                let copies = line.repeat(*n);
                bytes.splice(e..e, copies);
            }
        }
        Edit::DelLine(i) => {
            let l = lines(bytes);
            if !l.is_empty() {
                let (s, e) = l[i.index(l.len())];
                bytes.drain(s..e);
            }
        }
        Edit::SwapLines(a, b) => {
            let l = lines(bytes);
            if l.len() > 1 {
                let (x, y) = (a.index(l.len()), b.index(l.len()));
                let (x, y) = (x.min(y), x.max(y));
                if x != y {
                    let (xs, xe) = l[x];
                    let (ys, ye) = l[y];
                    let mut out = bytes[..xs].to_vec();
                    out.extend_from_slice(&bytes[ys..ye]);
                    if out.last() != Some(&b'\n') {
                        out.push(b'\n');
                    }
                    out.extend_from_slice(&bytes[xe..ys]);
                    out.extend_from_slice(&bytes[xs..xe]);
                    out.extend_from_slice(&bytes[ye..]);
                    *bytes = out;
                }
            }
        }
        Edit::Truncate(i) => bytes.truncate(at(i)),
        Edit::Splice(a, b, n) if len > 0 => {
            let from = a.index(len);
            let piece = bytes[from..(from + n).min(len)].to_vec();
            let to = b.index(len + 1);
            bytes.splice(to..to, piece);
        }
        _ => {}
    }
}

/// Loads `files` as `config` says; panics (failing the case) only if an
/// error spans more than one line.
fn check(config: &DataConfig, files: Vec<(PathBuf, Vec<u8>)>) {
    let files = Files(files.into_iter().collect());
    if let Err(e) = load(config, Path::new(BASE), &files) {
        let text = e.to_string();
        assert!(
            !text.contains('\n') && !text.contains('\r'),
            "error is not one line: {text:?}"
        );
    }
}

/// Which seed, and the edits of each of its files that are edited.
fn mutation() -> impl Strategy<Value = (Index, Vec<(Index, Vec<Edit>)>)> {
    (
        any::<Index>(),
        prop::collection::vec(
            (
                any::<Index>(),
                prop_oneof![
                    3 => prop::collection::vec(gentle_edit(), 1..8),
                    2 => prop::collection::vec(edit(), 1..8),
                ],
            ),
            1..3,
        ),
    )
}

fn mutated(
    seed: &Index,
    edits: &[(Index, Vec<Edit>)],
) -> (&'static DataConfig, Vec<(PathBuf, Vec<u8>)>) {
    let seed = &SEEDS[seed.index(SEEDS.len())];
    let mut files = seed.files.clone();
    for (file, list) in edits {
        let n = files.len();
        let bytes = &mut files[file.index(n)].1;
        for e in list {
            apply(bytes, e);
        }
    }
    (&seed.config, files)
}

#[test]
fn seeds_load() {
    for seed in SEEDS.iter() {
        let files = Files(seed.files.iter().cloned().collect());
        load(&seed.config, Path::new(BASE), &files).unwrap();
    }
}

proptest! {
    #![proptest_config(config())]

    /// Real files, mutated.
    #[test]
    fn mutated_files((seed, edits) in mutation()) {
        let (config, files) = mutated(&seed, &edits);
        check(config, files);
    }

    /// One file of random bytes (the others intact).
    #[test]
    fn random_bytes(seed in any::<Index>(), file in any::<Index>(), bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let seed = &SEEDS[seed.index(SEEDS.len())];
        let mut files = seed.files.clone();
        let n = files.len();
        files[file.index(n)].1 = bytes;
        check(&seed.config, files);
    }

    /// One file of random CSV-like text (the others intact).
    #[test]
    fn random_text(seed in any::<Index>(), file in any::<Index>(), text in "[0-9a-z?,.\\-+e\"\n\r ]{0,3000}") {
        let seed = &SEEDS[seed.index(SEEDS.len())];
        let mut files = seed.files.clone();
        let n = files.len();
        files[file.index(n)].1 = text.into_bytes();
        check(&seed.config, files);
    }
}
