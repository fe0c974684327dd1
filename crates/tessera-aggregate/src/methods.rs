//! The registry of strategies: the kinds a plan names, their settings, the
//! strategy pair each builds, the instructions the two parts exchange, and
//! what each needs from the rest of the plan. A strategy is its server file
//! and, when it does something at the sites, its local file in `methods/`;
//! adding one adds its files and a line to each table here.

mod apfl;
mod fedavg;
mod feddyn;
mod feddyn_local;
mod fedprox_local;
mod ifca;
mod multitask;
mod perfedavg;
mod personal;
mod personal_local;
mod qffl;
mod scaffold;
mod scaffold_local;
#[cfg(test)]
mod testing;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tessera_core::ParameterSet;

use crate::local::{LocalAlgorithm, PlainLocal};
use crate::{AggregateError, Strategy};

pub use apfl::{Apfl, ApflLocal, MIN_ALPHA};
pub use fedavg::{FedAvg, FedAvgM, FedOpt, FedOptVariant, FedProx};
pub use feddyn::FedDyn;
pub use feddyn_local::FedDynLocal;
pub use fedprox_local::FedProxLocal;
pub use ifca::{Ifca, IfcaLocal, MAX_CLUSTERS};
pub use multitask::{MAX_TASKS, Multitask, MultitaskLocal, TASK_SHARES, Unstacked};
pub use perfedavg::{MAX_INNER_LR, PerFedAvg, PerFedAvgLocal};
pub use personal::{Ditto, FedPer, FedRep, MAX_HEAD_PASSES, head_mask};
pub use personal_local::{DittoLocal, FedPerLocal, FedRepLocal};
pub use qffl::{MAX_Q, MAX_START_LOSS, Qffl, QfflLocal, WEIGHTS as QFFL_WEIGHTS};
pub use scaffold::Scaffold;
pub use scaffold_local::ScaffoldLocal;

/// What a strategy's server part tells one participant for a round; the
/// local part ([`Instructions::local_algorithm`]) acts on it. On the wire
/// each variant is one arm of the task header's `instructions`
/// (tessera-proto converts, in one place).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Instructions {
    /// Plain local training.
    #[default]
    Plain,
    /// FedProx: add `mu/2 ||w - w_global||²` to the local loss.
    Proximal {
        /// The proximal weight.
        mu: f32,
    },
    /// SCAFFOLD: correct every gradient by `c - c_i`; return `Δc_i`.
    Scaffold {
        /// The server control variate `c` (travels as a tensor set).
        server_control: Arc<ParameterSet>,
    },
    /// FedDyn: add `α/2 ||w - w_global||² - <g_k, w>` to the local loss.
    FedDyn {
        /// The regularisation weight α.
        alpha: f32,
    },
    /// Ditto: train the global model as FedAvg does, and the site's
    /// personal model with `lambda/2 ||v - w_global||²` added.
    Ditto {
        /// The pull of the personal model toward the global one.
        lambda: f32,
    },
    /// FedPer: keep the model's last `head_layers` layers at the site.
    FedPer {
        /// How many of the model's last layers are personal.
        head_layers: u32,
    },
    /// FedRep: FedPer's split, the head trained `head_passes` times with
    /// the body held, then the body once with the head held.
    FedRep {
        /// How many of the model's last layers are personal.
        head_layers: u32,
        /// The head's local trainings before the body's one.
        head_passes: u32,
    },
    /// Per-FedAvg (first-order): local training of meta steps with inner
    /// step size `alpha`.
    PerFedAvg {
        /// The inner (adaptation) step size.
        alpha: f32,
    },
    /// APFL: FedAvg's update, and the site's personal model and mixing
    /// weight (from `alpha` at its first round) trained beside it.
    Apfl {
        /// The initial mixing weight.
        alpha: f32,
    },
    /// IFCA: the global model is `clusters` stacked cluster models; train
    /// the one of the lowest loss on the site's rows.
    Ifca {
        /// How many cluster models the global model stacks.
        clusters: u32,
    },
    /// Multi-task: the global model stacks a shared body and `tasks` heads;
    /// train the body and task `task`'s head.
    Multitask {
        /// How many heads the global model stacks.
        tasks: u32,
        /// The site's task, by index.
        task: u32,
    },
    /// q-FFL: plain local training, the loss of the round's model on the
    /// site's training rows reported beside the change.
    Qffl {
        /// The fairness parameter q (the server weighs by it; the site
        /// checks it is the plan's).
        q: f32,
    },
}

impl Instructions {
    /// The variant's name, in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Instructions::Plain => "plain",
            Instructions::Proximal { .. } => "fedprox",
            Instructions::Scaffold { .. } => "scaffold",
            Instructions::FedDyn { .. } => "feddyn",
            Instructions::Ditto { .. } => "ditto",
            Instructions::FedPer { .. } => "fedper",
            Instructions::FedRep { .. } => "fedrep",
            Instructions::PerFedAvg { .. } => "perfedavg",
            Instructions::Apfl { .. } => "apfl",
            Instructions::Ifca { .. } => "ifca",
            Instructions::Multitask { .. } => "multitask",
            Instructions::Qffl { .. } => "qffl",
        }
    }

    /// A fresh local part for these instructions (a site keeps it while the
    /// instructions it receives keep their kind).
    pub fn local_algorithm(&self) -> Box<dyn LocalAlgorithm> {
        match self {
            Instructions::Plain => Box::new(PlainLocal),
            Instructions::Proximal { .. } => Box::new(FedProxLocal),
            Instructions::Scaffold { .. } => Box::new(ScaffoldLocal::default()),
            Instructions::FedDyn { .. } => Box::new(FedDynLocal::default()),
            Instructions::Ditto { .. } => Box::new(DittoLocal::default()),
            Instructions::FedPer { .. } => Box::new(FedPerLocal::default()),
            Instructions::FedRep { .. } => Box::new(FedRepLocal::default()),
            Instructions::PerFedAvg { .. } => Box::new(PerFedAvgLocal),
            Instructions::Apfl { .. } => Box::new(ApflLocal::default()),
            Instructions::Ifca { .. } => Box::new(IfcaLocal::default()),
            Instructions::Multitask { .. } => Box::new(MultitaskLocal::default()),
            Instructions::Qffl { .. } => Box::new(QfflLocal),
        }
    }

    /// Whether these instructions are of `expected`'s kind with its
    /// settings (the tensors they carry aside): a site holds a task's
    /// instructions to those of the plan it agreed to.
    pub fn agrees_with(&self, expected: &Instructions) -> bool {
        use Instructions as I;
        match (self, expected) {
            (I::Plain, I::Plain) | (I::Scaffold { .. }, I::Scaffold { .. }) => true,
            (I::Proximal { mu: a }, I::Proximal { mu: b }) => a == b,
            (I::FedDyn { alpha: a }, I::FedDyn { alpha: b }) => a == b,
            (I::Ditto { lambda: a }, I::Ditto { lambda: b }) => a == b,
            (I::FedPer { head_layers: a }, I::FedPer { head_layers: b }) => a == b,
            (
                I::FedRep {
                    head_layers: a,
                    head_passes: p,
                },
                I::FedRep {
                    head_layers: b,
                    head_passes: q,
                },
            ) => a == b && p == q,
            (I::PerFedAvg { alpha: a }, I::PerFedAvg { alpha: b })
            | (I::Apfl { alpha: a }, I::Apfl { alpha: b }) => a == b,
            (I::Ifca { clusters: a }, I::Ifca { clusters: b }) => a == b,
            (I::Qffl { q: a }, I::Qffl { q: b }) => a == b,
            (I::Multitask { tasks: a, task: s }, I::Multitask { tasks: b, task: t }) => {
                a == b && s == t
            }
            _ => false,
        }
    }

    /// The tensors the instructions carry (SCAFFOLD's `c`), if any.
    pub fn tensors(&self) -> Option<&Arc<ParameterSet>> {
        match self {
            Instructions::Scaffold { server_control } => Some(server_control),
            Instructions::Plain
            | Instructions::Proximal { .. }
            | Instructions::FedDyn { .. }
            | Instructions::Ditto { .. }
            | Instructions::FedPer { .. }
            | Instructions::FedRep { .. }
            | Instructions::PerFedAvg { .. }
            | Instructions::Apfl { .. }
            | Instructions::Ifca { .. }
            | Instructions::Multitask { .. }
            | Instructions::Qffl { .. } => None,
        }
    }
}

impl fmt::Display for Instructions {
    /// The kind and its settings (not the tensors), as messages show them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Instructions::Plain | Instructions::Scaffold { .. } => f.write_str(self.name()),
            Instructions::Proximal { mu } => write!(f, "fedprox (mu {mu})"),
            Instructions::FedDyn { alpha } => write!(f, "feddyn (alpha {alpha})"),
            Instructions::Ditto { lambda } => write!(f, "ditto (lambda {lambda})"),
            Instructions::FedPer { head_layers } => write!(f, "fedper (head_layers {head_layers})"),
            Instructions::FedRep {
                head_layers,
                head_passes,
            } => write!(
                f,
                "fedrep (head_layers {head_layers}, head_passes {head_passes})"
            ),
            Instructions::PerFedAvg { alpha } => write!(f, "perfedavg (alpha {alpha})"),
            Instructions::Apfl { alpha } => write!(f, "apfl (initial alpha {alpha})"),
            Instructions::Ifca { clusters } => write!(f, "ifca (clusters {clusters})"),
            Instructions::Multitask { tasks, task } => {
                write!(f, "multitask (task {task} of {tasks})")
            }
            Instructions::Qffl { q } => write!(f, "qffl (q {q})"),
        }
    }
}

/// What a strategy needs from the rest of the plan; the plan's validation
/// turns each into a reason naming the strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Site state kept in step with synchronous rounds (no `async` mode).
    pub sync_rounds: bool,
    /// Plain SGD at the sites (no momentum, no Adam).
    pub plain_sgd: bool,
    /// An auxiliary sum released as it is: neither central DP nor secure
    /// aggregation protects it.
    pub clear_aux_sum: Option<&'static str>,
    /// The flat topology only.
    pub flat_only: bool,
    /// Model copies the server part keeps beyond the usual.
    pub server_copies: u64,
    /// Model copies the local part keeps beyond the usual.
    pub site_copies: u64,
    /// A personal model at each site (trained beside the update, evaluated
    /// in the report's personalization section; no local DP).
    pub personal: bool,
    /// Per-FedAvg's meta steps at the sites: tessera-learn's own training
    /// loop (built-in models only; no local DP, whose accounting assumes
    /// one batch a step).
    pub meta_steps: bool,
}

/// The built-in strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyKind {
    /// FedAvg.
    FedAvg,
    /// FedAvg with server momentum.
    FedAvgM,
    /// FedProx.
    FedProx,
    /// SCAFFOLD.
    Scaffold,
    /// FedAdam.
    FedAdam,
    /// FedYogi.
    FedYogi,
    /// FedAdagrad.
    FedAdagrad,
    /// FedDyn.
    FedDyn,
    /// Ditto (personalized).
    Ditto,
    /// FedPer (personalized).
    FedPer,
    /// FedRep (personalized).
    FedRep,
    /// Per-FedAvg, first-order (meta-learned initialisation).
    PerFedAvg,
    /// APFL (personalized: a learned mixture of personal and global).
    Apfl,
    /// IFCA (clustered: each site takes the best of k cluster models).
    Ifca,
    /// q-FFL, as q-FedAvg (fair: sites of high loss weigh more).
    Qffl,
}

impl StrategyKind {
    /// Every strategy, in a fixed order.
    pub const ALL: [StrategyKind; 15] = [
        StrategyKind::FedAvg,
        StrategyKind::FedAvgM,
        StrategyKind::FedProx,
        StrategyKind::Scaffold,
        StrategyKind::FedAdam,
        StrategyKind::FedYogi,
        StrategyKind::FedAdagrad,
        StrategyKind::FedDyn,
        StrategyKind::Ditto,
        StrategyKind::FedPer,
        StrategyKind::FedRep,
        StrategyKind::PerFedAvg,
        StrategyKind::Apfl,
        StrategyKind::Ifca,
        StrategyKind::Qffl,
    ];

    /// The name used in plans and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::FedAvg => "fedavg",
            StrategyKind::FedAvgM => "fedavgm",
            StrategyKind::FedProx => "fedprox",
            StrategyKind::Scaffold => "scaffold",
            StrategyKind::FedAdam => "fedadam",
            StrategyKind::FedYogi => "fedyogi",
            StrategyKind::FedAdagrad => "fedadagrad",
            StrategyKind::FedDyn => "feddyn",
            StrategyKind::Ditto => "ditto",
            StrategyKind::FedPer => "fedper",
            StrategyKind::FedRep => "fedrep",
            StrategyKind::PerFedAvg => "perfedavg",
            StrategyKind::Apfl => "apfl",
            StrategyKind::Ifca => "ifca",
            StrategyKind::Qffl => "qffl",
        }
    }
}

impl StrategyKind {
    /// What this strategy needs from the rest of the plan.
    pub fn needs(self) -> Needs {
        match self {
            StrategyKind::Scaffold => Scaffold::NEEDS,
            StrategyKind::FedDyn => FedDyn::NEEDS,
            StrategyKind::Ditto => Ditto::NEEDS,
            StrategyKind::FedPer => FedPer::NEEDS,
            StrategyKind::FedRep => FedRep::NEEDS,
            StrategyKind::PerFedAvg => PerFedAvg::NEEDS,
            StrategyKind::Apfl => Apfl::NEEDS,
            StrategyKind::Ifca => Ifca::NEEDS,
            StrategyKind::Qffl => Qffl::NEEDS,
            StrategyKind::FedAvg
            | StrategyKind::FedAvgM
            | StrategyKind::FedProx
            | StrategyKind::FedAdam
            | StrategyKind::FedYogi
            | StrategyKind::FedAdagrad => Needs::default(),
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StrategyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StrategyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = StrategyKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown strategy '{s}' (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// Settings of a strategy; every field is optional and has a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyConfig {
    /// Participants' learning rate under this strategy (overrides `training.lr`).
    #[serde(default)]
    pub client_lr: Option<f32>,
    /// Server learning rate (FedAvg, FedAvgM, FedProx, SCAFFOLD: 1; FedAdam, FedYogi: 0.01; FedAdagrad: 0.1).
    #[serde(default)]
    pub server_lr: Option<f32>,
    /// FedAvgM: server momentum (0.9).
    #[serde(default)]
    pub momentum: Option<f32>,
    /// FedProx: proximal weight (0.01).
    #[serde(default)]
    pub mu: Option<f32>,
    /// FedAdam, FedYogi, FedAdagrad: first-moment decay (0.9).
    #[serde(default)]
    pub beta1: Option<f32>,
    /// FedAdam, FedYogi: second-moment decay (0.99).
    #[serde(default)]
    pub beta2: Option<f32>,
    /// FedAdam, FedYogi, FedAdagrad: adaptivity (1e-3).
    #[serde(default)]
    pub tau: Option<f32>,
    /// FedDyn: regularisation weight α (0.01). Per-FedAvg: the inner
    /// (adaptation) step size α (0.01, at most 10). APFL: each site's
    /// initial mixing weight α (0.5, from 0.01 to 1).
    #[serde(default)]
    pub alpha: Option<f32>,
    /// Ditto: the pull of each site's personal model toward the global one (0.1).
    #[serde(default)]
    pub lambda: Option<f32>,
    /// FedPer, FedRep: how many of the model's last layers stay at each site (1).
    #[serde(default)]
    pub head_layers: Option<u32>,
    /// FedRep: the head's local trainings per round, each one of the
    /// plan's local trainings with the body held still, before the body's
    /// one (10, as in FedRep's paper with one-epoch local trainings; at
    /// most 100).
    #[serde(default)]
    pub head_passes: Option<u32>,
    /// IFCA: how many cluster models (2, from 2 to 16).
    #[serde(default)]
    pub clusters: Option<u32>,
    /// q-FFL: the fairness parameter q (1, from 0 to 10; 0 is FedAvg).
    #[serde(default)]
    pub q: Option<f32>,
    /// q-FFL: the Lipschitz estimate L, which damps the step (no default:
    /// the paper's 1 / the sites' learning rate assumes one local step and
    /// all but stops training with several; BENCHMARKS has measured values).
    #[serde(default)]
    pub lipschitz: Option<f32>,
}

impl StrategyConfig {
    /// The strategy `kind` with these settings, checked.
    pub fn build(&self, kind: StrategyKind) -> Result<Box<dyn Strategy>, AggregateError> {
        let positive = |name: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(AggregateError::Config(format!(
                    "{kind}: `{name}` must be a positive number, got {}",
                    tessera_core::value(v)
                )))
            }
        };
        let unit = |name: &str, v: f32| {
            if (0.0..1.0).contains(&v) {
                Ok(v)
            } else {
                Err(AggregateError::Config(format!(
                    "{kind}: `{name}` must be in [0, 1), got {}",
                    tessera_core::value(v)
                )))
            }
        };
        if let Some(lr) = self.client_lr {
            positive("client_lr", lr)?;
        }
        let server_lr = |default: f32| positive("server_lr", self.server_lr.unwrap_or(default));
        let fedopt = |variant, default_lr| -> Result<Box<dyn Strategy>, AggregateError> {
            Ok(Box::new(FedOpt::new(
                variant,
                server_lr(default_lr)?,
                unit("beta1", self.beta1.unwrap_or(0.9))?,
                unit("beta2", self.beta2.unwrap_or(0.99))?,
                positive("tau", self.tau.unwrap_or(1e-3))?,
            )))
        };
        let head_layers = || match self.head_layers.unwrap_or(1) {
            0 => Err(AggregateError::Config(format!(
                "{kind}: `head_layers` must be at least 1"
            ))),
            n => Ok(n),
        };
        Ok(match kind {
            StrategyKind::FedAvg => Box::new(FedAvg {
                server_lr: server_lr(1.0)?,
            }),
            StrategyKind::FedAvgM => Box::new(FedAvgM::new(
                server_lr(1.0)?,
                unit("momentum", self.momentum.unwrap_or(0.9))?,
            )),
            StrategyKind::FedProx => {
                let mu = self.mu.unwrap_or(0.01);
                if !(mu.is_finite() && mu >= 0.0) {
                    return Err(AggregateError::Config(format!(
                        "fedprox: `mu` must be >= 0, got {}",
                        tessera_core::value(mu)
                    )));
                }
                Box::new(FedProx {
                    mu,
                    server_lr: server_lr(1.0)?,
                })
            }
            StrategyKind::Scaffold => Box::new(Scaffold::new(server_lr(1.0)?)),
            StrategyKind::FedAdam => fedopt(FedOptVariant::Adam, 0.01)?,
            StrategyKind::FedYogi => fedopt(FedOptVariant::Yogi, 0.01)?,
            StrategyKind::FedAdagrad => fedopt(FedOptVariant::Adagrad, 0.1)?,
            StrategyKind::FedDyn => {
                Box::new(FedDyn::new(positive("alpha", self.alpha.unwrap_or(0.01))?))
            }
            StrategyKind::Ditto => Box::new(Ditto {
                lambda: positive("lambda", self.lambda.unwrap_or(0.1))?,
                server_lr: server_lr(1.0)?,
            }),
            StrategyKind::FedPer => Box::new(FedPer {
                head_layers: head_layers()?,
                server_lr: server_lr(1.0)?,
            }),
            StrategyKind::PerFedAvg => {
                let alpha = positive("alpha", self.alpha.unwrap_or(0.01))?;
                if alpha > MAX_INNER_LR {
                    return Err(AggregateError::Config(format!(
                        "perfedavg: `alpha` must be at most {MAX_INNER_LR}, got {alpha}"
                    )));
                }
                Box::new(PerFedAvg {
                    alpha,
                    server_lr: server_lr(1.0)?,
                })
            }
            StrategyKind::Apfl => {
                let alpha = self.alpha.unwrap_or(0.5);
                if !(alpha.is_finite() && (MIN_ALPHA..=1.0).contains(&alpha)) {
                    return Err(AggregateError::Config(format!(
                        "apfl: `alpha` must be from {MIN_ALPHA} to 1, got {}",
                        tessera_core::value(alpha)
                    )));
                }
                Box::new(Apfl {
                    alpha,
                    server_lr: server_lr(1.0)?,
                })
            }
            StrategyKind::Ifca => {
                let clusters = self.clusters.unwrap_or(2);
                if !(2..=MAX_CLUSTERS).contains(&clusters) {
                    return Err(AggregateError::Config(format!(
                        "ifca: `clusters` must be from 2 to {MAX_CLUSTERS}, got {clusters}"
                    )));
                }
                Box::new(Ifca {
                    clusters,
                    server_lr: server_lr(1.0)?,
                })
            }
            StrategyKind::Qffl => {
                let q = self.q.unwrap_or(1.0);
                if !(q.is_finite() && (0.0..=MAX_Q).contains(&q)) {
                    return Err(AggregateError::Config(format!(
                        "qffl: `q` must be from 0 to {MAX_Q}, got {}",
                        tessera_core::value(q)
                    )));
                }
                let Some(lipschitz) = self.lipschitz else {
                    return Err(AggregateError::Config(
                        "qffl: set `lipschitz` in [strategies.qffl], the estimate L that damps \
                         its step: the paper's 1 / lr suits one local step and all but stops \
                         training with several (0.1 served 47 sites of 10 local steps at lr 0.2 \
                         well; see BENCHMARKS, or tune it)"
                            .into(),
                    ));
                };
                if self.server_lr.is_some_and(|lr| lr != 1.0) {
                    return Err(AggregateError::Config(
                        "qffl: its step is L-scaled already; `server_lr` must be 1".into(),
                    ));
                }
                Box::new(Qffl::new(q, positive("lipschitz", lipschitz)?))
            }
            StrategyKind::FedRep => {
                let head_passes = self.head_passes.unwrap_or(10);
                if !(1..=MAX_HEAD_PASSES).contains(&head_passes) {
                    return Err(AggregateError::Config(format!(
                        "fedrep: `head_passes` must be from 1 to {MAX_HEAD_PASSES}, got \
                         {head_passes}"
                    )));
                }
                Box::new(FedRep {
                    head_layers: head_layers()?,
                    head_passes,
                    server_lr: server_lr(1.0)?,
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_listed() {
        for kind in StrategyKind::ALL {
            assert_eq!(kind.as_str().parse::<StrategyKind>().unwrap(), kind);
            let config = StrategyConfig {
                lipschitz: (kind == StrategyKind::Qffl).then_some(10.0),
                ..Default::default()
            };
            let strategy = config.build(kind).unwrap();
            assert_eq!(strategy.name(), kind.as_str());
        }
        let err = "fedsgd".parse::<StrategyKind>().unwrap_err();
        assert_eq!(
            err,
            "unknown strategy 'fedsgd' (expected one of fedavg, fedavgm, fedprox, scaffold, fedadam, fedyogi, fedadagrad, feddyn, ditto, fedper, fedrep, perfedavg, apfl, ifca, qffl)"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = StrategyConfig {
            server_lr: Some(-1.0),
            ..Default::default()
        };
        let err = bad.build(StrategyKind::FedAvg).err().unwrap();
        assert_eq!(
            err.to_string(),
            "strategy config: fedavg: `server_lr` must be a positive number, got -1"
        );
        let bad = StrategyConfig {
            beta2: Some(1.0),
            ..Default::default()
        };
        assert!(bad.build(StrategyKind::FedYogi).is_err());
    }

    #[test]
    fn instructions_agree_only_with_their_own_kind_and_settings() {
        let fedrep = |p| Instructions::FedRep {
            head_layers: 1,
            head_passes: p,
        };
        assert!(fedrep(3).agrees_with(&fedrep(3)));
        assert!(!fedrep(100).agrees_with(&fedrep(3)));
        assert!(!fedrep(3).agrees_with(&Instructions::FedPer { head_layers: 1 }));
        assert!(!Instructions::Plain.agrees_with(&Instructions::Proximal { mu: 0.1 }));
        assert!(
            Instructions::Proximal { mu: 0.1 }.agrees_with(&Instructions::Proximal { mu: 0.1 })
        );
        assert_eq!(
            fedrep(100).to_string(),
            "fedrep (head_layers 1, head_passes 100)"
        );
    }
}
