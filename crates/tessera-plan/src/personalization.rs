//! `[personalization]`: how each site's own model is made and evaluated
//! after the last round, beside the global model and the site's local-only
//! model.

use serde::{Deserialize, Serialize};

/// How personalized models are made and reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonalizationConfig {
    /// After the last round each site fine-tunes its model (its personal
    /// one under a personalized strategy, the global one otherwise) for
    /// this many epochs of the plan's local training on its own training
    /// rows, then evaluates it on its test rows (0, the default: no
    /// fine-tuning). The fine-tuned model never leaves the site.
    #[serde(default)]
    pub finetune_epochs: u64,
    /// Few-shot adaptation: fine-tune on only this many of each site's
    /// training rows, drawn without replacement from the site's public
    /// stream of the round after the last (all of them by default).
    #[serde(default)]
    pub finetune_rows: Option<usize>,
    /// The fine-tuning's learning rate (the plan's local one by default: a
    /// plan whose rounds use a small rate may want a larger one for a few
    /// epochs at the site).
    #[serde(default)]
    pub finetune_lr: Option<f32>,
    /// Simulation: sites of the data that take no part in the run and
    /// join after it, as a new hospital would. Each adapts the final
    /// global model as the fine-tuning above says (few-shot with
    /// `finetune_rows`) and is reported in the report's `new_sites` beside
    /// the global model and a model trained on the same rows alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_sites: Vec<String>,
    /// Departments, a level below a site: the categorical feature column
    /// that names each row's department. After the site's own model is
    /// made, each department of a site fine-tunes it, as above, on the
    /// department's training rows, and each level (global, regional where
    /// the topology has regions, site, department) is evaluated on the
    /// department's test rows. Department models and their figures never
    /// leave the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
}

impl PersonalizationConfig {
    /// Whether the plan fine-tunes after the last round.
    pub fn fine_tunes(&self) -> bool {
        self.finetune_epochs > 0
    }
}
