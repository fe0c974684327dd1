//! Identifier preparation: normalisation and keyed hashing, so that raw
//! identifiers never enter the protocol.
//!
//! # Normalisation
//!
//! [`normalise`] applies, in this order:
//!
//! 1. Unicode case folding by lower-casing (`str::to_lowercase`);
//! 2. dropping every whitespace character, wherever it is (leading,
//!    trailing and inner: `" AB 12 "` and `"ab12"` are one identifier);
//! 3. dropping the separators `- _ . / \ : ; , | ' "` and `#`
//!    (`"AB-12/3"` and `"ab123"` are one identifier).
//!
//! Every other character (letters, digits, other symbols) is kept as is.
//! An identifier that normalises to the empty string is refused with its
//! position. Sites that match must normalise the same way; this function is
//! the one agreed rule.
//!
//! # Keyed hashing
//!
//! A [`Token`] is HMAC-SHA256 of the normalised identifier under a
//! [`MatchingKey`]: a 32-byte secret the matching sites share (agreed
//! out of band, for example sealed to each site) and the coordinator never
//! sees. Without the key, a token cannot be tested against a guessed
//! identifier, so even a party that sees tokens (it never does in the
//! protocols here: tokens are hashed to the group and blinded before they
//! leave a site) learns nothing by dictionary attack.
//!
//! # Duplicates
//!
//! [`prepare`] deduplicates: an identifier that occurs several times in a
//! site's list is one token, counted once; [`PreparedSet::first_row`] maps
//! each token back to the first row that held it. For intersection-sum,
//! [`prepare_with_values`] adds the values of a repeated identifier (the
//! identifier counts once, with the total of its rows as its value).

use hmac::{Hmac, Mac};
use rayon::prelude::*;
use sha2::Sha256;
use std::collections::HashMap;
use std::fmt;

use crate::PsiError;

/// The separators [`normalise`] drops (besides whitespace).
pub const SEPARATORS: &[char] = &['-', '_', '.', '/', '\\', ':', ';', ',', '|', '\'', '"', '#'];

/// Domain separation of the token hash.
const TOKEN_DOMAIN: &[u8] = b"tessera-psi/token/v1\0";

/// Normalises one identifier (see the module docs for the rules).
pub fn normalise(raw: &str) -> String {
    raw.to_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace() && !SEPARATORS.contains(c))
        .collect()
}

/// The secret the matching sites share to key identifier hashing.
#[derive(Clone, PartialEq, Eq)]
pub struct MatchingKey([u8; 32]);

impl MatchingKey {
    /// A key from 32 bytes agreed between the sites.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MatchingKey(bytes)
    }

    /// A fresh key from the operating system's random source (one site
    /// generates it and shares it with the others over a private channel).
    pub fn generate() -> Result<Self, PsiError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| PsiError::Randomness(e.to_string()))?;
        Ok(MatchingKey(bytes))
    }

    /// The key's bytes, to share with the other matching sites.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
}

impl fmt::Debug for MatchingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MatchingKey(<redacted>)")
    }
}

/// A keyed hash of one normalised identifier: what the protocols consume.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub [u8; 32]);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// One identifier's token: HMAC-SHA256 under `key` of its normalised form.
/// Refused when the identifier normalises to the empty string (`index` is
/// its position, for the error).
pub fn token(key: &MatchingKey, raw: &str, index: usize) -> Result<Token, PsiError> {
    let norm = normalise(raw);
    if norm.is_empty() {
        return Err(PsiError::EmptyIdentifier { index });
    }
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0)
        .map_err(|e| PsiError::Config(format!("matching key: {e}")))?;
    mac.update(TOKEN_DOMAIN);
    mac.update(norm.as_bytes());
    Ok(Token(mac.finalize().into_bytes().into()))
}

/// A site's identifiers, prepared: distinct tokens in order of first
/// occurrence. Its `Debug` shows counts only.
#[derive(Clone, PartialEq, Eq)]
pub struct PreparedSet {
    /// The distinct tokens.
    pub tokens: Vec<Token>,
    /// For each token, the input row where it first occurs.
    pub first_row: Vec<usize>,
    /// How many input rows repeated an earlier identifier.
    pub duplicates: usize,
}

impl fmt::Debug for PreparedSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedSet")
            .field("tokens", &format_args!("<{} redacted>", self.tokens.len()))
            .field("duplicates", &self.duplicates)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for PreparedValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedValues")
            .field("tokens", &format_args!("<{} redacted>", self.tokens.len()))
            .field("values", &format_args!("<{} redacted>", self.values.len()))
            .field("duplicates", &self.duplicates)
            .finish_non_exhaustive()
    }
}

fn tokens_of<S: AsRef<str> + Sync>(key: &MatchingKey, ids: &[S]) -> Result<Vec<Token>, PsiError> {
    ids.par_iter()
        .enumerate()
        .map(|(i, id)| token(key, id.as_ref(), i))
        .collect()
}

/// Normalises, hashes and deduplicates a site's identifiers.
pub fn prepare<S: AsRef<str> + Sync>(
    key: &MatchingKey,
    ids: &[S],
) -> Result<PreparedSet, PsiError> {
    let all = tokens_of(key, ids)?;
    let mut seen: HashMap<Token, usize> = HashMap::with_capacity(all.len());
    let mut out = PreparedSet {
        tokens: Vec::with_capacity(all.len()),
        first_row: Vec::with_capacity(all.len()),
        duplicates: 0,
    };
    for (row, t) in all.into_iter().enumerate() {
        if seen.insert(t, row).is_some() {
            out.duplicates += 1;
        } else {
            out.tokens.push(t);
            out.first_row.push(row);
        }
    }
    Ok(out)
}

/// A site's identifiers with one value each, prepared for
/// intersection-sum: distinct tokens, the values of repeated identifiers
/// added. Its `Debug` shows counts only.
#[derive(Clone, PartialEq, Eq)]
pub struct PreparedValues {
    /// The distinct tokens.
    pub tokens: Vec<Token>,
    /// Each token's value (the total over its rows).
    pub values: Vec<u64>,
    /// For each token, the input row where it first occurs.
    pub first_row: Vec<usize>,
    /// How many input rows repeated an earlier identifier.
    pub duplicates: usize,
}

/// Normalises, hashes and deduplicates identifiers with values; every
/// total must stay within `max_value` (the bound both sites agreed).
pub fn prepare_with_values<S: AsRef<str> + Sync>(
    key: &MatchingKey,
    rows: &[(S, u64)],
    max_value: u64,
) -> Result<PreparedValues, PsiError> {
    let all: Vec<Token> = rows
        .par_iter()
        .enumerate()
        .map(|(i, (id, _))| token(key, id.as_ref(), i))
        .collect::<Result<_, _>>()?;
    let mut seen: HashMap<Token, usize> = HashMap::with_capacity(all.len());
    let mut out = PreparedValues {
        tokens: Vec::with_capacity(all.len()),
        values: Vec::with_capacity(all.len()),
        first_row: Vec::with_capacity(all.len()),
        duplicates: 0,
    };
    for (row, (t, (_, v))) in all.into_iter().zip(rows).enumerate() {
        let slot = match seen.get(&t) {
            Some(&slot) => {
                out.duplicates += 1;
                slot
            }
            None => {
                seen.insert(t, out.tokens.len());
                out.tokens.push(t);
                out.values.push(0);
                out.first_row.push(row);
                out.tokens.len() - 1
            }
        };
        let total = out.values[slot].saturating_add(*v);
        if total > max_value {
            return Err(PsiError::ValueTooLarge {
                index: out.first_row[slot],
                value: total,
                bound: max_value,
            });
        }
        out.values[slot] = total;
    }
    Ok(out)
}
