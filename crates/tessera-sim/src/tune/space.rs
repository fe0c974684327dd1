//! The search space: `[search]` and `[[param]]`, their checks, the draws
//! of configurations and the brackets' layout.

use serde::{Deserialize, Serialize};
use tessera_core::SeededRng;

use crate::SimError;

/// The most configurations a search may draw.
pub const MAX_CONFIGURATIONS: usize = 1000;
/// The most parameters a space may name.
pub const MAX_PARAMS: usize = 32;
/// The most values a choice may list.
pub const MAX_CHOICES: usize = 64;
/// The most seeds (tuning or comparison) a search may name.
pub const MAX_SEEDS: usize = 20;

/// Stream tags of the search's draws.
const DRAW: u64 = 0x7475_6e65; // "tune"
pub(super) const HOLD_OUT: u64 = 0x7661_6c69; // "vali"

/// A search space file: how to search, and what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Space {
    /// How to search.
    #[serde(default)]
    pub search: SearchConfig,
    /// The parameters (`[[param]]`), drawn in this order.
    #[serde(rename = "param", default)]
    pub params: Vec<Param>,
}

/// `[search]`: successive halving's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// Hyperband (brackets from aggressive halving down to every
    /// configuration at the plan's rounds) or one bracket of successive
    /// halving.
    #[serde(default)]
    pub method: Method,
    /// What ranks configurations: the global model's mean per-site
    /// accuracy on the validation rows, or its mean log loss over them.
    #[serde(default)]
    pub objective: Objective,
    /// Hyperband: the fewest rounds a rung runs (its brackets follow from
    /// the plan's rounds over this, and eta).
    #[serde(default = "default_min_rounds")]
    pub min_rounds: u32,
    /// Halving: configurations drawn for the first rung.
    #[serde(default = "default_configurations")]
    pub configurations: usize,
    /// Each rung keeps the best `1/eta` and gives them `eta` times the rounds.
    #[serde(default = "default_eta")]
    pub eta: usize,
    /// The run seeds every configuration is run with; the objective is the
    /// mean over them.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// The share of each site's training rows held out as its validation
    /// rows, the objective's.
    #[serde(default = "default_validation")]
    pub validation: f64,
    /// The seed of the draws (configurations, validation rows).
    #[serde(default = "default_sample_seed")]
    pub sample_seed: u64,
    /// The plan as given is configuration 0 (one fewer is drawn).
    #[serde(default = "default_true")]
    pub include_plan: bool,
    /// Seeds on which the finalists (each bracket's best and the plan as
    /// given) run again at the plan's rounds, each with its own validation
    /// rows, to choose among them (none: the finalists' last standings).
    #[serde(default = "default_final_seeds")]
    pub final_seeds: Vec<u64>,
    /// Seeds on which the result is compared with the plan as given, on
    /// the test rows; none may be a tuning seed.
    #[serde(default = "default_compare_seeds")]
    pub compare_seeds: Vec<u64>,
}

/// How the search spends its rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Hyperband (Li et al., 2018): brackets of successive halving, from as
    /// many rungs as `min_rounds` allows down to one rung at the plan's
    /// rounds, so that a setting good only over many rounds is not cut
    /// early in every bracket.
    #[default]
    Hyperband,
    /// One bracket of successive halving over `configurations`.
    Halving,
}

/// What ranks configurations (the other figure breaks ties).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// The highest mean per-site validation accuracy.
    #[default]
    Accuracy,
    /// The lowest validation log loss (a proper score: less coarse than
    /// accuracy on a few rows).
    Loss,
}

fn default_min_rounds() -> u32 {
    1
}
fn default_configurations() -> usize {
    27
}
fn default_eta() -> usize {
    3
}
fn default_seeds() -> Vec<u64> {
    vec![101, 102, 103]
}
fn default_validation() -> f64 {
    0.25
}
fn default_sample_seed() -> u64 {
    1
}
fn default_true() -> bool {
    true
}
fn default_final_seeds() -> Vec<u64> {
    vec![201, 202, 203, 204, 205]
}
fn default_compare_seeds() -> Vec<u64> {
    vec![1, 2, 3, 4, 5]
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            method: Method::default(),
            objective: Objective::default(),
            min_rounds: default_min_rounds(),
            configurations: default_configurations(),
            eta: default_eta(),
            seeds: default_seeds(),
            validation: default_validation(),
            sample_seed: default_sample_seed(),
            include_plan: true,
            final_seeds: default_final_seeds(),
            compare_seeds: default_compare_seeds(),
        }
    }
}

/// One parameter: a plan key and where its values come from (exactly one
/// of `choice`, `uniform`, `log_uniform`, `int_uniform`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Param {
    /// The plan key, as `--set` takes it (`strategies.fedavg.client_lr`).
    pub key: String,
    /// One of these values, each as likely.
    #[serde(default)]
    pub choice: Option<Vec<toml::Value>>,
    /// A number uniform in `[low, high]`.
    #[serde(default)]
    pub uniform: Option<[f64; 2]>,
    /// A number whose logarithm is uniform in `[ln low, ln high]`.
    #[serde(default)]
    pub log_uniform: Option<[f64; 2]>,
    /// A whole number uniform in `low..=high`.
    #[serde(default)]
    pub int_uniform: Option<[i64; 2]>,
    /// Drawn only when an earlier key has this value: `"KEY=VALUE"`.
    #[serde(default)]
    pub when: Option<String>,
}

/// Why a space is refused.
pub(super) fn refused(why: String) -> SimError {
    SimError::Plan(tessera_engine::PlanError::Invalid(format!(
        "search space: {why}"
    )))
}

impl Space {
    /// Reads a space from TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Space, SimError> {
        let space: Space =
            toml::from_str(text).map_err(|e| refused(format!("{origin}: {}", e.message())))?;
        space.check()?;
        Ok(space)
    }

    /// Refuses a space out of bounds, with the reason.
    pub fn check(&self) -> Result<(), SimError> {
        let s = &self.search;
        if !(1..=MAX_CONFIGURATIONS).contains(&s.configurations) {
            return Err(refused(format!(
                "configurations must be 1 to {MAX_CONFIGURATIONS}, got {}",
                s.configurations
            )));
        }
        if s.min_rounds == 0 {
            return Err(refused("min_rounds must be at least 1".into()));
        }
        if !(2..=10).contains(&s.eta) {
            return Err(refused(format!("eta must be 2 to 10, got {}", s.eta)));
        }
        let named = [
            ("seeds", &s.seeds),
            ("final_seeds", &s.final_seeds),
            ("compare_seeds", &s.compare_seeds),
        ];
        for (name, seeds) in named {
            if (seeds.is_empty() && name != "final_seeds") || seeds.len() > MAX_SEEDS {
                return Err(refused(format!(
                    "{name} must list 1 to {MAX_SEEDS} seeds, got {}",
                    seeds.len()
                )));
            }
            if (1..seeds.len()).any(|i| seeds[..i].contains(&seeds[i])) {
                return Err(refused(format!("{name} lists a seed twice")));
            }
        }
        for (i, (a, first)) in named.iter().enumerate() {
            for (b, second) in &named[i + 1..] {
                if let Some(seed) = second.iter().find(|x| first.contains(x)) {
                    return Err(refused(format!(
                        "seed {seed} is in both {a} and {b}: each stage runs on seeds of its \
                         own, and the result is judged on seeds the search did not see"
                    )));
                }
            }
        }
        if !(s.validation > 0.0 && s.validation <= 0.5) {
            return Err(refused(format!(
                "validation must be a share of the training rows above 0 and at most 0.5, got {}",
                s.validation
            )));
        }
        if self.params.is_empty() || self.params.len() > MAX_PARAMS {
            return Err(refused(format!(
                "name 1 to {MAX_PARAMS} parameters ([[param]]), got {}",
                self.params.len()
            )));
        }
        for (i, p) in self.params.iter().enumerate() {
            p.check(&self.params[..i])?;
        }
        Ok(())
    }

    /// `count` configurations, each the `--set` settings of its drawn
    /// values in the space's order, from the draw stream `stream` (one per
    /// bracket). With `plan_first`, the first is the plan as given (no
    /// settings).
    pub fn draw(&self, count: usize, stream: u64, plan_first: bool) -> Vec<Vec<String>> {
        let mut rng = SeededRng::derived(self.search.sample_seed, &[DRAW, stream]);
        let mut configurations: Vec<Vec<String>> = vec![Vec::new(); usize::from(plan_first)];
        while configurations.len() < count {
            let mut drawn: Vec<(String, toml::Value)> = Vec::new();
            for p in &self.params {
                if p.applies(&drawn) {
                    drawn.push((p.key.clone(), p.draw(&mut rng)));
                }
            }
            configurations.push(drawn.iter().map(|(k, v)| setting(k, v)).collect());
        }
        configurations
    }

    /// Every bracket's configurations and rung rounds, up to the plan's
    /// `rounds`, as the space's method says.
    pub fn brackets(&self, rounds: u32) -> Vec<BracketPlan> {
        self.layout(rounds)
            .into_iter()
            .enumerate()
            .map(|(b, (count, plan_first, rounds))| BracketPlan {
                configurations: self.draw(count, b as u64, plan_first),
                rounds,
            })
            .collect()
    }

    /// Refuses a search of more than [`MAX_CONFIGURATIONS`] configurations
    /// in all over the plan's `rounds` (Hyperband's grow with the rounds
    /// over `min_rounds`).
    pub fn check_rounds(&self, rounds: u32) -> Result<(), SimError> {
        let total: usize = self.layout(rounds).iter().map(|(n, _, _)| n).sum();
        if total < 2 {
            return Err(refused(format!(
                "this search runs {total} configuration over the plan's {rounds} rounds and \
                 compares nothing: lower min_rounds or eta, or give more configurations"
            )));
        }
        if total > MAX_CONFIGURATIONS {
            return Err(refused(format!(
                "{total} configurations over the plan's {rounds} rounds, more than \
                 {MAX_CONFIGURATIONS}: raise min_rounds or eta"
            )));
        }
        Ok(())
    }

    /// Each bracket's size, whether the plan as given is its first, and its
    /// rungs' rounds.
    fn layout(&self, rounds: u32) -> Vec<(usize, bool, Vec<u32>)> {
        let s = &self.search;
        let eta = s.eta as f64;
        let at = |rung_rounds: f64| (rung_rounds.round() as u32).clamp(1, rounds.max(1));
        match s.method {
            Method::Halving => {
                // A rung more for each division by eta that leaves eta or
                // more configurations in the last rung, as long as the
                // first rung's rounds stay at min_rounds or more.
                let by_rounds = f64::from(rounds) / f64::from(s.min_rounds.clamp(1, rounds.max(1)));
                let most = (by_rounds.ln() / eta.ln() + 1e-9).floor().clamp(0.0, 31.0) as i32 + 1;
                let mut rungs = 1;
                let mut alive = s.configurations;
                while alive >= s.eta * s.eta && rungs < most {
                    alive /= s.eta;
                    rungs += 1;
                }
                let rounds = (0..rungs)
                    .map(|i| at(f64::from(rounds) / eta.powi(rungs - 1 - i)))
                    .collect();
                vec![(s.configurations, s.include_plan, rounds)]
            }
            Method::Hyperband => {
                let ratio = f64::from(rounds) / f64::from(s.min_rounds.clamp(1, rounds.max(1)));
                let s_max = (ratio.ln() / eta.ln() + 1e-9).floor().clamp(0.0, 32.0) as i32;
                (0..=s_max)
                    .rev()
                    .map(|b| {
                        let n = ((f64::from(s_max + 1) / f64::from(b + 1)) * eta.powi(b)).ceil();
                        let rounds = (0..=b)
                            .map(|i| at(f64::from(rounds) / eta.powi(b - i)))
                            .collect();
                        (n.min(1e9) as usize, s.include_plan && b == 0, rounds)
                    })
                    .collect()
            }
        }
    }
}

/// A bracket before it runs: its configurations and each rung's rounds
/// (the last the plan's).
#[derive(Debug, Clone, PartialEq)]
pub struct BracketPlan {
    /// The configurations of its first rung.
    pub configurations: Vec<Vec<String>>,
    /// Each rung's rounds.
    pub rounds: Vec<u32>,
}

/// `KEY=VALUE` as `--set` takes it: a word that reads as nothing else
/// bare (`federation.strategy=fedprox`), anything else as TOML.
pub fn setting(key: &str, value: &toml::Value) -> String {
    match value {
        toml::Value::String(s)
            if s.starts_with(|c: char| c.is_ascii_alphabetic())
                && !["true", "false", "inf", "nan"].contains(&s.as_str())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.:+".contains(c)) =>
        {
            format!("{key}={s}")
        }
        other => format!("{key}={other}"),
    }
}

/// A value as a `when` compares it: a string bare, anything else as TOML.
fn plain(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Param {
    fn check(&self, earlier: &[Param]) -> Result<(), SimError> {
        let key = self.key.as_str();
        let named = |why: &str| {
            refused(format!(
                "parameter '{}': {why}",
                tessera_core::shown(key, 80)
            ))
        };
        // Exactly the key --set reads: no spaces, no '=', no empty part, so
        // that the refusals below cannot be stepped around.
        if key.is_empty()
            || key.len() > 200
            || key.split('.').any(str::is_empty)
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(named(
                "give a plan key as --set takes it: section.key, letters, digits, '_' and '-' \
                 between dots",
            ));
        }
        if key == "seed" || key.starts_with("data.") || key == "data" {
            return Err(named(
                "the search tunes the learning on fixed data: the seed and data keys are not \
                 tunable",
            ));
        }
        if key == "federation.rounds" || key == "federation" {
            return Err(named(
                "the rounds are successive halving's budget (the last rung runs the plan's)",
            ));
        }
        if earlier.iter().any(|p| p.key == key) {
            return Err(named("named twice"));
        }
        let given = [
            self.choice.is_some(),
            self.uniform.is_some(),
            self.log_uniform.is_some(),
            self.int_uniform.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(named(
                "give exactly one of choice, uniform, log_uniform, int_uniform",
            ));
        }
        if let Some(choice) = &self.choice
            && (choice.is_empty() || choice.len() > MAX_CHOICES)
        {
            return Err(named(&format!(
                "choice must list 1 to {MAX_CHOICES} values"
            )));
        }
        let range = |[low, high]: [f64; 2], log: bool| {
            if !(low.is_finite() && high.is_finite() && low < high) || (log && low <= 0.0) {
                Err(named(&format!(
                    "the range [{low}, {high}] must be finite numbers, low below high{}",
                    if log { ", both above 0" } else { "" }
                )))
            } else {
                Ok(())
            }
        };
        if let Some(r) = self.uniform {
            range(r, false)?;
        }
        if let Some(r) = self.log_uniform {
            range(r, true)?;
        }
        if let Some([low, high]) = self.int_uniform
            && (low > high || i128::from(high) - i128::from(low) >= 1 << 32)
        {
            return Err(named(&format!(
                "int_uniform [{low}, {high}]: low must not be above high, and the range at \
                 most 2^32 values"
            )));
        }
        if let Some([low, _]) = self.log_uniform
            && low < 1e-30
        {
            return Err(named("log_uniform's low end must be at least 1e-30"));
        }
        if let Some(when) = &self.when {
            let Some((on, value)) = when.split_once('=') else {
                return Err(named("when must be \"KEY=VALUE\""));
            };
            let (on, value) = (on.trim(), value.trim());
            let Some(condition) = earlier.iter().find(|p| p.key == on) else {
                return Err(named(&format!(
                    "when names '{}', which is not an earlier parameter",
                    tessera_core::shown(on, 80)
                )));
            };
            if let Some(choice) = &condition.choice
                && !choice.iter().any(|c| plain(c) == value)
            {
                return Err(named(&format!(
                    "when: '{on}' never draws '{}'",
                    tessera_core::shown(value, 40)
                )));
            }
        }
        Ok(())
    }

    /// Whether the parameter is drawn, given the values drawn before it.
    fn applies(&self, drawn: &[(String, toml::Value)]) -> bool {
        let Some((on, value)) = self.when.as_deref().and_then(|w| w.split_once('=')) else {
            return true;
        };
        drawn
            .iter()
            .any(|(k, v)| k == on.trim() && plain(v) == value.trim())
    }

    fn draw(&self, rng: &mut SeededRng) -> toml::Value {
        if let Some(choice) = &self.choice {
            return choice[rng.below(choice.len() as u64) as usize].clone();
        }
        if let Some([low, high]) = self.uniform {
            return toml::Value::Float(rounded(rng.uniform(low, high)));
        }
        if let Some([low, high]) = self.log_uniform {
            return toml::Value::Float(rounded(rng.uniform(low.ln(), high.ln()).exp()));
        }
        let [low, high] = self.int_uniform.unwrap_or([0, 0]);
        let span = (high as i128 - low as i128 + 1) as u64;
        toml::Value::Integer((low as i128 + i128::from(rng.below(span))) as i64)
    }
}

/// Four significant digits: settings a person can read and type again.
fn rounded(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let digits = 3 - x.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits);
    let y = (x * scale).round() / scale;
    if y.is_finite() && y != 0.0 { y } else { x }
}
