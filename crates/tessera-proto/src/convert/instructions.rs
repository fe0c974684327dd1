//! Instructions on the wire (1.7, `instructions`): a strategy's
//! [`Instructions`] as a fit task's `instructions` arm, and back, checked.

use std::sync::Arc;

use tessera_aggregate::Instructions;
use tessera_core::ParameterSet;

use crate::ProtoError;
use crate::pb;

/// Writes a strategy's `instructions` into a fit task's header: the
/// `instructions` arm (1.7), and for older peers the fields they read where
/// the instructions have them (FedProx's `proximal_mu`). `has_server_control`
/// announces the instructions' tensors, which follow the parameters as
/// tensor set 1. The one place instructions meet the wire, with
/// [`instructions_from_pb`].
pub fn instructions_to_pb(instructions: &Instructions, header: &mut pb::TaskHeader) {
    use pb::instructions::Kind;
    let kind = match instructions {
        Instructions::Plain => None,
        Instructions::Proximal { mu } => {
            header.proximal_mu = Some(*mu);
            Some(Kind::Proximal(pb::Proximal { mu: *mu }))
        }
        Instructions::Scaffold { .. } => Some(Kind::Scaffold(pb::Scaffold {})),
        Instructions::FedDyn { alpha } => Some(Kind::Feddyn(pb::FedDyn { alpha: *alpha })),
        Instructions::Ditto { lambda } => Some(Kind::Ditto(pb::Ditto { lambda: *lambda })),
        Instructions::FedPer { head_layers } => Some(Kind::Fedper(pb::FedPer {
            head_layers: *head_layers,
        })),
        Instructions::FedRep {
            head_layers,
            head_passes,
        } => Some(Kind::Fedrep(pb::FedRep {
            head_layers: *head_layers,
            head_passes: *head_passes,
        })),
        Instructions::PerFedAvg { alpha } => Some(Kind::Perfedavg(pb::PerFedAvg { alpha: *alpha })),
        Instructions::Apfl { alpha } => Some(Kind::Apfl(pb::Apfl { alpha: *alpha })),
        Instructions::Ifca { clusters } => Some(Kind::Ifca(pb::Ifca {
            clusters: *clusters,
        })),
        Instructions::Qffl { q } => Some(Kind::Qffl(pb::Qffl { q: *q })),
        Instructions::Multitask { tasks, task } => Some(Kind::Multitask(pb::Multitask {
            tasks: *tasks,
            task: *task,
        })),
    };
    header.has_server_control = instructions.tensors().is_some();
    header.instructions = kind.map(|kind| pb::Instructions { kind: Some(kind) });
}

/// A fit task's instructions from its header and the tensors that followed
/// the parameters (set 1, present when the header announced them); a header
/// from a coordinator before 1.7 is read from its older fields.
pub fn instructions_from_pb(
    header: &pb::TaskHeader,
    tensors: Option<ParameterSet>,
) -> Result<Instructions, ProtoError> {
    use pb::instructions::Kind;
    let kind = match &header.instructions {
        Some(pb::Instructions { kind: Some(kind) }) => Some(*kind),
        Some(pb::Instructions { kind: None }) => {
            return Err(ProtoError::Incompatible(
                "the task's instructions are of a kind this participant does not know; \
                 upgrade it"
                    .into(),
            ));
        }
        // Before 1.7.
        None => match (header.proximal_mu, header.has_server_control) {
            (Some(mu), false) => Some(Kind::Proximal(pb::Proximal { mu })),
            (None, true) => Some(Kind::Scaffold(pb::Scaffold {})),
            (None, false) => None,
            (Some(_), true) => {
                return Err(ProtoError::Malformed(
                    "task: both a proximal weight and a server control variate".into(),
                ));
            }
        },
    };
    let tensors = |what: &str| {
        tensors.ok_or_else(|| {
            ProtoError::Malformed(format!("task: {what} without its tensors (set 1)"))
        })
    };
    Ok(match kind {
        None => Instructions::Plain,
        Some(Kind::Proximal(pb::Proximal { mu })) => {
            if !(mu.is_finite() && mu >= 0.0) {
                return Err(ProtoError::Malformed(format!(
                    "task: proximal weight {mu} is not a number >= 0"
                )));
            }
            Instructions::Proximal { mu }
        }
        Some(Kind::Scaffold(pb::Scaffold {})) => Instructions::Scaffold {
            server_control: Arc::new(tensors("scaffold's instructions")?),
        },
        Some(Kind::Feddyn(pb::FedDyn { alpha })) => {
            if !(alpha.is_finite() && alpha > 0.0) {
                return Err(ProtoError::Malformed(format!(
                    "task: feddyn's alpha {alpha} is not a number > 0"
                )));
            }
            Instructions::FedDyn { alpha }
        }
        Some(Kind::Ditto(pb::Ditto { lambda })) => {
            if !(lambda.is_finite() && lambda > 0.0) {
                return Err(ProtoError::Malformed(format!(
                    "task: ditto's lambda {lambda} is not a number > 0"
                )));
            }
            Instructions::Ditto { lambda }
        }
        Some(Kind::Fedper(pb::FedPer { head_layers })) => {
            if head_layers == 0 {
                return Err(ProtoError::Malformed(
                    "task: fedper's head_layers is 0 (at least 1 layer stays at the site)".into(),
                ));
            }
            Instructions::FedPer { head_layers }
        }
        Some(Kind::Fedrep(pb::FedRep {
            head_layers,
            head_passes,
        })) => {
            let max = tessera_aggregate::MAX_HEAD_PASSES;
            if head_layers == 0 || !(1..=max).contains(&head_passes) {
                return Err(ProtoError::Malformed(format!(
                    "task: fedrep's head_layers {head_layers} (at least 1) or head_passes \
                     {head_passes} (1 to {max}) is out of range"
                )));
            }
            Instructions::FedRep {
                head_layers,
                head_passes,
            }
        }
        Some(Kind::Perfedavg(pb::PerFedAvg { alpha })) => {
            let max = tessera_aggregate::MAX_INNER_LR;
            if !(alpha.is_finite() && alpha > 0.0 && alpha <= max) {
                return Err(ProtoError::Malformed(format!(
                    "task: perfedavg's alpha {alpha} is outside (0, {max}]"
                )));
            }
            Instructions::PerFedAvg { alpha }
        }
        Some(Kind::Apfl(pb::Apfl { alpha })) => {
            let min = tessera_aggregate::MIN_ALPHA;
            if !(alpha.is_finite() && (min..=1.0).contains(&alpha)) {
                return Err(ProtoError::Malformed(format!(
                    "task: apfl's alpha {alpha} is outside [{min}, 1]"
                )));
            }
            Instructions::Apfl { alpha }
        }
        Some(Kind::Ifca(pb::Ifca { clusters })) => {
            let max = tessera_aggregate::MAX_CLUSTERS;
            if !(2..=max).contains(&clusters) {
                return Err(ProtoError::Malformed(format!(
                    "task: ifca's clusters {clusters} is outside [2, {max}]"
                )));
            }
            Instructions::Ifca { clusters }
        }
        Some(Kind::Multitask(pb::Multitask { tasks, task })) => {
            let max = tessera_aggregate::MAX_TASKS as u32;
            if !(2..=max).contains(&tasks) || task >= tasks {
                return Err(ProtoError::Malformed(format!(
                    "task: multitask's task {task} of {tasks} is not one of 2 to {max} tasks"
                )));
            }
            Instructions::Multitask { tasks, task }
        }
        Some(Kind::Qffl(pb::Qffl { q })) => {
            let max = tessera_aggregate::MAX_Q;
            if !(q.is_finite() && (0.0..=max).contains(&q)) {
                return Err(ProtoError::Malformed(format!(
                    "task: qffl's q {q} is outside [0, {max}]"
                )));
            }
            Instructions::Qffl { q }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_round_trip_and_old_headers_are_read() {
        let mut control = ParameterSet::new();
        control
            .push(
                "w",
                tessera_core::Tensor::new(vec![2], vec![0.5, -1.0]).unwrap(),
            )
            .unwrap();
        for instructions in [
            Instructions::Plain,
            Instructions::Proximal { mu: 0.01 },
            Instructions::Scaffold {
                server_control: Arc::new(control.clone()),
            },
            Instructions::FedDyn { alpha: 0.1 },
            Instructions::Ditto { lambda: 0.5 },
            Instructions::FedPer { head_layers: 2 },
            Instructions::FedRep {
                head_layers: 1,
                head_passes: 10,
            },
            Instructions::PerFedAvg { alpha: 0.05 },
            Instructions::Apfl { alpha: 0.25 },
            Instructions::Ifca { clusters: 3 },
            Instructions::Multitask { tasks: 3, task: 2 },
            Instructions::Qffl { q: 2.5 },
        ] {
            let mut header = pb::TaskHeader::default();
            instructions_to_pb(&instructions, &mut header);
            let tensors = header.has_server_control.then(|| control.clone());
            assert_eq!(
                instructions_from_pb(&header, tensors).unwrap(),
                instructions
            );
            if let Instructions::FedDyn { .. }
            | Instructions::Ditto { .. }
            | Instructions::FedPer { .. }
            | Instructions::FedRep { .. }
            | Instructions::PerFedAvg { .. }
            | Instructions::Apfl { .. }
            | Instructions::Ifca { .. }
            | Instructions::Multitask { .. }
            | Instructions::Qffl { .. } = instructions
            {
                // No older form: an older participant is refused at joining.
                continue;
            }
            // A 1.6 coordinator's header: the older fields only.
            header.instructions = None;
            let tensors = header.has_server_control.then(|| control.clone());
            assert_eq!(
                instructions_from_pb(&header, tensors).unwrap(),
                instructions
            );
        }
    }

    #[test]
    fn hostile_instructions_are_refused_with_a_reason() {
        use pb::instructions::Kind;
        let header = |kind: Option<Kind>| pb::TaskHeader {
            instructions: Some(pb::Instructions { kind }),
            ..Default::default()
        };
        for mu in [-1.0, f32::NAN, f32::INFINITY] {
            let err =
                instructions_from_pb(&header(Some(Kind::Proximal(pb::Proximal { mu }))), None)
                    .unwrap_err();
            assert!(err.to_string().contains("proximal weight"), "{err}");
        }
        for alpha in [0.0, -1.0, f32::NAN] {
            let err = instructions_from_pb(&header(Some(Kind::Feddyn(pb::FedDyn { alpha }))), None)
                .unwrap_err();
            assert!(err.to_string().contains("feddyn's alpha"), "{err}");
        }
        let err =
            instructions_from_pb(&header(Some(Kind::Scaffold(pb::Scaffold {}))), None).unwrap_err();
        assert!(err.to_string().contains("without its tensors"), "{err}");
        for (head_layers, head_passes) in [(0, 1), (1, 0), (1, 101), (1, u32::MAX)] {
            let fedrep = Kind::Fedrep(pb::FedRep {
                head_layers,
                head_passes,
            });
            let err = instructions_from_pb(&header(Some(fedrep)), None).unwrap_err();
            assert!(err.to_string().contains("fedrep's head_layers"), "{err}");
        }
        for alpha in [0.0, -1.0, 10.5, f32::NAN, f32::INFINITY] {
            let perfedavg = Kind::Perfedavg(pb::PerFedAvg { alpha });
            let err = instructions_from_pb(&header(Some(perfedavg)), None).unwrap_err();
            assert!(err.to_string().contains("perfedavg's alpha"), "{err}");
        }
        for alpha in [0.0, 0.001, 1.5, f32::NAN] {
            let apfl = Kind::Apfl(pb::Apfl { alpha });
            let err = instructions_from_pb(&header(Some(apfl)), None).unwrap_err();
            assert!(err.to_string().contains("apfl's alpha"), "{err}");
        }
        for clusters in [0, 1, 17, u32::MAX] {
            let ifca = Kind::Ifca(pb::Ifca { clusters });
            let err = instructions_from_pb(&header(Some(ifca)), None).unwrap_err();
            assert!(err.to_string().contains("ifca's clusters"), "{err}");
        }
        for (tasks, task) in [(0, 0), (1, 0), (17, 0), (3, 3), (2, u32::MAX)] {
            let multitask = Kind::Multitask(pb::Multitask { tasks, task });
            let err = instructions_from_pb(&header(Some(multitask)), None).unwrap_err();
            assert!(err.to_string().contains("multitask's task"), "{err}");
        }
        for q in [-0.5, 10.5, f32::NAN, f32::INFINITY] {
            let qffl = Kind::Qffl(pb::Qffl { q });
            let err = instructions_from_pb(&header(Some(qffl)), None).unwrap_err();
            assert!(err.to_string().contains("qffl's q"), "{err}");
        }
        // An arm this build does not know decodes as an empty oneof.
        let err = instructions_from_pb(&header(None), None).unwrap_err();
        assert!(err.to_string().contains("upgrade"), "{err}");
        let both = pb::TaskHeader {
            proximal_mu: Some(0.1),
            has_server_control: true,
            ..Default::default()
        };
        assert!(instructions_from_pb(&both, None).is_err());
    }
}
