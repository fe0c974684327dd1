//! APFL (Deng, Kamani, Mahdavi 2020, "Adaptive Personalized Federated
//! Learning"): each site keeps a personal model `v` and a mixing weight
//! `alpha` of its own, and its personalized model is `alpha v + (1 - alpha)
//! w`, `w` the global model. The global model trains as FedAvg's (the
//! update is plain local training from `w`, so the global model is FedAvg's
//! bit for bit); `v` is trained through the mixture, and `alpha` learned
//! along the loss gradient. Neither `v` nor `alpha` leaves the site.
//!
//! Each round, in turn (the paper updates the three step by step; here
//! each is one of the plan's local trainings in a row):
//! 1. `w' =` local training from the global model (the update is `w' - w`);
//! 2. `v' = v - eta alpha grad f(alpha v + (1 - alpha) w')` over a local
//!    training: the mixture `m = alpha v + (1 - alpha) w'` is trained with
//!    its gradient scaled by `alpha^2`, and `v' = v + (m' - m) / alpha`,
//!    which under plain SGD without weight decay is exactly SGD on `v`
//!    (hence plain SGD, no weight decay: the plan's rules refuse others);
//! 3. `alpha' = alpha - eta <v' - w', grad f(alpha v' + (1 - alpha) w')>`,
//!    the gradient on the site's rows, kept within `[MIN_ALPHA, 1]`.

use tessera_core::{CoreError, GradientTerm, LocalModel, ParameterSet, ParticipantId};

use super::fedavg::moved;
use crate::local::{LocalAlgorithm, LocalFit, mismatch, put, take};
use crate::{AggregateError, Attendance, Instructions, Needs, RoundAggregate, Strategy};

/// The smallest mixing weight (`v` is recovered dividing by it).
pub const MIN_ALPHA: f32 = 0.01;

/// APFL's server part: FedAvg's average; every site gets the initial
/// mixing weight, which it then learns for itself.
#[derive(Debug, Clone)]
pub struct Apfl {
    /// Each site's initial mixing weight.
    pub alpha: f32,
    /// Server learning rate.
    pub server_lr: f32,
}

impl Apfl {
    /// What APFL needs: a personal model per site (no local DP, flat
    /// synchronous rounds) and plain SGD (the mixture's training is exactly
    /// `v`'s only under it).
    pub const NEEDS: Needs = Needs {
        sync_rounds: true,
        plain_sgd: true,
        clear_aux_sum: None,
        flat_only: true,
        server_copies: 0,
        site_copies: 2,
        personal: true,
        meta_steps: false,
    };
}

impl Strategy for Apfl {
    fn name(&self) -> &'static str {
        "apfl"
    }

    fn configure_fit(&self, _global: &ParameterSet, _site: &ParticipantId) -> Instructions {
        Instructions::Apfl { alpha: self.alpha }
    }

    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        _attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        moved(global, &round.mean_delta, self.server_lr)
    }
}

/// A site's APFL state: its personal model and mixing weight.
#[derive(Debug, Clone, Default)]
pub struct ApflLocal {
    personal: Option<ParameterSet>,
    alpha: Option<f32>,
}

impl ApflLocal {
    /// The site's mixing weight (the initial one before its first round).
    pub fn alpha(&self) -> Option<f32> {
        self.alpha
    }
}

/// `alpha v + (1 - alpha) w`.
fn mix(v: &ParameterSet, w: &ParameterSet, alpha: f32) -> Result<ParameterSet, CoreError> {
    let mut mixed = w.clone();
    mixed.values_mut().for_each(|x| *x *= 1.0 - alpha);
    mixed.add_scaled(v, alpha)?;
    Ok(mixed)
}

/// Scales every gradient by `factor`.
#[derive(Debug)]
struct Scaled(f32);

impl GradientTerm for Scaled {
    fn check(&self, _parameters: &ParameterSet) -> Result<(), CoreError> {
        if self.0.is_finite() && self.0 > 0.0 {
            Ok(())
        } else {
            Err(CoreError::Invalid(format!(
                "apfl: gradient scale {} must be positive",
                self.0
            )))
        }
    }

    fn add(&self, grad: &mut ParameterSet, _parameters: &ParameterSet) {
        grad.values_mut().for_each(|g| *g *= self.0);
    }
}

impl LocalAlgorithm for ApflLocal {
    fn fit(
        &mut self,
        instructions: &Instructions,
        global: &ParameterSet,
        model: &mut dyn LocalModel,
    ) -> Result<LocalFit, AggregateError> {
        let Instructions::Apfl { alpha: initial } = instructions else {
            return Err(mismatch("apfl", instructions));
        };
        if !(initial.is_finite() && (MIN_ALPHA..=1.0).contains(initial)) {
            return Err(AggregateError::Config(format!(
                "apfl: the initial mixing weight {initial} is outside [{MIN_ALPHA}, 1]"
            )));
        }
        if let Some(v) = &self.personal {
            v.check_same_layout(global)?;
        }
        let alpha = self.alpha.unwrap_or(*initial);
        // 1. The global model's local training: FedAvg's update.
        model.set_parameters(global)?;
        let stats = model.train(None)?;
        let w = model.parameters().clone();
        w.check_finite()?;
        let delta = w.sub(global)?;
        // 2. The personal model, through the mixture.
        let v = self.personal.clone().unwrap_or_else(|| global.clone());
        let mixed = mix(&v, &w, alpha)?;
        model.set_parameters(&mixed)?;
        model.train(Some(&Scaled(alpha * alpha)))?;
        let moved_by = model.parameters().sub(&mixed)?;
        let mut personal = v;
        personal.add_scaled(&moved_by, 1.0 / alpha)?;
        personal.check_finite()?;
        // 3. The mixing weight, along the loss gradient at the new mixture.
        model.set_parameters(&mix(&personal, &w, alpha)?)?;
        let g = model.gradient()?;
        let slope: f64 = personal
            .values()
            .zip(w.values())
            .zip(g.values())
            .map(|((v, w), g)| f64::from(v - w) * f64::from(g))
            .sum();
        let stepped = alpha - model.lr() * slope as f32;
        let next = if stepped.is_finite() {
            stepped.clamp(MIN_ALPHA, 1.0)
        } else {
            alpha
        };
        self.personal = Some(personal);
        self.alpha = Some(next);
        Ok(LocalFit {
            delta,
            aux: None,
            stats,
        })
    }

    fn personal(&self, global: &ParameterSet) -> Option<ParameterSet> {
        let v = self.personal.as_ref()?;
        mix(v, global, self.alpha?).ok()
    }

    fn saved(&self) -> Option<ParameterSet> {
        let mut saved = ParameterSet::new();
        put(&mut saved, "personal", self.personal.as_ref()?).ok()?;
        let alpha = tessera_core::Tensor::new(vec![1], vec![self.alpha?]).ok()?;
        saved.push("alpha", alpha).ok()?;
        Some(saved)
    }

    fn restore(&mut self, saved: &ParameterSet) -> Result<(), AggregateError> {
        let personal = take(saved, "personal")?;
        personal.check_finite()?;
        let alpha = match saved.get("alpha").map(|t| t.data()) {
            Some(&[a]) if a.is_finite() && (MIN_ALPHA..=1.0).contains(&a) => a,
            _ => {
                return Err(AggregateError::Config(
                    "apfl: the saved mixing weight is missing or outside [0.01, 1]".into(),
                ));
            }
        };
        self.personal = Some(personal);
        self.alpha = Some(alpha);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tessera_core::{FitStats, LocalDp, SeededRng, Tensor};

    use super::*;

    /// `f(theta) = 1/2 ||theta - t||^2`; one SGD step per training.
    struct Quadratic {
        w: ParameterSet,
        target: Vec<f32>,
        lr: f32,
    }

    impl Quadratic {
        fn grad(&self) -> ParameterSet {
            let mut g = self.w.clone();
            for (g, t) in g.values_mut().zip(&self.target) {
                *g -= t;
            }
            g
        }
    }

    impl LocalModel for Quadratic {
        fn parameters(&self) -> &ParameterSet {
            &self.w
        }
        fn set_parameters(&mut self, p: &ParameterSet) -> Result<(), CoreError> {
            self.w = p.clone();
            Ok(())
        }
        fn n_rows(&self) -> usize {
            1
        }
        fn lr(&self) -> f32 {
            self.lr
        }
        fn weight_decay(&self) -> f32 {
            0.0
        }
        fn train(&mut self, term: Option<&dyn GradientTerm>) -> Result<FitStats, CoreError> {
            let mut g = self.grad();
            if let Some(term) = term {
                term.check(&self.w)?;
                term.add(&mut g, &self.w);
            }
            self.w.add_scaled(&g, -self.lr)?;
            Ok(FitStats {
                n_steps: 1,
                mean_train_loss: 0.0,
                start_loss: None,
            })
        }
        fn gradient(&mut self) -> Result<ParameterSet, CoreError> {
            Ok(self.grad())
        }
        fn train_private(
            &mut self,
            _: Option<&dyn GradientTerm>,
            _: &LocalDp,
            _: &mut SeededRng,
        ) -> Result<FitStats, CoreError> {
            unreachable!()
        }
    }

    fn one(v: f32) -> ParameterSet {
        let mut p = ParameterSet::new();
        p.push("p", Tensor::new(vec![1], vec![v]).unwrap()).unwrap();
        p
    }

    fn value(p: &ParameterSet) -> f32 {
        p.values().next().unwrap()
    }

    /// Against the paper's updates, by hand: t = 2, eta = 0.5, alpha 0.5.
    #[test]
    fn a_round_is_the_papers_three_updates() {
        let mut model = Quadratic {
            w: one(0.0),
            target: vec![2.0],
            lr: 0.5,
        };
        let mut local = ApflLocal::default();
        let apfl = Instructions::Apfl { alpha: 0.5 };
        let fit = local.fit(&apfl, &one(0.0), &mut model).unwrap();
        // w' = 0 - 0.5 (0 - 2) = 1: FedAvg's update.
        assert_eq!(value(&fit.delta), 1.0);
        // v = 0 (the global model): m = 0.5; v' = 0 - 0.5 * 0.5 (0.5 - 2) = 0.375.
        let v = value(local.personal.as_ref().unwrap());
        assert!((v - 0.375).abs() < 1e-6, "{v}");
        // alpha' = 0.5 - 0.5 (0.375 - 1) (0.6875 - 2) = 0.08984375.
        let alpha = local.alpha().unwrap();
        assert!((alpha - 0.089_843_75).abs() < 1e-6, "{alpha}");
        // The personalized model mixes the site's v with the global model.
        let own = value(&local.personal(&one(4.0)).unwrap());
        assert!((own - (alpha * v + (1.0 - alpha) * 4.0)).abs() < 1e-6);

        let err = local
            .fit(&Instructions::Apfl { alpha: 0.0 }, &one(0.0), &mut model)
            .unwrap_err();
        assert!(err.to_string().contains("initial mixing weight"), "{err}");
        let err = local
            .fit(&Instructions::Plain, &one(0.0), &mut model)
            .unwrap_err();
        assert!(err.to_string().contains("apfl"), "{err}");
    }

    /// Its personal model and mixing weight survive a restart exactly.
    #[test]
    fn its_state_restored_goes_on_as_if_kept() {
        let apfl = Instructions::Apfl { alpha: 0.5 };
        let quadratic = || Quadratic {
            w: one(0.0),
            target: vec![2.0],
            lr: 0.5,
        };
        let mut kept = crate::LocalPart::default();
        kept.fit(&apfl, &one(0.0), &mut quadratic()).unwrap();
        let (name, saved) = kept.saved_state().unwrap();
        let mut restarted = crate::LocalPart::default();
        restarted.restore_state(name.to_string(), saved);
        let a = kept.fit(&apfl, &one(1.0), &mut quadratic()).unwrap();
        let b = restarted.fit(&apfl, &one(1.0), &mut quadratic()).unwrap();
        assert_eq!(a.delta, b.delta);
        assert_eq!(kept.personal(&one(3.0)), restarted.personal(&one(3.0)));
        let mut bad = crate::LocalPart::default();
        let mut state = ParameterSet::new();
        state
            .push("personal/p", Tensor::new(vec![1], vec![0.0]).unwrap())
            .unwrap();
        state
            .push("alpha", Tensor::new(vec![1], vec![7.0]).unwrap())
            .unwrap();
        bad.restore_state("apfl".into(), state);
        let err = bad.fit(&apfl, &one(0.0), &mut quadratic()).unwrap_err();
        assert!(err.to_string().contains("saved mixing weight"), "{err}");
    }
}
