//! The site's half of a strategy: [`LocalAlgorithm`] owns what a strategy
//! does at the site (the term added to every gradient, the state a site keeps
//! between rounds, the auxiliary sum its update carries, and, for methods
//! that need it, the whole local training over the site's
//! [`LocalModel`]). The server's half is [`crate::Strategy`]; the two speak
//! through [`Instructions`]. Each strategy's local part lives beside its
//! server part in `methods/`; [`LocalPart`] is the one a site keeps, made
//! from the instructions it receives. Local DP-SGD wraps any of them (the
//! engine's `DpSgd`), as the robust rules wrap any server part.

use std::fmt;
use std::mem::Discriminant;

use tessera_core::{FitStats, GradientTerm, LocalModel, ParameterSet};

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

/// What a local part returns for the site's update.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalFit {
    /// The change to send: the trained parameters minus the global ones.
    pub delta: ParameterSet,
    /// The auxiliary sum the update carries, when the strategy asked for one.
    pub aux: Option<ParameterSet>,
    /// Steps taken and the training loss.
    pub stats: FitStats,
}

/// A strategy's local part. A site keeps one per kind of instructions it
/// receives, with whatever state the algorithm carries between rounds; it
/// never sees rows, only parameters and the site's [`LocalModel`].
///
/// Most local parts only add a term to every gradient and perhaps compute an
/// auxiliary sum afterwards: they implement [`LocalAlgorithm::begin`] and
/// [`LocalAlgorithm::finish`] and keep the provided
/// [`LocalAlgorithm::fit`] (set the global parameters, train once, take the
/// difference). A method that trains otherwise (a personal model beside the
/// global one, layers that never leave the site) overrides `fit`.
pub trait LocalAlgorithm: Send + fmt::Debug {
    /// Before local training from `global`: the term to add to every
    /// gradient (none, the default: plain local training).
    fn begin<'a>(
        &'a mut self,
        _instructions: &'a Instructions,
        _global: &'a ParameterSet,
    ) -> Result<Option<Box<dyn GradientTerm + 'a>>, AggregateError> {
        Ok(None)
    }

    /// After local training: the auxiliary sum the update carries, when the
    /// strategy asked for one ([`crate::Strategy::aux_sum`]; none by default).
    fn finish(
        &mut self,
        _instructions: &Instructions,
        _outcome: &LocalOutcome<'_>,
    ) -> Result<Option<ParameterSet>, AggregateError> {
        Ok(None)
    }

    /// One round's local work on `model` from `global`: by default, set
    /// `global`, [`begin`](LocalAlgorithm::begin), train once with the term,
    /// take the difference, [`finish`](LocalAlgorithm::finish).
    fn fit(
        &mut self,
        instructions: &Instructions,
        global: &ParameterSet,
        model: &mut dyn LocalModel,
    ) -> Result<LocalFit, AggregateError> {
        model.set_parameters(global)?;
        let lr = model.lr();
        let term = self.begin(instructions, global)?;
        let stats = model.train(term.as_deref())?;
        drop(term);
        let delta = model.parameters().sub(global)?;
        let aux = self.finish(
            instructions,
            &LocalOutcome {
                global,
                delta: &delta,
                stats,
                lr,
            },
        )?;
        Ok(LocalFit { delta, aux, stats })
    }

    /// The site's personal model, as it stands after its last training, for
    /// a strategy that keeps one (Ditto's personal model, FedPer's global
    /// body with the site's head); `None` otherwise and before the first
    /// training. It never leaves the site.
    fn personal(&self, _global: &ParameterSet) -> Option<ParameterSet> {
        None
    }

    /// The cluster the site took at its last training, under a clustered
    /// strategy (IFCA); `None` otherwise.
    fn cluster(&self) -> Option<usize> {
        None
    }

    /// What the site must keep across a restart of its process to go on as
    /// if it had not stopped (a personalized strategy's personal model), as
    /// named tensors; `None` when there is nothing (the default, and before
    /// the first training).
    fn saved(&self) -> Option<ParameterSet> {
        None
    }

    /// Takes back what [`saved`](LocalAlgorithm::saved) gave, in a fresh
    /// local part of the same kind.
    fn restore(&mut self, _saved: &ParameterSet) -> Result<(), AggregateError> {
        Err(AggregateError::Config(
            "this strategy's local part keeps no state to restore".into(),
        ))
    }

    /// How the site's last update fared: state moves only with an update
    /// that counted in a completed round, so the server's view and the
    /// site's stay in step.
    fn round_closed(&mut self, _counted: bool) {}
}

/// Local training with nothing added (FedAvg, FedAvgM, FedOpt).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainLocal;

impl LocalAlgorithm for PlainLocal {}

/// The local part a site keeps: the one its instructions name
/// ([`Instructions::local_algorithm`]), made at the first round and kept,
/// with its state, while the instructions keep their kind.
#[derive(Debug, Default)]
pub struct LocalPart {
    /// The instructions' kind and name, and their local part.
    current: Option<(
        Discriminant<Instructions>,
        &'static str,
        Box<dyn LocalAlgorithm>,
    )>,
    /// State saved by an earlier process, by the instructions' name, until
    /// instructions of that kind come.
    /// (Boxed: a simulation holds a million sites, and only a restarted
    /// participant has any.)
    restoring: Option<Box<(String, ParameterSet)>>,
}

impl LocalPart {
    /// The local part for `instructions`: the one kept, or a fresh one when
    /// their kind changed (given the state an earlier process saved for
    /// that kind, if any).
    fn for_instructions(
        &mut self,
        instructions: &Instructions,
    ) -> Result<&mut dyn LocalAlgorithm, AggregateError> {
        let kind = std::mem::discriminant(instructions);
        if self
            .current
            .as_ref()
            .is_some_and(|(made_for, _, _)| *made_for != kind)
        {
            self.current = None;
        }
        let (_, _, local) = match &mut self.current {
            Some(current) => current,
            empty => {
                let mut fresh = instructions.local_algorithm();
                match self.restoring.take() {
                    Some(kept) if kept.0 == instructions.name() => fresh.restore(&kept.1)?,
                    other => self.restoring = other,
                }
                empty.insert((kind, instructions.name(), fresh))
            }
        };
        Ok(local.as_mut())
    }

    /// The state to keep across a restart of the site's process, with the
    /// name of the instructions it belongs to.
    pub fn saved_state(&self) -> Option<(&'static str, ParameterSet)> {
        let (_, name, local) = self.current.as_ref()?;
        Some((name, local.saved()?))
    }

    /// State an earlier process saved ([`LocalPart::saved_state`]), taken
    /// back when instructions named `name` come.
    pub fn restore_state(&mut self, name: String, saved: ParameterSet) {
        self.restoring = Some(Box::new((name, saved)));
    }
}

impl LocalAlgorithm for LocalPart {
    fn fit(
        &mut self,
        instructions: &Instructions,
        global: &ParameterSet,
        model: &mut dyn LocalModel,
    ) -> Result<LocalFit, AggregateError> {
        self.for_instructions(instructions)?
            .fit(instructions, global, model)
    }

    /// The personal model: the local part's, or, before any training in
    /// this process, the one an earlier process saved.
    fn personal(&self, global: &ParameterSet) -> Option<ParameterSet> {
        match &self.current {
            Some((_, _, local)) => local.personal(global),
            None => {
                let (name, saved) = self.restoring.as_deref()?;
                restored(name, saved).ok()?.personal(global)
            }
        }
    }

    fn cluster(&self) -> Option<usize> {
        match &self.current {
            Some((_, _, local)) => local.cluster(),
            None => {
                let (name, saved) = self.restoring.as_deref()?;
                restored(name, saved).ok()?.cluster()
            }
        }
    }

    fn round_closed(&mut self, counted: bool) {
        if let Some((_, _, local)) = self.current.as_mut() {
            local.round_closed(counted);
        }
    }
}

/// A fresh local part of the instructions named `name` with `saved` taken
/// back: refused when the kind keeps no state or the state is not its.
pub fn restored(
    name: &str,
    saved: &ParameterSet,
) -> Result<Box<dyn LocalAlgorithm>, AggregateError> {
    let mut fresh: Box<dyn LocalAlgorithm> = match name {
        "ditto" => Box::new(crate::DittoLocal::default()),
        "fedper" => Box::new(crate::FedPerLocal::default()),
        "fedrep" => Box::new(crate::FedRepLocal::default()),
        "apfl" => Box::new(crate::ApflLocal::default()),
        "ifca" => Box::new(crate::IfcaLocal::default()),
        "multitask" => Box::new(crate::MultitaskLocal::default()),
        other => {
            return Err(AggregateError::Config(format!(
                "'{other}' keeps no state to restore"
            )));
        }
    };
    fresh.restore(saved)?;
    Ok(fresh)
}

/// `set`'s tensors as `prefix/NAME`, added to `into` (a local part's saved
/// state).
pub(crate) fn put(
    into: &mut ParameterSet,
    prefix: &str,
    set: &ParameterSet,
) -> Result<(), AggregateError> {
    for (name, tensor) in set.iter() {
        into.push(format!("{prefix}/{name}"), tensor.clone())?;
    }
    Ok(())
}

/// The tensors of `saved` named `prefix/NAME`, as `NAME`; refused when there
/// are none.
pub(crate) fn take(saved: &ParameterSet, prefix: &str) -> Result<ParameterSet, AggregateError> {
    let mut taken = ParameterSet::new();
    let start = format!("{prefix}/");
    for (name, tensor) in saved.iter() {
        if let Some(name) = name.strip_prefix(&start) {
            taken.push(name, tensor.clone())?;
        }
    }
    if taken.n_tensors() == 0 {
        return Err(AggregateError::Config(format!(
            "the saved state has no '{prefix}' tensors"
        )));
    }
    Ok(taken)
}

/// A choice of one of `k` (IFCA's cluster, multi-task's task) as saved
/// state: the tensor `name` of the two values.
pub(crate) fn save_choice(name: &str, chosen: usize, k: usize) -> Option<ParameterSet> {
    let mut saved = ParameterSet::new();
    let tensor = tessera_core::Tensor::new(vec![2], vec![chosen as f32, k as f32]).ok()?;
    saved.push(name, tensor).ok()?;
    Some(saved)
}

/// The choice [`save_choice`] saved as `name`: `None` unless it is one
/// below a `k` from 2 to `most`.
pub(crate) fn restore_choice(
    saved: &ParameterSet,
    name: &str,
    most: usize,
) -> Option<(usize, usize)> {
    let whole = |v: f32| (v.is_finite() && v >= 0.0 && v.fract() == 0.0).then_some(v as usize);
    let pair = saved.get(name).and_then(|t| match t.data() {
        &[chosen, k] => Some((whole(chosen)?, whole(k)?)),
        _ => None,
    })?;
    ((2..=most).contains(&pair.1) && pair.0 < pair.1).then_some(pair)
}

/// The error for instructions a local algorithm was not made for.
pub(crate) fn mismatch(algorithm: &str, instructions: &Instructions) -> AggregateError {
    AggregateError::Config(format!(
        "{algorithm}'s local part received {} instructions",
        instructions.name()
    ))
}
