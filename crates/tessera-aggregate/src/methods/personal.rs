//! The server parts of the personalized strategies: Ditto, FedPer and
//! FedRep. All average what the sites send as FedAvg does; what makes them
//! personal happens at the sites ([`crate::DittoLocal`],
//! [`crate::FedPerLocal`], [`crate::FedRepLocal`]), which keep a model of
//! their own that never leaves them.

use tessera_core::{ParameterSet, ParticipantId};

use super::fedavg::moved;
use crate::{AggregateError, Attendance, Instructions, Needs, RoundAggregate, Strategy};

/// What a personalized strategy needs: site state in step with synchronous
/// rounds on the flat topology, a personal model per site (one more copy),
/// and no local DP (the personal model's training is not accounted).
const PERSONAL: Needs = Needs {
    sync_rounds: true,
    plain_sgd: false,
    clear_aux_sum: None,
    flat_only: true,
    server_copies: 0,
    site_copies: 1,
    personal: true,
    meta_steps: false,
};

/// Ditto (Li, Hu, Beirami, Smith, ICML 2021): the global model is FedAvg's;
/// each site also trains a personal model `v` on its own rows, pulled toward
/// the round's global model by `lambda/2 ||v - w||²`. `lambda` near 0 gives
/// local training, a large `lambda` the global model.
#[derive(Debug, Clone)]
pub struct Ditto {
    /// The pull of the personal model toward the global one.
    pub lambda: f32,
    /// Server learning rate.
    pub server_lr: f32,
}

impl Ditto {
    /// What Ditto needs from the plan.
    pub const NEEDS: Needs = PERSONAL;
}

impl Strategy for Ditto {
    fn name(&self) -> &'static str {
        "ditto"
    }

    fn configure_fit(&self, _global: &ParameterSet, _site: &ParticipantId) -> Instructions {
        Instructions::Ditto {
            lambda: self.lambda,
        }
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

/// FedPer (Arivazhagan et al. 2019): the model's last `head_layers` layers
/// are each site's own; sites send changes to the shared body only (the
/// head's change is sent as zeros), and the server drops whatever a site
/// sends for the head, so the global head stays as it began even when a
/// site does not follow the protocol.
#[derive(Debug, Clone)]
pub struct FedPer {
    /// How many of the model's last layers are personal.
    pub head_layers: u32,
    /// Server learning rate.
    pub server_lr: f32,
}

impl FedPer {
    /// What FedPer needs from the plan.
    pub const NEEDS: Needs = PERSONAL;
}

impl Strategy for FedPer {
    fn name(&self) -> &'static str {
        "fedper"
    }

    fn configure_fit(&self, _global: &ParameterSet, _site: &ParticipantId) -> Instructions {
        Instructions::FedPer {
            head_layers: self.head_layers,
        }
    }

    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        _attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        moved_body(global, round, self.head_layers, self.server_lr)
    }
}

/// The most head trainings FedRep asks of a site per round: a bound on the
/// work one round's instructions can ask for.
pub const MAX_HEAD_PASSES: u32 = 100;

/// FedRep (Collins, Hassani, Mokhtari, Shakkottai, ICML 2021): FedPer's
/// split, trained in turn. Each round a site first trains its own head for
/// `head_passes` of the plan's local trainings with the received body held
/// still, then the body for one with its head held still, and sends the
/// body's change; the server averages the bodies as FedPer's does and drops
/// whatever a site sends for the head.
#[derive(Debug, Clone)]
pub struct FedRep {
    /// How many of the model's last layers are personal.
    pub head_layers: u32,
    /// The head's local trainings per round, before the body's one.
    pub head_passes: u32,
    /// Server learning rate.
    pub server_lr: f32,
}

impl FedRep {
    /// What FedRep needs from the plan.
    pub const NEEDS: Needs = PERSONAL;
}

impl Strategy for FedRep {
    fn name(&self) -> &'static str {
        "fedrep"
    }

    fn configure_fit(&self, _global: &ParameterSet, _site: &ParticipantId) -> Instructions {
        Instructions::FedRep {
            head_layers: self.head_layers,
            head_passes: self.head_passes,
        }
    }

    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        _attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        moved_body(global, round, self.head_layers, self.server_lr)
    }
}

/// `global` moved by the round's mean change to the body (the model but
/// its last `head_layers` layers); whatever the sites sent for the head is
/// dropped.
fn moved_body(
    global: &ParameterSet,
    round: &RoundAggregate,
    head_layers: u32,
    server_lr: f32,
) -> Result<ParameterSet, AggregateError> {
    let mask = head_mask(global, head_layers)?;
    let mut body = round.mean_delta.clone();
    zero_head(&mut body, &mask);
    moved(global, &body, server_lr)
}

/// Which tensors of `parameters` belong to its last `head_layers` layers. A
/// layer is the tensors whose names share the part before the first `.`
/// (`dense1.weight`, `dense1.bias`), in the order they first appear. The
/// head must leave a body to share.
pub fn head_mask(parameters: &ParameterSet, head_layers: u32) -> Result<Vec<bool>, AggregateError> {
    let layer = |name: &str| name.split('.').next().unwrap_or(name).to_string();
    let mut layers: Vec<String> = Vec::new();
    for name in parameters.names() {
        let l = layer(name);
        if !layers.contains(&l) {
            layers.push(l);
        }
    }
    let head = usize::try_from(head_layers).unwrap_or(usize::MAX);
    if head == 0 || head >= layers.len() {
        return Err(AggregateError::Config(format!(
            "head_layers = {head_layers} must leave a shared body, and the model has \
             {} layer{} ({}); use a model with hidden layers (kind = \"mlp\") or fewer head layers",
            layers.len(),
            if layers.len() == 1 { "" } else { "s" },
            layers.join(", ")
        )));
    }
    let personal = &layers[layers.len() - head..];
    Ok(parameters
        .names()
        .iter()
        .map(|n| personal.contains(&layer(n)))
        .collect())
}

/// Sets the tensors `mask` marks (a [`head_mask`]) to zero.
pub(crate) fn zero_head(parameters: &mut ParameterSet, mask: &[bool]) {
    for (tensor, &personal) in parameters.tensors_mut().iter_mut().zip(mask) {
        if personal {
            tensor.data_mut().fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_core::Tensor;

    use super::*;

    fn mlp() -> ParameterSet {
        let mut p = ParameterSet::new();
        for (name, n) in [
            ("dense0.weight", 6),
            ("dense0.bias", 3),
            ("dense1.weight", 3),
            ("dense1.bias", 1),
        ] {
            p.push(name, Tensor::zeros(vec![n])).unwrap();
        }
        p
    }

    #[test]
    fn the_head_is_the_last_layers_and_must_leave_a_body() {
        assert_eq!(head_mask(&mlp(), 1).unwrap(), [false, false, true, true]);
        let err = head_mask(&mlp(), 2).unwrap_err().to_string();
        assert!(err.contains("must leave a shared body"), "{err}");
        assert!(err.contains("2 layers (dense0, dense1)"), "{err}");
        assert!(head_mask(&mlp(), 0).is_err());
    }

    /// A site that sends a change to the head anyway (a modified
    /// participant) moves the body only.
    #[test]
    fn a_head_change_a_site_sends_anyway_does_not_move_the_global_head() {
        let global = mlp();
        let mut delta = mlp();
        for t in delta.tensors_mut() {
            t.data_mut().fill(1.0);
        }
        let round = RoundAggregate {
            mean_delta: delta,
            aux_step: None,
            n_updates: 1,
            n_participants: 1,
            n_examples: 10,
            weight_sum: 1.0,
            mean_train_loss: 0.0,
        };
        let none = Attendance {
            cohort: Vec::new(),
            counted: Vec::new(),
            failures: Vec::new(),
        };
        let strategies: [Box<dyn Strategy>; 2] = [
            Box::new(FedPer {
                head_layers: 1,
                server_lr: 1.0,
            }),
            Box::new(FedRep {
                head_layers: 1,
                head_passes: 3,
                server_lr: 1.0,
            }),
        ];
        for mut strategy in strategies {
            let next = strategy.aggregate_fit(&global, &round, &none).unwrap();
            let moved: Vec<bool> = next
                .iter()
                .map(|(_, t)| t.data().iter().any(|&v| v != 0.0))
                .collect();
            assert_eq!(moved, [true, true, false, false], "{}", strategy.name());
        }
    }
}
