//! A site's column profiles: what harmonization may learn of a site's file
//! without its rows, computed at the site and released with DP.
//!
//! **What is released.** For each column: its name, and noisy counts on
//! bins fixed before the data is read: the missing-value tokens of a fixed
//! list, numbers by sign and magnitude (two bins a decade from 10^-3 to
//! 10^6, zero, and the two tails), and the public vocabulary's words (the
//! target schema's level labels and their synonyms, each in four
//! spellings). A row adds one to exactly one bin of each column, so the
//! profile's L2 sensitivity to adding or removing a row is `sqrt(columns +
//! 1)` (the `+ 1`: the row count), and every bin gets Gaussian noise of
//! that times the noise multiplier calibrated to the profile's epsilon at
//! its delta (one Gaussian release, `DpEvent { sampling_rate: 1,
//! noise_multiplier, steps: 1 }`, the event the site's ledger charges).
//! Only bins whose noisy count exceeds what noise alone reaches in one
//! profile of a hundred (`sigma sqrt(2 ln(100 n))` for a group of `n`
//! bins) are written; the rest are zero (post-processing).
//!
//! Text outside the vocabulary is released only as levels whose noisy
//! count passes a higher threshold (`1 + sigma * sqrt(2 ln(columns /
//! delta))`), so that a level one row holds appears with probability at
//! most delta over all columns (the stability argument for histograms over
//! unknown keys): the profile is (epsilon, 2 delta)-DP. Such a level is
//! shown by name where the site allows (`LevelRelease::Names`), otherwise
//! as a keyed hash, which hides free text but not a word anyone can guess.
//!
//! The noise comes from the site's own secret key, never a plan's seed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tessera_privacy::{DpEvent, GaussianNoise, calibrate_noise_multiplier};

use super::names::level_spellings;
use super::target::TargetSchema;
use crate::AnalyticsError;

/// The format written and read.
pub const FORMAT: &str = "tessera-profile/1";

/// Missing-value tokens looked for (after trimming spaces).
pub const MISSING_TOKENS: &[&str] = &[
    "", "?", "NA", "N/A", "na", "n/a", "NaN", "nan", "null", "NULL", "None", "none", ".", "-",
    "missing",
];

/// The most non-vocabulary levels released per column.
const MAX_LEVELS: usize = 64;

/// Numbers' bins: two a decade (coarse enough for a small site's counts to
/// show above the noise, fine enough to tell units apart); the exponents
/// below and above are the tails.
const LOW: i32 = -7;
const HIGH: i32 = 12;

/// How a text level outside the vocabulary is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelRelease {
    /// A keyed hash of the level (SHA-256, first 16 hex digits).
    #[default]
    Hashed,
    /// The level itself.
    Names,
}

/// How a vocabulary word is spelled in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spelling {
    /// `typical angina`
    Lower,
    /// `TYPICAL ANGINA`
    Upper,
    /// `Typical Angina`
    Title,
    /// `Typical angina`
    Sentence,
}

impl Spelling {
    /// Every spelling.
    pub const ALL: [Spelling; 4] = [
        Spelling::Lower,
        Spelling::Upper,
        Spelling::Title,
        Spelling::Sentence,
    ];

    /// `word` (lower case) spelled this way.
    pub fn spell(self, word: &str) -> String {
        let capital = |w: &str| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        };
        match self {
            Spelling::Lower => word.to_string(),
            Spelling::Upper => word.to_uppercase(),
            Spelling::Title => word.split(' ').map(capital).collect::<Vec<_>>().join(" "),
            Spelling::Sentence => capital(word),
        }
    }
}

/// A numbers' bin and its noisy count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumberBin {
    /// -1, 0 (the value zero) or 1.
    pub sign: i8,
    /// Magnitudes in `[10^(e/2), 10^((e+1)/2))`; the lowest and highest
    /// exponents are the tails.
    pub exponent: i32,
    /// Noisy count.
    pub count: f64,
}

impl NumberBin {
    /// The values the bin holds, `[low, high)`.
    pub fn range(&self) -> (f64, f64) {
        let lo = if self.exponent <= LOW {
            0.0
        } else {
            10f64.powf(f64::from(self.exponent) / 2.0)
        };
        let hi = if self.exponent >= HIGH {
            f64::INFINITY
        } else {
            10f64.powf(f64::from(self.exponent + 1) / 2.0)
        };
        match self.sign {
            0 => (0.0, 0.0),
            s if s < 0 => (-hi, -lo),
            _ => (lo, hi),
        }
    }
}

/// A vocabulary word as the file spells it, and its noisy count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WordCount {
    /// The word (lower case).
    pub word: String,
    /// How it is spelled.
    pub spelling: Spelling,
    /// Noisy count.
    pub count: f64,
}

/// A level outside the vocabulary, by name or hash, and its noisy count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelCount {
    /// The level, or its hash.
    pub level: String,
    /// Noisy count.
    pub count: f64,
}

/// One column's profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    /// The file's name of the column.
    pub name: String,
    /// Missing tokens found: noisy count of each.
    pub missing: BTreeMap<String, f64>,
    /// Numbers' bins.
    pub numbers: Vec<NumberBin>,
    /// Vocabulary words.
    pub words: Vec<WordCount>,
    /// Other levels.
    pub levels: Vec<LevelCount>,
}

impl ColumnProfile {
    /// Noisy count of numbers.
    pub fn numeric_mass(&self) -> f64 {
        self.numbers.iter().map(|b| b.count).sum()
    }

    /// Noisy count of text values (vocabulary and other levels).
    pub fn text_mass(&self) -> f64 {
        self.words.iter().map(|w| w.count).sum::<f64>()
            + self.levels.iter().map(|l| l.count).sum::<f64>()
    }
}

/// A site's profile of its file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// [`FORMAT`].
    pub format: String,
    /// The site.
    pub site: String,
    /// The target schema it was computed against, and its version.
    pub schema: String,
    /// The target schema's version.
    pub schema_version: u32,
    /// Noisy row count.
    pub rows: f64,
    /// The epsilon spent.
    pub epsilon: f64,
    /// The delta of the Gaussian release (the thresholding of levels adds
    /// as much again).
    pub delta: f64,
    /// The DP event the site's ledger charges.
    pub event: DpEvent,
    /// The noise's standard deviation on every count.
    pub sigma: f64,
    /// How other levels are shown.
    pub level_release: LevelRelease,
    /// The columns, in file order.
    pub columns: Vec<ColumnProfile>,
}

/// What a profile is computed with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfileSettings {
    /// Epsilon of the whole profile.
    pub epsilon: f64,
    /// Delta of the Gaussian release.
    pub delta: f64,
    /// How other levels are shown.
    pub level_release: LevelRelease,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        Self {
            epsilon: 1.0,
            delta: 1e-6,
            level_release: LevelRelease::Hashed,
        }
    }
}

/// The hash a level is shown by under [`LevelRelease::Hashed`].
pub fn level_hash(level: &str) -> String {
    let digest = Sha256::digest(format!("tessera-level/1\0{level}").as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The public vocabulary a profile counts: the target's labels and their
/// synonyms, lower case.
pub fn vocabulary(schema: &TargetSchema) -> Vec<String> {
    let mut words: Vec<String> = schema
        .columns
        .iter()
        .flat_map(|c| c.levels.values())
        .flat_map(|label| level_spellings(label))
        .collect();
    words.sort();
    words.dedup();
    words
}

fn vocabulary_len(schema: &TargetSchema) -> usize {
    vocabulary(schema).len()
}

/// The exponent of a magnitude's bin.
fn exponent(magnitude: f64) -> i32 {
    if magnitude < 1e-3 {
        return LOW;
    }
    ((2.0 * magnitude.log10()).floor() as i32).clamp(LOW + 1, HIGH)
}

/// Profiles a file's columns (`header`, `rows`: its fields as text) for
/// harmonization against `schema`, with noise keyed by the site's secret
/// `key`.
pub fn profile(
    site: &str,
    schema: &TargetSchema,
    header: &[String],
    rows: &[Vec<String>],
    settings: ProfileSettings,
    key: [u8; 32],
) -> Result<Profile, AnalyticsError> {
    let bad = |m: String| AnalyticsError::Harmonize(format!("profile: {m}"));
    if !(settings.epsilon.is_finite() && settings.epsilon > 0.0) {
        return Err(bad(format!(
            "epsilon {} is not a positive number",
            settings.epsilon
        )));
    }
    if !(settings.delta > 0.0 && settings.delta < 1.0) {
        return Err(bad(format!("delta {} is not in (0, 1)", settings.delta)));
    }
    if header.is_empty() {
        return Err(bad("the file has no columns".into()));
    }
    let z = calibrate_noise_multiplier(1.0, 1, settings.epsilon, settings.delta)?;
    let sigma = z * ((header.len() + 1) as f64).sqrt();
    // A group of bins is shown where its noise alone would pass in one
    // profile of a hundred: `sigma * sqrt(2 ln(100 bins))`, at least 3 sigma.
    let above = |bins: usize| sigma * (2.0 * (100.0 * bins as f64).ln()).sqrt().max(3.0);
    let numbers_shown = above(1 + 2 * (HIGH - LOW + 1) as usize);
    let tokens_shown = above(MISSING_TOKENS.len());
    let words_shown = above(4 * vocabulary_len(schema).max(1));
    let level_floor = 1.0 + sigma * (2.0 * (header.len() as f64 / settings.delta).ln()).sqrt();
    let vocabulary = vocabulary(schema);
    let mut noise = GaussianNoise::new(key, 0);
    let mut noisy = |count: u64| count as f64 + sigma * noise.standard_normal();
    let mut columns = Vec::with_capacity(header.len());
    for (i, name) in header.iter().enumerate() {
        let mut missing = vec![0u64; MISSING_TOKENS.len()];
        let mut numbers: BTreeMap<(i8, i32), u64> = BTreeMap::new();
        let mut words = vec![[0u64; 4]; vocabulary.len()];
        let mut levels: BTreeMap<&str, u64> = BTreeMap::new();
        for row in rows {
            let value = row.get(i).map_or("", |v| v.trim());
            if let Some(t) = MISSING_TOKENS.iter().position(|t| *t == value) {
                missing[t] += 1;
            } else if let Some(v) = value.parse::<f64>().ok().filter(|v| v.is_finite()) {
                let bin = if v == 0.0 {
                    (0, 0)
                } else {
                    (if v < 0.0 { -1 } else { 1 }, exponent(v.abs()))
                };
                *numbers.entry(bin).or_default() += 1;
            } else if let Some((w, s)) = vocabulary_word(&vocabulary, value) {
                words[w][s] += 1;
            } else {
                *levels.entry(value).or_default() += 1;
            }
        }
        // Every fixed bin gets noise, present or not.
        let missing = MISSING_TOKENS
            .iter()
            .zip(missing)
            .map(|(t, c)| (t.to_string(), noisy(c)))
            .filter(|(_, c)| *c > tokens_shown)
            .collect();
        let mut bins = Vec::new();
        for (sign, e) in std::iter::once((0, 0))
            .chain((LOW..=HIGH).map(|e| (1, e)))
            .chain((LOW..=HIGH).map(|e| (-1, e)))
        {
            let count = noisy(numbers.get(&(sign, e)).copied().unwrap_or(0));
            if count > numbers_shown {
                bins.push(NumberBin {
                    sign,
                    exponent: e,
                    count,
                });
            }
        }
        let mut counted = Vec::new();
        for (word, spellings) in vocabulary.iter().zip(&words) {
            for (spelling, c) in Spelling::ALL.iter().zip(spellings) {
                let count = noisy(*c);
                if count > words_shown {
                    counted.push(WordCount {
                        word: word.clone(),
                        spelling: *spelling,
                        count,
                    });
                }
            }
        }
        let mut others: Vec<LevelCount> = levels
            .into_iter()
            .map(|(level, c)| (level, noisy(c)))
            .filter(|(_, c)| *c > level_floor)
            .map(|(level, count)| LevelCount {
                level: match settings.level_release {
                    LevelRelease::Names => tessera_core::shown(level, 200).into_owned(),
                    LevelRelease::Hashed => level_hash(level),
                },
                count,
            })
            .collect();
        others.sort_by(|a, b| b.count.total_cmp(&a.count));
        others.truncate(MAX_LEVELS);
        columns.push(ColumnProfile {
            name: tessera_core::shown(name, 200).into_owned(),
            missing,
            numbers: bins,
            words: counted,
            levels: others,
        });
    }
    let rows = noisy(rows.len() as u64);
    Ok(Profile {
        format: FORMAT.into(),
        site: site.into(),
        schema: schema.name.clone(),
        schema_version: schema.version,
        rows,
        epsilon: settings.epsilon,
        delta: settings.delta,
        event: DpEvent {
            sampling_rate: 1.0,
            noise_multiplier: z,
            steps: 1,
        },
        sigma,
        level_release: settings.level_release,
        columns,
    })
}

/// The vocabulary word `value` spells, and how.
fn vocabulary_word(vocabulary: &[String], value: &str) -> Option<(usize, usize)> {
    let w = vocabulary.binary_search(&value.to_lowercase()).ok()?;
    let s = Spelling::ALL
        .iter()
        .position(|s| s.spell(&vocabulary[w]) == value)?;
    Some((w, s))
}

impl Profile {
    /// Reads a profile (JSON) and checks what harmonization relies on.
    pub fn parse(text: &str) -> Result<Profile, AnalyticsError> {
        let bad = |m: String| AnalyticsError::Harmonize(format!("profile: {m}"));
        let p: Profile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if p.format != FORMAT {
            return Err(bad(format!(
                "format '{}' is not {FORMAT}",
                tessera_core::shown(&p.format, 40)
            )));
        }
        let counts = p.columns.iter().flat_map(|c| {
            c.missing
                .values()
                .copied()
                .chain(c.numbers.iter().map(|b| b.count))
                .chain(c.words.iter().map(|w| w.count))
                .chain(c.levels.iter().map(|l| l.count))
        });
        if p.columns.len() > super::target::MAX_COLUMNS
            || !counts.chain([p.rows, p.sigma]).all(f64::is_finite)
            || p.columns.iter().any(|c| {
                c.numbers
                    .iter()
                    .any(|b| !(-1..=1).contains(&b.sign) || !(LOW..=HIGH).contains(&b.exponent))
            })
        {
            return Err(bad(format!(
                "site '{}': a count is not a finite number, a bin is out of range, or it has \
                 more than {} columns",
                tessera_core::shown(&p.site, 80),
                super::target::MAX_COLUMNS
            )));
        }
        Ok(p)
    }
}
