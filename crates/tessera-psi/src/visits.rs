//! One site's rows for a cross-silo count (`[data.cross_silo]`): each
//! row's identifier as a token, the distinct tokens with their row counts,
//! the query a site asks with and the tokens it answers for, and the
//! per-row feature from the summed noisy answers. Shared by the simulation
//! and a deployed site, so both count the same way.

use std::collections::BTreeMap;

use crate::ident::token;
use crate::noisy::occurrence_token;
use crate::{MatchingKey, PsiError, Token};

/// A site's identifiers under one matching key.
#[derive(Clone)]
pub struct Visits {
    /// Each row's index into `distinct` (`None`: no identifier).
    rows: Vec<Option<usize>>,
    /// The distinct tokens (sorted) with the number of rows of each.
    distinct: Vec<(Token, u32)>,
}

impl std::fmt::Debug for Visits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Visits({} rows, {} identifiers, <redacted>)",
            self.rows.len(),
            self.distinct.len()
        )
    }
}

impl Visits {
    /// Tokens of `identifiers` (one per row, `None` where missing) under
    /// `key`; an identifier that normalises to nothing is refused with its
    /// row.
    pub fn new(key: &MatchingKey, identifiers: &[Option<String>]) -> Result<Self, PsiError> {
        let mut index: BTreeMap<Token, u32> = BTreeMap::new();
        let mut row_tokens = Vec::with_capacity(identifiers.len());
        for (row, id) in identifiers.iter().enumerate() {
            let t = match id {
                None => None,
                Some(id) => Some(token(key, id, row)?),
            };
            if let Some(t) = t {
                let n = index.entry(t).or_default();
                *n = n.saturating_add(1);
            }
            row_tokens.push(t);
        }
        let position: BTreeMap<Token, usize> =
            index.keys().enumerate().map(|(i, t)| (*t, i)).collect();
        Ok(Visits {
            rows: row_tokens
                .iter()
                .map(|t| t.and_then(|t| position.get(&t).copied()))
                .collect(),
            distinct: index.into_iter().collect(),
        })
    }

    /// The number of distinct identifiers.
    pub fn distinct(&self) -> usize {
        self.distinct.len()
    }

    /// What this site asks with (as the receiver): `cap` occurrence
    /// tokens per distinct identifier, in order.
    pub fn query(&self, cap: u32) -> Vec<Token> {
        self.distinct
            .iter()
            .flat_map(|(t, _)| (0..cap).map(move |k| occurrence_token(t, k)))
            .collect()
    }

    /// What this site answers for (as the sender): one occurrence token per
    /// row of each identifier, up to `cap`.
    pub fn held(&self, cap: u32) -> Vec<Token> {
        self.distinct
            .iter()
            .flat_map(|(t, m)| (0..(*m).min(cap)).map(move |k| occurrence_token(t, k)))
            .collect()
    }

    /// Adds the answers to this site's [`Visits::query`] (`cap` per
    /// identifier, in order) to `totals` (one per distinct identifier).
    pub fn add_answers(
        &self,
        totals: &mut [f64],
        answers: &[f64],
        cap: u32,
    ) -> Result<(), PsiError> {
        let cap = cap.max(1) as usize;
        if totals.len() != self.distinct.len() || answers.len() != self.distinct.len() * cap {
            return Err(PsiError::Config(format!(
                "{} answers for {} identifiers of {cap} occurrences",
                answers.len(),
                self.distinct.len()
            )));
        }
        for (total, chunk) in totals.iter_mut().zip(answers.chunks(cap)) {
            *total += chunk.iter().sum::<f64>();
        }
        Ok(())
    }

    /// Each row's value of `totals` (`NaN` where the row has no identifier).
    pub fn per_row(&self, totals: &[f64]) -> Vec<f64> {
        self.rows
            .iter()
            .map(|i| i.and_then(|i| totals.get(i).copied()).unwrap_or(f64::NAN))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_map_to_their_identifiers_and_counts_are_capped() {
        let key = MatchingKey::from_bytes([3u8; 32]);
        let ids: Vec<Option<String>> = ["a", "B", "a", "", "c", "A"]
            .iter()
            .map(|s| (!s.is_empty()).then(|| s.to_string()))
            .collect();
        let v = Visits::new(&key, &ids).unwrap();
        // "a", "A" normalise alike: a (3 rows), b, c.
        assert_eq!(v.distinct(), 3);
        assert_eq!(v.query(2).len(), 6);
        assert_eq!(v.held(2).len(), 2 + 1 + 1);
        assert_eq!(v.held(1).len(), 3);
        let mut totals = vec![0.0; 3];
        v.add_answers(&mut totals, &[1.0, 1.0, 0.0, 0.5, 2.0, 0.0], 2)
            .unwrap();
        assert!(v.add_answers(&mut totals, &[1.0], 2).is_err());
        let rows = v.per_row(&totals);
        assert_eq!(rows.len(), 6);
        assert!(rows[3].is_nan());
        assert_eq!(rows[0], rows[2]);
        assert_eq!(rows[0], rows[5]);
        let mut seen: Vec<f64> = [rows[0], rows[1], rows[4]].to_vec();
        seen.sort_by(f64::total_cmp);
        assert_eq!(seen, vec![0.5, 2.0, 2.0]);
    }
}
