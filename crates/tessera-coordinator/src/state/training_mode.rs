//! How this federation trains, as one value: rounds, a buffer of
//! asynchronous steps, or rounds relayed from a parent aggregator. Each
//! holds its engine once the data agreement has built it.

use tessera_engine::{BufferedEngine, Mode, Plan, RoundEngine};

use super::relay::Relay;

/// The federation's way of training.
pub(super) enum Training {
    /// Synchronous rounds over the round engine (built at agreement).
    Sync(Option<Box<RoundEngine>>),
    /// Asynchronous steps over the buffered engine (built at agreement).
    Async(Option<Box<BufferedEngine>>),
    /// An aggregator of a hierarchical run: rounds come from its parent, each
    /// over a round engine built when the parent's task comes.
    Relay(Box<Relay>),
}

impl Training {
    /// The way `plan` trains at this node (`relay`: an aggregator's).
    pub(super) fn of_plan(plan: &Plan, relay: Option<Relay>) -> Self {
        match relay {
            Some(relay) => Training::Relay(Box::new(relay)),
            None if plan.federation.mode == Mode::Async => Training::Async(None),
            None => Training::Sync(None),
        }
    }

    /// The round engine, in synchronous and relayed runs once it exists.
    pub(super) fn rounds(&self) -> Option<&RoundEngine> {
        match self {
            Training::Sync(engine) => engine.as_deref(),
            Training::Relay(relay) => relay.engine.as_ref(),
            Training::Async(_) => None,
        }
    }

    /// The round engine, to change.
    pub(super) fn rounds_mut(&mut self) -> Option<&mut RoundEngine> {
        match self {
            Training::Sync(engine) => engine.as_deref_mut(),
            Training::Relay(relay) => relay.engine.as_mut(),
            Training::Async(_) => None,
        }
    }

    /// Puts the round engine in place (none in an asynchronous run).
    pub(super) fn set_rounds(&mut self, engine: Option<RoundEngine>) {
        match self {
            Training::Sync(slot) => *slot = engine.map(Box::new),
            Training::Relay(relay) => relay.engine = engine,
            Training::Async(_) => {}
        }
    }

    /// The buffered engine of an asynchronous run, once it exists.
    pub(super) fn buffered(&self) -> Option<&BufferedEngine> {
        match self {
            Training::Async(engine) => engine.as_deref(),
            Training::Sync(_) | Training::Relay(_) => None,
        }
    }

    /// The buffered engine, to change.
    pub(super) fn buffered_mut(&mut self) -> Option<&mut BufferedEngine> {
        match self {
            Training::Async(engine) => engine.as_deref_mut(),
            Training::Sync(_) | Training::Relay(_) => None,
        }
    }

    /// Whether the run trains in asynchronous steps.
    pub(super) fn is_async(&self) -> bool {
        matches!(self, Training::Async(_))
    }

    /// An aggregator's relay state.
    pub(super) fn relay(&self) -> Option<&Relay> {
        match self {
            Training::Relay(relay) => Some(relay),
            Training::Sync(_) | Training::Async(_) => None,
        }
    }

    /// An aggregator's relay state, to change.
    pub(super) fn relay_mut(&mut self) -> Option<&mut Relay> {
        match self {
            Training::Relay(relay) => Some(relay),
            Training::Sync(_) | Training::Async(_) => None,
        }
    }
}
