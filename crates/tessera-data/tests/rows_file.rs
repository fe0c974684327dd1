//! A rows file (`.trows`) gives the very rows its CSV gives, and refuses
//! what it cannot vouch for: other reading settings, a cut or altered file.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use tessera_data::{
    DataConfig, FederatedData, Filesystem, ScaleScope, SchemaConfig, load, load_releasing,
    read_local_site, save_rows,
};

fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-rows-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Three sites; `ward` is text at every site, `code` numbers at one site
/// and text at another (categorical everywhere once agreed), `dose` has
/// missing values.
fn csv() -> String {
    let mut text = String::from("site,age,ward,code,dose,y\n");
    for r in 0..60 {
        let site = ["north", "east", "south"][r % 3];
        let code = if site == "south" && r % 2 == 0 {
            "a7".to_string()
        } else {
            format!("{}", r % 4)
        };
        let dose = if r % 5 == 0 {
            String::new()
        } else {
            format!("{:.2}", 0.37 * r as f64)
        };
        let y = if (r * 7) % 5 < 2 { "yes" } else { "no" };
        text += &format!(
            "{site},{},{},{code},{dose},{y}\n",
            30 + r % 17,
            ["a", "b"][r % 2]
        );
    }
    text
}

fn config(path: &str) -> DataConfig {
    let mut schema = SchemaConfig::inferred("y");
    schema.positive = vec!["yes".into()];
    DataConfig {
        path: Some(path.into()),
        site_column: Some("site".into()),
        partition: None,
        sites: Vec::new(),
        schema,
        split: Default::default(),
        standardize: Default::default(),
        synthetic: None,
        cross_silo: None,
    }
}

fn same(a: &FederatedData, b: &FederatedData) {
    assert_eq!(a.feature_names, b.feature_names);
    assert_eq!(a.summary, b.summary);
    for (x, y) in a.sites.iter().zip(&b.sites) {
        assert_eq!(x.name, y.name);
        assert_eq!((&x.train, &x.test), (&y.train, &y.test), "{}", x.name);
        assert_eq!((x.raw_train(), x.raw_test()), (y.raw_train(), y.raw_test()));
        assert_eq!(x.scaler(), y.scaler());
        assert_eq!(x.imputed_train, y.imputed_train);
    }
    assert_eq!(a.sites.len(), b.sites.len());
}

#[test]
fn a_rows_file_gives_the_rows_of_its_csv() {
    let dir = folder("same");
    std::fs::write(dir.join("d.csv"), csv()).unwrap();
    let saved = save_rows(&config("d.csv"), &dir, &Filesystem, &dir.join("d.trows")).unwrap();
    assert_eq!((saved.sites, saved.rows), (3, 60));
    let from_csv = load(&config("d.csv"), &dir, &Filesystem).unwrap();
    let from_rows = load(&config("d.trows"), &dir, &Filesystem).unwrap();
    same(&from_csv, &from_rows);
    assert!(from_csv.feature_names.iter().any(|f| f == "code=a7"));
    // A site reading its own rows (deployment) reads the same from either.
    let mut a = read_local_site(&config("d.csv"), "east", None, &dir, &Filesystem).unwrap();
    let mut b = read_local_site(&config("d.trows"), "east", None, &dir, &Filesystem).unwrap();
    assert_eq!(a.summary(), b.summary());
    let kinds = tessera_data::agree_kinds(&config("d.csv"), &[a.kinds_offer()]).unwrap();
    assert_eq!(
        a.levels_offer(&config("d.csv"), &kinds).unwrap(),
        b.levels_offer(&config("d.trows"), &kinds).unwrap()
    );
    let e = read_local_site(&config("d.trows"), "west", None, &dir, &Filesystem)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("no rows for site 'west'"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn other_settings_and_altered_files_are_refused() {
    let dir = folder("refused");
    std::fs::write(dir.join("d.csv"), csv()).unwrap();
    let rows = dir.join("d.trows");
    save_rows(&config("d.csv"), &dir, &Filesystem, &rows).unwrap();
    // Another target, another positive class: the rows would differ.
    let mut other = config("d.trows");
    other.schema.positive = vec!["no".into()];
    let e = load(&other, &dir, &Filesystem).unwrap_err().to_string();
    assert!(e.contains("saved with other reading settings"), "{e}");
    // Saving needs a CSV with a site column, into a .trows name.
    let e = save_rows(&config("d.csv"), &dir, &Filesystem, &dir.join("d.bin")).unwrap_err();
    assert!(e.to_string().contains(".trows"), "{e}");
    let e = save_rows(&config("d.trows"), &dir, &Filesystem, &rows).unwrap_err();
    assert!(e.to_string().contains("already a rows file"), "{e}");

    // Every cut of the file, and every byte changed, is refused or read
    // whole: never a panic, never a count taken on its word.
    let bytes = std::fs::read(&rows).unwrap();
    let path = dir.join("x.trows");
    let try_load = |b: &[u8]| {
        std::fs::write(&path, b).unwrap();
        load(&config("x.trows"), &dir, &Filesystem)
    };
    for cut in (0..bytes.len()).step_by(7) {
        let e = try_load(&bytes[..cut]).unwrap_err().to_string();
        assert!(e.contains("x.trows"), "cut at {cut}: {e}");
    }
    let e = try_load(&[&bytes[..], b"!"].concat())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bytes past the last site"), "{e}");
    let mut refused = 0;
    for at in (0..bytes.len()).step_by(3) {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut altered = bytes.clone();
            altered[at] ^= flip;
            refused += usize::from(try_load(&altered).is_err());
        }
    }
    assert!(refused > 0);
    // A column named twice, or a column's values of another kind than the
    // column's: refused at the file (later steps index by both).
    let twice = replace(&bytes, b"\x04\0\0\0ward", b"\x04\0\0\0code");
    let e = try_load(&twice).unwrap_err().to_string();
    assert!(e.contains("column 'code' appears twice"), "{e}");
    let at = find(&bytes, b"\x03\0\0\0age") + 7;
    assert_eq!(bytes[at], 2, "age is inferred");
    let mut kind = bytes.clone();
    kind[at] = 1;
    let e = try_load(&kind).unwrap_err().to_string();
    assert!(e.contains("column 'age': values of another kind"), "{e}");
    // A cross-silo plan reads its identifiers from the CSV.
    let mut cross: DataConfig = config("d.csv");
    cross.cross_silo =
        Some(toml::from_str("identifier = \"code\"\nfeature = \"visits\"\nepsilon = 1.0").unwrap());
    let e = save_rows(&cross, &dir, &Filesystem, &rows)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no [data.cross_silo]"), "{e}");
    cross.path = Some("d.trows".into());
    let e = tessera_data::load_cross_silo(&cross, &dir, &Filesystem, &mut |_, _| unreachable!())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("give no [data.partition] or [data.cross_silo]"),
        "{e}"
    );
    // A count that promises 2^40 values in a short file takes no such room.
    let mut huge = bytes.clone();
    let first_site = find(&bytes, b"east") + 4;
    huge[first_site..first_site + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = try_load(&huge).unwrap_err().to_string();
    assert!(e.contains("ends early"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `csv` with each site's rows together (as `tessera synth` writes them),
/// in their order within each site.
fn grouped(csv: &str) -> String {
    let mut lines: Vec<&str> = csv.lines().collect();
    let header = lines.remove(0);
    lines.sort_by_key(|l| l.split(',').next().unwrap_or_default().to_string());
    std::iter::once(header)
        .chain(lines)
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn a_file_of_sites_together_is_saved_and_read_one_site_at_a_time() {
    let dir = folder("streamed");
    std::fs::write(dir.join("g.csv"), grouped(&csv())).unwrap();
    let saved = save_rows(&config("g.csv"), &dir, &Filesystem, &dir.join("g.trows")).unwrap();
    assert_eq!((saved.sites, saved.rows), (3, 60));
    // Nothing is left beside it (the sites as read, before sorting).
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["g.csv", "g.trows"]);
    for scope in [ScaleScope::Site, ScaleScope::Federation] {
        let with = |path: &str| {
            let mut c = config(path);
            c.standardize.scope = scope;
            c
        };
        let from_csv = load(&with("g.csv"), &dir, &Filesystem).unwrap();
        let from_rows = load(&with("g.trows"), &dir, &Filesystem).unwrap();
        same(&from_csv, &from_rows);
        assert!(from_rows.holds_unstandardised());
        // Released as each site is prepared (after the federation's
        // statistics, where they are asked for): the same rows to train
        // and test on, none held from before standardisation.
        for path in ["g.csv", "g.trows"] {
            let released = load_releasing(&with(path), &dir, &Filesystem).unwrap();
            assert_eq!(released.summary, from_csv.summary);
            assert_eq!(released.sites.len(), from_csv.sites.len());
            for (r, k) in released.sites.iter().zip(&from_csv.sites) {
                assert_eq!((&r.train, &r.test), (&k.train, &k.test), "{scope:?} {path}");
                assert!(!r.holds_unstandardised());
                assert_eq!(r.raw_train().nrows() + r.raw_test().nrows(), 0);
            }
        }
    }
    // A file whose sites' rows are apart is saved whole: the same rows.
    std::fs::write(dir.join("d.csv"), csv()).unwrap();
    save_rows(&config("d.csv"), &dir, &Filesystem, &dir.join("d.trows")).unwrap();
    same(
        &load(&config("d.csv"), &dir, &Filesystem).unwrap(),
        &load(&config("d.trows"), &dir, &Filesystem).unwrap(),
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A rows file that is another file the second time it is opened.
struct Changing {
    first: Vec<u8>,
    then: Vec<u8>,
    opened: std::sync::atomic::AtomicUsize,
}

impl tessera_data::FileSource for Changing {
    fn open(&self, _: &Path) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        let n = self
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let bytes = if n == 0 { &self.first } else { &self.then };
        Ok(Box::new(std::io::Cursor::new(bytes.as_slice())))
    }
}

#[test]
fn a_rows_file_changed_between_its_readings_is_refused() {
    let dir = folder("changing");
    std::fs::write(dir.join("d.csv"), csv()).unwrap();
    save_rows(&config("d.csv"), &dir, &Filesystem, &dir.join("d.trows")).unwrap();
    let fewer: String =
        csv()
            .lines()
            .filter(|l| !l.starts_with("south"))
            .fold(String::new(), |mut text, l| {
                text += l;
                text += "\n";
                text
            });
    std::fs::write(dir.join("e.csv"), fewer).unwrap();
    save_rows(&config("e.csv"), &dir, &Filesystem, &dir.join("e.trows")).unwrap();
    let source = Changing {
        first: std::fs::read(dir.join("d.trows")).unwrap(),
        then: std::fs::read(dir.join("e.trows")).unwrap(),
        opened: Default::default(),
    };
    let e = load(&config("d.trows"), &dir, &source)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("d.trows") && e.contains("changed while it was read (3 sites, then 2 sites)"),
        "{e}"
    );
    // As many sites, one of them with a row fewer.
    let fewer_rows: String = csv().lines().enumerate().filter(|&(i, _)| i != 1).fold(
        String::new(),
        |mut text, (_, l)| {
            text += l;
            text += "\n";
            text
        },
    );
    std::fs::write(dir.join("f.csv"), fewer_rows).unwrap();
    save_rows(&config("f.csv"), &dir, &Filesystem, &dir.join("f.trows")).unwrap();
    let source = Changing {
        first: std::fs::read(dir.join("d.trows")).unwrap(),
        then: std::fs::read(dir.join("f.trows")).unwrap(),
        opened: Default::default(),
    };
    let e = load(&config("d.trows"), &dir, &source)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("(3 sites, then 3 sites, of other names or rows)"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A file that can be read once (a pipe).
struct Once {
    bytes: Vec<u8>,
    opened: std::sync::atomic::AtomicBool,
}

impl tessera_data::FileSource for Once {
    fn open(&self, _: &Path) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        if self.opened.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(Box::new(std::io::empty()));
        }
        Ok(Box::new(std::io::Cursor::new(self.bytes.as_slice())))
    }
}

#[test]
fn saving_rows_apart_from_a_pipe_is_refused_naming_the_site_and_leaves_nothing() {
    let dir = folder("pipe");
    // `csv()` has its sites' rows interleaved: north, east, south, north...
    let once = Once {
        bytes: csv().into_bytes(),
        opened: Default::default(),
    };
    let out = dir.join("p.trows");
    let e = save_rows(&config("p.csv"), &dir, &once, &out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("site 'north' has rows apart") && e.contains("rather than a pipe"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing left");
    // The spill's name is never a file that was there before.
    std::fs::write(dir.join("g.csv"), grouped(&csv())).unwrap();
    std::fs::write(dir.join("g.trows.unsorted"), "mine").unwrap();
    let e = save_rows(&config("g.csv"), &dir, &Filesystem, &dir.join("g.trows"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("g.trows.unsorted"), "{e}");
    assert_eq!(
        std::fs::read_to_string(dir.join("g.trows.unsorted")).unwrap(),
        "mine"
    );
    assert!(!dir.join("g.trows").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = find(bytes, from);
    [&bytes[..at], to, &bytes[at + from.len()..]].concat()
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn not_a_rows_file_is_named() {
    let dir = folder("named");
    std::fs::write(dir.join("d.trows"), csv()).unwrap();
    let e = load(&config("d.trows"), &dir, &Filesystem)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a rows file"), "{e}");
    assert!(Path::new("a.trows").extension().is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}
