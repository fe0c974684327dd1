//! The composed distributions of an accountant's events, built at the finest grid that fits.

use super::gaussian::{Side, SubsampledGaussian};
use super::pmf::{Failure, Pmf, compose, self_compose};
use super::{MAX_DOUBLINGS, Q_FLOOR, SIGMA_CAP, VALUE_DISCRETIZATION_INTERVAL};
use crate::DpEvent;

/// The composed distributions of an accountant.
#[derive(Debug)]
pub(super) enum Composed {
    Pld {
        /// The discretisation interval used.
        d: f64,
        remove: Pmf,
        /// `None` when equal to `remove` (every event had `q = 1`).
        add: Option<Pmf>,
    },
    /// Some loss is infinite or could not be represented.
    Unbounded,
}

impl Composed {
    pub(super) fn of(events: &[DpEvent]) -> Composed {
        let mut d = VALUE_DISCRETIZATION_INTERVAL;
        for _ in 0..=MAX_DOUBLINGS {
            match Self::at(events, d) {
                Ok(c) => return c,
                Err(Failure::TooLarge) => d *= 2.0,
                Err(Failure::Unbounded) => return Composed::Unbounded,
            }
        }
        Composed::Unbounded
    }

    fn at(events: &[DpEvent], d: f64) -> Result<Composed, Failure> {
        let mut remove = Pmf::identity();
        let mut add: Option<Pmf> = None;
        for event in events {
            let q = event.sampling_rate.max(Q_FLOOR);
            let sigma = event.noise_multiplier.min(SIGMA_CAP);
            let one = |side| {
                SubsampledGaussian::new(q, sigma, side)
                    .connect_the_dots(d)
                    .and_then(|pmf| self_compose(&pmf, event.steps))
            };
            let r = one(Side::Remove)?;
            let a = if q < 1.0 { Some(one(Side::Add)?) } else { None };
            add = match (add.take(), a) {
                (None, None) => None,
                (previous, a) => Some(compose(
                    previous.as_ref().unwrap_or(&remove),
                    a.as_ref().unwrap_or(&r),
                )?),
            };
            remove = compose(&remove, &r)?;
        }
        Ok(Composed::Pld { d, remove, add })
    }

    pub(super) fn epsilon(&self, delta: f64) -> f64 {
        match self {
            Composed::Pld { d, remove, add } => {
                let e = remove.epsilon(*d, delta);
                add.as_ref().map_or(e, |a| e.max(a.epsilon(*d, delta)))
            }
            Composed::Unbounded => f64::INFINITY,
        }
    }

    pub(super) fn delta(&self, epsilon: f64) -> f64 {
        match self {
            Composed::Pld { d, remove, add } => {
                let r = remove.delta(*d, epsilon);
                add.as_ref()
                    .map_or(r, |a| r.max(a.delta(*d, epsilon)))
                    .clamp(0.0, 1.0)
            }
            Composed::Unbounded => 1.0,
        }
    }
}
