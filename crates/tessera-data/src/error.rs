use std::path::PathBuf;

use tessera_core::one_line;
use thiserror::Error;

/// Where in an input file something was found: `file:line:column` when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, as the user named it.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: Option<u64>,
    /// 1-based column (field) number.
    pub column: Option<usize>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// Everything that can be wrong with site data or its description. Messages
/// are one line and name the file, line and column where there is one.
#[derive(Debug, Error)]
pub enum DataError {
    /// A file could not be read.
    #[error("{}: cannot read: {}", one_line(&path.display().to_string()), one_line(&source.to_string()))]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A problem at a place in a file.
    #[error("{}: {}", one_line(&at.to_string()), one_line(message))]
    At {
        /// Where.
        at: Location,
        /// What.
        message: String,
    },
    /// The data description itself is inconsistent.
    #[error("data config: {}", one_line(.0))]
    Config(String),
    /// The data is readable but cannot be used (no rows left, one class only, ...).
    #[error("{}", one_line(.0))]
    Unusable(String),
}

impl DataError {
    pub(crate) fn at(
        file: &std::path::Path,
        line: Option<u64>,
        column: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        DataError::At {
            at: Location {
                file: file.to_path_buf(),
                line,
                column,
            },
            message: message.into(),
        }
    }
}
