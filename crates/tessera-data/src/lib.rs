//! Site data for Tessera: reads CSV files (one per site, or one with a site
//! column) as a schema describes them, agrees a shared one-hot vocabulary from
//! each site's set of levels, splits each site's rows into train and test
//! (seeded and stratified, or from a membership file), imputes and
//! standardises with each site's own training statistics.
//!
//! The primary entry point is [`load`], which turns a [`DataConfig`] into a
//! [`FederatedData`]: per-site [`Dataset`]s ready for a learner.
//!
//! Key design decision: everything a site computes from its rows stays with
//! the site's [`SiteData`]; what crosses sites is only what a federation would
//! exchange (column types, sets of categorical levels, sets of target values).
//!
//! Bad input is an error naming file, line and column ([`DataError`]), never a
//! panic. This crate knows nothing about federation rounds or models.
//!
//! Inside: `read` streams CSV into typed per-site columns, `levels` agrees the
//! task and the categorical vocabularies from each site's *sets* of values,
//! and `prepare` splits, encodes one-hot, imputes and standardises with
//! training statistics; each site's raw columns are freed once encoded.
//! `FeatureStatistics` (count, mean and M2, merged with Chan's update) is
//! what a site would share for federation-scope scaling and for the pooled
//! baseline. `synth` generates FedProx's Synthetic(α, β).
//!
//! `[data.cross_silo]` ([`CrossSiloConfig`]): [`load_cross_silo`] takes each
//! site's identifier column out before any agreement step and puts a
//! feature computed across sites in its place (the caller runs the
//! protocol; `tessera-sim` runs `tessera-psi`'s noisy membership); every
//! other path refuses such a plan.
//!
//! `FileSource` is the only way bytes come in (`Filesystem`, data bundled in
//! the binary, `InMemory` in tests). Data and membership files are refused at
//! a line longer than 16 MiB.
#![deny(missing_docs)]

pub mod config;
mod dataset;
mod error;
mod features;
mod levels;
pub mod mapping;
mod prepare;
pub mod quality;
mod read;
pub mod synth;
mod table;

pub use config::{
    AbsentPolicy, ColumnKind, ColumnSpec, CrossSiloConfig, DataConfig, IndicatorScaling,
    MembershipFile, MissingPolicy, PartitionConfig, ScaleScope, SchemaConfig, SiteFile,
    SplitConfig, StandardizeConfig, SyntheticConfig,
};
pub use dataset::{
    Dataset, FeatureStatistics, FederatedData, Scaler, SiteData, SiteSummary, Task, Unstandardised,
};
pub use error::{DataError, Location};
pub use features::{Features, SparseBuilder};
pub use levels::{agree_levels, canonical_level, level_order};
pub use prepare::{
    Agreement, ColumnKinds, DeriveFeature, Encoding, FederatedRecords, Group, KeepSite, KindsOffer,
    LevelsOffer, LocalSite, MAX_DECLARED_ROWS, MAX_DECLARED_SITES, MISSING_LEVEL, PendingSite,
    RecordColumn, SiteIdentifiers, SiteRecords, agree_kinds, agree_multitask, agree_vocabulary,
    declared_rows, load, load_cross_silo, load_records, load_releasing, load_sites,
    read_local_site, read_local_sites, read_member_sites, read_pending_site, records_schema,
};
pub use read::{
    FileSource, Filesystem, InMemory, ROWS_EXTENSION, SavedRows, is_rows_file, save_rows,
};
pub use table::{MAX_TABLE_ROWS, Table, read_table};
