//! The local parts of the personalized strategies: the model each site
//! keeps for itself. [`DittoLocal`] trains a personal model beside the
//! global update; [`FedPerLocal`] and [`FedRepLocal`] keep the model's head.
//! None sends any of its personal parameters: Ditto's update is the global
//! model's change alone, FedPer's and FedRep's carry zeros in place of the
//! head's change.

use tessera_core::{CoreError, GradientTerm, LocalModel, ParameterSet};

use super::fedprox_local::Proximal;
use super::personal::{head_mask, zero_head};
use crate::local::{LocalAlgorithm, LocalFit, mismatch, put, take};
use crate::{AggregateError, Instructions};

/// A site's Ditto state: its personal model, from its first round on.
#[derive(Debug, Clone, Default)]
pub struct DittoLocal {
    personal: Option<ParameterSet>,
}

impl LocalAlgorithm for DittoLocal {
    /// Trains the global model as FedAvg does (the update), then the
    /// personal model from where it was (the global model at the first
    /// round) with `lambda (v - w)` added to every gradient, `w` the
    /// round's global model. Both trainings follow the plan's local
    /// training settings.
    fn fit(
        &mut self,
        instructions: &Instructions,
        global: &ParameterSet,
        model: &mut dyn LocalModel,
    ) -> Result<LocalFit, AggregateError> {
        let Instructions::Ditto { lambda } = instructions else {
            return Err(mismatch("ditto", instructions));
        };
        model.set_parameters(global)?;
        let stats = model.train(None)?;
        let delta = model.parameters().sub(global)?;
        let start = match &self.personal {
            Some(personal) => personal,
            None => global,
        };
        model.set_parameters(start)?;
        let pull = Proximal {
            mu: *lambda,
            anchor: global,
        };
        model.train(Some(&pull))?;
        let personal = model.parameters().clone();
        personal.check_finite()?;
        self.personal = Some(personal);
        Ok(LocalFit {
            delta,
            aux: None,
            stats,
        })
    }

    fn personal(&self, _global: &ParameterSet) -> Option<ParameterSet> {
        self.personal.clone()
    }

    fn saved(&self) -> Option<ParameterSet> {
        let mut saved = ParameterSet::new();
        put(&mut saved, "personal", self.personal.as_ref()?).ok()?;
        Some(saved)
    }

    fn restore(&mut self, saved: &ParameterSet) -> Result<(), AggregateError> {
        let personal = take(saved, "personal")?;
        personal.check_finite()?;
        self.personal = Some(personal);
        Ok(())
    }
}

/// A site's FedPer state: its head (the model's last layers), from its
/// first round on.
#[derive(Debug, Clone, Default)]
pub struct FedPerLocal {
    /// The site's whole model after its last training; only the head's
    /// tensors are used.
    own: Option<ParameterSet>,
    /// Which tensors are the head, as the last instructions said.
    mask: Vec<bool>,
}

impl FedPerLocal {
    /// `global`'s body with the site's head (`global` itself before the
    /// first round).
    fn combined(&self, global: &ParameterSet, mask: &[bool]) -> ParameterSet {
        let mut start = global.clone();
        if let Some(own) = &self.own {
            for ((tensor, mine), &personal) in
                start.tensors_mut().iter_mut().zip(own.tensors()).zip(mask)
            {
                if personal {
                    tensor.data_mut().copy_from_slice(mine.data());
                }
            }
        }
        start
    }
}

impl LocalAlgorithm for FedPerLocal {
    /// Trains the global body with the site's own head, keeps the trained
    /// head, and sends the body's change with zeros for the head's.
    fn fit(
        &mut self,
        instructions: &Instructions,
        global: &ParameterSet,
        model: &mut dyn LocalModel,
    ) -> Result<LocalFit, AggregateError> {
        let Instructions::FedPer { head_layers } = instructions else {
            return Err(mismatch("fedper", instructions));
        };
        let mask = head_mask(global, *head_layers)?;
        if let Some(own) = &self.own {
            own.check_same_layout(global)?;
        }
        let start = self.combined(global, &mask);
        model.set_parameters(&start)?;
        let stats = model.train(None)?;
        let trained = model.parameters().clone();
        trained.check_finite()?;
        let mut delta = trained.sub(global)?;
        zero_head(&mut delta, &mask);
        self.own = Some(trained);
        self.mask = mask;
        Ok(LocalFit {
            delta,
            aux: None,
            stats,
        })
    }

    fn personal(&self, global: &ParameterSet) -> Option<ParameterSet> {
        let own = self.own.as_ref()?;
        own.check_same_layout(global).ok()?;
        Some(self.combined(global, &self.mask))
    }

    fn saved(&self) -> Option<ParameterSet> {
        let mut saved = ParameterSet::new();
        put(&mut saved, "own", self.own.as_ref()?).ok()?;
        let mask: Vec<f32> = self.mask.iter().map(|&m| f32::from(u8::from(m))).collect();
        let tensor = tessera_core::Tensor::new(vec![mask.len()], mask).ok()?;
        saved.push("head_mask", tensor).ok()?;
        Some(saved)
    }

    fn restore(&mut self, saved: &ParameterSet) -> Result<(), AggregateError> {
        let own = take(saved, "own")?;
        own.check_finite()?;
        let mask: Vec<bool> = saved
            .get("head_mask")
            .map(|t| t.data().iter().map(|&v| v != 0.0).collect())
            .unwrap_or_default();
        if mask.len() != own.n_tensors() {
            return Err(AggregateError::Config(format!(
                "the saved head mask has {} entries for {} tensors",
                mask.len(),
                own.n_tensors()
            )));
        }
        self.own = Some(own);
        self.mask = mask;
        Ok(())
    }
}

/// A site's FedRep state: its head, as FedPer keeps it.
#[derive(Debug, Clone, Default)]
pub struct FedRepLocal {
    split: FedPerLocal,
}

impl LocalAlgorithm for FedRepLocal {
    /// Trains the site's own head on the global body `head_passes` times
    /// with the body held still, then the body once with the trained head
    /// held still; keeps the head and sends the body's change with zeros
    /// for the head's.
    fn fit(
        &mut self,
        instructions: &Instructions,
        global: &ParameterSet,
        model: &mut dyn LocalModel,
    ) -> Result<LocalFit, AggregateError> {
        let Instructions::FedRep {
            head_layers,
            head_passes,
        } = instructions
        else {
            return Err(mismatch("fedrep", instructions));
        };
        let mask = head_mask(global, *head_layers)?;
        if let Some(own) = &self.split.own {
            own.check_same_layout(global)?;
        }
        let body: Vec<bool> = mask.iter().map(|&personal| !personal).collect();
        let weight_decay = model.weight_decay();
        model.set_parameters(&self.split.combined(global, &mask))?;
        for _ in 0..*head_passes {
            model.train(Some(&Held {
                mask: &body,
                weight_decay,
            }))?;
        }
        let stats = model.train(Some(&Held {
            mask: &mask,
            weight_decay,
        }))?;
        let trained = model.parameters().clone();
        trained.check_finite()?;
        let mut delta = trained.sub(global)?;
        zero_head(&mut delta, &mask);
        self.split.own = Some(trained);
        self.split.mask = mask;
        Ok(LocalFit {
            delta,
            aux: None,
            stats,
        })
    }

    fn personal(&self, global: &ParameterSet) -> Option<ParameterSet> {
        self.split.personal(global)
    }

    fn saved(&self) -> Option<ParameterSet> {
        self.split.saved()
    }

    fn restore(&mut self, saved: &ParameterSet) -> Result<(), AggregateError> {
        self.split.restore(saved)
    }
}

/// Holds the tensors `mask` marks where they are: their gradient becomes
/// `-weight_decay * w`, which the optimiser's own decay cancels exactly, so
/// that neither SGD (with or without momentum) nor Adam moves them.
#[derive(Debug)]
struct Held<'a> {
    mask: &'a [bool],
    weight_decay: f32,
}

impl GradientTerm for Held<'_> {
    fn check(&self, parameters: &ParameterSet) -> Result<(), CoreError> {
        if parameters.tensors().len() != self.mask.len() {
            return Err(CoreError::Invalid(format!(
                "fedrep: {} tensors to hold, the model has {}",
                self.mask.len(),
                parameters.tensors().len()
            )));
        }
        Ok(())
    }

    fn add(&self, grad: &mut ParameterSet, parameters: &ParameterSet) {
        for ((g, w), &held) in grad
            .tensors_mut()
            .iter_mut()
            .zip(parameters.tensors())
            .zip(self.mask)
        {
            if held {
                for (g, &w) in g.data_mut().iter_mut().zip(w.data()) {
                    *g = -self.weight_decay * w;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_core::{CoreError, FitStats, GradientTerm, LocalDp, SeededRng, Tensor};

    use super::*;
    use crate::PlainLocal;

    /// A site whose loss is `||w - target||² / 2` and whose training is one
    /// gradient step of size `lr`: what the local parts do can be worked
    /// out by hand.
    pub(super) struct Quadratic {
        w: ParameterSet,
        target: Vec<f32>,
        lr: f32,
        weight_decay: f32,
        trainings: usize,
        /// The parameters after each training.
        history: Vec<Vec<f32>>,
    }

    impl LocalModel for Quadratic {
        fn parameters(&self) -> &ParameterSet {
            &self.w
        }
        fn set_parameters(&mut self, p: &ParameterSet) -> Result<(), CoreError> {
            p.check_same_layout(&self.w)?;
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
            self.weight_decay
        }
        fn train(&mut self, term: Option<&dyn GradientTerm>) -> Result<FitStats, CoreError> {
            let values: Vec<f32> = self
                .w
                .values()
                .zip(&self.target)
                .map(|(w, t)| w - t)
                .collect();
            let mut grad = self.w.with_values(&values)?;
            if let Some(term) = term {
                term.check(&self.w)?;
                term.add(&mut grad, &self.w);
            }
            // SGD with weight decay, as tessera-learn's optimiser adds it.
            let wd = self.weight_decay;
            for (g, w) in grad.values_mut().zip(self.w.values()) {
                *g += wd * w;
            }
            self.w.add_scaled(&grad, -self.lr)?;
            self.trainings += 1;
            self.history.push(self.w.values().collect());
            Ok(FitStats {
                n_steps: 1,
                mean_train_loss: 0.0,
                start_loss: None,
            })
        }
        fn train_private(
            &mut self,
            _: Option<&dyn GradientTerm>,
            _: &LocalDp,
            _: &mut SeededRng,
        ) -> Result<FitStats, CoreError> {
            Err(CoreError::Invalid("not in these tests".into()))
        }
    }

    /// Layers `a` and `b`, one tensor of two values each.
    pub(super) fn two_layers(a: [f32; 2], b: [f32; 2]) -> ParameterSet {
        let mut p = ParameterSet::new();
        p.push("a.weight", Tensor::new(vec![2], a.to_vec()).unwrap())
            .unwrap();
        p.push("b.weight", Tensor::new(vec![2], b.to_vec()).unwrap())
            .unwrap();
        p
    }

    pub(super) fn site(target: [f32; 4]) -> Quadratic {
        Quadratic {
            w: two_layers([0.0; 2], [0.0; 2]),
            target: target.to_vec(),
            lr: 0.5,
            weight_decay: 0.0,
            trainings: 0,
            history: Vec::new(),
        }
    }

    fn values(p: &ParameterSet) -> Vec<f32> {
        p.values().collect()
    }

    #[test]
    fn dittos_update_is_fedavgs_and_its_personal_model_is_pulled_to_the_global_one() {
        let ditto = Instructions::Ditto { lambda: 1.0 };
        let mut local = DittoLocal::default();
        let mut model = site([1.0, 2.0, 3.0, 4.0]);
        let zero = two_layers([0.0; 2], [0.0; 2]);
        assert_eq!(local.personal(&zero), None);

        let fit = local.fit(&ditto, &zero, &mut model).unwrap();
        // The update is plain local training's, bit for bit.
        let plain = PlainLocal
            .fit(&Instructions::Plain, &zero, &mut site([1.0, 2.0, 3.0, 4.0]))
            .unwrap();
        assert_eq!(fit.delta, plain.delta);
        assert_eq!(values(&fit.delta), [0.5, 1.0, 1.5, 2.0]);
        assert_eq!(model.trainings, 2);
        // v = w at the first round: v - 0.5 ((v - t) + (v - w)) = t / 2.
        assert_eq!(
            values(&local.personal(&zero).unwrap()),
            [0.5, 1.0, 1.5, 2.0]
        );

        // Round 2 from the same global model: v = t/2 is where the loss's
        // pull to t and lambda's pull to w = 0 balance, so it stays.
        local.fit(&ditto, &zero, &mut model).unwrap();
        assert_eq!(
            values(&local.personal(&zero).unwrap()),
            [0.5, 1.0, 1.5, 2.0]
        );

        // With the global model at the target, both pulls agree.
        let at_target = two_layers([1.0, 2.0], [3.0, 4.0]);
        let fit = local.fit(&ditto, &at_target, &mut model).unwrap();
        assert_eq!(values(&fit.delta), [0.0; 4]);
        // v - 0.5 ((v - t) + (v - t)) = t.
        assert_eq!(
            values(&local.personal(&zero).unwrap()),
            [1.0, 2.0, 3.0, 4.0]
        );

        let err = local
            .fit(&Instructions::Plain, &zero, &mut model)
            .unwrap_err();
        assert!(err.to_string().contains("ditto"), "{err}");
    }

    #[test]
    fn fedpers_head_stays_at_the_site_and_its_update_carries_zeros_for_it() {
        let fedper = Instructions::FedPer { head_layers: 1 };
        let mut local = FedPerLocal::default();
        let mut model = site([1.0, 2.0, 3.0, 4.0]);
        let zero = two_layers([0.0; 2], [0.0; 2]);
        let fit = local.fit(&fedper, &zero, &mut model).unwrap();
        assert_eq!(values(&fit.delta), [0.5, 1.0, 0.0, 0.0]);
        assert_eq!(
            values(&local.personal(&zero).unwrap()),
            [0.0, 0.0, 1.5, 2.0]
        );

        // Whatever head the server sends is replaced by the site's own.
        let global = two_layers([0.5, 1.0], [9.0, -9.0]);
        let fit = local.fit(&fedper, &global, &mut model).unwrap();
        assert_eq!(values(&fit.delta), [0.25, 0.5, 0.0, 0.0]);
        assert_eq!(values(&model.w), [0.75, 1.5, 2.25, 3.0]);
        assert_eq!(
            values(&local.personal(&global).unwrap()),
            [0.5, 1.0, 2.25, 3.0]
        );

        // A model of one layer has no body to share.
        let err = local
            .fit(
                &Instructions::FedPer { head_layers: 2 },
                &global,
                &mut model,
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("must leave a shared body"),
            "{err}"
        );
    }

    #[test]
    fn fedreps_head_trains_with_the_body_held_then_the_body_with_the_head_held() {
        let fedrep = Instructions::FedRep {
            head_layers: 1,
            head_passes: 2,
        };
        let mut local = FedRepLocal::default();
        let mut model = site([1.0, 2.0, 3.0, 4.0]);
        let zero = two_layers([0.0; 2], [0.0; 2]);
        let fit = local.fit(&fedrep, &zero, &mut model).unwrap();
        // Head: 0 -> t/2 -> 3t/4; then body: 0 -> t/2 with the head held.
        assert_eq!(model.history[0], [0.0, 0.0, 1.5, 2.0]);
        assert_eq!(model.history[1], [0.0, 0.0, 2.25, 3.0]);
        assert_eq!(model.history[2], [0.5, 1.0, 2.25, 3.0]);
        assert_eq!(values(&fit.delta), [0.5, 1.0, 0.0, 0.0]);
        assert_eq!(
            values(&local.personal(&zero).unwrap()),
            [0.0, 0.0, 2.25, 3.0]
        );

        // With weight decay the held tensors still do not move, bit for
        // bit, and the site's own head replaces the one the server sends.
        model.weight_decay = 0.1;
        model.history.clear();
        let global = two_layers([0.3, -0.7], [9.0, -9.0]);
        let fit = local.fit(&fedrep, &global, &mut model).unwrap();
        let h = &model.history;
        assert_eq!(h.len(), 3);
        assert_eq!(h[0][..2], [0.3, -0.7]);
        assert_eq!(h[1][..2], [0.3, -0.7]);
        // The site's own head (2.25, 3), not the server's (9, -9), trained
        // with decay: 2.25 - 0.5 ((2.25 - 3) + 0.1 * 2.25) = 2.5125.
        assert!((h[0][2] - 2.5125).abs() < 1e-6, "{}", h[0][2]);
        assert_eq!(h[2][2..], h[1][2..]);
        assert_eq!(values(&fit.delta)[2..], [0.0, 0.0]);
        assert_eq!(values(&local.personal(&global).unwrap())[2..], h[1][2..]);

        let err = local
            .fit(&Instructions::FedPer { head_layers: 1 }, &zero, &mut model)
            .unwrap_err();
        assert!(err.to_string().contains("fedrep"), "{err}");
    }
}

#[cfg(test)]
mod restart_tests {
    #![allow(clippy::unwrap_used)]

    use super::tests::{site, two_layers};
    use crate::local::LocalPart;
    use crate::{Instructions, LocalAlgorithm};

    /// A site whose process restarts between rounds and takes back what it
    /// saved goes on exactly as one that never stopped.
    #[test]
    fn a_saved_and_restored_local_part_goes_on_as_if_it_had_not_stopped() {
        for instructions in [
            Instructions::Ditto { lambda: 0.3 },
            Instructions::FedPer { head_layers: 1 },
            Instructions::FedRep {
                head_layers: 1,
                head_passes: 2,
            },
        ] {
            let (first, second) = (
                two_layers([0.1, 0.2], [0.3, 0.4]),
                two_layers([1.0; 2], [-1.0; 2]),
            );
            let mut kept = LocalPart::default();
            let mut model = site([1.0, 2.0, 3.0, 4.0]);
            kept.fit(&instructions, &first, &mut model).unwrap();
            let (name, saved) = kept.saved_state().unwrap();
            assert_eq!(name, instructions.name());

            let mut restarted = LocalPart::default();
            restarted.restore_state(name.to_string(), saved);
            // Before any training in the new process (the run may end
            // without one), its personal model is the saved one.
            assert_eq!(
                restarted.personal(&first),
                kept.personal(&first),
                "{instructions}"
            );
            let mut again = site([1.0, 2.0, 3.0, 4.0]);
            let a = kept.fit(&instructions, &second, &mut model).unwrap();
            let b = restarted.fit(&instructions, &second, &mut again).unwrap();
            assert_eq!(a.delta, b.delta, "{instructions}");
            assert_eq!(
                kept.personal(&second),
                restarted.personal(&second),
                "{instructions}"
            );

            // A fresh one (nothing restored) is not the same.
            let mut fresh = LocalPart::default();
            fresh
                .fit(&instructions, &second, &mut site([1.0, 2.0, 3.0, 4.0]))
                .unwrap();
            assert_ne!(
                fresh.personal(&second),
                kept.personal(&second),
                "{instructions}"
            );
        }
        // State of another kind waits, and a malformed one is refused.
        let mut part = LocalPart::default();
        part.restore_state("ditto".into(), two_layers([0.0; 2], [0.0; 2]));
        let err = part
            .fit(
                &Instructions::Ditto { lambda: 0.1 },
                &two_layers([0.0; 2], [0.0; 2]),
                &mut site([0.0; 4]),
            )
            .unwrap_err();
        assert!(err.to_string().contains("no 'personal' tensors"), "{err}");
    }
}
