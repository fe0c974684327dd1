//! A CSV file as text fields, for applying a stored model to new rows
//! (`tessera predict`): the header and each row's fields, read through a
//! [`FileSource`] like every other file, lines bounded.

use std::path::Path;

use crate::DataError;
use crate::read::{FileSource, source_open};

/// The most rows [`read_table`] reads (about 16 million): a larger file is
/// refused rather than held in memory.
pub const MAX_TABLE_ROWS: usize = 1 << 24;

/// A CSV file with a header, as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Column names, from the header line.
    pub header: Vec<String>,
    /// Each data row: its 1-based line and its fields (trimmed).
    pub rows: Vec<(u64, Vec<String>)>,
}

/// Reads `path` (gzip where it ends in `.gz`) as CSV with a header line,
/// fields separated by `delimiter`. Blank lines are skipped; a row with
/// another number of fields than the header is refused with its line.
pub fn read_table(
    source: &dyn FileSource,
    path: &Path,
    delimiter: char,
) -> Result<Table, DataError> {
    if !delimiter.is_ascii() {
        return Err(DataError::Config(format!(
            "the delimiter '{delimiter}' is not an ASCII character"
        )));
    }
    let file = source_open(source, path)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .delimiter(delimiter as u8)
        .from_reader(file);
    let malformed = |e: &csv::Error| {
        DataError::at(
            path,
            e.position().map(|p| p.line()),
            None,
            format!("malformed CSV: {e}"),
        )
    };
    let mut header: Option<Vec<String>> = None;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| malformed(&e))?;
        let line = record.position().map_or(0, |p| p.line());
        if record.len() == 1 && record.get(0).is_some_and(str::is_empty) {
            continue;
        }
        let fields: Vec<String> = record
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let f = if i == 0 && header.is_none() {
                    f.strip_prefix('\u{feff}').unwrap_or(f)
                } else {
                    f
                };
                f.to_string()
            })
            .collect();
        match &header {
            None => {
                if let Some((i, name)) = fields
                    .iter()
                    .enumerate()
                    .find(|(i, n)| fields[..*i].contains(n))
                {
                    return Err(DataError::at(
                        path,
                        Some(line),
                        Some(i + 1),
                        format!("column '{name}' appears twice"),
                    ));
                }
                header = Some(fields);
            }
            Some(names) => {
                if fields.len() != names.len() {
                    return Err(DataError::at(
                        path,
                        Some(line),
                        None,
                        format!("{} fields, the header has {}", fields.len(), names.len()),
                    ));
                }
                if rows.len() >= MAX_TABLE_ROWS {
                    return Err(DataError::at(
                        path,
                        Some(line),
                        None,
                        format!("more than {MAX_TABLE_ROWS} rows; split the file"),
                    ));
                }
                rows.push((line, fields));
            }
        }
    }
    let Some(header) = header else {
        return Err(DataError::at(path, None, None, "file is empty"));
    };
    Ok(Table { header, rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InMemory;

    #[test]
    fn reads_header_and_rows_and_refuses_ragged_rows() {
        let files = InMemory::new([
            ("a.csv", "x,y\n1, 2\n3,4\n"),
            ("b.csv", "x,y\n1\n"),
            ("c.csv", ""),
        ]);
        let table = read_table(&files, Path::new("a.csv"), ',').unwrap();
        assert_eq!(table.header, ["x", "y"]);
        assert_eq!(table.rows.len(), 2);
        assert_eq!(table.rows[0].1, ["1", "2"]);
        assert_eq!(table.rows[1].0, 3);
        let error = read_table(&files, Path::new("b.csv"), ',').unwrap_err();
        assert!(
            error.to_string().contains("1 fields, the header has 2"),
            "{error}"
        );
        let error = read_table(&files, Path::new("c.csv"), ',').unwrap_err();
        assert!(error.to_string().contains("empty"), "{error}");
    }
}
