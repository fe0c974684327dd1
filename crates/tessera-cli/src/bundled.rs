//! The Fed-Heart-Disease plan and its data, built into the binary so that
//! `tessera simulate` runs anywhere.

use std::path::Path;

use tessera_data::FileSource;

/// The bundled plan's text.
pub const PLAN: &str = include_str!("../../../examples/fed-heart-disease.toml");
/// Where the bundled plan says it lives (its data paths are relative to it).
pub const PLAN_PATH: &str = "examples/fed-heart-disease.toml";

const FILES: &[(&str, &[u8])] = &[
    (
        "processed.cleveland.data",
        include_bytes!("../../../data/uci-heart-disease/processed.cleveland.data"),
    ),
    (
        "processed.hungarian.data",
        include_bytes!("../../../data/uci-heart-disease/processed.hungarian.data"),
    ),
    (
        "processed.switzerland.data",
        include_bytes!("../../../data/uci-heart-disease/processed.switzerland.data"),
    ),
    (
        "processed.va.data",
        include_bytes!("../../../data/uci-heart-disease/processed.va.data"),
    ),
    (
        "flamby_split.csv",
        include_bytes!("../../../data/uci-heart-disease/flamby_split.csv"),
    ),
];

/// Serves the bundled data files by name.
pub struct Bundled;

impl FileSource for Bundled {
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        FILES
            .iter()
            .find(|(file, _)| *file == name)
            .map(|(_, bytes)| Box::new(*bytes) as Box<dyn std::io::Read>)
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "not among the bundled files")
            })
    }
}
