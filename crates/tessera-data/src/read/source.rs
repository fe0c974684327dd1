//! Where the loader's files come from, and how one is opened (gunzipped, lines bounded).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::DataError;

/// Opens files for the loader. The filesystem in production; tests and the
/// bundled demo plug in other sources. Files are read as streams, never held
/// whole in memory.
pub trait FileSource: Sync {
    /// A reader over the file at `path`.
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn Read + '_>>;
}

/// Reads from the local filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filesystem;

impl FileSource for Filesystem {
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(std::fs::File::open(path)?))
    }
}

/// Files held in memory, by the path the loader asks for (tests, generated
/// data, data handed over by a caller); other paths are not found.
#[derive(Debug, Clone, Default)]
pub struct InMemory(pub HashMap<PathBuf, Vec<u8>>);

impl InMemory {
    /// `files`, each a path and its bytes.
    pub fn new<P: Into<PathBuf>, B: Into<Vec<u8>>>(
        files: impl IntoIterator<Item = (P, B)>,
    ) -> Self {
        Self(
            files
                .into_iter()
                .map(|(p, b)| (p.into(), b.into()))
                .collect(),
        )
    }
}

impl FileSource for InMemory {
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn Read + '_>> {
        self.0
            .get(path)
            .map(|bytes| Box::new(bytes.as_slice()) as Box<dyn Read>)
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file in memory")
            })
    }
}

pub(crate) fn source_open<'a>(
    source: &'a dyn FileSource,
    full_path: &Path,
) -> Result<Box<dyn Read + 'a>, DataError> {
    // A file that cannot be opened is named as it was looked for (a plan's
    // path resolved against the plan's folder).
    let file = source.open(full_path).map_err(|e| DataError::Io {
        path: full_path.to_path_buf(),
        source: e,
    })?;
    if full_path.extension().is_some_and(|e| e == "gz") {
        return Ok(Box::new(LineLimit::new(GunzipErrors {
            inner: flate2::read::MultiGzDecoder::new(file),
        })));
    }
    Ok(Box::new(LineLimit::new(file)))
}

/// The longest line a data or membership file may have (16 MiB): a file
/// whose line never ends (`/dev/zero`) is refused instead of filling memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Fails a read once a line passes [`MAX_LINE_BYTES`].
struct LineLimit<R> {
    inner: R,
    line: usize,
}

impl<R> LineLimit<R> {
    fn new(inner: R) -> Self {
        Self { inner, line: 0 }
    }
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        // Readers ask for small buffers, so only the line that runs on past
        // the last newline can grow long.
        self.line = match buf[..n].iter().rposition(|&b| b == b'\n') {
            Some(at) => n - at - 1,
            None => self.line.saturating_add(n),
        };
        if self.line > MAX_LINE_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a line is longer than {} MiB", MAX_LINE_BYTES >> 20),
            ));
        }
        Ok(n)
    }
}

/// Gunzips, saying so when the bytes are not gzip (the CSV reader then names the file).
struct GunzipErrors<R> {
    inner: flate2::read::MultiGzDecoder<R>,
}

impl<R: Read> Read for GunzipErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| std::io::Error::new(e.kind(), format!("not valid gzip data: {e}")))
    }
}
