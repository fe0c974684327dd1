//! The site's half of a strategy: [`LocalAlgorithm`] owns what a strategy
//! does at the site (the term added to every gradient, the state a site keeps
//! between rounds, the auxiliary sum its update carries). The server's half is
//! [`crate::Strategy`]; the two speak through [`Instructions`]. Each
//! strategy's local part lives beside its server part in `methods/`.

use std::fmt;

use tessera_core::{FitStats, GradientTerm, ParameterSet};

use crate::{AggregateError, Instructions};

/// What local training did, as a local algorithm needs to know it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalOutcome<'a> {
    /// The global parameters training started from.
    pub global: &'a ParameterSet,
    /// The trained parameters minus `global`.
    pub delta: &'a ParameterSet,
    /// Steps taken and the training loss.
    pub stats: FitStats,
    /// The optimiser's learning rate.
    pub lr: f32,
}

/// A strategy's local part. A site keeps one per kind of instructions it
/// receives, with whatever state the algorithm carries between rounds; it
/// never sees rows, only parameters.
pub trait LocalAlgorithm: Send + fmt::Debug {
    /// Before local training from `global`: the term to add to every
    /// gradient (none: plain local training).
    fn begin<'a>(
        &'a mut self,
        instructions: &'a Instructions,
        global: &'a ParameterSet,
    ) -> Result<Option<Box<dyn GradientTerm + 'a>>, AggregateError>;

    /// After local training: the auxiliary sum the update carries, when the
    /// strategy asked for one ([`crate::Strategy::aux_sum`]).
    fn finish(
        &mut self,
        instructions: &Instructions,
        outcome: &LocalOutcome<'_>,
    ) -> Result<Option<ParameterSet>, AggregateError>;

    /// How the site's last update fared: state moves only with an update
    /// that counted in a completed round, so the server's view and the
    /// site's stay in step.
    fn round_closed(&mut self, _counted: bool) {}
}

/// Local training with nothing added (FedAvg, FedAvgM, FedOpt).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainLocal;

impl LocalAlgorithm for PlainLocal {
    fn begin<'a>(
        &'a mut self,
        _instructions: &'a Instructions,
        _global: &'a ParameterSet,
    ) -> Result<Option<Box<dyn GradientTerm + 'a>>, AggregateError> {
        Ok(None)
    }

    fn finish(
        &mut self,
        _instructions: &Instructions,
        _outcome: &LocalOutcome<'_>,
    ) -> Result<Option<ParameterSet>, AggregateError> {
        Ok(None)
    }
}

/// The error for instructions a local algorithm was not made for.
pub(crate) fn mismatch(algorithm: &str, instructions: &Instructions) -> AggregateError {
    AggregateError::Config(format!(
        "{algorithm}'s local part received {} instructions",
        instructions.name()
    ))
}
