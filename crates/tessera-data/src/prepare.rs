//! From raw site columns to standardised per-site datasets.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use ndarray::Array2;
use tessera_core::{SeededRng, tag};

use crate::DataError;
use crate::config::{DataConfig, MembershipFile, MissingPolicy, ScaleScope};
use crate::dataset::{Dataset, FederatedData, Scaler, SiteData, SiteSummary, Task};
use crate::levels::{agree_levels, canonical_level};
use crate::read::{FeatureKind, FileSource, MISSING_CODE, RawSite, Values, read_sites};

/// Most levels a categorical column (or a target) may have.
const MAX_LEVELS: usize = 1000;

/// Where a row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    Train,
    Test,
    Excluded,
}

/// Reads and prepares every site's data as `config` describes. Relative paths
/// are resolved against `base_dir` (the plan file's folder).
pub fn load(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<FederatedData, DataError> {
    config.validate()?;
    let (layout, mut sites) = read_sites(config, base_dir, source)?;
    if sites.is_empty() {
        return Err(DataError::Unusable("no site has any rows".into()));
    }
    // A column inferred as text at any site is categorical everywhere (sites
    // share only the fact, not their rows).
    for (slot, column) in layout.iter().enumerate() {
        let any_text = sites
            .iter()
            .any(|s| matches!(s.features[slot], Values::Categorical { .. }));
        if column.kind == FeatureKind::Infer && any_text {
            for site in &mut sites {
                let values =
                    std::mem::replace(&mut site.features[slot], Values::Numeric(Vec::new()));
                site.features[slot] = values.into_categorical();
            }
        }
    }

    let task = agree_task(config, &sites)?;
    let labels: Vec<Vec<Option<u32>>> = sites
        .iter()
        .map(|s| site_labels(config, &task, s))
        .collect();

    let mut summary: Vec<SiteSummary> = Vec::with_capacity(sites.len());
    let mut memberships = Vec::with_capacity(sites.len());
    let membership_table = match &config.split.membership {
        Some(file) => Some(read_membership(file, base_dir, source)?),
        None => None,
    };
    for (site, labels) in sites.iter().zip(&labels) {
        let mut counts = SiteSummary {
            site: site.name.clone(),
            rows_read: site.lines.len(),
            ..SiteSummary::default()
        };
        let mut kept: Vec<bool> = Vec::with_capacity(site.lines.len());
        for (row, label) in labels.iter().enumerate() {
            let keep = if label.is_none() {
                counts.dropped_missing_target += 1;
                false
            } else if config.schema.missing_policy == MissingPolicy::Drop
                && site.features.iter().any(|v| v.is_missing(row))
            {
                counts.dropped_missing_feature += 1;
                false
            } else {
                true
            };
            kept.push(keep);
        }
        let membership = match &membership_table {
            Some(table) => {
                let file = config
                    .split
                    .membership
                    .as_ref()
                    .map_or(Path::new(""), |m| m.path.as_path());
                membership_from_table(table, file, site, &kept, &mut counts)?
            }
            None => random_split(config, site, labels, &kept),
        };
        counts.n_train = membership
            .iter()
            .filter(|&&m| m == Membership::Train)
            .count();
        counts.n_test = membership
            .iter()
            .filter(|&&m| m == Membership::Test)
            .count();
        if counts.n_train == 0 {
            return Err(DataError::Unusable(format!(
                "site '{}' ({}) has no training rows left ({} read)",
                site.name,
                site.file.display(),
                counts.rows_read
            )));
        }
        memberships.push(membership);
        summary.push(counts);
    }

    // The training rows of the federation must hold at least two classes.
    let mut present_classes = BTreeSet::new();
    for (labels, membership) in labels.iter().zip(&memberships) {
        for (label, m) in labels.iter().zip(membership) {
            if let (Some(label), Membership::Train) = (label, m) {
                present_classes.insert(*label);
            }
        }
    }
    if present_classes.len() < 2 {
        let only = present_classes
            .iter()
            .next()
            .map_or("none", |&c| task.classes[c as usize].as_str());
        return Err(DataError::Unusable(format!(
            "every training row has the same target class ({only}): nothing to learn"
        )));
    }

    // Shared vocabularies: each site offers the levels present in its kept rows.
    let mut encoders = Vec::with_capacity(layout.len());
    for (slot, column) in layout.iter().enumerate() {
        let spec = config.schema.columns.iter().find(|c| c.name == column.name);
        let is_categorical = matches!(sites[0].features[slot], Values::Categorical { .. });
        if !is_categorical {
            encoders.push(Encoder::Numeric);
            continue;
        }
        let site_levels: Vec<Vec<String>> = sites
            .iter()
            .zip(&memberships)
            .map(|(site, membership)| present_levels(&site.features[slot], membership))
            .collect();
        let levels = match spec.and_then(|s| s.levels.as_ref()) {
            Some(declared) => {
                let declared: Vec<String> = declared.iter().map(|l| canonical_level(l)).collect();
                for (site, membership) in sites.iter().zip(&memberships) {
                    check_declared_levels(site, slot, &column.name, &declared, membership)?;
                }
                declared
            }
            None => agree_levels(site_levels.iter().map(Vec::as_slice)),
        };
        if levels.len() > MAX_LEVELS {
            return Err(DataError::Unusable(format!(
                "column '{}' has {} distinct values, more than {MAX_LEVELS}: one-hot encoding it would \
                 make that many features; mark it `type = \"ignore\"` in the schema (or --ignore {})",
                column.name,
                levels.len(),
                column.name
            )));
        }
        let drop_first = spec.is_some_and(|s| s.drop_first);
        encoders.push(Encoder::OneHot { levels, drop_first });
    }
    let feature_names = feature_names(
        &layout.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        &encoders,
    );

    // Each site's raw columns are freed as soon as it is encoded.
    let mut prepared = Vec::with_capacity(sites.len());
    for (((site, labels), membership), counts) in sites
        .into_iter()
        .zip(&labels)
        .zip(&memberships)
        .zip(&mut summary)
    {
        prepared.push(encode_site(
            config,
            &site,
            labels,
            membership,
            &encoders,
            feature_names.len(),
            counts,
        ));
    }
    let mut data = FederatedData {
        feature_names,
        task,
        sites: prepared,
        summary,
    };
    if config.standardize.scope == ScaleScope::Federation {
        let scaler = Scaler::from_statistics(&data.federation_statistics(), &config.standardize);
        for site in &mut data.sites {
            site.train.x = scaler.apply(&site.raw_train);
            site.test.x = scaler.apply(&site.raw_test);
            site.scaler = scaler.clone();
        }
    }
    Ok(data)
}

/// How one source column becomes features.
enum Encoder {
    Numeric,
    OneHot {
        levels: Vec<String>,
        drop_first: bool,
    },
}

impl Encoder {
    fn width(&self) -> usize {
        match self {
            Encoder::Numeric => 1,
            Encoder::OneHot { levels, drop_first } => {
                levels.len() - usize::from(*drop_first && !levels.is_empty())
            }
        }
    }
}

fn feature_names(columns: &[&str], encoders: &[Encoder]) -> Vec<String> {
    let mut names = Vec::new();
    for (name, encoder) in columns.iter().zip(encoders) {
        match encoder {
            Encoder::Numeric => names.push(name.to_string()),
            Encoder::OneHot { levels, drop_first } => {
                let skip = usize::from(*drop_first);
                names.extend(levels.iter().skip(skip).map(|l| format!("{name}={l}")));
            }
        }
    }
    names
}

/// The task, agreed from the sites' sets of target values.
fn agree_task(config: &DataConfig, sites: &[RawSite]) -> Result<Task, DataError> {
    let schema = &config.schema;
    let all = agree_levels(sites.iter().map(|s| s.target_levels.as_slice()));
    let declared = |values: &[String]| -> Result<Vec<String>, DataError> {
        let canonical: Vec<String> = values.iter().map(|v| canonical_level(v)).collect();
        if !canonical.iter().any(|v| all.contains(v)) {
            return Err(DataError::Unusable(format!(
                "no row's target '{}' is {} (values seen: {})",
                schema.target,
                canonical.join(" or "),
                all.join(", ")
            )));
        }
        Ok(canonical)
    };
    let classes = if !schema.positive.is_empty() {
        let positive = declared(&schema.positive)?;
        vec![format!("not {}", positive.join("|")), positive.join("|")]
    } else if !schema.negative.is_empty() {
        let negative = declared(&schema.negative)?;
        vec![negative.join("|"), format!("not {}", negative.join("|"))]
    } else {
        all
    };
    if classes.len() < 2 {
        return Err(DataError::Unusable(format!(
            "target '{}' has a single value ({}) at every site: nothing to learn",
            schema.target,
            classes.join(", ")
        )));
    }
    if classes.len() > MAX_LEVELS {
        return Err(DataError::Unusable(format!(
            "target '{}' has {} distinct values, more than {MAX_LEVELS} classes: is it the right column?",
            schema.target,
            classes.len()
        )));
    }
    Ok(Task { classes })
}

/// Each row's class index, `None` where the target is missing.
fn site_labels(config: &DataConfig, task: &Task, site: &RawSite) -> Vec<Option<u32>> {
    let schema = &config.schema;
    let positive: Vec<String> = schema.positive.iter().map(|v| canonical_level(v)).collect();
    let negative: Vec<String> = schema.negative.iter().map(|v| canonical_level(v)).collect();
    let class_of: Vec<u32> = site
        .target_levels
        .iter()
        .map(|level| {
            if !positive.is_empty() {
                u32::from(positive.contains(level))
            } else if !negative.is_empty() {
                u32::from(!negative.contains(level))
            } else {
                task.classes.iter().position(|c| c == level).unwrap_or(0) as u32
            }
        })
        .collect();
    site.target
        .iter()
        .map(|&code| (code != MISSING_CODE).then(|| class_of[code as usize]))
        .collect()
}

/// Seeded split of the kept rows, per class when stratified.
fn random_split(
    config: &DataConfig,
    site: &RawSite,
    labels: &[Option<u32>],
    kept: &[bool],
) -> Vec<Membership> {
    let split = &config.split;
    let mut membership = vec![Membership::Excluded; labels.len()];
    let mut groups: HashMap<u32, Vec<usize>> = HashMap::new();
    for (row, label) in labels.iter().enumerate() {
        if let (true, Some(label)) = (kept[row], label) {
            let key = if split.stratify { *label } else { 0 };
            groups.entry(key).or_default().push(row);
        }
    }
    let mut keys: Vec<u32> = groups.keys().copied().collect();
    keys.sort_unstable();
    for key in keys {
        let rows = &groups[&key];
        let mut rng = SeededRng::derived(split.seed, &[tag(&site.name), u64::from(key)]);
        let order = rng.permutation(rows.len());
        let n_test = ((rows.len() as f64) * split.test_fraction).round() as usize;
        let n_test = n_test.min(rows.len().saturating_sub(1));
        for (rank, &i) in order.iter().enumerate() {
            membership[rows[i]] = if rank < n_test {
                Membership::Test
            } else {
                Membership::Train
            };
        }
    }
    membership
}

/// (site, row_in_file) -> membership, with the line of each entry.
type MembershipTable = HashMap<(String, u64), (Membership, u64)>;

fn read_membership(
    file: &MembershipFile,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<MembershipTable, DataError> {
    let path = &file.path;
    let stream = source
        .open(&base_dir.join(path))
        .map_err(|e| DataError::Io {
            path: path.clone(),
            source: e,
        })?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(stream);
    let headers = reader
        .headers()
        .map_err(|e| DataError::at(path, Some(1), None, format!("malformed CSV: {e}")))?
        .clone();
    let find = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            DataError::at(
                path,
                Some(1),
                None,
                format!(
                    "no column named '{name}' (columns: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let (site_i, row_i, split_i) = (
        find(&file.site_column)?,
        find(&file.row_column)?,
        find(&file.split_column)?,
    );
    let mut table = MembershipTable::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            DataError::at(
                path,
                e.position().map(|p| p.line()),
                None,
                format!("malformed CSV: {e}"),
            )
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or_default();
        let row: u64 = field(row_i).parse().map_err(|_| {
            DataError::at(
                path,
                Some(line),
                Some(row_i + 1),
                format!("row index '{}' is not a non-negative integer", field(row_i)),
            )
        })?;
        let membership = match field(split_i) {
            "train" => Membership::Train,
            "test" => Membership::Test,
            "dropped" => Membership::Excluded,
            other => {
                return Err(DataError::at(
                    path,
                    Some(line),
                    Some(split_i + 1),
                    format!("split '{other}' is not train, test or dropped"),
                ));
            }
        };
        if table
            .insert((field(site_i).to_string(), row), (membership, line))
            .is_some()
        {
            return Err(DataError::at(
                path,
                Some(line),
                None,
                format!("row {row} of site '{}' is listed twice", field(site_i)),
            ));
        }
    }
    Ok(table)
}

fn membership_from_table(
    table: &MembershipTable,
    file: &Path,
    site: &RawSite,
    kept: &[bool],
    counts: &mut SiteSummary,
) -> Result<Vec<Membership>, DataError> {
    let mut membership = Vec::with_capacity(kept.len());
    for (row, &keep) in kept.iter().enumerate() {
        let key = (site.name.clone(), site.row_in_file[row]);
        let Some(&(listed, _line)) = table.get(&key) else {
            return Err(DataError::at(
                file,
                None,
                None,
                format!(
                    "row {} of site '{}' ({}:{}) has no entry",
                    site.row_in_file[row],
                    site.name,
                    site.file.display(),
                    site.lines[row]
                ),
            ));
        };
        if listed == Membership::Excluded && keep {
            counts.dropped_by_membership += 1;
        }
        membership.push(if keep { listed } else { Membership::Excluded });
    }
    Ok(membership)
}

/// The levels a site's kept rows use, sorted.
fn present_levels(values: &Values, membership: &[Membership]) -> Vec<String> {
    let Values::Categorical { codes, levels } = values else {
        return Vec::new();
    };
    let used: BTreeSet<u32> = codes
        .iter()
        .zip(membership)
        .filter(|&(&code, &m)| code != MISSING_CODE && m != Membership::Excluded)
        .map(|(&code, _)| code)
        .collect();
    agree_levels([used
        .iter()
        .map(|&c| levels[c as usize].clone())
        .collect::<Vec<_>>()
        .as_slice()])
}

fn check_declared_levels(
    site: &RawSite,
    slot: usize,
    column: &str,
    declared: &[String],
    membership: &[Membership],
) -> Result<(), DataError> {
    let Values::Categorical { codes, levels } = &site.features[slot] else {
        return Ok(());
    };
    for (row, &code) in codes.iter().enumerate() {
        if code != MISSING_CODE
            && membership[row] != Membership::Excluded
            && !declared.contains(&levels[code as usize])
        {
            return Err(DataError::at(
                &site.file,
                Some(site.lines[row]),
                None,
                format!(
                    "column '{column}': value '{}' is not among the declared levels {}",
                    levels[code as usize],
                    declared.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Encodes, imputes and standardises one site's rows.
fn encode_site(
    config: &DataConfig,
    site: &RawSite,
    labels: &[Option<u32>],
    membership: &[Membership],
    encoders: &[Encoder],
    n_features: usize,
    counts: &mut SiteSummary,
) -> SiteData {
    let rows_of = |which: Membership| -> Vec<usize> {
        (0..labels.len())
            .filter(|&r| membership[r] == which)
            .collect()
    };
    let (train_rows, test_rows) = (rows_of(Membership::Train), rows_of(Membership::Test));
    let matrix = |rows: &[usize]| -> Array2<f32> {
        let mut x = Array2::<f32>::zeros((rows.len(), n_features));
        let mut offset = 0;
        for (values, encoder) in site.features.iter().zip(encoders) {
            match (values, encoder) {
                (Values::Numeric(v), Encoder::Numeric) => {
                    for (i, &r) in rows.iter().enumerate() {
                        x[[i, offset]] = v[r] as f32;
                    }
                }
                (
                    Values::Categorical {
                        codes,
                        levels: local,
                    },
                    Encoder::OneHot { levels, drop_first },
                ) => {
                    let skip = usize::from(*drop_first);
                    let column_of: Vec<Option<usize>> = local
                        .iter()
                        .map(|l| {
                            levels
                                .iter()
                                .position(|g| g == l)
                                .and_then(|p| p.checked_sub(skip))
                        })
                        .collect();
                    for (i, &r) in rows.iter().enumerate() {
                        if codes[r] != MISSING_CODE
                            && let Some(c) = column_of[codes[r] as usize]
                        {
                            x[[i, offset + c]] = 1.0;
                        }
                    }
                }
                _ => unreachable!("encoders are built from the same columns"),
            }
            offset += encoder.width();
        }
        x
    };
    let mut raw_train = matrix(&train_rows);
    let mut raw_test = matrix(&test_rows);
    // Impute missing numbers with the site's training mean of the column.
    for j in 0..n_features {
        let column = raw_train.column(j);
        let present: Vec<f64> = column
            .iter()
            .filter(|v| !v.is_nan())
            .map(|&v| f64::from(v))
            .collect();
        if present.len() == column.len() && !raw_test.column(j).iter().any(|v| v.is_nan()) {
            continue;
        }
        // Without any training value the column is absent at this site: every
        // value becomes 0, test rows included, so none reaches the model unscaled.
        let absent = present.is_empty();
        let mean = if absent {
            0.0
        } else {
            present.iter().sum::<f64>() / present.len() as f64
        };
        for m in [&mut raw_train, &mut raw_test] {
            for v in m.column_mut(j) {
                if v.is_nan() || absent {
                    *v = mean as f32;
                    counts.imputed_values += 1;
                }
            }
        }
    }
    let scaler = Scaler::fit(&raw_train, &config.standardize);
    let labels_of = |rows: &[usize]| {
        rows.iter()
            .map(|&r| labels[r].unwrap_or(0))
            .collect::<Vec<u32>>()
    };
    SiteData {
        name: site.name.clone(),
        train: Dataset {
            x: scaler.apply(&raw_train),
            y: labels_of(&train_rows),
        },
        test: Dataset {
            x: scaler.apply(&raw_test),
            y: labels_of(&test_rows),
        },
        raw_train,
        raw_test,
        scaler,
    }
}
