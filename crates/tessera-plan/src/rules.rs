//! The rules across sections: settings each sound on its own that cannot
//! work together. One row a rule, each naming the keys it concerns; every
//! rule runs, and every conflict is reported at once.

use tessera_aggregate::StrategyKind;
use tessera_compress::{Sparsifier, Values};
use tessera_learn::OptimizerKind;
use tessera_privacy::PrivacyMode;

use crate::{Mode, Plan, TopologyKind};

/// Settings that cannot work, with the plan keys involved and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The plan keys involved, as a plan file or `--set` names them
    /// (`federation.mode`, `privacy.mode`).
    pub keys: Vec<String>,
    /// Why, naming those keys (one sentence, one line).
    pub reason: String,
}

impl Conflict {
    /// A conflict between `keys`, for `reason`.
    pub fn new(keys: &[&str], reason: impl Into<String>) -> Conflict {
        Conflict {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A rule across sections: its name, and the check that finds its conflict.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// A short name (`secagg_needs_sync`), for tests and documentation.
    pub name: &'static str,
    /// The conflict the rule finds in a plan, if any.
    pub check: fn(&Plan) -> Option<Conflict>,
}

const fn rule(name: &'static str, check: fn(&Plan) -> Option<Conflict>) -> Rule {
    Rule { name, check }
}

fn when(on: bool, keys: &[&str], reason: impl FnOnce() -> String) -> Option<Conflict> {
    on.then(|| Conflict::new(keys, reason()))
}

fn is_async(plan: &Plan) -> bool {
    plan.federation.mode == Mode::Async
}

fn central(plan: &Plan) -> bool {
    plan.privacy.mode == PrivacyMode::Central
}

fn secagg(plan: &Plan) -> bool {
    plan.secure_aggregation.enabled
}

fn tree_or_gossip(plan: &Plan) -> Option<&'static str> {
    match plan.topology.kind {
        TopologyKind::Flat => None,
        TopologyKind::Gossip => Some("gossip"),
        TopologyKind::Hierarchical => Some("hierarchical"),
    }
}

/// A feature the hierarchical or gossip topology does not support yet.
fn topology_lacks(
    plan: &Plan,
    on: bool,
    keys: &[&str],
    what: impl FnOnce() -> String,
) -> Option<Conflict> {
    let kind = tree_or_gossip(plan)?;
    let mut all = vec!["topology.kind"];
    all.extend_from_slice(keys);
    when(on, &all, || {
        format!(
            "the {kind} topology does not support {} yet; use kind = \"flat\"",
            what()
        )
    })
}

/// Every rule across sections, in the order their conflicts are reported.
pub const RULES: &[Rule] = &[
    rule("strategy_state_needs_sync", |p| {
        let strategy = p.federation.strategy;
        when(
            is_async(p) && strategy.needs().sync_rounds,
            &["federation.mode", "federation.strategy"],
            || {
                format!(
                    "{strategy}'s state at the sites needs synchronous rounds; use mode = \"sync\""
                )
            },
        )
    }),
    rule("strategy_needs_plain_sgd", |p| {
        let strategy = p.federation.strategy;
        let optimizer = &p.training.optimizer;
        when(
            strategy.needs().plain_sgd
                && (optimizer.optimizer != OptimizerKind::Sgd || optimizer.momentum != 0.0),
            &[
                "federation.strategy",
                "training.optimizer",
                "training.momentum",
            ],
            || {
                format!(
                    "{strategy} needs plain SGD in [training] (no momentum, no Adam): \
                     its local part assumes it"
                )
            },
        )
    }),
    rule("personal_strategy_local_dp", |p| {
        let strategy = p.federation.strategy;
        when(
            strategy.needs().personal && p.privacy.mode == PrivacyMode::Local,
            &["federation.strategy", "privacy.mode"],
            || {
                format!(
                    "{strategy} trains a personal model beside the update, which local DP \
                     does not account; use central DP or another strategy"
                )
            },
        )
    }),
    rule("qffl_weighs_each_update", |p| {
        when(
            p.federation.strategy == StrategyKind::Qffl
                && (secagg(p)
                    || p.privacy.mode != PrivacyMode::Off
                    || p.privacy.site_metrics != tessera_privacy::SiteMetrics::Clear
                    || p.robust.rule.needs_all_updates()
                    || p.federation.weighting != crate::Weighting::Examples
                    || p.model.kind.is_external()),
            &[
                "federation.strategy",
                "secure_aggregation.enabled",
                "privacy.mode",
                "privacy.site_metrics",
                "robust.rule",
                "federation.weighting",
                "model.kind",
            ],
            || {
                "qffl weighs each site's own change by its loss, reported in the clear: it \
                 needs each update seen alone (no secure aggregation, no central or local DP, \
                 the mean rule, example weighting), site_metrics = \"clear\" (each site's loss \
                 is shown) and a built-in model that measures its loss"
                    .into()
            },
        )
    }),
    rule("apfl_needs_no_weight_decay", |p| {
        when(
            p.federation.strategy == StrategyKind::Apfl && p.training.optimizer.weight_decay != 0.0,
            &["federation.strategy", "training.weight_decay"],
            || {
                "apfl trains its personal model through the mixture, which weight decay \
                 would shrink as a whole (not the personal model's SGD): set \
                 training.weight_decay = 0"
                    .into()
            },
        )
    }),
    rule("meta_strategy_local_dp", |p| {
        let strategy = p.federation.strategy;
        when(
            strategy.needs().meta_steps && p.privacy.mode == PrivacyMode::Local,
            &["federation.strategy", "privacy.mode"],
            || {
                format!(
                    "{strategy} takes two batches a step (a meta step), which DP-SGD's \
                     accounting does not cover; use central DP or another strategy"
                )
            },
        )
    }),
    rule("meta_strategy_external_model", |p| {
        let strategy = p.federation.strategy;
        when(
            strategy.needs().meta_steps && p.model.kind.is_external(),
            &["federation.strategy", "model.kind"],
            || {
                format!(
                    "{strategy} takes meta steps in tessera-learn's training loop, which an \
                     external learner does not run; use a built-in model"
                )
            },
        )
    }),
    rule("personal_strategy_external_model", |p| {
        let strategy = p.federation.strategy;
        when(
            strategy.needs().personal && p.model.kind.is_external(),
            &["federation.strategy", "model.kind"],
            || {
                format!(
                    "{strategy} keeps a personal model at each site, which an external \
                     learner does not support yet; use a built-in model"
                )
            },
        )
    }),
    rule("fedper_needs_a_shared_body", |p| {
        let layers = match p.model.kind {
            tessera_learn::ModelKind::Mlp => p.model.hidden.len() + 1,
            tessera_learn::ModelKind::External => return None,
            _ => 1,
        };
        let head = p.strategy_config().head_layers.unwrap_or(1);
        let strategy = p.federation.strategy;
        let setting = match strategy {
            StrategyKind::FedPer => "strategies.fedper.head_layers",
            StrategyKind::FedRep => "strategies.fedrep.head_layers",
            _ => return None,
        };
        when(
            usize::try_from(head).map_or(true, |h| h >= layers),
            &["federation.strategy", "model.kind", "model.hidden", setting],
            || {
                format!(
                    "{strategy} keeps the model's last {head} layer{} at each site and shares the \
                     rest, but the model has {layers} layer{}: use kind = \"mlp\" with hidden \
                     layers, or fewer head_layers",
                    if head == 1 { "" } else { "s" },
                    if layers == 1 { "" } else { "s" }
                )
            },
        )
    }),
    rule("fine_tuning_needs_builtin", |p| {
        when(
            p.personalization.fine_tunes() && p.model.kind.is_external(),
            &["personalization.finetune_epochs", "model.kind"],
            || "fine-tuning after the last round needs a built-in model".into(),
        )
    }),
    rule("new_sites_need_builtin_model", |p| {
        when(
            !p.personalization.new_sites.is_empty() && p.model.kind.is_external(),
            &["personalization.new_sites", "model.kind"],
            || "new sites adapt the global model with a built-in model only".into(),
        )
    }),
    rule("local_dp_needs_sync", |p| {
        when(
            p.privacy.mode == PrivacyMode::Local && is_async(p),
            &["privacy.mode", "federation.mode"],
            || "local DP is accounted per synchronous round; use mode = \"sync\"".into(),
        )
    }),
    rule("central_dp_cannot_protect_aux_sums", |p| {
        let strategy = p.federation.strategy;
        let aux = strategy.needs().clear_aux_sum?;
        when(central(p), &["privacy.mode", "federation.strategy"], || {
            format!(
                "central DP cannot protect {strategy}'s {aux}s, which would be released \
                     without noise; choose another strategy"
            )
        })
    }),
    rule("central_dp_needs_sync", |p| {
        when(
            central(p) && is_async(p),
            &["privacy.mode", "federation.mode"],
            || "central DP is accounted per synchronous round; use mode = \"sync\"".into(),
        )
    }),
    rule("central_dp_needs_mean", |p| {
        when(
            central(p) && p.robust.rule.needs_all_updates(),
            &["privacy.mode", "robust.rule"],
            || {
                format!(
                    "central DP calibrates its noise to the mean of clipped updates; robust rule \
                     '{}' has another sensitivity. Use rule = \"mean\" with norm_bound",
                    p.robust.rule
                )
            },
        )
    }),
    rule("secagg_hides_updates_from_robust_rules", |p| {
        when(
            secagg(p) && p.robust.rule.needs_all_updates(),
            &["secure_aggregation.enabled", "robust.rule"],
            || {
                format!(
                    "robust rule '{}' needs every update, but secure aggregation shows the \
                     coordinator only their sum; use rule = \"mean\" (with norm_bound, \
                     applied by each participant before masking)",
                    p.robust.rule
                )
            },
        )
    }),
    rule("secagg_cannot_mask_aux_sums", |p| {
        let strategy = p.federation.strategy;
        let aux = strategy.needs().clear_aux_sum?;
        when(
            secagg(p),
            &["secure_aggregation.enabled", "federation.strategy"],
            || {
                format!(
                    "{strategy}'s {aux}s are not securely aggregated; choose another strategy \
                     or turn secure aggregation off"
                )
            },
        )
    }),
    rule("secure_buffers_hold_three", |p| {
        when(
            secagg(p)
                && is_async(p)
                && p.federation.buffer_size < p.federation.min_participants.max(3),
            &[
                "secure_aggregation.enabled",
                "federation.mode",
                "federation.buffer_size",
            ],
            || {
                format!(
                    "an asynchronous buffer is securely aggregated by a secure round among its \
                     contributors, which needs at least 3 and min_participants ({}); \
                     buffer_size is {}",
                    p.federation.min_participants, p.federation.buffer_size
                )
            },
        )
    }),
    rule("homomorphic_sums_are_flat", |p| {
        let homomorphic =
            secagg(p) && p.secure_aggregation.scheme == tessera_secagg::Scheme::Homomorphic;
        topology_lacks(p, homomorphic, &["secure_aggregation.scheme"], || {
            "homomorphic aggregation (secure_aggregation.scheme = \"homomorphic\")".into()
        })
    }),
    rule("secagg_hides_adaptive_clipping_counts", |p| {
        when(
            secagg(p) && p.privacy.adaptive_clipping.is_some(),
            &["secure_aggregation.enabled", "privacy.adaptive_clipping"],
            || {
                "adaptive clipping counts clipped updates one by one, which secure \
                 aggregation hides; use a fixed clip_norm"
                    .into()
            },
        )
    }),
    rule("site_metric_sums_need_sync", |p| {
        let metrics = p.privacy.site_metrics;
        when(
            metrics.sums_only() && is_async(p),
            &["privacy.site_metrics", "federation.mode"],
            || {
                format!(
                    "site_metrics = \"{}\" (sums of the sites' evaluations only; the default) is \
                     implemented for synchronous rounds; use mode = \"sync\", or say \
                     site_metrics = \"clear\" in [privacy] to let the coordinator see each site's \
                     evaluation",
                    metrics.name()
                )
            },
        )
    }),
    rule("compression_needs_sync", |p| {
        when(
            p.compression.is_active() && is_async(p),
            &["compression", "federation.mode"],
            || {
                "compression is implemented for synchronous rounds; use mode = \"sync\" or \
                 remove [compression]"
                    .into()
            },
        )
    }),
    rule("secagg_needs_one_codec", |p| {
        when(
            secagg(p) && p.compression.adaptive.is_some(),
            &["secure_aggregation.enabled", "compression.adaptive"],
            || {
                "compression.adaptive gives participants different codecs, but secure \
                 aggregation needs every masked vector alike; use one upload codec"
                    .into()
            },
        )
    }),
    rule("secagg_needs_summable_codec", |p| {
        let up = p.compression.upload;
        when(
            secagg(p)
                && (matches!(up.sparsifier, Some(Sparsifier::TopK(_))) || up.values != Values::F32),
            &["secure_aggregation.enabled", "compression.upload"],
            || {
                format!(
                    "upload codec '{up}' cannot be summed under secure aggregation: top-k picks \
                     different coordinates at each participant and fp16 or qN values cannot be \
                     masked. Use randk:F (coordinates from a shared round seed, quantised into \
                     the masking ring with secure_aggregation.clip_range) or none"
                )
            },
        )
    }),
    rule("topology_needs_sync", |p| {
        topology_lacks(p, is_async(p), &["federation.mode"], || {
            "asynchronous rounds".into()
        })
    }),
    rule("topology_secagg", |p| {
        topology_lacks(
            p,
            secagg(p) && p.topology.kind != TopologyKind::Hierarchical,
            &["secure_aggregation.enabled"],
            || "secure aggregation".into(),
        )
    }),
    rule("topology_dp", |p| {
        // Central DP runs at the aggregators whose members are sites: each
        // clips its sites' updates and noises their sum.
        let hierarchical = p.topology.kind == TopologyKind::Hierarchical;
        topology_lacks(
            p,
            p.privacy.is_on() && !(hierarchical && central(p)),
            &["privacy.mode"],
            || {
                if hierarchical {
                    "local differential privacy (central DP runs at the aggregators)".into()
                } else {
                    "differential privacy".into()
                }
            },
        )
    }),
    rule("topology_compression", |p| {
        topology_lacks(p, p.compression.is_active(), &["compression"], || {
            "compression".into()
        })
    }),
    rule("topology_robust", |p| {
        topology_lacks(
            p,
            p.robust.rule.needs_all_updates() || p.robust.norm_bound.is_some(),
            &["robust.rule", "robust.norm_bound"],
            || "robust aggregation".into(),
        )
    }),
    rule("topology_strategy", |p| {
        let strategy = p.federation.strategy;
        topology_lacks(
            p,
            strategy.needs().flat_only,
            &["federation.strategy"],
            || strategy.as_str().into(),
        )
    }),
    rule("topology_site_metric_sums", |p| {
        let kind = tree_or_gossip(p)?;
        let metrics = p.privacy.site_metrics;
        when(
            metrics.sums_only(),
            &["topology.kind", "privacy.site_metrics"],
            || {
                format!(
                    "the {kind} topology cannot yet keep the sites' evaluations to their sums \
                     (site_metrics = \"{}\"; \"aggregate-only\" is the default); say \
                     site_metrics = \"clear\" in [privacy] to let the coordinator see each \
                     site's evaluation, or use kind = \"flat\"",
                    metrics.name()
                )
            },
        )
    }),
    rule("ifca_runs_plain_rounds", |p| {
        when(
            p.federation.strategy == StrategyKind::Ifca
                && (secagg(p)
                    || p.privacy.is_on()
                    || p.privacy.site_metrics == tessera_privacy::SiteMetrics::Dp
                    || p.compression.is_active()
                    || p.robust.rule != tessera_aggregate::RobustRule::Mean
                    || p.robust.norm_bound.is_some()),
            &[
                "federation.strategy",
                "secure_aggregation.enabled",
                "privacy.mode",
                "privacy.site_metrics",
                "compression",
                "robust",
            ],
            || {
                "ifca's cluster rounds run without secure aggregation (a cluster's sum would \
                 hide a site only among its cluster's members, and nothing yet binds the \
                 cluster models a site trains from to the secure round), DP (of the updates \
                 or the metrics), compression or a robust rule yet; turn them off, or choose \
                 another strategy"
                    .into()
            },
        )
    }),
    rule("ifca_asks_every_site_every_round", |p| {
        let f = &p.federation;
        when(
            f.strategy == StrategyKind::Ifca
                && (f.fraction < 1.0
                    || f.quorum > 1
                    || f.deadline_seconds.is_some()
                    || f.weighting != crate::Weighting::Examples
                    || p.simulation.dropout > 0.0),
            &[
                "federation.strategy",
                "federation.fraction",
                "federation.quorum",
                "federation.deadline_seconds",
                "federation.weighting",
                "simulation.dropout",
            ],
            || {
                "ifca asks every site every round and weighs updates by their rows: it runs \
                 without a cohort fraction, quorum, deadline, equal weighting or dropout yet"
                    .into()
            },
        )
    }),
    rule("ifca_needs_distinct_clusters", |p| {
        when(
            p.federation.strategy == StrategyKind::Ifca
                && (p.model.init == tessera_learn::Init::Zeros
                    || p.model.kind.is_external()
                    || p.personalization.department.is_some()
                    || !p.personalization.new_sites.is_empty()),
            &[
                "federation.strategy",
                "model.init",
                "model.kind",
                "personalization.department",
                "personalization.new_sites",
            ],
            || {
                "ifca needs clusters that start apart (model.init = \"zeros\" makes them all \
                 one) and a built-in model (each site measures every cluster's loss on its \
                 rows), and runs without departments or new sites yet"
                    .into()
            },
        )
    }),
    rule("gossip_has_no_server_strategy", |p| {
        when(
            p.topology.kind == TopologyKind::Gossip
                && p.federation.strategy != StrategyKind::FedAvg,
            &["topology.kind", "federation.strategy"],
            || "gossip has no server, so no server strategy: use strategy = \"fedavg\"".into(),
        )
    }),
    rule("external_model_needs_sync_flat_rounds", |p| {
        let topology = tree_or_gossip(p);
        when(
            p.model.kind.is_external() && (is_async(p) || topology.is_some()),
            &["model.kind", "federation.mode", "topology.kind"],
            || {
                format!(
                    "an external model (kind = \"external\") is implemented for synchronous \
                     flat rounds, not {}; use mode = \"sync\" and kind = \"flat\"",
                    match topology {
                        Some(kind) if is_async(p) =>
                            format!("asynchronous rounds or the {kind} topology"),
                        Some(kind) => format!("the {kind} topology"),
                        None => "asynchronous rounds".into(),
                    }
                )
            },
        )
    }),
    rule("robust_rule_needs_sync", |p| {
        when(
            is_async(p) && p.robust.rule.needs_all_updates(),
            &["robust.rule", "federation.mode"],
            || {
                format!(
                    "robust rule '{}' needs synchronous rounds; use mode = \"sync\"",
                    p.robust.rule
                )
            },
        )
    }),
    rule("multitask_runs_plain_rounds", |p| {
        let f = &p.federation;
        when(
            p.multitask.is_some()
                && (f.strategy != StrategyKind::FedAvg
                    || is_async(p)
                    || tree_or_gossip(p).is_some()
                    || secagg(p)
                    || p.privacy.is_on()
                    || p.privacy.site_metrics == tessera_privacy::SiteMetrics::Dp
                    || p.compression.is_active()
                    || p.robust.rule != tessera_aggregate::RobustRule::Mean
                    || p.robust.norm_bound.is_some()
                    || f.fraction < 1.0
                    || f.quorum > 1
                    || f.deadline_seconds.is_some()
                    || f.weighting != crate::Weighting::Examples
                    || p.simulation.dropout > 0.0
                    || p.data.cross_silo.is_some()),
            &[
                "multitask",
                "federation",
                "topology.kind",
                "secure_aggregation.enabled",
                "privacy",
                "compression",
                "robust",
                "simulation.dropout",
                "data.cross_silo",
            ],
            || {
                "multitask runs synchronous flat fedavg rounds of every site, weighed by rows, \
                 without secure aggregation, DP, compression, a robust rule, dropout or a \
                 cross-silo feature yet"
                    .into()
            },
        )
    }),
    rule("multitask_reads_each_tasks_rows_alike", |p| {
        let d = &p.data;
        when(
            p.multitask.is_some()
                && (d.partition.is_some()
                    || d.synthetic.is_some()
                    || (d.standardize.enabled
                        && d.standardize.scope == tessera_data::ScaleScope::Federation)),
            &[
                "multitask",
                "data.partition",
                "data.synthetic",
                "data.standardize.scope",
            ],
            || {
                "multitask reads each task's sites with the task's target: a partition dealt \
                 by target would give a site other rows in each task, generated rows have one \
                 target, and federation-wide scaling would differ by task; name the sites \
                 (site_column or [[data.sites]]) and scale per site"
                    .into()
            },
        )
    }),
    rule("multitask_shares_a_body", |p| {
        when(
            p.multitask.is_some()
                && (p.model.kind != tessera_learn::ModelKind::Mlp
                    || p.model.hidden.is_empty()
                    || p.personalization.fine_tunes()
                    || p.personalization.department.is_some()
                    || !p.personalization.new_sites.is_empty()),
            &["multitask", "model.kind", "model.hidden", "personalization"],
            || {
                "multitask shares the model's body (every layer but the last) between tasks: \
                 it needs kind = \"mlp\" with hidden layers, and runs without fine-tuning, \
                 departments or new sites yet"
                    .into()
            },
        )
    }),
    rule("attribution_needs_each_update", |p| {
        when(
            !p.contribution.is_off() && p.secure_aggregation.enabled,
            &["contribution.method", "secure_aggregation.enabled"],
            || {
                "attribution weighs each site's own update, but under secure aggregation only \
                 their sum is ever seen: turn one of them off"
                    .into()
            },
        )
    }),
    rule("attribution_values_the_plain_mean", |p| {
        let strategy = p.federation.strategy;
        when(
            !p.contribution.is_off()
                && (!matches!(strategy, StrategyKind::FedAvg | StrategyKind::FedProx)
                    || p.strategy_config().server_lr.is_some_and(|lr| lr != 1.0)
                    || p.robust.rule != tessera_aggregate::RobustRule::Mean
                    || p.robust.norm_bound.is_some()
                    || p.federation.weighting != crate::Weighting::Examples
                    || !p.compression.download.is_identity()),
            &[
                "contribution.method",
                "federation.strategy",
                "federation.weighting",
                "robust.rule",
                "robust.norm_bound",
                "compression.download",
            ],
            || {
                format!(
                    "attribution values each set of sites by the round's start plus their \
                     example-weighted mean update, which is the round's own model only under \
                     fedavg or fedprox (server_lr 1) with example weighting, the mean rule, no \
                     norm bound and no download codec (the plan has {strategy})"
                )
            },
        )
    }),
    rule("first_order_attribution_needs_builtin", |p| {
        when(
            !p.contribution.is_off()
                && matches!(
                    p.contribution.utility,
                    crate::AttributionUtility::FirstOrder | crate::AttributionUtility::Quadratic
                )
                && p.model.kind.is_external(),
            &["contribution.utility", "model.kind"],
            || {
                format!(
                    "contribution.utility = \"{}\" takes a gradient of the test loss, \
                     which an external model does not give: use \"loss\" or \"accuracy\"",
                    p.contribution.utility.name()
                )
            },
        )
    }),
    rule("attribution_is_outside_dp", |p| {
        when(
            !p.contribution.is_off()
                && (central(p) || p.privacy.site_metrics != tessera_privacy::SiteMetrics::Clear),
            &[
                "contribution.method",
                "privacy.mode",
                "privacy.site_metrics",
            ],
            || {
                "attribution's values come from each site's own update and test rows (deployed, \
                 each site sends the gradient of its test loss), seen by the coordinator and \
                 released without noise: it needs site_metrics = \"clear\" (each site's test \
                 results seen alone) and no central DP"
                    .into()
            },
        )
    }),
    rule("reputation_selection_draws_a_part", |p| {
        let c = &p.contribution;
        when(
            c.selection == crate::Selection::Reputation
                && (c.is_off() || p.federation.fraction >= 1.0),
            &[
                "contribution.selection",
                "contribution.method",
                "federation.fraction",
            ],
            || {
                "contribution.selection = \"reputation\" weighs each round's draw of a part of \
                 the sites by their attribution so far: it needs contribution.method on and \
                 federation.fraction below 1"
                    .into()
            },
        )
    }),
    rule("attribution_needs_flat_sync_rounds", |p| {
        when(
            !p.contribution.is_off()
                && (is_async(p)
                    || p.topology.kind != TopologyKind::Flat
                    || p.multitask.is_some()
                    || p.federation.strategy == StrategyKind::Ifca),
            &[
                "contribution.method",
                "federation.mode",
                "topology.kind",
                "federation.strategy",
                "multitask",
            ],
            || {
                "attribution runs on synchronous rounds of the flat topology with one global \
                 model (not ifca or multitask)"
                    .into()
            },
        )
    }),
];
