//! Rows as read, saved once and read back fast. Parsing a million sites'
//! rows from a CSV file takes most of a minute; a `.trows` file holds what
//! the CSV reader made of them (each site's columns typed, line numbers,
//! target codes), with the settings they were read with, and reads back at
//! the speed of the disk. A later read must share those settings (the site
//! column and the schema), or the file is refused: the rows would be typed
//! otherwise from the CSV.
//!
//! Layout (integers little-endian; `text` is a `u32` length and UTF-8):
//! the magic line `TESSERA-ROWS`, a `u32` version, the settings as TOML
//! text, the CSV's path as text, the columns (`u32` count; each a name and a
//! kind byte), a `u64` site count, then each site: its name, a `u64` row
//! count `n`, `n` line numbers and `n` row indices (`u64`), each column (a
//! byte: 0 numeric, then `n` `f64`; 1 categorical, then `n` `u32` codes and
//! its levels, a `u32` count and each as text), and the target as a
//! categorical column's codes and levels.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::columns::{Coded, FeatureColumn, FeatureKind, MISSING_CODE, Values};
use super::{FileSource, RawSite};
use crate::DataError;
use crate::config::{DataConfig, SchemaConfig};
use crate::prepare::MAX_DECLARED_ROWS;

/// The extension that marks a rows file.
pub const ROWS_EXTENSION: &str = "trows";
const MAGIC: &[u8; 13] = b"TESSERA-ROWS\n";
const VERSION: u32 = 1;
/// The longest text in the file (a name, a level, the settings).
const MAX_TEXT: u32 = 16 << 20;
/// Values read at a time: a count in the file is never allocated before
/// the values behind it are read (a file that lies about a count ends
/// early, having taken no more memory than its own size).
const CHUNK: usize = 1 << 16;

/// Whether `path` names a rows file (by its extension).
pub fn is_rows_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == ROWS_EXTENSION)
}

/// What a rows file was read with.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Settings {
    site_column: Option<String>,
    schema: SchemaConfig,
}

impl Settings {
    fn of(config: &DataConfig) -> Self {
        Self {
            site_column: config.site_column.clone(),
            schema: config.schema.clone(),
        }
    }
}

/// What [`save_rows`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedRows {
    /// Sites.
    pub sites: usize,
    /// Rows over every site.
    pub rows: u64,
}

/// Reads the CSV file `config` names (one file with a site column) as a
/// run would, and writes its rows to `out` (a `.trows` file), for later
/// runs to read with the same settings (the plan's `path` the rows file).
/// A file whose sites' rows are together is read once, holding one site's
/// rows at a time (each site's block spilled to `out` + `.unsorted`, a new
/// file, removed afterwards); one whose rows are apart is then read again,
/// whole (not possible from a pipe: refused, naming the site).
pub fn save_rows(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
    out: &Path,
) -> Result<SavedRows, DataError> {
    config.validate()?;
    let (Some(path), Some(_), None, None, None) = (
        &config.path,
        &config.site_column,
        &config.partition,
        &config.synthetic,
        &config.cross_silo,
    ) else {
        return Err(DataError::Config(
            "rows are saved from one CSV file with a site column (no partition, no \
             [data.synthetic], no [data.cross_silo])"
                .into(),
        ));
    };
    if is_rows_file(path) {
        return Err(DataError::Config(format!(
            "{} is already a rows file",
            path.display()
        )));
    }
    if !is_rows_file(out) {
        return Err(DataError::Config(format!(
            "the rows file's name ends in .{ROWS_EXTENSION}, not {}",
            out.display()
        )));
    }
    let io = |source| DataError::Io {
        path: out.to_path_buf(),
        source,
    };
    let settings = toml::to_string(&Settings::of(config))
        .map_err(|e| DataError::Config(format!("the reading settings: {e}")))?;
    let head = Head {
        settings: &settings,
        csv: &path.to_string_lossy(),
    };
    let apart = match save_streamed(config, base_dir, source, out, &head)? {
        Streamed::Saved(saved) => return Ok(saved),
        Streamed::Apart(site) => site,
    };
    // A site's rows apart in the file: the file read again, whole.
    let sites = super::read_sites(config, base_dir, source).map_err(|e| {
        DataError::Config(format!(
            "{}: site '{apart}' has rows apart in the file, so the file is read again whole, \
             and reading it again failed ({e}): save from a file rather than a pipe, or put \
             each site's rows together",
            path.display()
        ))
    })?;
    let file = std::fs::File::create(out).map_err(io)?;
    let mut w = std::io::BufWriter::new(file);
    let columns = sites.first().map_or(&[][..], |s| s.columns.as_slice());
    let mut rows = 0u64;
    (|| -> std::io::Result<()> {
        head.write(&mut w, columns, sites.len())?;
        for site in &sites {
            rows += write_site(&mut w, site)?;
        }
        w.flush()
    })()
    .map_err(io)?;
    Ok(SavedRows {
        sites: sites.len(),
        rows,
    })
}

/// What a rows file starts with besides its columns.
struct Head<'a> {
    settings: &'a str,
    csv: &'a str,
}

impl Head<'_> {
    fn write(
        &self,
        w: &mut impl Write,
        columns: &[FeatureColumn],
        sites: usize,
    ) -> std::io::Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        text(w, self.settings)?;
        text(w, self.csv)?;
        w.write_all(&(columns.len() as u32).to_le_bytes())?;
        for column in columns {
            text(w, &column.name)?;
            w.write_all(&[kind_byte(column.kind)])?;
        }
        w.write_all(&(sites as u64).to_le_bytes())
    }
}

/// [`save_rows`] holding one site's rows at a time, for a file whose
/// sites' rows are together (as `tessera synth` writes them): each site
/// is written as it is read to a file beside `out`, then copied into `out`
/// in the order of the sites' names. `None` where a site's rows are apart
/// in the file (nothing written).
fn save_streamed(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
    out: &Path,
    head: &Head<'_>,
) -> Result<Streamed, DataError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let mut unsorted = out.as_os_str().to_owned();
    unsorted.push(".unsorted");
    let unsorted = PathBuf::from(unsorted);
    // A new file, never one that was there (it is removed afterwards).
    let spill = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&unsorted)
        .map_err(io(&unsorted))?;
    let result = (|| {
        let mut spill = std::io::BufWriter::new(spill);
        // Each site's name, where its block starts, and its length; the
        // names' hashes, to find a site seen before (checked by name).
        let mut blocks: Vec<(String, u64, u64)> = Vec::new();
        let mut seen: std::collections::HashSet<u64> = Default::default();
        let mut apart = None;
        let mut at = 0u64;
        let mut rows = 0u64;
        let read = super::for_each_csv_stretch(config, base_dir, source, &mut |site| {
            let hash = {
                use std::hash::{BuildHasher, BuildHasherDefault};
                BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(&site.name)
            };
            if !seen.insert(hash) && blocks.iter().any(|(name, _, _)| *name == site.name) {
                // Its rows are apart: stop here, read the file whole.
                apart = Some(site.name);
                return Err(DataError::Config("rows apart".into()));
            }
            let mut block = Vec::new();
            rows += write_site(&mut block, &site).map_err(io(&unsorted))?;
            spill.write_all(&block).map_err(io(&unsorted))?;
            blocks.push((site.name, at, block.len() as u64));
            at += block.len() as u64;
            Ok(())
        });
        let columns = match (read, apart) {
            (_, Some(site)) => return Ok(Streamed::Apart(site)),
            (read, None) => read?,
        };
        spill.flush().map_err(io(&unsorted))?;
        drop(spill);
        drop(seen);
        blocks.sort_unstable();
        let mut from = std::fs::File::open(&unsorted).map_err(io(&unsorted))?;
        let mut w = std::io::BufWriter::new(std::fs::File::create(out).map_err(io(out))?);
        head.write(&mut w, &columns, blocks.len())
            .map_err(io(out))?;
        let mut block = Vec::new();
        for &(_, start, len) in &blocks {
            use std::io::Seek;
            block.resize(len as usize, 0);
            from.seek(std::io::SeekFrom::Start(start))
                .and_then(|_| from.read_exact(&mut block))
                .map_err(io(&unsorted))?;
            w.write_all(&block).map_err(io(out))?;
        }
        w.flush().map_err(io(out))?;
        Ok(Streamed::Saved(SavedRows {
            sites: blocks.len(),
            rows,
        }))
    })();
    let _ = std::fs::remove_file(&unsorted);
    result
}

/// How [`save_streamed`] ended.
enum Streamed {
    Saved(SavedRows),
    /// This site's rows are apart in the file: nothing written.
    Apart(String),
}

/// One site's block: its name, rows, line numbers, columns and target.
fn write_site(w: &mut impl Write, site: &RawSite) -> std::io::Result<u64> {
    text(w, &site.name)?;
    let n = site.lines.len();
    w.write_all(&(n as u64).to_le_bytes())?;
    for v in site.lines.iter().chain(&site.row_in_file) {
        w.write_all(&v.to_le_bytes())?;
    }
    for values in &site.features {
        match values {
            Values::Numeric(v) => {
                w.write_all(&[0])?;
                for x in v {
                    w.write_all(&x.to_le_bytes())?;
                }
            }
            Values::Categorical(coded) => {
                w.write_all(&[1])?;
                categorical(w, &coded.codes, &coded.levels)?;
            }
        }
    }
    categorical(w, &site.target, &site.target_levels)?;
    Ok(n as u64)
}

fn text(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u32).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn categorical(w: &mut impl Write, codes: &[u32], levels: &[String]) -> std::io::Result<()> {
    for c in codes {
        w.write_all(&c.to_le_bytes())?;
    }
    w.write_all(&(levels.len() as u32).to_le_bytes())?;
    for level in levels {
        text(w, level)?;
    }
    Ok(())
}

fn kind_byte(kind: FeatureKind) -> u8 {
    match kind {
        FeatureKind::Numeric => 0,
        FeatureKind::Categorical => 1,
        FeatureKind::Infer => 2,
        FeatureKind::Identifier => 3,
    }
}

/// Reads a rows file's sites (only `only`, when given), refusing a file
/// saved with other settings than `config`'s, or not a rows file.
pub(crate) fn read_rows(
    config: &DataConfig,
    source: &dyn FileSource,
    full_path: &Path,
    shown: &Path,
    only: Option<&str>,
) -> Result<Vec<RawSite>, DataError> {
    let mut sites = Vec::new();
    for_each_rows_site(config, source, full_path, shown, &mut |site| {
        if only.is_none_or(|only| only == site.name) {
            sites.push(site);
        }
        Ok(())
    })?;
    Ok(sites)
}

/// Reads a rows file's sites one at a time, in the file's (name) order,
/// each handed to `each` and dropped before the next is read: a pass over
/// ten million sites holds one site's rows at a time. Refused as
/// [`read_rows`] refuses; an error from `each` stops the pass.
pub(crate) fn for_each_rows_site(
    config: &DataConfig,
    source: &dyn FileSource,
    full_path: &Path,
    shown: &Path,
    each: &mut dyn FnMut(RawSite) -> Result<(), DataError>,
) -> Result<(), DataError> {
    if config.partition.is_some() || config.cross_silo.is_some() {
        return Err(DataError::Config(format!(
            "{}: a rows file holds its sites already, and no identifiers as read: give no \
             [data.partition] or [data.cross_silo] (read the CSV)",
            shown.display()
        )));
    }
    let file = source.open(full_path).map_err(|e| DataError::Io {
        path: full_path.to_path_buf(),
        source: e,
    })?;
    let mut r = Reader {
        inner: std::io::BufReader::with_capacity(1 << 20, file),
        shown,
    };
    let mut magic = [0u8; 13];
    r.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(r.bad("not a rows file (tessera simulate --save-rows writes them)"));
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(r.bad(format!(
            "rows file version {version}; this tessera reads version {VERSION} (save the rows \
             again)"
        )));
    }
    let saved: Settings = toml::from_str(&r.text()?)
        .map_err(|e| r.bad(format!("the saved reading settings: {e}")))?;
    if saved != Settings::of(config) {
        return Err(DataError::Config(format!(
            "{} was saved with other reading settings (site column {:?}, target '{}', {} \
             declared columns) than this plan's (site column {:?}, target '{}', {} declared \
             columns): save the rows again with this plan",
            shown.display(),
            saved.site_column,
            saved.schema.target,
            saved.schema.columns.len(),
            config.site_column,
            config.schema.target,
            config.schema.columns.len()
        )));
    }
    let csv = PathBuf::from(r.text()?);
    let n_columns = r.u32()?;
    let mut columns = Vec::new();
    for _ in 0..n_columns {
        let name = r.text()?;
        let kind = match r.u8()? {
            0 => FeatureKind::Numeric,
            1 => FeatureKind::Categorical,
            2 => FeatureKind::Infer,
            3 => FeatureKind::Identifier,
            other => return Err(r.bad(format!("column kind {other}"))),
        };
        if columns.iter().any(|c: &FeatureColumn| c.name == name) {
            return Err(r.bad(format!("column '{name}' appears twice")));
        }
        columns.push(FeatureColumn { name, kind });
    }
    let columns = Arc::new(columns);
    let n_sites = r.u64()?;
    let mut last: Option<String> = None;
    for _ in 0..n_sites {
        let name = r.text()?;
        if last.as_ref().is_some_and(|last| *last >= name) {
            return Err(r.bad(format!("site '{name}' out of order")));
        }
        let n = r.u64()?;
        if n > MAX_DECLARED_ROWS {
            return Err(r.bad(format!("site '{name}': {n} rows")));
        }
        let n = n as usize;
        let lines = r.u64s(n)?;
        let row_in_file = r.u64s(n)?;
        let mut features = Vec::with_capacity(columns.len());
        for column in columns.iter() {
            let stored = r.u8()?;
            // As the CSV reader types them: a declared kind is kept at
            // every site, an inferred column is either.
            let fits = match column.kind {
                FeatureKind::Numeric => stored == 0,
                FeatureKind::Categorical | FeatureKind::Identifier => stored == 1,
                FeatureKind::Infer => true,
            };
            if !fits {
                return Err(r.bad(format!(
                    "site '{name}', column '{}': values of another kind than the column's",
                    column.name
                )));
            }
            features.push(match stored {
                0 => {
                    let v = r.f64s(n)?;
                    if let Some(x) = v.iter().find(|x| !x.is_nan() && !(**x as f32).is_finite()) {
                        return Err(r.bad(format!(
                            "site '{name}', column '{}': {x} is not a 32-bit number",
                            column.name
                        )));
                    }
                    Values::Numeric(v)
                }
                1 => {
                    let (codes, levels) = r.categorical(n, &name)?;
                    Values::Categorical(Box::new(Coded { codes, levels }))
                }
                other => return Err(r.bad(format!("site '{name}': value kind {other}"))),
            });
        }
        let (target, target_levels) = r.categorical(n, &name)?;
        each(RawSite {
            name: name.clone(),
            file: csv.clone(),
            columns: Arc::clone(&columns),
            lines,
            row_in_file,
            features,
            target,
            target_levels,
        })?;
        last = Some(name);
    }
    let mut rest = [0u8; 1];
    if r.inner.read(&mut rest).map_err(|e| r.io(e))? != 0 {
        return Err(r.bad("bytes past the last site"));
    }
    Ok(())
}

struct Reader<'a, R> {
    inner: std::io::BufReader<R>,
    shown: &'a Path,
}

impl<R: Read> Reader<'_, R> {
    fn bad(&self, message: impl Into<String>) -> DataError {
        DataError::at(self.shown, None, None, message)
    }

    fn io(&self, e: std::io::Error) -> DataError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            self.bad("the rows file ends early (cut short, or not a rows file)")
        } else {
            DataError::Io {
                path: self.shown.to_path_buf(),
                source: e,
            }
        }
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), DataError> {
        self.inner.read_exact(buf).map_err(|e| self.io(e))
    }

    fn u8(&mut self) -> Result<u8, DataError> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    fn u32(&mut self) -> Result<u32, DataError> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, DataError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn text(&mut self) -> Result<String, DataError> {
        let n = self.u32()?;
        if n > MAX_TEXT {
            return Err(self.bad(format!("a text of {n} bytes")));
        }
        let bytes = self.values::<1, u8>(n as usize, |b| b[0])?;
        String::from_utf8(bytes).map_err(|_| self.bad("a text that is not UTF-8"))
    }

    /// `n` values of `W` bytes each, read a chunk at a time.
    fn values<const W: usize, T>(
        &mut self,
        n: usize,
        of: impl Fn([u8; W]) -> T,
    ) -> Result<Vec<T>, DataError> {
        let mut out = Vec::with_capacity(n.min(CHUNK));
        let mut buf = vec![0u8; n.min(CHUNK) * W];
        let mut left = n;
        while left > 0 {
            let take = left.min(CHUNK);
            let bytes = &mut buf[..take * W];
            self.exact(bytes)?;
            out.extend(bytes.chunks_exact(W).map(|c| {
                let mut b = [0u8; W];
                b.copy_from_slice(c);
                of(b)
            }));
            left -= take;
        }
        Ok(out)
    }

    fn u64s(&mut self, n: usize) -> Result<Vec<u64>, DataError> {
        self.values::<8, u64>(n, u64::from_le_bytes)
    }

    fn f64s(&mut self, n: usize) -> Result<Vec<f64>, DataError> {
        self.values::<8, f64>(n, f64::from_le_bytes)
    }

    /// `n` codes and their levels; every code names a level or is missing.
    fn categorical(&mut self, n: usize, site: &str) -> Result<(Vec<u32>, Vec<String>), DataError> {
        let codes = self.values::<4, u32>(n, u32::from_le_bytes)?;
        let n_levels = self.u32()?;
        let mut levels = Vec::new();
        for _ in 0..n_levels {
            levels.push(self.text()?);
        }
        if let Some(c) = codes
            .iter()
            .find(|&&c| c != MISSING_CODE && c as usize >= levels.len())
        {
            return Err(self.bad(format!(
                "site '{site}': code {c} of {} levels",
                levels.len()
            )));
        }
        Ok((codes, levels))
    }
}
