//! The report's `personalization` section: each site's own model against
//! the global model and the site's local-only model, on the site's test
//! rows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_learn::Evaluation;

/// One site's three models on its own test rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonalSite {
    /// The final global model.
    pub global: f64,
    /// The site's personalized model (personal, and fine-tuned where the
    /// plan says).
    pub personalized: f64,
    /// The site's model trained on its rows alone (the plan's baseline
    /// training); `null` where it failed to train.
    pub local_only: Option<f64>,
    /// Hierarchical: the model of the site's region (its aggregator's last
    /// regional model), which the site's own is fine-tuned from; absent
    /// for a site directly under the root (it fine-tunes the global one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regional: Option<f64>,
    /// Test rows.
    pub n_test: u64,
    /// `[personalization] department`: each department's populations at
    /// this site, every level on its test rows, by department.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub departments: BTreeMap<String, DepartmentAccuracy>,
    /// IFCA: the cluster the site took (its personalized model is that
    /// cluster's model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<usize>,
}

/// Each level's accuracy on one department's test rows at one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DepartmentAccuracy {
    /// The department's training rows (0: no department model).
    pub n_train: u64,
    /// The department's test rows.
    pub n_test: u64,
    /// The final global model.
    pub global: f64,
    /// The site's region's model (hierarchical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regional: Option<f64>,
    /// The site's own model.
    pub site: f64,
    /// The department's model: the site's fine-tuned on the department's
    /// training rows (`null` without any).
    pub department: Option<f64>,
    /// The plan's initial model trained on the department's training rows
    /// alone, as the site's local-only baseline trains (`null` without
    /// any, or where it failed to train).
    #[serde(default)]
    pub local_only: Option<f64>,
}

/// Every level's mean accuracy over the departments of all sites (each
/// site's department one population, unweighted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DepartmentsSummary {
    /// The column naming each row's department.
    pub column: String,
    /// Populations (a department at a site) with test rows.
    pub populations: usize,
    /// Mean of the global model's accuracy.
    pub mean_global: f64,
    /// Mean of the regional models' accuracy (hierarchical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_regional: Option<f64>,
    /// Mean of the site models' accuracy.
    pub mean_site: f64,
    /// Mean of the department models' accuracy, over the populations that
    /// have one.
    pub mean_department: Option<f64>,
    /// Mean of the departments' local-only models' accuracy, over the
    /// populations that have one.
    #[serde(default)]
    pub mean_local_only: Option<f64>,
    /// Populations where the department model beats the site model.
    pub department_beats_site: usize,
}

impl PersonalSite {
    /// Whether the personalized model beats both others (strictly).
    pub fn beats_both(&self) -> bool {
        self.personalized > self.global && self.local_only.is_none_or(|l| self.personalized > l)
    }
}

/// Personalized models against the global and local-only ones: accuracies
/// on each site's test rows and their unweighted means over the sites with
/// test rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonalizationReport {
    /// The strategy (personalized or not).
    pub strategy: String,
    /// Fine-tuning epochs after the last round (0: none).
    pub finetune_epochs: u64,
    /// Rows each site fine-tuned on, when fewer than all (few-shot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune_rows: Option<usize>,
    /// Mean over sites of the global model's accuracy.
    pub mean_global: f64,
    /// Mean over sites of the personalized models' accuracy.
    pub mean_personalized: f64,
    /// Mean over sites of the local-only models' accuracy (over the sites
    /// whose local-only model trained).
    pub mean_local_only: Option<f64>,
    /// Hierarchical: mean over sites of their region's model's accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_regional: Option<f64>,
    /// `[personalization] department`: every level over the departments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub departments: Option<DepartmentsSummary>,
    /// Sites where the personalized model beats both the global and the
    /// local-only model.
    pub sites_beating_both: usize,
    /// IFCA: how many sites took each cluster (by cluster; sites without
    /// test rows included, those without training rows not), the global
    /// model being the most taken one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<usize>>,
    /// Sites with test rows.
    pub sites: usize,
    /// Each site.
    pub per_site: BTreeMap<String, PersonalSite>,
}

impl PersonalizationReport {
    /// The section from each site's evaluation of the global model, of its
    /// personalized model, and its local-only accuracy (by name, where it
    /// trained); `names`, `global` and `personal` are in site order. Sites
    /// without test rows are left out.
    pub fn new(
        plan: &crate::Plan,
        names: &[&str],
        global: &[Evaluation],
        personal: &[Evaluation],
        local_only: &BTreeMap<String, f64>,
    ) -> PersonalizationReport {
        let mut per_site = BTreeMap::new();
        for ((name, g), p) in names.iter().zip(global).zip(personal) {
            if g.n_examples == 0 {
                continue;
            }
            per_site.insert(
                name.to_string(),
                PersonalSite {
                    global: g.accuracy(),
                    personalized: p.accuracy(),
                    local_only: local_only.get(*name).copied(),
                    regional: None,
                    n_test: g.n_examples,
                    departments: BTreeMap::new(),
                    cluster: None,
                },
            );
        }
        let mean = |values: Vec<f64>| {
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        let sites = per_site.len();
        PersonalizationReport {
            strategy: plan.federation.strategy.to_string(),
            finetune_epochs: plan.personalization.finetune_epochs,
            finetune_rows: plan
                .personalization
                .finetune_rows
                .filter(|_| plan.personalization.fine_tunes()),
            mean_global: mean(per_site.values().map(|s| s.global).collect()).unwrap_or(0.0),
            mean_personalized: mean(per_site.values().map(|s| s.personalized).collect())
                .unwrap_or(0.0),
            mean_local_only: mean(per_site.values().filter_map(|s| s.local_only).collect()),
            mean_regional: None,
            departments: None,
            sites_beating_both: per_site.values().filter(|s| s.beats_both()).count(),
            clusters: None,
            sites,
            per_site,
        }
    }
}

impl PersonalizationReport {
    /// IFCA: adds the cluster each site took (`chosen`, in the order of
    /// `names`; none for a site without training rows) and how many took
    /// each of the `k` clusters.
    pub fn with_clusters(mut self, names: &[&str], chosen: &[Option<usize>], k: usize) -> Self {
        let mut counts = vec![0usize; k];
        for (name, j) in names.iter().zip(chosen) {
            let Some(j) = *j else { continue };
            if let Some(count) = counts.get_mut(j) {
                *count += 1;
            }
            if let Some(site) = self.per_site.get_mut(*name) {
                site.cluster = Some(j);
            }
        }
        self.clusters = Some(counts);
        self
    }
}

impl PersonalizationReport {
    /// Adds each site's region's model accuracy (`regional`, in the order
    /// of `names`; none for a site directly under the root) and their mean.
    pub fn with_regional(mut self, names: &[&str], regional: &[Option<Evaluation>]) -> Self {
        for (name, r) in names.iter().zip(regional) {
            if let Some(site) = self.per_site.get_mut(*name) {
                site.regional = r.as_ref().map(Evaluation::accuracy);
            }
        }
        let values: Vec<f64> = self.per_site.values().filter_map(|s| s.regional).collect();
        self.mean_regional =
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
        self
    }
}

impl PersonalizationReport {
    /// Adds each site's departments (`departments`, in the order of
    /// `names`; `column` names them) and the summary over them.
    pub fn with_departments(
        mut self,
        column: &str,
        names: &[&str],
        departments: Vec<BTreeMap<String, DepartmentAccuracy>>,
    ) -> Self {
        for (name, found) in names.iter().zip(departments) {
            if let Some(site) = self.per_site.get_mut(*name) {
                site.departments = found;
            }
        }
        let all: Vec<&DepartmentAccuracy> = self
            .per_site
            .values()
            .flat_map(|s| s.departments.values())
            .collect();
        let mean = |values: Vec<f64>| {
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        self.departments = Some(DepartmentsSummary {
            column: column.to_string(),
            populations: all.len(),
            mean_global: mean(all.iter().map(|d| d.global).collect()).unwrap_or(0.0),
            mean_regional: mean(all.iter().filter_map(|d| d.regional).collect()),
            mean_site: mean(all.iter().map(|d| d.site).collect()).unwrap_or(0.0),
            mean_department: mean(all.iter().filter_map(|d| d.department).collect()),
            mean_local_only: mean(all.iter().filter_map(|d| d.local_only).collect()),
            department_beats_site: all
                .iter()
                .filter(|d| d.department.is_some_and(|a| a > d.site))
                .count(),
        });
        self
    }
}

/// Sites that took no part in the run, each adapting the final global model
/// on its own rows after it (fine-tuned as `[personalization]` says, on
/// `finetune_rows` rows where given), against the global model and a model
/// trained on the same rows alone, on the site's test rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewSitesReport {
    /// Fine-tuning epochs (0: the new sites use the global model as it is).
    pub finetune_epochs: u64,
    /// Rows each new site adapted on, when fewer than all (few-shot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune_rows: Option<usize>,
    /// Mean over new sites of the global model's accuracy.
    pub mean_global: f64,
    /// Mean over new sites of the adapted models' accuracy.
    pub mean_adapted: f64,
    /// Mean over new sites of the accuracy of a model trained on the same
    /// rows alone (the plan's baseline training; over those that trained).
    pub mean_local_only: Option<f64>,
    /// New sites where the adapted model beats both others.
    pub sites_beating_both: usize,
    /// New sites with test rows.
    pub sites: usize,
    /// Each new site (`personalized` is its adapted model).
    pub per_site: BTreeMap<String, PersonalSite>,
}

impl NewSitesReport {
    /// The section from each new site's evaluations of the global and the
    /// adapted model and its local-only accuracy (by name, where it
    /// trained).
    pub fn new(
        plan: &crate::Plan,
        names: &[&str],
        global: &[Evaluation],
        adapted: &[Evaluation],
        local_only: &BTreeMap<String, f64>,
    ) -> NewSitesReport {
        let p = PersonalizationReport::new(plan, names, global, adapted, local_only);
        NewSitesReport {
            finetune_epochs: p.finetune_epochs,
            finetune_rows: p.finetune_rows,
            mean_global: p.mean_global,
            mean_adapted: p.mean_personalized,
            mean_local_only: p.mean_local_only,
            sites_beating_both: p.sites_beating_both,
            sites: p.sites,
            per_site: p.per_site,
        }
    }
}
