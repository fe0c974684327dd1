//! Delivering updates to the open round: one at a time as they arrive, a
//! batch at once (the simulator's window of arrivals: the same outcome, the
//! sums folded together), or a securely aggregated sum.

use std::borrow::Cow;

use tessera_aggregate::AggregateError;
use tessera_core::{ParticipantId, Timestamp, Update};
use tessera_privacy::clip_to_norm;

use super::{OpenRound, Rejection, RoundEngine};

/// The open round, if `senders` may still deliver to round `round` at `now`.
pub(super) fn admit<'a>(
    open: &'a mut Option<OpenRound>,
    now: Timestamp,
    round: u32,
    senders: &[ParticipantId],
) -> Result<&'a mut OpenRound, Rejection> {
    let open_number = open.as_ref().map(|r| r.number);
    let Some(open) = open.as_mut().filter(|r| r.number == round) else {
        return Err(Rejection::WrongRound {
            got: round,
            open: open_number,
        });
    };
    for from in senders {
        if open.cohort.binary_search(from).is_err() {
            return Err(Rejection::NotInCohort);
        }
        if !open.pending.contains(from) {
            return Err(Rejection::NotPending);
        }
    }
    if open.deadline.is_some_and(|d| now > d) {
        return Err(Rejection::Late);
    }
    Ok(open)
}

/// An admitted update as it counts: bounded, weighed and scaled as the plan
/// and the strategy say.
struct Prepared<'u> {
    update: Cow<'u, Update>,
    weight: f64,
    within_dp_norm: bool,
    /// The strategy's own verdict (IFCA refuses what it cannot count).
    counted: Result<(), AggregateError>,
}

impl RoundEngine {
    /// Delivers `from`'s update for `round`, received at `now`. An accepted
    /// update is in the round's aggregate when this returns.
    pub fn submit(
        &mut self,
        now: Timestamp,
        from: &ParticipantId,
        round: u32,
        update: &Update,
    ) -> Result<(), Rejection> {
        admit(&mut self.open, now, round, std::slice::from_ref(from))?;
        let prepared = self.prepare(from, update);
        let result = prepared.counted.clone().and_then(|()| {
            self.open_mut()?
                .accumulator
                .add(&prepared.update, prepared.weight)
        });
        self.record(from, &prepared, result)
    }

    /// Delivers a batch of updates for `round`, each with its sender and the
    /// time it was received, in that order: the same outcome, result by
    /// result, as [`RoundEngine::submit`] on each in turn, with the updates
    /// summed together ([`tessera_aggregate::UpdateAccumulator::add_many`]),
    /// which for a large model is several times faster.
    pub fn submit_many(
        &mut self,
        round: u32,
        batch: &[(Timestamp, &ParticipantId, &Update)],
    ) -> Vec<Result<(), Rejection>> {
        let mut admitted: Vec<Result<Prepared<'_>, Rejection>> = Vec::with_capacity(batch.len());
        for &(now, from, update) in batch {
            // Taking a sender off the pending list at once, as `submit` does
            // whatever the sum says, refuses a second update from it.
            let taken = admit(&mut self.open, now, round, std::slice::from_ref(from))
                .map(|open| open.pending.remove(from));
            admitted.push(taken.map(|_| self.prepare(from, update)));
        }
        let counted: Vec<(&Update, f64)> = admitted
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .filter(|p| p.counted.is_ok())
            .map(|p| (p.update.as_ref(), p.weight))
            .collect();
        let mut sums = match self.open_mut() {
            Ok(open) => open.accumulator.add_many(&counted),
            Err(e) => vec![Err(e); counted.len()],
        }
        .into_iter();
        let mut results = Vec::with_capacity(batch.len());
        for (admitted, &(_, from, _)) in admitted.iter().zip(batch) {
            results.push(match admitted {
                Err(rejection) => Err(rejection.clone()),
                Ok(prepared) => {
                    let result = match &prepared.counted {
                        Err(e) => Err(e.clone()),
                        Ok(()) => sums.next().unwrap_or(Err(AggregateError::Empty)),
                    };
                    self.record(from, prepared, result)
                }
            });
        }
        results
    }

    /// The open round's state, for the accumulator (admission found it).
    fn open_mut(&mut self) -> Result<&mut OpenRound, AggregateError> {
        self.open
            .as_mut()
            .ok_or_else(|| AggregateError::Rejected("no round is open".into()))
    }

    /// Central DP and norm bounding (the update counts clipped; with DP at
    /// weight 1, so one participant moves the sum by at most C), the weight,
    /// and the strategy's check and scaling (q-FFL's).
    fn prepare<'u>(&self, from: &ParticipantId, update: &'u Update) -> Prepared<'u> {
        let mut update = Cow::Borrowed(update);
        let mut within_dp_norm = true;
        let robust = self.strategy.robust();
        if self.dp.is_some() || robust.norm_bound.is_some() {
            let bounded = update.to_mut();
            if let Some((dp, _)) = &self.dp {
                within_dp_norm = dp.clip(&mut bounded.delta);
            }
            if let Some(bound) = robust.norm_bound {
                clip_to_norm(&mut bounded.delta, bound);
            }
        }
        let own = !(self.dp.is_some()
            || robust.rule.needs_all_updates()
            || self.config.weighting == crate::Weighting::Equal);
        let weight = if own {
            self.strategy.weight(&update)
        } else {
            1.0
        };
        let counted = self.strategy.check_update(from, &update);
        if let Some(scaled) = own.then(|| self.strategy.scaled(&update)).flatten() {
            update = Cow::Owned(scaled);
        }
        Prepared {
            update,
            weight,
            within_dp_norm,
            counted,
        }
    }

    /// Records what became of an admitted update.
    fn record(
        &mut self,
        from: &ParticipantId,
        prepared: &Prepared<'_>,
        result: Result<(), AggregateError>,
    ) -> Result<(), Rejection> {
        let needs_all = self.strategy.robust().rule.needs_all_updates();
        let Some(open) = self.open.as_mut() else {
            return Err(Rejection::Invalid("no round is open".into()));
        };
        open.pending.remove(from);
        match result {
            Ok(()) => {
                open.accepted.push(from.clone());
                if needs_all {
                    open.collected.push(prepared.update.delta.clone());
                }
                open.unclipped += u64::from(prepared.within_dp_norm);
                Ok(())
            }
            Err(e) => {
                let reason = e.to_string();
                open.rejected.push((from.clone(), reason.clone()));
                Err(Rejection::Invalid(reason))
            }
        }
    }

    /// Secure aggregation: delivers the sum of `contributors`' updates for
    /// `round`, which is all the coordinator learns of them. Each counts with
    /// weight 1 (the round's aggregate is their plain mean); clipping to the
    /// DP norm or the norm bound is each participant's own, before masking.
    pub fn submit_sum(
        &mut self,
        now: Timestamp,
        round: u32,
        contributors: &[ParticipantId],
        sum: &Update,
    ) -> Result<(), Rejection> {
        let open = admit(&mut self.open, now, round, contributors)?;
        match open.accumulator.add_sum(sum, contributors.len() as u64) {
            Ok(()) => {
                for from in contributors {
                    open.pending.remove(from);
                    open.accepted.push(from.clone());
                }
                open.unclipped += contributors.len() as u64;
                Ok(())
            }
            Err(e) => {
                let reason = format!("the securely aggregated sum: {e}");
                for from in contributors {
                    open.pending.remove(from);
                    open.rejected.push((from.clone(), reason.clone()));
                }
                Err(Rejection::Invalid(reason))
            }
        }
    }
}
