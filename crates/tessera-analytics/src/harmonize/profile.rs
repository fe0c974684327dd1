//! A site's column profiles: what harmonization may learn of a site's file
//! without its rows, computed at the site and released with DP.
//!
//! **What is released.** For each column: its name, and noisy counts on
//! bins fixed before the data is read: the missing-value tokens of a fixed
//! list, the target schema's numeric codes (exact values: `0`, `1`, ...),
//! other numbers by sign and magnitude (two bins a decade from 10^-3 to
//! 10^6, zero, and the two tails), and the public vocabulary's words (the
//! target schema's level labels and their synonyms, each in four
//! spellings). Other text is counted in one bin. A row adds one to exactly
//! one bin of each column, so the
//! profile's L2 sensitivity to adding or removing a row is `sqrt(columns +
//! 1)` (the `+ 1`: the row count), and every bin gets Gaussian noise of
//! that times the noise multiplier calibrated to the profile's epsilon at
//! its delta (one Gaussian release, `DpEvent { sampling_rate: 1,
//! noise_multiplier, steps: 1 }`, the event the site's ledger charges).
//! Only bins whose noisy count exceeds what noise alone reaches in one
//! profile of ten thousand (`sigma sqrt(2 ln(10^4 n))` for a group of `n`
//! bins) are written; the rest are zero (post-processing).
//!
//! By default ([`LevelRelease::None`]) that is all, and the profile is
//! exactly the Gaussian release the ledger charges. Where the site opts
//! in, the other text is also broken down into levels, released only where
//! a level's noisy count passes a higher threshold (`1 + sigma * sqrt(2
//! ln(columns / delta))`), so that a level one row holds appears with
//! probability at most delta over all columns (the stability argument for
//! histograms over unknown keys; its bins are a second, parallel count of
//! the same values, so the sensitivity is then `sqrt(2 columns + 1)`). The
//! profile is then (epsilon, 2 delta)-DP: the ledger's entry accounts for
//! the Gaussian part; the threshold's delta is stated in the profile
//! (`level_delta`) and not in the ledger. Such a level is shown as an
//! unkeyed hash (SHA-256, which hides free text but not a word anyone can
//! guess) or by name.
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

/// The longest column or site name profiled (bytes).
pub const MAX_NAME: usize = 200;

/// How a text level outside the vocabulary is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelRelease {
    /// Not at all: only the count of such text.
    #[default]
    None,
    /// An unkeyed hash of the level (SHA-256, first 16 hex digits).
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

/// A public exact value (one of the target's numeric codes) and its noisy
/// count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointCount {
    /// The value.
    pub value: f64,
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
    /// Values equal to one of the target's numeric codes.
    pub points: Vec<PointCount>,
    /// Other numbers' bins.
    pub numbers: Vec<NumberBin>,
    /// Vocabulary words.
    pub words: Vec<WordCount>,
    /// Noisy count of other text (zero where below the noise).
    pub other_text: f64,
    /// Other text by level, where the site released levels.
    pub levels: Vec<LevelCount>,
}

impl ColumnProfile {
    /// Noisy count of numbers.
    pub fn numeric_mass(&self) -> f64 {
        self.numbers.iter().map(|b| b.count).sum::<f64>()
            + self.points.iter().map(|p| p.count).sum::<f64>()
    }

    /// Noisy count of text values (vocabulary words and other text).
    pub fn text_mass(&self) -> f64 {
        self.words.iter().map(|w| w.count).sum::<f64>() + self.other_text
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
    /// The delta of the Gaussian release.
    pub delta: f64,
    /// The delta the thresholding of released levels adds (zero without).
    pub level_delta: f64,
    /// The DP event the site's ledger charges.
    pub event: DpEvent,
    /// The noise's standard deviation on every count.
    pub sigma: f64,
    /// How other levels are shown.
    pub level_release: LevelRelease,
    /// The file's field separator.
    pub delimiter: char,
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
    /// The file's field separator (recorded for the mapping).
    pub delimiter: char,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        Self {
            epsilon: 1.0,
            delta: 1e-6,
            level_release: LevelRelease::None,
            delimiter: ',',
        }
    }
}

/// The hash a level is shown by under [`LevelRelease::Hashed`] (unkeyed).
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

/// The exact values a profile counts: the target's numeric codes and the
/// small integers 0 to 9 (where other codings of a coded column lie).
pub fn numeric_codes(schema: &TargetSchema) -> Vec<f64> {
    let mut codes: Vec<f64> = schema
        .columns
        .iter()
        .flat_map(|c| c.levels.keys())
        .filter_map(|c| c.trim().parse::<f64>().ok())
        .filter(|c| c.is_finite())
        .chain((0..10).map(f64::from))
        .collect();
    codes.sort_by(f64::total_cmp);
    codes.dedup();
    codes
}

/// The exponent of a magnitude's bin.
fn exponent(magnitude: f64) -> i32 {
    if magnitude < 1e-3 {
        return LOW;
    }
    ((2.0 * magnitude.log10()).floor() as i32).clamp(LOW + 1, HIGH)
}

/// Whether `name` may be profiled: at most [`MAX_NAME`] bytes, no control
/// characters (it is written into mapping files and terminals as is).
fn fit_name(name: &str) -> bool {
    name.len() <= MAX_NAME && !name.chars().any(char::is_control)
}

/// Profiles a file's columns (`header`, `rows`: its fields as text, split
/// at `delimiter`) for harmonization against `schema`, with noise keyed by
/// the site's secret `key`.
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
    if header.is_empty() || header.len() > super::target::MAX_COLUMNS {
        return Err(bad(format!(
            "the file has {} columns; from 1 to {} are profiled",
            header.len(),
            super::target::MAX_COLUMNS
        )));
    }
    if !fit_name(site) {
        return Err(bad(format!(
            "the site's name is longer than {MAX_NAME} bytes or has control characters"
        )));
    }
    if let Some(name) = header.iter().find(|n| !fit_name(n)) {
        return Err(bad(format!(
            "column '{}' is longer than {MAX_NAME} bytes or has control characters: rename it \
             (a mapping names it exactly)",
            tessera_core::shown(name, 80)
        )));
    }
    let levels_released = settings.level_release != LevelRelease::None;
    let z = calibrate_noise_multiplier(1.0, 1, settings.epsilon, settings.delta)?;
    // Each row adds one to one bin a column (and to the row count); with
    // levels, a text value also to its level's bin.
    let per_row = if levels_released {
        2 * header.len() + 1
    } else {
        header.len() + 1
    };
    let sigma = z * (per_row as f64).sqrt();
    // A group of bins is shown where its noise alone would pass in one
    // profile of ten thousand: `sigma * sqrt(2 ln(10^4 bins))`.
    let above = |bins: usize| sigma * (2.0 * (1e4 * bins as f64).ln()).sqrt();
    let vocabulary = vocabulary(schema);
    let codes = numeric_codes(schema);
    let numbers_shown = above(1 + 2 * (HIGH - LOW + 1) as usize);
    let tokens_shown = above(MISSING_TOKENS.len());
    let words_shown = above(4 * vocabulary.len().max(1));
    let points_shown = above(codes.len().max(1));
    let other_shown = above(1);
    let level_floor = 1.0 + sigma * (2.0 * (header.len() as f64 / settings.delta).ln()).sqrt();
    let mut noise = GaussianNoise::new(key, 0);
    let mut noisy = |count: u64| count as f64 + sigma * noise.standard_normal();
    let mut columns = Vec::with_capacity(header.len());
    for (i, name) in header.iter().enumerate() {
        let mut missing = vec![0u64; MISSING_TOKENS.len()];
        let mut points = vec![0u64; codes.len()];
        let mut numbers: BTreeMap<(i8, i32), u64> = BTreeMap::new();
        let mut words = vec![[0u64; 4]; vocabulary.len()];
        let mut other = 0u64;
        let mut levels: BTreeMap<&str, u64> = BTreeMap::new();
        for row in rows {
            let value = row.get(i).map_or("", |v| v.trim());
            if let Some(t) = MISSING_TOKENS.iter().position(|t| *t == value) {
                missing[t] += 1;
            } else if let Some(v) = value.parse::<f64>().ok().filter(|v| v.is_finite()) {
                if let Some(c) = codes.iter().position(|c| *c == v) {
                    points[c] += 1;
                } else {
                    let bin = if v == 0.0 {
                        (0, 0)
                    } else {
                        (if v < 0.0 { -1 } else { 1 }, exponent(v.abs()))
                    };
                    *numbers.entry(bin).or_default() += 1;
                }
            } else if let Some((w, s)) = vocabulary_word(&vocabulary, value) {
                words[w][s] += 1;
            } else {
                other += 1;
                if levels_released {
                    *levels.entry(value).or_default() += 1;
                }
            }
        }
        // Every fixed bin gets noise, present or not.
        let missing = MISSING_TOKENS
            .iter()
            .zip(missing)
            .map(|(t, c)| (t.to_string(), noisy(c)))
            .filter(|(_, c)| *c > tokens_shown)
            .collect();
        let points = codes
            .iter()
            .zip(points)
            .map(|(value, c)| PointCount {
                value: *value,
                count: noisy(c),
            })
            .filter(|p| p.count > points_shown)
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
        let other_text = Some(noisy(other))
            .filter(|c| *c > other_shown)
            .unwrap_or(0.0);
        let mut others: Vec<LevelCount> = levels
            .into_iter()
            .map(|(level, c)| (level, noisy(c)))
            .filter(|(_, c)| *c > level_floor)
            .map(|(level, count)| LevelCount {
                level: match settings.level_release {
                    LevelRelease::Names if fit_name(level) => level.to_string(),
                    _ => level_hash(level),
                },
                count,
            })
            .collect();
        others.sort_by(|a, b| b.count.total_cmp(&a.count));
        others.truncate(MAX_LEVELS);
        columns.push(ColumnProfile {
            name: name.clone(),
            missing,
            points,
            numbers: bins,
            words: counted,
            other_text,
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
        level_delta: if levels_released { settings.delta } else { 0.0 },
        event: DpEvent {
            sampling_rate: 1.0,
            noise_multiplier: z,
            steps: 1,
        },
        sigma,
        level_release: settings.level_release,
        delimiter: settings.delimiter,
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
    /// Reads a profile (JSON) and checks what harmonization relies on: a
    /// site's profile is outside input, so its sizes are bounded (names,
    /// bins, words, levels), its counts finite and not negative, and its
    /// names free of control characters.
    pub fn parse(text: &str) -> Result<Profile, AnalyticsError> {
        let bad = |m: String| AnalyticsError::Harmonize(format!("profile: {m}"));
        let p: Profile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if p.format != FORMAT {
            return Err(bad(format!(
                "format '{}' is not {FORMAT}",
                tessera_core::shown(&p.format, 40)
            )));
        }
        let site = tessera_core::shown(&p.site, 80).into_owned();
        if !fit_name(&p.site) || !fit_name(&p.schema) {
            return Err(bad(format!(
                "site '{site}': the site's or the schema's name is longer than {MAX_NAME} bytes \
                 or has control characters"
            )));
        }
        if p.columns.is_empty() || p.columns.len() > super::target::MAX_COLUMNS {
            return Err(bad(format!(
                "site '{site}': {} columns; from 1 to {} are read",
                p.columns.len(),
                super::target::MAX_COLUMNS
            )));
        }
        for c in &p.columns {
            let column = tessera_core::shown(&c.name, 80);
            let sized = c.numbers.len() <= 1 + 2 * (HIGH - LOW + 1) as usize
                && c.points.len() <= 4 * super::target::MAX_COLUMNS
                && c.words.len() <= 4096
                && c.levels.len() <= MAX_LEVELS
                && c.missing.len() <= MISSING_TOKENS.len();
            let names = fit_name(&c.name)
                && c.missing
                    .keys()
                    .all(|t| MISSING_TOKENS.contains(&t.as_str()))
                && c.words.iter().all(|w| fit_name(&w.word))
                && c.levels.iter().all(|l| fit_name(&l.level));
            let bins = c
                .numbers
                .iter()
                .all(|b| (-1..=1).contains(&b.sign) && (LOW..=HIGH).contains(&b.exponent));
            let counts = c
                .missing
                .values()
                .copied()
                .chain(c.points.iter().flat_map(|p| [p.count, p.value]))
                .chain(c.numbers.iter().map(|b| b.count))
                .chain(c.words.iter().map(|w| w.count))
                .chain(c.levels.iter().map(|l| l.count))
                .chain([c.other_text])
                .all(|x| x.is_finite())
                && c.missing
                    .values()
                    .copied()
                    .chain(c.points.iter().map(|p| p.count))
                    .chain(c.numbers.iter().map(|b| b.count))
                    .chain(c.words.iter().map(|w| w.count))
                    .chain(c.levels.iter().map(|l| l.count))
                    .chain([c.other_text])
                    .all(|x| x >= 0.0);
            if !(sized && names && bins && counts) {
                return Err(bad(format!(
                    "site '{site}', column '{column}': a count is negative or not a finite \
                     number, a bin is out of range, a name or token is not one a profile \
                     writes, or it has more bins, words or levels than a profile has"
                )));
            }
        }
        if !(p.rows.is_finite() && p.rows <= 1e12 && p.sigma.is_finite() && p.sigma >= 0.0) {
            return Err(bad(format!(
                "site '{site}': its row count or noise is not a finite number, or the rows are \
                 more than 10^12"
            )));
        }
        // No column counts more values than the profile's own rows allow,
        // noise and all (the rows are the site's claim: a site can still
        // weigh as much as the rows it says it has).
        let most = p.rows.max(0.0) + 10.0 * p.sigma + 1.0;
        let over = p.columns.iter().any(|c| {
            c.missing.values().sum::<f64>()
                + c.points.iter().map(|x| x.count).sum::<f64>()
                + c.numbers.iter().map(|b| b.count).sum::<f64>()
                + c.words.iter().map(|w| w.count).sum::<f64>()
                + c.other_text
                > most * 2.0
        });
        if over {
            return Err(bad(format!(
                "site '{site}': a column counts more values than the profile has rows"
            )));
        }
        if !p.delimiter.is_ascii() || matches!(p.delimiter, '"' | '\n' | '\r') {
            return Err(bad(format!(
                "site '{site}': its delimiter is not one a CSV file can have"
            )));
        }
        Ok(p)
    }
}
