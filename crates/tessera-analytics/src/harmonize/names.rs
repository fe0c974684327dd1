//! Column names compared the way a person reading two data dictionaries
//! would: split into words (snake_case, CamelCase, spaces, punctuation),
//! abbreviations written out (`bp` is blood pressure, `hr` heart rate),
//! simple suffixes dropped (`resting` is `rest`), a unit in the name set
//! aside as a hint (`Cholesterol (mg/dL)`, `chol_mmol`), then the word sets
//! compared with a tolerance for misspellings (edit distance).

use tessera_data::mapping::{canonical_unit, units};

/// A column name as words, and the unit it names, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Words {
    /// The words, normalised.
    pub words: Vec<String>,
    /// A unit from the unit table (or `years`) named in it.
    pub unit: Option<String>,
}

/// Abbreviations written out (a general clinical list, not one dataset's).
const ABBREVIATIONS: &[(&str, &str)] = &[
    ("bp", "blood pressure"),
    ("sbp", "systolic blood pressure"),
    ("dbp", "diastolic blood pressure"),
    ("hr", "heart rate"),
    ("rr", "respiratory rate"),
    ("temp", "temperature"),
    ("chol", "cholesterol"),
    ("ecg", "electrocardiogram"),
    ("ekg", "electrocardiogram"),
    ("bs", "blood sugar"),
    ("bg", "blood glucose"),
    ("glu", "glucose"),
    ("hb", "hemoglobin"),
    ("hgb", "hemoglobin"),
    ("wt", "weight"),
    ("ht", "height"),
    ("bmi", "body mass index"),
    ("max", "maximum"),
    ("min", "minimum"),
    ("avg", "average"),
    ("dx", "diagnosis"),
    ("hx", "history"),
    ("pt", "patient"),
    ("num", "number"),
    ("no", "number"),
    ("nr", "number"),
    ("yob", "birth year"),
    ("dob", "birth date"),
    ("los", "length stay"),
    ("meds", "medication"),
    ("med", "medication"),
    ("dept", "department"),
    ("gender", "sex"),
    ("outcome", "diagnosis"),
    ("label", "diagnosis"),
    ("target", "diagnosis"),
];

/// Words that carry no meaning in a column name.
const STOP: &[&str] = &[
    "a", "an", "the", "of", "in", "on", "at", "by", "to", "for", "per", "and", "or", "with",
];

/// Words that are units (a hint, not part of the name).
fn word_unit(word: &str) -> Option<String> {
    match word {
        "years" | "year" | "yrs" | "yr" => Some("years".into()),
        "mmol" => Some("mmol/L".into()),
        "umol" => Some("umol/L".into()),
        "mgdl" => Some("mg/dL".into()),
        "mmhg" => Some("mmHg".into()),
        "kg" | "lbs" | "lb" | "cm" | "kpa" | "celsius" | "fahrenheit" => Some(canonical_unit(word)),
        _ => None,
    }
}

/// A parenthesised or bracketed part that is a unit, as the table spells it.
fn text_unit(text: &str) -> Option<String> {
    let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let canonical = canonical_unit(&squeezed);
    if units().contains(&canonical.as_str()) {
        return Some(canonical);
    }
    word_unit(&squeezed.to_ascii_lowercase())
}

/// `resting` is `rest`, `results` is `result`.
fn stem(word: &str) -> String {
    for suffix in ["ing", "ed", "s"] {
        if let Some(stem) = word.strip_suffix(suffix)
            && stem.len() >= 3
            && !(suffix == "s" && stem.ends_with('s'))
        {
            return stem.to_string();
        }
    }
    word.to_string()
}

/// Splits and normalises a column name (or a description).
pub fn words(name: &str) -> Words {
    let mut unit = None;
    // Parenthesised parts: a unit is a hint; anything else is dropped as a
    // remark (`resting blood pressure (on admission)`).
    let mut outer = String::new();
    let mut inner = String::new();
    let mut depth = 0usize;
    for c in name.chars() {
        match c {
            '(' | '[' => {
                depth += 1;
                if depth > 1 {
                    inner.push(c);
                }
            }
            ')' | ']' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    unit = unit.or_else(|| text_unit(&inner));
                    inner.clear();
                    outer.push(' ');
                } else {
                    inner.push(c);
                }
            }
            _ if depth > 0 => inner.push(c),
            _ => outer.push(c),
        }
    }
    if !inner.is_empty() {
        outer.push(' ');
        outer.push_str(&inner);
    }
    let mut tokens: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut previous: Option<char> = None;
    for c in outer.chars() {
        let split = !c.is_alphanumeric() && c != '/';
        let camel = previous.is_some_and(|p| p.is_lowercase()) && c.is_uppercase();
        if (split || camel) && !current.is_empty() {
            tokens.push(std::mem::take(&mut current));
        }
        if !split {
            current.extend(c.to_lowercase());
        }
        previous = Some(c);
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    let mut out = Vec::new();
    for token in tokens {
        if token.contains('/') {
            if let Some(u) = text_unit(&token) {
                unit = unit.or(Some(u));
            } else {
                out.extend(token.split('/').filter(|t| !t.is_empty()).map(stem));
            }
            continue;
        }
        if let Some(u) = word_unit(&token) {
            unit = unit.or(Some(u));
            continue;
        }
        if STOP.contains(&token.as_str()) {
            continue;
        }
        match ABBREVIATIONS.iter().find(|(a, _)| *a == token) {
            Some((_, long)) => out.extend(long.split(' ').map(stem)),
            None => out.push(stem(&token)),
        }
    }
    Words { words: out, unit }
}

/// Levenshtein distance, in characters.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// How alike two words are: 1 the same, a misspelling (edit similarity at
/// least 0.75 on words of four letters or more) its similarity, a prefix
/// of three letters or more (`resp`, `temp`) 0.8, otherwise 0.
fn word_similarity(a: &str, b: &str) -> f64 {
    if a == b {
        return 1.0;
    }
    let (la, lb) = (a.chars().count(), b.chars().count());
    if la >= 4 && lb >= 4 {
        let s = 1.0 - edits(a, b) as f64 / la.max(lb) as f64;
        if s >= 0.75 {
            return s;
        }
    }
    let (short, long) = if la <= lb { (a, b) } else { (b, a) };
    if short.chars().count() >= 3 && long.starts_with(short) {
        return 0.8;
    }
    0.0
}

/// How alike two names are, in [0, 1]: the mean of the Dice coefficient of
/// their word sets (each word counted by its best match) and the share of
/// the shorter name's words found in the longer.
pub fn similarity(a: &Words, b: &Words) -> f64 {
    if a.words.is_empty() || b.words.is_empty() {
        return 0.0;
    }
    let (short, long) = if a.words.len() <= b.words.len() {
        (a, b)
    } else {
        (b, a)
    };
    let mut used = vec![false; long.words.len()];
    let mut overlap = 0.0;
    for w in &short.words {
        let best = long
            .words
            .iter()
            .enumerate()
            .filter(|(i, _)| !used[*i])
            .map(|(i, v)| (i, word_similarity(w, v)))
            .max_by(|x, y| x.1.total_cmp(&y.1));
        if let Some((i, s)) = best
            && s > 0.0
        {
            used[i] = true;
            overlap += s;
        }
    }
    let dice = 2.0 * overlap / (short.words.len() + long.words.len()) as f64;
    let contained = overlap / short.words.len() as f64;
    (dice + contained) / 2.0
}

/// Whether a name says it holds a birth year (an age can be derived).
pub fn is_birth_year(w: &Words) -> bool {
    w.words.iter().any(|x| x == "birth") && w.words.iter().any(|x| x == "year")
        || w.words.iter().any(|x| x == "born")
        || (w.words.iter().any(|x| x == "birth") && w.unit.as_deref() == Some("years"))
}

/// A level's text as compared: lower case, `_` and `-` as spaces, spaces
/// squeezed.
pub fn level_key(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .replace(['_', '-'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Other ways a level's meaning is written (a general list).
pub const LEVEL_SYNONYMS: &[&[&str]] = &[
    &["male", "m", "man"],
    &["female", "f", "woman"],
    &["yes", "y", "true", "t", "present", "positive", "pos"],
    &["no", "n", "false", "absent", "negative", "neg"],
];

/// The words a site may write `label` with, lower case: the label as
/// written and its synonyms.
pub fn level_spellings(label: &str) -> Vec<String> {
    let key = level_key(label);
    let mut out = vec![label.trim().to_lowercase()];
    for family in LEVEL_SYNONYMS {
        if family.contains(&key.as_str()) {
            out.extend(family.iter().map(|s| s.to_string()));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Words {
        words(s)
    }

    #[test]
    fn names_split_expand_and_keep_their_unit_aside() {
        assert_eq!(w("Resting BP (mm Hg)").words, ["rest", "blood", "pressure"]);
        assert_eq!(w("Resting BP (mm Hg)").unit.as_deref(), Some("mmHg"));
        assert_eq!(w("chol_mmol").words, ["cholesterol"]);
        assert_eq!(w("chol_mmol").unit.as_deref(), Some("mmol/L"));
        assert_eq!(w("Cholesterol (mg/dL)").unit.as_deref(), Some("mg/dL"));
        assert_eq!(w("maxHeartRate").words, ["maximum", "heart", "rate"]);
        assert_eq!(w("AGE_YRS").words, ["age"]);
        assert_eq!(w("AGE_YRS").unit.as_deref(), Some("years"));
        assert!(is_birth_year(&w("birth_year")));
        assert!(is_birth_year(&w("YOB")));
        assert!(!is_birth_year(&w("age")));
    }

    #[test]
    fn similar_names_score_high_and_others_low() {
        let s = |a: &str, b: &str| similarity(&w(a), &w(b));
        assert_eq!(s("trestbps", "TRESTBPS"), 1.0);
        assert_eq!(s("bp_rest", "resting blood pressure"), 1.0);
        assert!(s("hr_max", "maximum heart rate achieved") > 0.8);
        assert!(s("Cholesterol", "serum cholestoral") > 0.6, "a misspelling");
        assert!(s("gender", "sex") == 1.0);
        assert!(s("age", "resting blood pressure") == 0.0);
        assert!(s("length_of_stay", "st depression") < 0.3);
    }
}
