//! Departments, a level below a site (`[personalization] department`): a
//! categorical feature names each row's department; after the site's own
//! model is made, each department fine-tunes it on the department's
//! training rows, and every level (global, regional where the topology has
//! regions, site, department) is evaluated on the department's test rows.
//! A site has at most as many departments as a categorical column has
//! levels (1000). The same code runs in simulation and at a deployed participant; nothing
//! here leaves the site.

use std::collections::BTreeMap;

use tessera_core::{ParameterSet, tag};
use tessera_data::{Agreement, Dataset, Group, SiteData};

use crate::report::DepartmentAccuracy;
use crate::{EngineError, Plan, Site, streams};

/// A site's rows by department, training and test.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Departments {
    train: Vec<Group>,
    test: Vec<Group>,
}

/// The models of the levels above a department, and the plan's initial
/// model, which a department's local-only model trains from.
#[derive(Debug, Clone, Copy)]
pub struct Levels<'a> {
    /// The plan's initial model.
    pub initial: &'a ParameterSet,
    /// The final global model.
    pub global: &'a ParameterSet,
    /// The site's region's model, where the topology has regions.
    pub regional: Option<&'a ParameterSet>,
    /// The site's own model (personal, fine-tuned), which each department
    /// fine-tunes.
    pub site: &'a ParameterSet,
}

impl Departments {
    /// `data`'s rows by the plan's department column (`None` when the
    /// plan names none); refused when the column is not a categorical
    /// feature of `agreement`.
    pub fn of(
        plan: &Plan,
        agreement: &Agreement,
        data: &SiteData,
    ) -> Result<Option<Departments>, EngineError> {
        let Some(column) = &plan.personalization.department else {
            return Ok(None);
        };
        if !data.holds_unstandardised() {
            return Err(EngineError::State(format!(
                "personalization.department: site '{}' no longer holds its rows as encoded",
                data.name
            )));
        }
        let groups = |raw| {
            agreement
                .groups(column, raw)
                .map_err(|e| EngineError::State(format!("personalization.department: {e}")))
        };
        Ok(Some(Departments {
            train: groups(data.raw_train())?,
            test: groups(data.raw_test())?,
        }))
    }

    /// Each department with test rows: every level's accuracy on them,
    /// and the department's own model's (fine-tuned from `levels.site` on
    /// its training rows; none without training rows). `train` and `test`
    /// are the site's rows these departments were found in.
    pub fn accuracies(
        &self,
        site: &mut Site,
        plan: &Plan,
        (train, test): (&Dataset, &Dataset),
        levels: Levels<'_>,
    ) -> Result<BTreeMap<String, DepartmentAccuracy>, EngineError> {
        let mut out = BTreeMap::new();
        for group in &self.test {
            let rows = test.select(&group.rows);
            let mut accuracy = |parameters: &ParameterSet| -> Result<f64, EngineError> {
                Ok(site.evaluate(parameters, &rows)?.accuracy())
            };
            let global = accuracy(levels.global)?;
            let regional = levels.regional.map(&mut accuracy).transpose()?;
            let own = accuracy(levels.site)?;
            let trained = self.train.iter().find(|g| g.level == group.level);
            let (department, local_only) = match trained {
                Some(g) => {
                    let own_rows = train.select(&g.rows);
                    let [tuned, alone] =
                        department_models(site, plan, levels, &group.level, &own_rows);
                    let mut accuracy = |model: Result<ParameterSet, EngineError>| {
                        Ok::<_, EngineError>(site.evaluate(&model?, &rows)?.accuracy())
                    };
                    let department = Some(accuracy(tuned)?);
                    // A model that fails to train alone is reported as none.
                    (department, accuracy(alone).ok())
                }
                None => (None, None),
            };
            out.insert(
                group.level.clone(),
                DepartmentAccuracy {
                    n_train: trained.map_or(0, |g| g.rows.len() as u64),
                    n_test: group.rows.len() as u64,
                    global,
                    regional,
                    site: own,
                    department,
                    local_only,
                },
            );
        }
        Ok(out)
    }
}

/// Department `name`'s models from its training `rows`: its site's model
/// fine-tuned as `[personalization]` says (batches from the public stream
/// after the last round, this department's), and the plan's initial model
/// trained on the rows alone as the site's local-only baseline trains
/// (`[baselines]`; batches from the baseline stream, this department's).
fn department_models(
    site: &mut Site,
    plan: &Plan,
    levels: Levels<'_>,
    name: &str,
    rows: &Dataset,
) -> [Result<ParameterSet, EngineError>; 2] {
    let id = tag(site.id().as_str());
    let round = u64::from(plan.federation.rounds.saturating_add(1));
    let tuned = site.stream(&[streams::FIT, round, id, tag(name)]);
    let tuned = site.trained(levels.site, rows, &plan.finetune_training(), tuned);
    let alone = site.stream(&[streams::BASELINE, id, tag(name)]);
    let alone = site.trained(levels.initial, rows, &plan.baseline_training(), alone);
    [tuned, alone]
}
