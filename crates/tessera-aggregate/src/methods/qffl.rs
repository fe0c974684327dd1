//! q-FFL (Li, Sanjabi, Beirami and Smith 2020, "Fair Resource Allocation in
//! Federated Learning"), as q-FedAvg: the server part and the local part.
//!
//! q-FFL minimises `Σ_k p_k F_k^(q+1) / (q+1)`, which for `q > 0` gives the
//! sites where the model does worst more say, trading some average accuracy
//! for a better worst site; `q = 0` is FedAvg. q-FedAvg's step, with `L` the
//! Lipschitz estimate (the paper's 1 / the sites' learning rate suits one
//! local step; the plan sets it, as it damps the step), `F_k` the loss of the
//! round's model on site `k`'s training rows and `Δ_k` its change:
//! `w ← w + L Σ_k p_k F_k^q Δ_k / Σ_k p_k h_k`, where
//! `h_k = q F_k^(q-1) L² ||Δ_k||² + L F_k^q`.
//!
//! It is the engine's weighted mean of the changes, each scaled first: with
//! weight `n_k F_k^(q-1) (F_k + q L ||Δ_k||²)` and scale
//! `F_k / (F_k + q L ||Δ_k||²)`, weight times scale is `n_k F_k^q` and the
//! weights add up to `Σ_k n_k h_k / L`. The server therefore needs each
//! site's own change and loss: no secure aggregation, no central DP, no
//! robust rule but the mean (the plan's rules refuse them).
//!
//! The sum is exact fixed point, whose range is bounded at both ends, and
//! `F^q` spans many orders of magnitude; so every weight is divided by
//! `R^q`, `R` the last round's mean training loss (1 before the first
//! round), which cancels in the mean, and an update whose weight still
//! falls outside [`WEIGHTS`] is refused, naming why. A start loss below
//! `R / 1000` counts as `R / 1000`.
//!
//! `F_k` is a number the site reports: it is bounded ([`MAX_START_LOSS`]),
//! but a site that overstates it gains up to `(27.64 / F)^q` times the
//! weight of an honest one of loss `F` (8,500 times at q = 2 against a loss
//! of 0.3), far more than one that overstates its rows gains under FedAvg;
//! q-FFL trusts its sites' losses.

use tessera_core::{LocalModel, ParameterSet, ParticipantId, Update};

use super::fedavg::moved;
use crate::local::{LocalAlgorithm, LocalFit, PlainLocal, mismatch};
use crate::{AggregateError, Attendance, Instructions, Needs, RoundAggregate, Strategy};

/// The largest `q` a plan may set: the weights grow as `F^q`, and the
/// paper's own runs use at most 15 for tuning and 5 for its results.
pub const MAX_Q: f32 = 10.0;

/// The largest start loss an update may report: a row's cross-entropy
/// when its class is given probability 1e-12 (`-ln 1e-12`), the bound the
/// coordinator holds evaluations to.
pub const MAX_START_LOSS: f64 = 27.64;

/// The range an update's weight must fall in: outside it the round's
/// exact sum would lose it (below) or could not hold it (above).
pub const WEIGHTS: std::ops::RangeInclusive<f64> = 1e-9..=1e12;

/// The smallest start loss counted, as a share of the reference loss.
const LOSS_FLOOR: f64 = 1e-3;

/// q-FFL's server part.
#[derive(Debug, Clone)]
pub struct Qffl {
    /// Fairness: 0 is FedAvg, larger gives high-loss sites more weight.
    pub q: f32,
    /// The Lipschitz estimate `L`: larger damps the step.
    pub lipschitz: f32,
    /// `R`: the last round's mean training loss (1 before the first).
    reference: f64,
}

impl Qffl {
    /// What q-FFL needs from the plan: the start loss of each update, in
    /// step with the round's model (synchronous rounds), reaching the
    /// flat topology's coordinator one update at a time.
    pub const NEEDS: Needs = Needs {
        sync_rounds: true,
        plain_sgd: false,
        clear_aux_sum: None,
        flat_only: true,
        server_copies: 0,
        site_copies: 0,
        personal: false,
        meta_steps: false,
    };

    /// q-FFL with fairness `q` and Lipschitz estimate `lipschitz`.
    pub fn new(q: f32, lipschitz: f32) -> Self {
        Self {
            q,
            lipschitz,
            reference: 1.0,
        }
    }

    /// `(weight, scale)` for an update: see the module's documentation.
    /// An update without a start loss gets `(0, 1)`; `check_update` has
    /// refused it before it could count.
    fn factors(&self, update: &Update) -> (f64, f64) {
        let n = update.n_examples as f64;
        if self.q == 0.0 {
            // FedAvg, bit for bit.
            return (n, 1.0);
        }
        let Some(loss) = update.stats.start_loss else {
            return (0.0, 1.0);
        };
        // In units of the reference: r = F / R, and the stretch
        // (F + q L ||Δ||²) / R; the weight is n F^(q-1) (F + q L ||Δ||²) / R^q.
        let r = (loss / self.reference).max(LOSS_FLOOR);
        let q = f64::from(self.q);
        let norm = update.delta.l2_norm();
        let stretch = r + q * f64::from(self.lipschitz) * norm * norm / self.reference;
        (n * r.powf(q - 1.0) * stretch, r / stretch)
    }
}

impl Strategy for Qffl {
    fn name(&self) -> &'static str {
        "qffl"
    }

    fn configure_fit(&self, _global: &ParameterSet, _site: &ParticipantId) -> Instructions {
        Instructions::Qffl { q: self.q }
    }

    fn weight(&self, update: &Update) -> f64 {
        self.factors(update).0
    }

    fn scale(&self, update: &Update) -> f64 {
        self.factors(update).1
    }

    fn check_update(&self, _from: &ParticipantId, update: &Update) -> Result<(), AggregateError> {
        match update.stats.start_loss {
            None => Err(AggregateError::Config(
                "qffl: the update carries no start loss (the loss of the round's model on the \
                 site's rows, which q-FFL weighs it by)"
                    .into(),
            )),
            Some(loss) if !(loss.is_finite() && (0.0..=MAX_START_LOSS).contains(&loss)) => {
                Err(AggregateError::Config(format!(
                    "qffl: the update's start loss {loss:e} is outside [0, {MAX_START_LOSS}]"
                )))
            }
            Some(loss) => {
                let (weight, _) = self.factors(update);
                if WEIGHTS.contains(&weight) {
                    Ok(())
                } else {
                    Err(AggregateError::Config(format!(
                        "qffl: the update's weight {weight:e} (start loss {loss:.4} against the \
                         last round's mean training loss {:.4}, q {}) is outside the [{:e}, \
                         {:e}] the round's exact sum holds; a smaller q narrows the weights",
                        self.reference,
                        self.q,
                        WEIGHTS.start(),
                        WEIGHTS.end()
                    )))
                }
            }
        }
    }

    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        _attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        let next = moved(global, &round.mean_delta, 1.0)?;
        next.check_finite()?;
        let loss = round.mean_train_loss;
        if loss.is_finite() && loss > 0.0 {
            self.reference = loss.clamp(1e-6, MAX_START_LOSS);
        }
        Ok(next)
    }
}

/// q-FFL's local part: plain local training, with the loss of the round's
/// model on the site's training rows measured first and reported beside
/// the change.
#[derive(Debug, Clone, Copy, Default)]
pub struct QfflLocal;

impl LocalAlgorithm for QfflLocal {
    fn fit(
        &mut self,
        instructions: &Instructions,
        global: &ParameterSet,
        model: &mut dyn LocalModel,
    ) -> Result<LocalFit, AggregateError> {
        if !matches!(instructions, Instructions::Qffl { .. }) {
            return Err(mismatch("qffl", instructions));
        }
        let start = model.loss(global)?;
        let mut fit = PlainLocal.fit(instructions, global, model)?;
        fit.stats.start_loss = Some(start);
        Ok(fit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UpdateAccumulator;
    use crate::methods::testing::{NONE_FAILED, Toward, set, values};
    use tessera_core::FitStats;

    fn update(delta: &[f32], n: u64, loss: Option<f64>) -> Update {
        Update {
            delta: set(delta),
            n_examples: n,
            aux: None,
            stats: FitStats {
                start_loss: loss,
                n_steps: 1,
                mean_train_loss: 0.37,
            },
        }
    }

    /// The round's new model through the engine's path: each change scaled,
    /// then the weighted mean.
    fn step(s: &mut Qffl, global: &ParameterSet, updates: &[Update]) -> Vec<f32> {
        let mut acc = UpdateAccumulator::new(global, None);
        for u in updates {
            s.check_update(&ParticipantId::new("s"), u).unwrap();
            let scaled = s.scaled(u);
            acc.add(scaled.as_ref().unwrap_or(u), s.weight(u)).unwrap();
        }
        let round = acc.finish(updates.len()).unwrap();
        values(&s.aggregate_fit(global, &round, &NONE_FAILED).unwrap())
    }

    #[test]
    fn the_step_is_q_fedavgs_as_the_paper_writes_it() {
        let global = set(&[1.0, -2.0]);
        let updates = [
            update(&[0.3, -0.1], 40, Some(0.9)),
            update(&[-0.2, 0.05], 10, Some(2.5)),
            update(&[0.01, 0.4], 25, Some(0.1)),
        ];
        for (q, lipschitz, pass) in [(1.0f32, 10.0f32), (5.0, 4.0), (0.5, 100.0)]
            .into_iter()
            .flat_map(|(q, l)| [(q, l, 0), (q, l, 1)])
        {
            // The second pass weighs against the first round's mean
            // training loss (0.37), which must cancel.
            let mut s = Qffl::new(q, lipschitz);
            if pass == 1 {
                step(&mut s, &global, &updates);
                assert!((s.reference - 0.37).abs() < 1e-12, "{}", s.reference);
            }
            let got = step(&mut s, &global, &updates);
            // The paper's Algorithm 2, with the grads as q-FedAvg's code
            // forms them: Δw_k = L (w - w̄_k) = -L Δ_k, and p_k = n_k / n.
            let (l, q) = (f64::from(lipschitz), f64::from(q));
            let mut num = [0.0f64; 2];
            let mut den = 0.0f64;
            for u in &updates {
                let f = u.stats.start_loss.unwrap();
                let p = u.n_examples as f64;
                let dw: Vec<f64> = u.delta.values().map(|d| -l * f64::from(d)).collect();
                let sq: f64 = dw.iter().map(|x| x * x).sum();
                for (n, x) in num.iter_mut().zip(&dw) {
                    *n += p * f.powf(q) * x;
                }
                den += p * (q * f.powf(q - 1.0) * sq + l * f.powf(q));
            }
            let want: Vec<f64> = global
                .values()
                .zip(num)
                .map(|(w, n)| f64::from(w) - n / den)
                .collect();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (f64::from(*g) - w).abs() < 1e-6,
                    "q {q}: {got:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn q_zero_is_fedavg_bit_for_bit() {
        let global = set(&[0.5, 0.25]);
        let updates = [
            update(&[0.3, -0.1], 40, Some(0.9)),
            update(&[-0.2, 0.05], 10, Some(2.5)),
        ];
        let got = step(&mut Qffl::new(0.0, 10.0), &global, &updates);
        let mut acc = UpdateAccumulator::new(&global, None);
        for u in &updates {
            acc.add(u, u.n_examples as f64).unwrap();
        }
        let mut fedavg = crate::FedAvg { server_lr: 1.0 };
        let round = acc.finish(2).unwrap();
        let want = values(&fedavg.aggregate_fit(&global, &round, &NONE_FAILED).unwrap());
        assert_eq!(got, want);
    }

    #[test]
    fn a_high_loss_site_pulls_harder_as_q_grows() {
        // Two sites pulling opposite ways with equal rows; the second's
        // loss is four times the first's.
        let global = set(&[0.0]);
        let updates = [
            update(&[1.0], 10, Some(0.5)),
            update(&[-1.0], 10, Some(2.0)),
        ];
        let moves: Vec<f32> = [0.0f32, 1.0, 5.0]
            .iter()
            .map(|&q| step(&mut Qffl::new(q, 0.1), &global, &updates)[0])
            .collect();
        assert!(moves[0].abs() < 1e-6, "{moves:?}");
        assert!(moves[1] < -0.1 && moves[2] < moves[1], "{moves:?}");
    }

    #[test]
    fn reported_start_losses_are_bounded() {
        let s = Qffl::new(1.0, 10.0);
        let from = ParticipantId::new("s");
        for bad in [
            None,
            Some(f64::NAN),
            Some(-0.1),
            Some(28.0),
            Some(f64::INFINITY),
        ] {
            let err = s.check_update(&from, &update(&[0.1], 5, bad)).unwrap_err();
            assert!(err.to_string().contains("start loss"), "{err}");
        }
        assert!(s.check_update(&from, &update(&[0.1], 5, Some(0.0))).is_ok());
        // Weights the exact sum would lose or could not hold, named.
        let steep = Qffl::new(10.0, 10.0);
        for loss in [27.0, 1e-3] {
            let err = steep
                .check_update(&from, &update(&[0.1], 10, Some(loss)))
                .unwrap_err();
            assert!(err.to_string().contains("a smaller q"), "{err}");
        }
        assert!(
            steep
                .check_update(&from, &update(&[0.1], 10, Some(2.0)))
                .is_ok()
        );
        assert!(
            s.check_update(&from, &update(&[0.1], 5, Some(MAX_START_LOSS)))
                .is_ok()
        );
    }

    #[test]
    fn the_local_part_reports_the_rounds_loss_before_training() {
        let global = set(&[1.0, 1.0]);
        let mut model = Toward {
            w: set(&[0.0, 0.0]),
            target: vec![3.0, 1.0],
        };
        let fit = QfflLocal
            .fit(&Instructions::Qffl { q: 1.0 }, &global, &mut model)
            .unwrap();
        assert_eq!(fit.stats.start_loss, Some(4.0));
        assert_eq!(values(&fit.delta), [1.0, 0.0]);
        assert!(
            QfflLocal
                .fit(&Instructions::Plain, &global, &mut model)
                .is_err()
        );
    }
}
