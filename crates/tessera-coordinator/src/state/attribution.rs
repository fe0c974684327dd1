//! Attribution in deployment (`[contribution]`): each update comes with
//! its site's test-loss gradient at the round's start; at the round's
//! close the coordinator adds the counted sites' gradients and attributes
//! the round under the first-order utility, by the code a simulation runs
//! (`tessera_engine::attribution`).

use std::collections::BTreeMap;
use std::time::Instant;

use tessera_core::{ParameterSet, derive_seed};
use tessera_engine::attribution::{self, first_order};
use tessera_engine::report::RoundContribution;
use tessera_engine::{AttributionUtility, Plan, streams};

use super::Federation;
use crate::CoordinatorError;

/// Refuses a plan whose attribution a coordinator cannot compute: only the
/// first-order utility takes one gradient a site a round; the others value
/// every set's model on every site's rows.
pub(super) fn check_plan(plan: &Plan) -> Result<(), CoordinatorError> {
    let c = &plan.contribution;
    // Where the plan names its sites: a round that could count more sites
    // than the method takes is refused before any training, as a
    // simulation refuses it.
    let n = plan.data.named_sites().len();
    if !c.is_off() && n > 0 {
        let cohort = ((plan.federation.fraction * n as f64).ceil() as usize)
            .max(plan.federation.min_participants)
            .min(n);
        attribution::check_count(c.method, cohort, "a round may count")?;
    }
    if !c.is_off() && c.utility != AttributionUtility::FirstOrder {
        return Err(CoordinatorError::Config(format!(
            "contribution.utility = \"{}\" evaluates models on the sites' test rows beyond \
             one gradient a site a round, which runs in simulation only: a deployed run \
             attributes by \"first-order\" (each site sends one test gradient a round)",
            c.utility.name()
        )));
    }
    Ok(())
}

/// What an update brings for attribution (`[contribution]`, 1.26).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateExtras {
    /// The site's test rows and test-loss gradient at the round's start.
    pub gradient: Option<(u64, ParameterSet)>,
    /// The site's released data quality score.
    pub quality: Option<f64>,
}

impl Federation {
    /// Checks what an update of `site` brought for attribution: a test
    /// gradient where the plan attributes and none elsewhere, finite, over
    /// no more test rows than the site declared and the plan evaluates on;
    /// a quality score only where the plan attributes without DP, in [0, 1].
    pub(super) fn check_extras(&self, site: &str, extras: &UpdateExtras) -> Result<(), String> {
        let c = &self.plan.contribution;
        if let Some(q) = extras.quality {
            if c.is_off() || self.plan.privacy.mode != tessera_privacy::PrivacyMode::Off {
                return Err(
                    "the update came with a quality score, which this run's plan does not release \
                     (no [contribution], or DP whose budgets it would be charged to)"
                        .into(),
                );
            }
            if !(0.0..=1.0).contains(&q) {
                return Err(format!("the quality score {q:e} is not within [0, 1]"));
            }
        }
        let gradient = extras.gradient.as_ref();
        let Some((rows, g)) = gradient else {
            if c.is_off() {
                return Ok(());
            }
            return Err(
                "the update came without its test gradient, which this run's attribution \
                 ([contribution]) needs of every update"
                    .into(),
            );
        };
        if c.is_off() {
            return Err(
                "the update came with a test gradient, but this run attributes nothing".into(),
            );
        }
        let declared = self.declared_by(site)?.test;
        let most = match c.rows_per_site {
            0 => declared,
            k => declared.min(k as u64),
        };
        if *rows > most {
            return Err(format!(
                "the test gradient claims {rows} rows; '{site}' declared {declared} test rows \
                 and the plan takes at most {} a site",
                c.rows_per_site
            ));
        }
        if g.check_finite().is_err() {
            return Err("the test gradient holds a value that is not a finite number".into());
        }
        Ok(())
    }

    /// Round `round`'s attribution among its `counted` sites, from the
    /// updates and test gradients stored for it (read before the round's
    /// close clears them); `None` where the plan attributes nothing.
    pub(super) fn attribute_round(
        &self,
        round: u32,
        counted: &[String],
    ) -> Result<Option<RoundContribution>, CoordinatorError> {
        let config = self.plan.contribution;
        if config.is_off() || counted.is_empty() {
            return Ok(None);
        }
        let began = Instant::now();
        let mut stored: Vec<_> = self
            .store
            .updates(&self.run.id, round)?
            .into_iter()
            .filter(|u| counted.iter().any(|c| c == u.site.as_str()))
            .collect();
        // The plan's site order, as a simulation takes them.
        let named = self.plan.data.named_sites();
        stored.sort_by(|a, b| {
            let key =
                |u: &crate::store::StoredUpdate| attribution::site_order(&named, u.site.as_str()).0;
            key(a).cmp(&key(b)).then(a.site.cmp(&b.site))
        });
        let mut parts = Vec::with_capacity(stored.len());
        for u in &stored {
            let Some((rows, g)) = &u.test_gradient else {
                return Err(CoordinatorError::Config(format!(
                    "round {round}: the update of '{}' has no test gradient stored",
                    u.site
                )));
            };
            parts.push((*rows, g));
        }
        let Some(gradient) = attribution::mean_gradient(&parts)? else {
            tracing::warn!(
                round,
                "no counted site has test rows: the round is not attributed"
            );
            return Ok(None);
        };
        let slopes = attribution::slopes(&gradient, stored.iter().map(|u| &u.update.delta))?;
        let weights: Vec<f64> = stored.iter().map(|u| u.update.n_examples as f64).collect();
        let seed = derive_seed(self.plan.seed, &[streams::CONTRIBUTION]);
        let mut utility = |set: u64| first_order(&slopes, &weights, set);
        let Some(a) = attribution::attribute(&config, seed, round, stored.len(), &mut utility)?
        else {
            return Ok(None);
        };
        let values: BTreeMap<String, f64> = stored
            .iter()
            .zip(a.values)
            .map(|(u, v)| (u.site.as_str().to_string(), v))
            .collect();
        Ok(Some(RoundContribution {
            round,
            gain: a.gain,
            values,
            orders: a.orders,
            evaluations: a.evaluations,
            seconds: began.elapsed().as_secs_f64(),
        }))
    }
}

impl Federation {
    /// The run's attribution so far, from its rounds as stored (`None`
    /// where none was attributed, or the store cannot be read: the report
    /// goes on without it).
    pub(super) fn contributions(&self) -> Option<tessera_engine::report::ContributionsReport> {
        if self.plan.contribution.is_off() {
            return None;
        }
        let runs = [self.run.id.clone()];
        match crate::store::contributions::contributions(self.store.as_ref(), &runs) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the report goes without its attribution");
                None
            }
        }
    }
}

impl Federation {
    /// Under `selection = "reputation"`: the weights of the next round's
    /// draw, from this run's attribution so far as a simulation draws
    /// them ([`attribution::selection_weights`]: each site's mean value a
    /// round from the rounds' records, the rounds that asked it from the
    /// stored cohorts); `None` before any round closed (the first draw is
    /// uniform) or under uniform selection.
    pub(super) fn selection_weights(
        &mut self,
    ) -> Result<Option<BTreeMap<tessera_core::ParticipantId, f64>>, CoordinatorError> {
        if self.plan.contribution.selection != tessera_engine::Selection::Reputation {
            return Ok(None);
        }
        // Computed once a closed round: asked again while the run waits
        // for enough live sites, the same weights.
        if let Some((closed, weights)) = &self.selection_cache
            && *closed == self.records.len()
        {
            return Ok(weights.clone());
        }
        let cohorts = self.store.cohorts(&self.run.id)?;
        if cohorts.is_empty() {
            self.selection_cache = Some((self.records.len(), None));
            return Ok(None);
        }
        let mut sites: BTreeMap<&str, (f64, u32, u32)> = BTreeMap::new();
        for row in &cohorts {
            for site in &row.cohort {
                sites.entry(site.as_str()).or_default().2 += 1;
            }
        }
        for c in self.records.iter().filter_map(|r| r.contribution.as_ref()) {
            for (site, v) in &c.values {
                let s = sites.entry(site.as_str()).or_default();
                s.0 += v;
                s.1 += 1;
            }
        }
        let sites: Vec<_> = sites
            .into_iter()
            .map(|(site, (sum, valued, asked))| {
                let mean = (valued > 0).then(|| sum / f64::from(valued));
                (tessera_core::ParticipantId::new(site), mean, asked)
            })
            .collect();
        let weights = Some(attribution::selection_weights(&sites));
        self.selection_cache = Some((self.records.len(), weights.clone()));
        Ok(weights)
    }
}
