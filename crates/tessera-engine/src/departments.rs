//! Departments, a level below a site (`[personalization] department`): a
//! categorical feature names each row's department; after the site's own
//! model is made, each department fine-tunes it on the department's
//! training rows, and every level (global, regional where the topology has
//! regions, site, department) is evaluated on the department's test rows.
//! A site has at most as many departments as a categorical column has
//! levels (1000). The same code runs in simulation and at a deployed participant; nothing
//! here leaves the site.

use std::collections::BTreeMap;

use tessera_core::ParameterSet;
use tessera_data::{Agreement, Dataset, Group, SiteData};

use crate::report::DepartmentAccuracy;
use crate::{EngineError, Plan, Site};

/// A site's rows by department, training and test.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Departments {
    train: Vec<Group>,
    test: Vec<Group>,
}

/// The models of the levels above a department.
#[derive(Debug, Clone, Copy)]
pub struct Levels<'a> {
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
        let groups = |raw| {
            agreement
                .groups(column, raw)
                .map_err(|e| EngineError::State(format!("personalization.department: {e}")))
        };
        Ok(Some(Departments {
            train: groups(&data.raw_train)?,
            test: groups(&data.raw_test)?,
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
            let department = match trained {
                Some(g) => {
                    let model = site.department_model(
                        plan,
                        levels.site,
                        &group.level,
                        &train.select(&g.rows),
                    )?;
                    Some(site.evaluate(&model, &rows)?.accuracy())
                }
                None => None,
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
                },
            );
        }
        Ok(out)
    }
}
