//! Tags of the seed streams derived from a run seed.

/// The initial model.
pub const INIT: u64 = 1;
/// Cohort sampling, per round.
pub const COHORT: u64 = 2;
/// Local training, per round and site (under local DP, keyed with the
/// site's secret instead of the seed: see `Site::fit`).
pub const FIT: u64 = 3;
/// Simulated participant profiles, per site.
pub const PROFILE: u64 = 4;
/// Simulated dropouts, per round and site.
pub const DROPOUT: u64 = 5;
/// Baseline training.
pub const BASELINE: u64 = 6;
/// Simulated attacks: which sites are malicious, their noise.
pub const ATTACK: u64 = 7;
/// Simulation only: the key of central DP noise (deployment draws a
/// secret key from the operating system instead).
pub const DP_NOISE: u64 = 8;
/// Secure aggregation: the public neighbour graph of each round (and, in
/// simulation only, the participants' secrets).
pub const SECAGG: u64 = 9;
/// Update compression: stochastic rounding per round and site; random-k
/// coordinates per round and site, or per round when shared (secure aggregation).
pub const COMPRESS: u64 = 10;
/// Model compression downstream, per round.
pub const COMPRESS_DOWN: u64 = 11;
/// Topologies: random gossip graphs.
pub const TOPOLOGY: u64 = 12;
/// Simulation only: the key of the noise on evaluation metrics
/// (`site_metrics = "dp"`; deployment draws it from the operating system).
pub const METRICS_NOISE: u64 = 13;
/// Simulation only: the cross-silo feature's matching key and each site's
/// secrets in its noisy-membership runs (`[data.cross_silo]`; a deployed
/// site would draw them from the operating system).
pub const CROSS_SILO: u64 = 14;
/// IFCA: each cluster's initial model after the first, per cluster (the
/// first is the plan's initial model).
pub const IFCA: u64 = 15;
/// Multi-task: each task's initial head after the first task's, per task
/// (the body and the first head are the plan's initial model).
pub const MULTITASK: u64 = 16;
/// Simulation only: each site's key of the noise on its data quality
/// scores (`[contribution]`; a deployed site would draw it from the
/// operating system).
pub const QUALITY: u64 = 17;
/// Attribution: GTG-Shapley's sampled orders, per round (public).
pub const CONTRIBUTION: u64 = 18;
