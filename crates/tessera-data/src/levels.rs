//! Categorical levels: canonical text, a numeric-aware order, and the
//! federation-wide vocabulary agreed from each site's set of levels (never rows).

use std::cmp::Ordering;

/// The canonical text of a categorical value: numbers are written in one way
/// (`1.0`, `1` and `1e0` are all `1`), anything else is kept as it is.
pub fn canonical_level(text: &str) -> String {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => {
            let v = if v == 0.0 { 0.0 } else { v };
            format!("{v}")
        }
        _ => text.to_string(),
    }
}

/// Order of levels: numbers by value first, then text in byte order.
pub fn level_order(a: &str, b: &str) -> Ordering {
    let number = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite());
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x.total_cmp(&y).then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// The shared vocabulary: the union of every site's levels, in [`level_order`].
/// Each site contributes only the set of levels it has seen.
pub fn agree_levels<'a>(site_levels: impl IntoIterator<Item = &'a [String]>) -> Vec<String> {
    let mut all: Vec<String> = site_levels.into_iter().flatten().cloned().collect();
    all.sort_by(|a, b| level_order(a, b));
    all.dedup();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_canonical() {
        assert_eq!(canonical_level("1.0"), "1");
        assert_eq!(canonical_level("1e0"), "1");
        assert_eq!(canonical_level("-0.0"), "0");
        assert_eq!(canonical_level("2.5"), "2.5");
        assert_eq!(canonical_level("yes"), "yes");
        assert_eq!(canonical_level("inf"), "inf");
    }

    #[test]
    fn union_is_sorted_numbers_first() {
        let a = vec!["10".to_string(), "2".to_string()];
        let b = vec![
            "b".to_string(),
            "2".to_string(),
            "a".to_string(),
            "1".to_string(),
        ];
        assert_eq!(
            agree_levels([a.as_slice(), b.as_slice()]),
            vec!["1", "2", "10", "a", "b"]
        );
        // Text that parses as an infinite number is text: no duplicates survive.
        let c = vec!["inf".to_string(), "Infinity".to_string(), "inf".to_string()];
        assert_eq!(agree_levels([c.as_slice()]), vec!["Infinity", "inf"]);
    }
}
