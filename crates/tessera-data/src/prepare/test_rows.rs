//! A site's test (and training) rows as text, for a model file to be applied to them
//! (`ModelFile::predict`): each feature column as read (numbers printed so
//! that they read back to the same value, levels as read, a missing value
//! empty), with each row's class as the agreement names it.

use super::LocalSite;
use super::membership::Membership;
use crate::read::Values;
use crate::table::Table;

impl LocalSite {
    /// The site's test rows (as the plan splits them) as a table with the
    /// feature columns' names, and each row's class (`None` where missing).
    pub fn test_rows(&self) -> (Table, Vec<Option<String>>) {
        self.rows_of(Membership::Test)
    }

    /// The site's training rows, as [`LocalSite::test_rows`] gives the test
    /// rows (a model standardised with each site's own statistics takes
    /// them from these).
    pub fn train_rows(&self) -> (Table, Vec<Option<String>>) {
        self.rows_of(Membership::Train)
    }

    fn rows_of(&self, which: Membership) -> (Table, Vec<Option<String>>) {
        let (raw, classes, membership) = self.parts();
        let header: Vec<String> = raw.columns.iter().map(|c| c.name.clone()).collect();
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for (row, member) in membership.iter().enumerate() {
            if *member != which {
                continue;
            }
            let fields = raw
                .features
                .iter()
                .map(|values| match values {
                    Values::Numeric(v) if v[row].is_nan() => String::new(),
                    Values::Numeric(v) => v[row].to_string(),
                    Values::Categorical(c) => c
                        .levels
                        .get(c.codes[row] as usize)
                        .cloned()
                        .unwrap_or_default(),
                })
                .collect();
            rows.push((raw.lines[row], fields));
            labels.push(classes.get(row).cloned());
        }
        (Table { header, rows }, labels)
    }
}
