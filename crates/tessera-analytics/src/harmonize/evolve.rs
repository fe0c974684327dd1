//! Schema evolution: a site whose file (or mapping) follows an older
//! version of the target schema joins a run planned on the newer one
//! through a mapping made from the schema's history.

use std::collections::BTreeMap;

use tessera_data::mapping::Mapping;

use super::target::TargetSchema;
use crate::AnalyticsError;

/// A mapping to the schema's current version for a site on version `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct Upgrade {
    /// The mapping.
    pub mapping: Mapping,
    /// The current columns renamed since `from`: (name then, name now).
    pub renamed: Vec<(String, String)>,
    /// The current columns added since `from` (no source at the site).
    pub added: Vec<String>,
}

impl TargetSchema {
    /// The mapping that reads a file of version `from` (through the site's
    /// own `mapping` to that version, where it has one) as the current
    /// version: each renamed column from its old name (or the old name's
    /// source), its recoding, conversion and derivation carried over;
    /// columns added since, and those the site's mapping already lists
    /// absent, are listed `absent` (never read from a file column of the
    /// same name, which at the older version may be another column; see
    /// [`Mapping::absent`] for what the plan then does).
    pub fn upgrade(&self, from: u32, mapping: Option<&Mapping>) -> Result<Upgrade, AnalyticsError> {
        let bad = |m: String| Err(AnalyticsError::Harmonize(format!("upgrade: {m}")));
        if from == 0 || from > self.version {
            return bad(format!(
                "version {from} is not one of this schema's (1 to {})",
                self.version
            ));
        }
        if let Some(own) = mapping.and_then(|m| m.schema_version)
            && own != from
        {
            return bad(format!(
                "the site's mapping maps to version {own}, not {from}"
            ));
        }
        // Each current column's name at version `from` (`None`: added since).
        let mut then: BTreeMap<String, Option<String>> = self
            .columns
            .iter()
            .map(|c| (c.name.clone(), Some(c.name.clone())))
            .collect();
        for change in self.history.iter().rev().filter(|c| c.version > from) {
            for name in then.values_mut() {
                let Some(current) = name.as_ref() else {
                    continue;
                };
                if change.added.contains(current) {
                    *name = None;
                } else if let Some((old, _)) =
                    change.renamed.iter().find(|(_, new)| *new == current)
                {
                    *name = Some(old.clone());
                }
            }
        }
        let own = mapping.cloned().unwrap_or(Mapping {
            version: 0,
            schema_version: None,
            header: true,
            delimiter: ',',
            missing: None,
            columns: BTreeMap::new(),
            recode: BTreeMap::new(),
            convert: BTreeMap::new(),
            derive: BTreeMap::new(),
            absent: Vec::new(),
        });
        let mut out = Mapping {
            version: own.version.saturating_add(1),
            schema_version: Some(self.version),
            columns: BTreeMap::new(),
            recode: BTreeMap::new(),
            convert: BTreeMap::new(),
            derive: BTreeMap::new(),
            absent: Vec::new(),
            ..own.clone()
        };
        // What the site's mapping says of columns the schema does not
        // have (the plan's own extras) is carried over as it is.
        let current: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        let old_names: Vec<&str> = then.values().flatten().map(String::as_str).collect();
        let extra = |name: &String| {
            !current.contains(&name.as_str()) && !old_names.contains(&name.as_str())
        };
        carry(&mut out.columns, &own.columns, &extra);
        carry(&mut out.recode, &own.recode, &extra);
        carry(&mut out.convert, &own.convert, &extra);
        carry(&mut out.derive, &own.derive, &extra);
        let (mut renamed, mut added) = (Vec::new(), Vec::new());
        for c in &self.columns {
            let Some(Some(old)) = then.get(&c.name) else {
                // Never read from a file column that happens to share its
                // name (an older column of that name may be another one).
                added.push(c.name.clone());
                out.absent.push(c.name.clone());
                continue;
            };
            if *old != c.name {
                renamed.push((old.clone(), c.name.clone()));
            }
            // Absent from the file already at version `from` (the site's
            // mapping says so): absent still, under its current name.
            if own.absent.contains(old) {
                out.absent.push(c.name.clone());
                continue;
            }
            if let Some(d) = own.derive.get(old) {
                out.derive.insert(c.name.clone(), d.clone());
            } else if let Some(source) = own.columns.get(old) {
                out.columns.insert(c.name.clone(), source.clone());
            } else if *old != c.name {
                out.columns.insert(c.name.clone(), old.clone());
            }
            // Otherwise, as before, the file's column of the same name (a
            // column the plan ignores may lack one).
            if let Some(r) = own.recode.get(old) {
                out.recode.insert(c.name.clone(), r.clone());
            }
            if let Some(v) = own.convert.get(old) {
                out.convert.insert(c.name.clone(), v.clone());
            }
        }
        Ok(Upgrade {
            mapping: out,
            renamed,
            added,
        })
    }
}

/// The entries of `from` whose column `keep` says, copied into `into`.
fn carry<T: Clone>(
    into: &mut BTreeMap<String, T>,
    from: &BTreeMap<String, T>,
    keep: &dyn Fn(&String) -> bool,
) {
    into.extend(
        from.iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
}
