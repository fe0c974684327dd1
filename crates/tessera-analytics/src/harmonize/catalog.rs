//! The federation's feature catalog: for each target feature, the sites
//! that have it, its kind and unit, DP summaries and missingness, a
//! quality score and similar features, computed from the sites' released
//! profiles and the proposals alone (post-processing: no new release).
//!
//! Summaries are as coarse as the profiles: a quantile is the range of the
//! profile bin it falls in (half a decade wide), in the target's unit
//! after each site's conversion.

use serde::Serialize;

use super::profile::{NumberBin, Profile};
use super::propose::{Proposal, Transform};
use super::target::TargetSchema;

/// One feature of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Feature {
    /// The target's name.
    pub name: String,
    /// `measurement` or `coded`.
    pub kind: String,
    /// Its unit, where declared.
    pub unit: Option<String>,
    /// The sites that have it (their column), in profile order.
    pub sites: Vec<(String, String)>,
    /// The sites without it.
    pub absent: Vec<String>,
    /// Noisy share of missing values over the sites that have it, of
    /// what their profiles show (none where they show nothing).
    pub missing: Option<f64>,
    /// The ranges the pooled quartiles fall in (25%, 50%, 75%).
    pub quartiles: Option<[(f64, f64); 3]>,
    /// For a coded feature: noisy count of each code (text levels
    /// recoded by the proposals).
    pub codes: Vec<(String, f64)>,
    /// The quality score and its parts.
    pub quality: Quality,
    /// Features of the same kind and unit whose pooled distributions are
    /// alike at the profiles' resolution (half a decade: cosine of their
    /// histograms at least 0.9), most alike first.
    pub similar: Vec<(String, f64)>,
    /// Runs (id and plan name) whose plan used it, filled in from a run
    /// store.
    pub used_by: Vec<(String, String)>,
}

/// A feature's quality: the mean of the parts that could be measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quality {
    /// One minus the missing share.
    pub completeness: Option<f64>,
    /// The share of values in the declared typical range.
    pub plausibility: Option<f64>,
    /// The share of sites whose median's range meets the federation's
    /// interquartile range (two sites or more): at the profiles'
    /// half-decade resolution, it catches gross disagreement only.
    pub consistency: Option<f64>,
    /// The mean of those present.
    pub score: Option<f64>,
}

/// Values as (sort key, noisy count, the range they lie in) after a
/// transform: an exact code's range is the code, a bin's its ends mapped.
type Weighted = Vec<(f64, f64, (f64, f64))>;

/// A bin's ends mapped by `f` (in order), and a key between them.
fn mapped(b: &NumberBin, f: &dyn Fn(f64) -> f64) -> (f64, (f64, f64)) {
    let (lo, hi) = b.range();
    let (a, z) = (f(lo), f(hi));
    let (a, z) = (a.min(z), a.max(z));
    let key = match (a.is_finite(), z.is_finite()) {
        (true, true) => (a + z) / 2.0,
        (true, false) => a,
        _ => z,
    };
    (key, (a, z))
}

fn apply(t: &Transform, unit: Option<&str>, substance: Option<&str>, x: f64) -> f64 {
    match t {
        Transform::Convert { from } => unit
            .and_then(|u| tessera_data::mapping::conversion(from, u, substance).ok())
            .map_or(x, |l| l.scale * x + l.offset),
        Transform::YearsSince { year } => f64::from(*year) - x,
        _ => x,
    }
}

/// The weighted quantile `q` of `values` (sorted by key), as the range it
/// lies in.
fn quantile(values: &Weighted, q: f64) -> Option<(f64, f64)> {
    let total: f64 = values.iter().map(|(_, c, _)| c).sum();
    if total <= 0.0 {
        return None;
    }
    let mut seen = 0.0;
    for (_, c, range) in values {
        seen += c;
        if seen >= q * total {
            return Some(*range);
        }
    }
    None
}

/// A histogram on a fixed grid (sign and half-decade of the key), for
/// similarity.
fn grid(values: &Weighted) -> std::collections::BTreeMap<(i8, i64), f64> {
    let mut out = std::collections::BTreeMap::new();
    for (v, c, _) in values {
        let key = if *v == 0.0 {
            (0, 0)
        } else {
            (
                if *v < 0.0 { -1 } else { 1 },
                (2.0 * v.abs().log10()).floor() as i64,
            )
        };
        *out.entry(key).or_insert(0.0) += c;
    }
    out
}

fn cosine(
    a: &std::collections::BTreeMap<(i8, i64), f64>,
    b: &std::collections::BTreeMap<(i8, i64), f64>,
) -> f64 {
    let dot: f64 = a.iter().map(|(k, x)| x * b.get(k).unwrap_or(&0.0)).sum();
    let na = a.values().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.values().map(|x| x * x).sum::<f64>().sqrt();
    if na > 0.0 && nb > 0.0 {
        dot / (na * nb)
    } else {
        0.0
    }
}

/// The catalog of `schema`'s features over the sites' `profiles` and the
/// `proposals` made from them (in the same order).
pub fn catalog(
    schema: &TargetSchema,
    profiles: &[Profile],
    proposals: &[Proposal],
) -> Vec<Feature> {
    let mut features = Vec::new();
    let mut pooled: Vec<Weighted> = Vec::new();
    for t in &schema.columns {
        let (mut sites, mut absent) = (Vec::new(), Vec::new());
        let (mut missing, mut words) = (0.0, 0.0);
        let mut values: Weighted = Vec::new();
        let mut medians = Vec::new();
        let mut showing = 0usize;
        let mut unplaced = 0.0;
        let mut codes: std::collections::BTreeMap<String, f64> = Default::default();
        for (p, proposal) in profiles.iter().zip(proposals) {
            let Some(m) = proposal.matches.iter().find(|m| m.target == t.name) else {
                absent.push(p.site.clone());
                continue;
            };
            let Some(column) = p.columns.iter().find(|c| c.name == m.column) else {
                absent.push(p.site.clone());
                continue;
            };
            sites.push((p.site.clone(), m.column.clone()));
            missing += column.missing.values().sum::<f64>();
            words += column.words.iter().map(|w| w.count).sum::<f64>() + column.other_text;
            let convert =
                |x: f64| apply(&m.transform, t.unit.as_deref(), t.substance.as_deref(), x);
            let mut own: Weighted = Vec::new();
            for b in &column.numbers {
                let (key, (a, z)) = mapped(b, &convert);
                // A birth year's bin (1000 to 3162) as an age tells nothing:
                // counted as a value, placed nowhere.
                let wide = t.typical.is_some_and(|[lo, hi]| z - a > 10.0 * (hi - lo));
                if wide && matches!(m.transform, Transform::YearsSince { .. }) {
                    unplaced += b.count;
                    continue;
                }
                own.push((key, b.count, (a, z)));
            }
            for p in &column.points {
                let v = convert(p.value);
                own.push((v, p.count, (v, v)));
            }
            own.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !own.is_empty() {
                showing += 1;
            }
            if let Some(range) = quantile(&own, 0.5) {
                medians.push(range);
            }
            values.extend(own);
            if let Transform::Recode { table } = &m.transform {
                for w in &column.words {
                    if let Some(code) = table.get(&w.spelling.spell(&w.word)) {
                        *codes.entry(code.clone()).or_default() += w.count;
                    }
                }
            }
            for p in &column.points {
                let code = t
                    .levels
                    .keys()
                    .find(|c| c.trim().parse::<f64>() == Ok(p.value));
                if let Some(code) = code {
                    *codes.entry(code.clone()).or_default() += p.count;
                }
            }
        }
        values.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Shown where two sites' profiles show values (or the only site's):
        // one site's bin above the threshold may be noise alone, once in
        // ten thousand groups of bins, and a wide federation has many.
        let quartiles = match (
            quantile(&values, 0.25),
            quantile(&values, 0.5),
            quantile(&values, 0.75),
        ) {
            (Some(a), Some(b), Some(c)) if showing >= sites.len().min(2) => Some([a, b, c]),
            _ => None,
        };
        // Over what the profiles show (missing tokens, numbers, words):
        // nothing shown is nothing known, not a complete column.
        let total: f64 = values.iter().map(|(_, c, _)| c).sum();
        let shown = missing + total + words + unplaced;
        let missing_share = (shown > 0.0).then(|| (missing / shown).clamp(0.0, 1.0));
        let plausibility = match t.typical {
            Some([lo, hi]) if total > 0.0 => Some(
                values
                    .iter()
                    .filter(|(v, _, _)| (lo..=hi).contains(v))
                    .map(|(_, c, _)| c)
                    .sum::<f64>()
                    / total,
            ),
            _ => None,
        };
        // A site's median (a range) meets the federation's interquartile
        // range: at half-decade bins, a coarse test of gross disagreement
        // (another unit, another coding), not of fine differences.
        let consistency = match quartiles {
            Some([(q1, _), _, (_, q3)]) if medians.len() >= 2 => Some(
                medians.iter().filter(|(a, z)| *z >= q1 && *a <= q3).count() as f64
                    / medians.len() as f64,
            ),
            _ => None,
        };
        let completeness = missing_share.map(|m| 1.0 - m);
        let parts: Vec<f64> = [completeness, plausibility, consistency]
            .into_iter()
            .flatten()
            .collect();
        let score = (!parts.is_empty()).then(|| parts.iter().sum::<f64>() / parts.len() as f64);
        features.push(Feature {
            name: t.name.clone(),
            kind: if t.levels.is_empty() {
                "measurement"
            } else {
                "coded"
            }
            .into(),
            unit: t.unit.clone(),
            sites,
            absent,
            missing: missing_share,
            quartiles,
            codes: codes.into_iter().collect(),
            quality: Quality {
                completeness,
                plausibility,
                consistency,
                score,
            },
            similar: Vec::new(),
            used_by: Vec::new(),
        });
        pooled.push(values);
    }
    let grids: Vec<_> = pooled.iter().map(grid).collect();
    for i in 0..features.len() {
        let mut similar: Vec<(String, f64)> = (0..features.len())
            .filter(|&j| {
                j != i
                    && features[j].kind == features[i].kind
                    && features[j].unit == features[i].unit
            })
            .map(|j| (features[j].name.clone(), cosine(&grids[i], &grids[j])))
            .filter(|(_, s)| *s >= 0.9)
            .collect();
        similar.sort_by(|a, b| b.1.total_cmp(&a.1));
        similar.truncate(3);
        features[i].similar = similar;
    }
    features
}
