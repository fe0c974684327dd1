use std::fmt;

use serde::{Deserialize, Serialize};

/// The name of a participant (a site). Ordered, so that every place that must
/// visit participants in a canonical order can sort them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParticipantId(String);

impl ParticipantId {
    /// A participant id from its name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The participant's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ParticipantId {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}
