//! The streaming accumulator of a round's updates.

use tessera_core::{ParameterSet, Update};

use crate::{AggregateError, ExactSum};

/// Sums a round's updates as they arrive: memory is one exact sum the size of
/// the model (two with an auxiliary sum), whatever the number of updates.
/// Each update is validated (layout, finiteness, range) before it counts; a
/// rejected update leaves the accumulator as it was.
#[derive(Debug, Clone)]
pub struct UpdateAccumulator {
    layout: ParameterSet,
    delta: ExactSum,
    /// The auxiliary sum's name and value.
    aux: Option<(&'static str, ExactSum)>,
    /// [weight sum, weighted train-loss sum]
    totals: ExactSum,
    n_updates: u64,
    n_examples: u64,
}

/// A round's aggregate, what a strategy turns into new global parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundAggregate {
    /// `Σ w_k Δ_k / Σ w_k`.
    pub mean_delta: ParameterSet,
    /// The strategy's auxiliary sum over the federation, `Σ a_k / N` with N
    /// the number of participants (SCAFFOLD's control step).
    pub aux_step: Option<ParameterSet>,
    /// Updates summed.
    pub n_updates: u64,
    /// The federation's size N when the round closed (participants
    /// registered, whether or not in the round's cohort).
    pub n_participants: u64,
    /// Examples behind them.
    pub n_examples: u64,
    /// `Σ w_k`.
    pub weight_sum: f64,
    /// Weighted mean of the participants' mean training losses.
    pub mean_train_loss: f64,
}

/// The sums refuse NaN and infinities as out of range; names them properly.
fn named(e: AggregateError, values: &ParameterSet) -> AggregateError {
    match values.check_finite() {
        Err(non_finite) => AggregateError::Layout(non_finite),
        Ok(()) => e,
    }
}

impl UpdateAccumulator {
    /// An empty accumulator for updates shaped like `global`; `with_control`
    /// when updates carry the strategy's auxiliary sum ([`crate::Strategy::aux_sum`]).
    pub fn new(global: &ParameterSet, aux: Option<&'static str>) -> Self {
        let n = global.n_values();
        Self {
            layout: global.zeros_like(),
            delta: ExactSum::new(n),
            aux: aux.map(|name| (name, ExactSum::new(n))),
            totals: ExactSum::new(2),
            n_updates: 0,
            n_examples: 0,
        }
    }

    /// Number of updates summed so far.
    pub fn n_updates(&self) -> u64 {
        self.n_updates
    }

    /// Adds `update` with `weight`; on error nothing changes.
    pub fn add(&mut self, update: &Update, weight: f64) -> Result<(), AggregateError> {
        self.add_normalized(update, weight, weight)
    }

    /// Adds `weight * update` to the sum and `normalizer` to the divisor of
    /// the mean: FedBuff's staleness discount keeps the example count as the
    /// normaliser, so a stale update counts less in absolute terms. On error
    /// nothing changes.
    pub fn add_normalized(
        &mut self,
        update: &Update,
        weight: f64,
        normalizer: f64,
    ) -> Result<(), AggregateError> {
        let (totals, n_examples) =
            self.admit(&self.totals, self.n_examples, update, weight, normalizer)?;
        self.delta
            .add(&update.delta, weight)
            .map_err(|e| named(e, &update.delta))?;
        if let (Some((_, sum)), Some(aux)) = (self.aux.as_mut(), &update.aux) {
            // A refused auxiliary sum adds nothing; the change is taken out
            // again, exactly.
            if let Err(e) = sum.add(aux, 1.0) {
                self.delta.remove(&update.delta, weight);
                return Err(named(e, aux));
            }
        }
        self.totals = totals;
        self.n_updates += 1;
        self.n_examples = n_examples;
        Ok(())
    }

    /// Adds a batch of updates, each with its weight: the same sums and the
    /// same refusals, update by update, as [`UpdateAccumulator::add`] on each
    /// in turn, several times faster for a large model (see
    /// [`ExactSum::add_many`]).
    pub fn add_many(&mut self, batch: &[(&Update, f64)]) -> Vec<Result<(), AggregateError>> {
        if self.aux.is_some() {
            return batch.iter().map(|(u, w)| self.add(u, *w)).collect();
        }
        // Only updates admitted against the state before the batch can
        // count: the totals and counts only grow, so a check that fails
        // there fails after any update is taken. Their changes are summed
        // together...
        let candidates: Vec<bool> = batch
            .iter()
            .map(|&(u, w)| self.admit(&self.totals, self.n_examples, u, w, w).is_ok())
            .collect();
        let changes: Vec<(&ParameterSet, f64)> = batch
            .iter()
            .zip(&candidates)
            .filter(|&(_, &c)| c)
            .map(|(&(u, w), _)| (&u.delta, w))
            .collect();
        let mut summed = self.delta.add_many(&changes).into_iter();
        // ...then each is decided in turn as `add` decides it, against the
        // state so far; a change summed for an update refused there is taken
        // out again.
        let mut results = Vec::with_capacity(batch.len());
        for (&(update, weight), &candidate) in batch.iter().zip(&candidates) {
            let sum = if candidate { summed.next() } else { None };
            let admitted = self.admit(&self.totals, self.n_examples, update, weight, weight);
            results.push(match (admitted, sum) {
                (Err(e), Some(Ok(()))) => {
                    self.delta.remove(&update.delta, weight);
                    Err(e)
                }
                (Err(e), _) => Err(e),
                (Ok(_), Some(Err(e))) => Err(named(e, &update.delta)),
                (Ok((totals, n_examples)), Some(Ok(()))) => {
                    self.totals = totals;
                    self.n_examples = n_examples;
                    self.n_updates += 1;
                    Ok(())
                }
                // Not admitted before the batch but now: cannot happen (see
                // above); if it did, adding it alone is still right.
                (Ok(_), None) => self.add(update, weight),
            });
        }
        results
    }

    /// Checks what does not depend on the values' range and returns
    /// `totals` and `n_examples` with the update taken.
    fn admit(
        &self,
        totals: &ExactSum,
        n_examples: u64,
        update: &Update,
        weight: f64,
        normalizer: f64,
    ) -> Result<(ExactSum, u64), AggregateError> {
        for w in [weight, normalizer] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(AggregateError::BadWeight(w));
            }
        }
        self.layout.check_same_layout(&update.delta)?;
        match (&self.aux, &update.aux) {
            (Some((name, _)), None) => {
                return Err(AggregateError::Rejected(format!(
                    "the strategy needs the update's {name}"
                )));
            }
            (None, Some(_)) => {
                return Err(AggregateError::Rejected(
                    "an auxiliary sum the strategy did not ask for".into(),
                ));
            }
            (Some(_), Some(aux)) => self.layout.check_same_layout(aux)?,
            (None, None) => {}
        }
        let loss = update.stats.mean_train_loss;
        if !loss.is_finite() {
            return Err(AggregateError::Rejected(format!(
                "training loss {loss} is not finite"
            )));
        }
        if update.n_examples == 0 {
            return Err(AggregateError::Rejected(
                "the update reports no training examples".into(),
            ));
        }
        let n_examples = n_examples
            .checked_add(update.n_examples)
            .ok_or(AggregateError::Overflow)?;
        let mut totals = totals.clone();
        totals.add_one(0, normalizer)?;
        totals.add_one(1, normalizer * loss)?;
        Ok((totals, n_examples))
    }

    /// Adds the sum of `count` updates, each of weight 1, known only as their
    /// sum (secure aggregation). On error nothing changes.
    pub fn add_sum(&mut self, sum: &Update, count: u64) -> Result<(), AggregateError> {
        if count == 0 {
            return Err(AggregateError::Empty);
        }
        self.add_normalized(sum, 1.0, count as f64)?;
        self.n_updates += count - 1;
        Ok(())
    }

    /// Adds a partial accumulator (from another thread) of the same round.
    pub fn merge(&mut self, other: &UpdateAccumulator) -> Result<(), AggregateError> {
        self.layout.check_same_layout(&other.layout)?;
        let mut merged = self.clone();
        merged.delta.merge(&other.delta)?;
        match (merged.aux.as_mut(), &other.aux) {
            (Some((a_name, a)), Some((b_name, b))) if a_name == b_name => a.merge(b)?,
            (None, None) => {}
            _ => {
                return Err(AggregateError::Rejected(
                    "merging accumulators of different auxiliary sums".into(),
                ));
            }
        }
        merged.totals.merge(&other.totals)?;
        merged.n_updates += other.n_updates;
        merged.n_examples += other.n_examples;
        *self = merged;
        Ok(())
    }

    /// The round's aggregate; `n_participants` is the federation's size (the
    /// auxiliary sum's N).
    pub fn finish(&self, n_participants: usize) -> Result<RoundAggregate, AggregateError> {
        let weight_sum = self.totals.value(0);
        if self.n_updates == 0 || weight_sum <= 0.0 {
            return Err(AggregateError::Empty);
        }
        let mean_delta = self.layout.with_values(&self.delta.quotient(weight_sum))?;
        let aux_step = match &self.aux {
            Some((_, sum)) => Some(
                self.layout
                    .with_values(&sum.quotient(n_participants.max(1) as f64))?,
            ),
            None => None,
        };
        Ok(RoundAggregate {
            mean_delta,
            aux_step,
            n_updates: self.n_updates,
            n_participants: n_participants as u64,
            n_examples: self.n_examples,
            weight_sum,
            mean_train_loss: self.totals.value(1) / weight_sum,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::{FitStats, Tensor};

    fn update(values: &[f32], n: u64) -> Update {
        let mut delta = ParameterSet::new();
        delta
            .push(
                "w",
                Tensor::new(vec![values.len()], values.to_vec()).unwrap(),
            )
            .unwrap();
        Update {
            delta,
            n_examples: n,
            aux: None,
            stats: FitStats {
                n_steps: 1,
                mean_train_loss: 0.5,
                start_loss: None,
            },
        }
    }

    #[test]
    fn weighted_mean_and_rejections() {
        let global = update(&[0.0, 0.0], 0).delta;
        let mut acc = UpdateAccumulator::new(&global, None);
        acc.add(&update(&[1.0, 2.0], 10), 10.0).unwrap();
        acc.add(&update(&[4.0, -1.0], 30), 30.0).unwrap();
        let before = acc.clone();
        // Wrong shape, non-finite, bad weight, unexpected control: all refused, nothing changes.
        assert!(acc.add(&update(&[1.0], 5), 5.0).is_err());
        assert!(acc.add(&update(&[f32::NAN, 0.0], 5), 5.0).is_err());
        assert!(acc.add(&update(&[1.0, 1.0], 5), -1.0).is_err());
        let mut with_control = update(&[1.0, 1.0], 5);
        with_control.aux = Some(global.clone());
        assert!(acc.add(&with_control, 5.0).is_err());
        assert!(
            acc.add(&update(&[1.0, 1.0], 0), 0.0).is_err(),
            "no examples"
        );
        let mut bad_control = UpdateAccumulator::new(&global, Some("control-variate change"));
        let mut u = update(&[1.0, 1.0], 5);
        u.aux = Some(update(&[f32::INFINITY, 0.0], 0).delta);
        let clean = bad_control.clone();
        assert!(
            bad_control
                .add(&u, 5.0)
                .unwrap_err()
                .to_string()
                .contains("non-finite")
        );
        assert_eq!(bad_control.n_updates(), clean.n_updates());
        assert!(matches!(bad_control.finish(1), Err(AggregateError::Empty)));
        assert_eq!(acc.n_updates(), before.n_updates());
        let round = acc.finish(2).unwrap();
        assert_eq!(round.mean_delta.values().collect::<Vec<_>>(), [3.25, -0.25]);
        assert_eq!(round.n_examples, 40);
        assert_eq!(round.mean_train_loss, 0.5);
        assert!(matches!(
            UpdateAccumulator::new(&global, None).finish(1),
            Err(AggregateError::Empty)
        ));
    }

    #[test]
    fn a_batch_is_the_same_as_adding_one_at_a_time() {
        let n = 5000;
        let values = |k: usize, scale: f32| -> Vec<f32> {
            (0..n)
                .map(|j| (((j * 7 + k * 13) % 101) as f32 - 50.0) * scale)
                .collect()
        };
        let mut far = values(3, 1e-2);
        far[4321] = 3e38;
        let mut nan = values(4, 1e-2);
        nan[17] = f32::NAN;
        let batch_updates = [
            update(&values(0, 1e-3), 40),
            update(&values(1, 1e4), 7),
            update(&far, 9),
            update(&nan, 3),
            update(&values(5, 1e-2), 0),
            update(&values(6, 1e-2)[..10], 5),
            update(&values(7, 0.5), 1200),
        ];
        let global = batch_updates[0].delta.zeros_like();
        let weights = [40.0, 7.0, 9.0, 3.0, 0.0, 5.0, 1200.0];
        let mut batch: Vec<(&Update, f64)> = batch_updates.iter().zip(weights).collect();
        batch.insert(6, (&batch_updates[0], -1.0));
        let mut one_by_one = UpdateAccumulator::new(&global, None);
        one_by_one.add(&batch_updates[6], 2.0).unwrap();
        let mut at_once = one_by_one.clone();
        let expected: Vec<_> = batch.iter().map(|(u, w)| one_by_one.add(u, *w)).collect();
        let got = at_once.add_many(&batch);
        assert_eq!(got, expected);
        assert_eq!(
            got.iter().map(Result::is_ok).collect::<Vec<_>>(),
            [true, true, false, false, false, false, false, true]
        );
        assert_eq!(at_once.delta, one_by_one.delta);
        assert_eq!(at_once.totals, one_by_one.totals);
        assert_eq!(at_once.finish(9).unwrap(), one_by_one.finish(9).unwrap());

        // A refused update's example count must not crowd out the next one's.
        let mut poisoned = update(&[f32::NAN, 0.0], 1 << 63);
        poisoned.stats.mean_train_loss = 0.0;
        let honest = update(&[0.0, 1.0], 1 << 63);
        let global = honest.delta.zeros_like();
        let mut one_by_one = UpdateAccumulator::new(&global, None);
        let mut at_once = one_by_one.clone();
        let batch = [(&poisoned, 1.0), (&honest, 1.0), (&honest, 1.0)];
        let expected: Vec<_> = batch.iter().map(|(u, w)| one_by_one.add(u, *w)).collect();
        let got = at_once.add_many(&batch);
        assert_eq!(got, expected);
        assert_eq!(
            got.iter().map(Result::is_ok).collect::<Vec<_>>(),
            [false, true, false]
        );
        assert!(matches!(got[2], Err(AggregateError::Overflow)));
        assert_eq!(at_once.delta, one_by_one.delta);
        assert_eq!(at_once.n_examples, one_by_one.n_examples);
    }

    #[test]
    fn auxiliary_sums_sum_over_the_federation() {
        let global = update(&[0.0], 0).delta;
        let mut acc = UpdateAccumulator::new(&global, Some("control-variate change"));
        let mut a = update(&[1.0], 1);
        a.aux = Some(update(&[2.0], 0).delta);
        let mut b = update(&[3.0], 3);
        b.aux = Some(update(&[4.0], 0).delta);
        acc.add(&a, 1.0).unwrap();
        // Partial sums from two threads merge to the same result.
        let mut other = UpdateAccumulator::new(&global, Some("control-variate change"));
        other.add(&b, 3.0).unwrap();
        acc.merge(&other).unwrap();
        assert!(
            acc.add(&update(&[1.0], 1), 1.0).is_err(),
            "the strategy needs the auxiliary sum"
        );
        let round = acc.finish(4).unwrap();
        assert_eq!(round.mean_delta.values().collect::<Vec<_>>(), [2.5]);
        assert_eq!(round.aux_step.unwrap().values().collect::<Vec<_>>(), [1.5]);
    }
}
