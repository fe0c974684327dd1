//! FedRep's holding under tessera-learn's real optimisers.

use super::*;

/// Records the parameters after each training of the model it drives.
struct Recording<'a> {
    inner: SiteModel<'a>,
    history: Vec<ParameterSet>,
}

impl LocalModel for Recording<'_> {
    fn parameters(&self) -> &ParameterSet {
        self.inner.parameters()
    }
    fn set_parameters(&mut self, p: &ParameterSet) -> Result<(), CoreError> {
        self.inner.set_parameters(p)
    }
    fn n_rows(&self) -> usize {
        self.inner.n_rows()
    }
    fn lr(&self) -> f32 {
        self.inner.lr()
    }
    fn weight_decay(&self) -> f32 {
        self.inner.weight_decay()
    }
    fn train(&mut self, term: Option<&dyn GradientTerm>) -> Result<FitStats, CoreError> {
        let stats = self.inner.train(term)?;
        self.history.push(self.inner.parameters().clone());
        Ok(stats)
    }
    fn train_private(
        &mut self,
        term: Option<&dyn GradientTerm>,
        dp: &LocalDp,
        rng: &mut SeededRng,
    ) -> Result<FitStats, CoreError> {
        self.inner.train_private(term, dp, rng)
    }
}

/// FedRep holds the body while the head trains and the head while the
/// body trains, bit for bit, under SGD with momentum and under Adam,
/// both with weight decay, as tessera-learn's optimiser applies them.
#[test]
fn fedreps_held_layers_do_not_move_under_momentum_adam_and_weight_decay() {
    let (rows, task) = rows_and_task();
    let config = ModelConfig {
        hidden: vec![5],
        ..ModelConfig::of_kind(ModelKind::Mlp)
    };
    let mut net = Network::new(&config, 6, 3, 1).unwrap();
    let global = net.parameters().clone();
    let body = |p: &ParameterSet| p.get("dense0.weight").unwrap().data().to_vec();
    let head = |p: &ParameterSet| p.get("dense1.weight").unwrap().data().to_vec();
    for optimizer in [
        tessera_learn::OptimizerKind::Sgd,
        tessera_learn::OptimizerKind::Adam,
    ] {
        let mut t = training();
        t.optimizer.optimizer = optimizer;
        t.optimizer.momentum = 0.9;
        t.optimizer.weight_decay = 0.05;
        t.optimizer.lr = 0.1;
        let mut recording = Recording {
            inner: model(&mut net, &rows, &t),
            history: Vec::new(),
        };
        let fedrep = tessera_aggregate::Instructions::FedRep {
            head_layers: 1,
            head_passes: 2,
        };
        let mut local = tessera_aggregate::FedRepLocal::default();
        let fit = local.fit(&fedrep, &global, &mut recording).unwrap();
        let h = &recording.history;
        assert_eq!(h.len(), 3, "{optimizer:?}");
        for pass in &h[..2] {
            assert_eq!(body(pass), body(&global), "{optimizer:?}: the body moved");
            assert_eq!(pass.get("dense0.bias"), global.get("dense0.bias"));
        }
        assert_ne!(
            head(&h[0]),
            head(&global),
            "{optimizer:?}: the head trained"
        );
        assert_ne!(head(&h[1]), head(&h[0]), "{optimizer:?}");
        assert_eq!(head(&h[2]), head(&h[1]), "{optimizer:?}: the head moved");
        assert_eq!(h[2].get("dense1.bias"), h[1].get("dense1.bias"));
        assert_ne!(
            body(&h[2]),
            body(&global),
            "{optimizer:?}: the body trained"
        );
        assert!(head(&fit.delta).iter().all(|v| *v == 0.0));
    }
    let _ = task;
}
