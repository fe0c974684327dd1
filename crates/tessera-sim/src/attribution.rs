//! Each round's model attributed to the sites whose updates made it
//! (`[contribution]`): the round's utility of a set of its counted sites
//! is the value of the round's start moved by the example-weighted mean of
//! their updates, evaluated at every site on its first test rows and
//! summed across sites, as the sites' evaluations are.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;
use tessera_core::{ParameterSet, SeededRng, Update, derive_key, derive_seed, tag};
use tessera_data::quality::Quality;
use tessera_data::{Dataset, FederatedData, SiteSummary};
use tessera_engine::attribution::{self, check_count, first_order};
use tessera_engine::report::{ContributionsReport, RoundContribution, SiteRecord};
use tessera_engine::streams;
use tessera_engine::{AttributionUtility, ContributionConfig, EngineError, Plan, PlanBuild, Site};

use crate::run::{SimError, initial_model, lock};
use tessera_learn::Learner;

/// A run's attribution, round by round.
pub(crate) struct Attributor {
    config: ContributionConfig,
    /// Each site's rows for evaluating a set's model.
    test: Vec<Dataset>,
    /// With a built-in model: one learner and every site's rows together
    /// (the sums across sites are the same, without a call a site).
    pooled: Option<(Box<dyn Learner>, Dataset)>,
    seed: u64,
    rounds: Vec<RoundContribution>,
    /// Per site: rounds that asked it, rounds that counted its update.
    asked: Vec<u32>,
    counted: Vec<u32>,
    /// Per site: its quality score as it releases it (none under a plan
    /// with DP, whose budgets the release would be charged to).
    quality: Vec<Option<f64>>,
    /// Per site: its values added up, and the rounds that valued it.
    value_sum: Vec<f64>,
    valued: Vec<u32>,
}

impl Attributor {
    /// The plan's attribution over `data`'s sites, `None` when off.
    pub fn of_plan(plan: &Plan, data: &FederatedData) -> Result<Option<Attributor>, SimError> {
        let config = plan.contribution;
        if config.is_off() {
            return Ok(None);
        }
        let test: Vec<Dataset> = data
            .sites
            .iter()
            .map(|s| {
                let n = match config.rows_per_site {
                    0 => s.test.n_rows(),
                    k => k.min(s.test.n_rows()),
                };
                s.test.select(&(0..n).collect::<Vec<_>>())
            })
            .collect();
        // Before any training: a round that could count more sites than
        // the method takes, and sites with no rows to value a model on.
        let n = data.sites.len();
        // As the engine samples a round's cohort.
        let cohort = ((plan.federation.fraction * n as f64).ceil() as usize)
            .max(plan.federation.min_participants)
            .min(n);
        check_count(config.method, cohort, "a round may count").map_err(SimError::from)?;
        if !plan.model.kind.is_external() && test.iter().all(|t| t.n_rows() == 0) {
            return Err(EngineError::State(
                "attribution values models on the sites' test rows, and no site has any".into(),
            )
            .into());
        }
        let pooled = if plan.model.kind.is_external() {
            None
        } else {
            let parts: Vec<&Dataset> = test.iter().collect();
            Some((initial_model(plan, data)?, Dataset::concat(&parts)))
        };
        Ok(Some(Attributor {
            config,
            test,
            pooled,
            seed: derive_seed(plan.seed, &[streams::CONTRIBUTION]),
            rounds: Vec::new(),
            asked: vec![0; data.sites.len()],
            counted: vec![0; data.sites.len()],
            quality: if plan.privacy.mode == tessera_privacy::PrivacyMode::Off {
                released_quality(plan, data).into_iter().map(Some).collect()
            } else {
                vec![None; data.sites.len()]
            },
            value_sum: vec![0.0; data.sites.len()],
            valued: vec![0; data.sites.len()],
        }))
    }

    /// Attributes round `round`'s model, from the round's start `start`, to
    /// its counted `updates` (by site index), `names` naming the sites;
    /// `cohort` the sites it asked.
    #[allow(clippy::too_many_arguments)]
    pub fn round(
        &mut self,
        plan: &Plan,
        round: u32,
        start: &ParameterSet,
        cohort: &[usize],
        updates: &[(usize, Update)],
        sites: &[Mutex<Site>],
        names: &[&str],
    ) -> Result<(), SimError> {
        let began = Instant::now();
        for &site in cohort {
            self.asked[site] += 1;
        }
        for (site, _) in updates {
            self.counted[*site] += 1;
        }
        let n = updates.len();
        if n == 0 {
            return Ok(());
        }
        // The counted sites in the plan's order, as a deployed coordinator
        // takes them (the sets' bits, GTG-Shapley's orders).
        let named = plan.data.named_sites();
        let mut sorted: Vec<(usize, Update)> = updates.to_vec();
        sorted.sort_by(|a, b| {
            attribution::site_order(&named, names[a.0])
                .cmp(&attribution::site_order(&named, names[b.0]))
        });
        let updates = &sorted[..];
        let weights: Vec<f64> = updates.iter().map(|(_, u)| u.n_examples as f64).collect();
        let (config, seed) = (self.config, self.seed);
        // First order: each update's change of the loss along it, once.
        let slopes = match config.utility {
            AttributionUtility::FirstOrder | AttributionUtility::Quadratic => {
                match self.slopes(plan, start, updates)? {
                    Some(slopes) => Some(slopes),
                    // No counted site has test rows: the round goes without
                    // values, as a deployed coordinator's does.
                    None => return Ok(()),
                }
            }
            _ => None,
        };
        // Quadratic: the updates' inner products, and the curvature that
        // makes the whole round worth the test loss it took off.
        let curve = match (&slopes, config.utility) {
            (Some(slopes), AttributionUtility::Quadratic) => {
                // Sets are bits of a u64: the method's count check first.
                check_count(config.method, n, &format!("round {round} counted"))
                    .map_err(SimError::from)?;
                let deltas: Vec<&ParameterSet> = updates.iter().map(|(_, u)| &u.delta).collect();
                let gram = attribution::weighted_gram(&weights, &gram(&deltas)?);
                let all = tessera_contribution::everyone(n);
                let after = set_model(start, updates, &weights, all)?;
                let before = self.counted_loss(plan, start, updates, sites)?;
                let measured = before - self.counted_loss(plan, &after, updates, sites)?;
                let c = attribution::curvature(
                    first_order(slopes, &weights, all),
                    measured,
                    attribution::set_norm_sq(&weights, &gram, all),
                    attribution::loss_precision(before),
                );
                Some((gram, c))
            }
            _ => None,
        };
        let mut failed = None;
        let mut utility = |set: u64| -> f64 {
            if let Some(slopes) = &slopes {
                return match &curve {
                    Some((weighted, c)) => {
                        attribution::quadratic(slopes, &weights, weighted, *c, set)
                    }
                    None => first_order(slopes, &weights, set),
                };
            }
            match self.utility(plan, start, updates, &weights, set, sites) {
                Ok(v) => v,
                Err(e) => {
                    failed.get_or_insert(e);
                    f64::NAN
                }
            }
        };
        let attributed = attribution::attribute(&config, seed, round, n, &mut utility);
        if let Some(e) = failed {
            return Err(e);
        }
        let Some(attributed) = attributed? else {
            return Ok(());
        };
        let values = attributed.values;
        for ((site, _), v) in updates.iter().zip(&values) {
            self.value_sum[*site] += v;
            self.valued[*site] += 1;
        }
        self.rounds.push(RoundContribution {
            round,
            gain: attributed.gain,
            values: updates
                .iter()
                .zip(values)
                .map(|((site, _), v)| (names[*site].to_string(), v))
                .collect::<BTreeMap<_, _>>(),
            orders: attributed.orders,
            evaluations: attributed.evaluations,
            seconds: began.elapsed().as_secs_f64(),
        });
        Ok(())
    }

    /// The weights the next round's cohort is drawn with under
    /// `selection = "reputation"`, by site
    /// ([`attribution::selection_weights`]).
    pub fn selection_weights(
        &self,
        ids: &[tessera_core::ParticipantId],
    ) -> BTreeMap<tessera_core::ParticipantId, f64> {
        let sites: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mean =
                    (self.valued[i] > 0).then(|| self.value_sum[i] / f64::from(self.valued[i]));
                (id.clone(), mean, self.asked[i])
            })
            .collect();
        attribution::selection_weights(&sites)
    }

    /// The utility of the sites in `set` (bits index `updates`).
    fn utility(
        &mut self,
        plan: &Plan,
        start: &ParameterSet,
        updates: &[(usize, Update)],
        weights: &[f64],
        set: u64,
        sites: &[Mutex<Site>],
    ) -> Result<f64, SimError> {
        let model = set_model(start, updates, weights, set)?;
        let served = plan.served(&model)?;
        if let Some((learner, rows)) = &mut self.pooled {
            learner.set_parameters(&served)?;
            let e = learner.evaluate(rows)?;
            return Ok(self
                .config
                .utility
                .of(e.n_examples, e.loss_sum, e.n_correct));
        }
        let one = |(site, rows): (&Mutex<Site>, &Dataset)| lock(site).evaluate(&served, rows);
        let evaluations = sites
            .par_iter()
            .zip(&self.test)
            .map(one)
            .collect::<Result<Vec<_>, _>>()?;
        let (mut rows, mut loss, mut correct) = (0u64, 0.0f64, 0u64);
        for e in &evaluations {
            rows += e.n_examples;
            loss += e.loss_sum;
            correct += e.n_correct;
        }
        Ok(self.config.utility.of(rows, loss, correct))
    }

    /// The mean test loss of `model` over the counted sites' test rows
    /// (those the first-order gradient is taken on), weighted by rows.
    fn counted_loss(
        &self,
        plan: &Plan,
        model: &ParameterSet,
        updates: &[(usize, Update)],
        sites: &[Mutex<Site>],
    ) -> Result<f64, SimError> {
        let served = plan.served(model)?;
        let test = &self.test;
        let evaluations = updates
            .par_iter()
            .map(|(site, _)| lock(&sites[*site]).evaluate(&served, &test[*site]))
            .collect::<Result<Vec<_>, _>>()?;
        let (mut rows, mut loss) = (0u64, 0.0f64);
        for e in &evaluations {
            rows += e.n_examples;
            loss += e.loss_sum;
        }
        Ok(loss / rows.max(1) as f64)
    }

    /// Minus the gradient of the mean test loss at `start`, times each
    /// update (`None` where no counted site has test rows).
    fn slopes(
        &mut self,
        plan: &Plan,
        start: &ParameterSet,
        updates: &[(usize, Update)],
    ) -> Result<Option<Vec<f64>>, SimError> {
        let Some((learner, _)) = &mut self.pooled else {
            return Err(EngineError::State(
                "contribution.utility = \"first-order\" needs a built-in model".into(),
            )
            .into());
        };
        learner.set_parameters(plan.served(start)?.as_ref())?;
        // Each counted site's mean gradient over its rows (on their own
        // threads), added in the plan's site order (`updates` is in it)
        // weighted by their rows, as a deployed coordinator adds the
        // gradients its counted sites send.
        let counted: Vec<usize> = updates.iter().map(|(site, _)| *site).collect();
        // One learner a thread, each taking a run of the sites in order.
        let test = &self.test;
        let size = counted
            .len()
            .div_ceil(rayon::current_num_threads().max(1))
            .max(1);
        let learners: Vec<Box<dyn Learner>> =
            counted.chunks(size).map(|_| learner.clone_box()).collect();
        let runs = learners
            .into_par_iter()
            .zip(counted.par_chunks(size))
            .map(|(l, sites)| {
                sites
                    .iter()
                    .map(|&site| {
                        Ok(attribution::site_gradient(
                            l.as_ref(),
                            &test[site],
                            usize::MAX,
                        )?)
                    })
                    .collect::<Result<Vec<_>, SimError>>()
            })
            .collect::<Result<Vec<_>, SimError>>()?;
        let partial: Vec<(u64, ParameterSet)> = runs.into_iter().flatten().collect();
        let parts: Vec<(u64, &ParameterSet)> = partial.iter().map(|(n, g)| (*n, g)).collect();
        let Some(gradient) = attribution::mean_gradient(&parts)? else {
            return Ok(None);
        };
        Ok(Some(attribution::slopes(
            &gradient,
            updates.iter().map(|(_, u)| &u.delta),
        )?))
    }

    /// The run's report, `rounds_seconds` the rounds' wall-clock time
    /// (attribution included).
    pub fn report(self, names: &[&str], rounds_seconds: f64) -> ContributionsReport {
        let records = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let record = SiteRecord {
                    asked: self.asked[i],
                    counted: self.counted[i],
                    quality: self.quality[i],
                };
                (name.to_string(), record)
            })
            .collect();
        ContributionsReport::of_rounds(
            self.config.method.name(),
            self.config.utility.name(),
            names,
            self.rounds,
            rounds_seconds,
        )
        .with_reputation(&records, self.config.quality_epsilon, self.config.value)
    }
}

/// Each pair of `deltas`' inner product (in `f64`, the pairs on their own
/// threads): the Gram matrix whose weighted sums are the sets' mean
/// updates' squared norms ([`attribution::quadratic`]), row by row.
fn gram(deltas: &[&ParameterSet]) -> Result<Vec<Vec<f64>>, SimError> {
    let n = deltas.len();
    if let Some(d) = deltas.iter().find(|d| d.n_values() != deltas[0].n_values()) {
        return Err(EngineError::State(format!(
            "updates of {} and {} values in one round: the quadratic utility needs one model",
            deltas[0].n_values(),
            d.n_values()
        ))
        .into());
    }
    let pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| (i..n).map(move |j| (i, j))).collect();
    let dots: Vec<f64> = pairs
        .par_iter()
        .map(|&(i, j)| attribution::dot(deltas[i], deltas[j]))
        .collect();
    let mut gram = vec![vec![0.0; n]; n];
    for (&(i, j), v) in pairs.iter().zip(dots) {
        gram[i][j] = v;
        gram[j][i] = v;
    }
    Ok(gram)
}

/// The model `set`'s updates make from `start`: their mean, weighted by
/// `weights`, added to it.
fn set_model(
    start: &ParameterSet,
    updates: &[(usize, Update)],
    weights: &[f64],
    set: u64,
) -> Result<ParameterSet, SimError> {
    let mut model = start.clone();
    let members = || (0..updates.len()).filter(|i| set & (1 << i) != 0);
    let total: f64 = members().map(|i| weights[i]).sum();
    if total > 0.0 {
        for i in members() {
            let share = (weights[i] / total) as f32;
            model
                .add_scaled(&updates[i].1.delta, share)
                .map_err(EngineError::from)?;
        }
    }
    Ok(model)
}

/// What a set's evaluation sums are worth.
trait Worth {
    fn of(self, rows: u64, loss_sum: f64, correct: u64) -> f64;
}

impl Worth for AttributionUtility {
    fn of(self, rows: u64, loss_sum: f64, correct: u64) -> f64 {
        let rows = rows.max(1) as f64;
        match self {
            AttributionUtility::Loss => -loss_sum / rows,
            AttributionUtility::Accuracy => correct as f64 / rows,
            AttributionUtility::FirstOrder | AttributionUtility::Quadratic => -loss_sum / rows,
        }
    }
}

/// Each site's data quality score, as it releases it: the mean of its
/// completeness (a function of the counts its reading reports, released as
/// they are) and its label balance, distinct rows, and values in range and
/// drift where the plan measures them, each with Laplace noise of its
/// sensitivity to changing one training row over an equal share of the
/// plan's `quality_epsilon`, clamped to [0, 1] ([`Quality::released`]). The noise's key is the
/// site's own (in simulation derived from the run seed, as every simulated
/// site's secret is: an experiment, not a release).
fn released_quality(plan: &Plan, data: &FederatedData) -> Vec<f64> {
    let classes = data.task.n_classes();
    data.sites
        .iter()
        .map(|site| {
            let summary = data
                .summary
                .iter()
                .find(|s| s.site == site.name)
                .cloned()
                .unwrap_or_else(|| SiteSummary {
                    rows_read: site.train.n_rows() + site.test.n_rows(),
                    n_train: site.train.n_rows(),
                    n_test: site.test.n_rows(),
                    ..SiteSummary::default()
                });
            let key = derive_key(plan.seed, &[streams::QUALITY, tag(&site.name)]);
            let mut rng = SeededRng::from_key(key);
            Quality::measure(site, &summary, classes, &plan.data.standardize).released(
                site.train.n_rows(),
                classes,
                plan.contribution.quality_epsilon,
                true,
                &mut rng,
            )
        })
        .collect()
}
