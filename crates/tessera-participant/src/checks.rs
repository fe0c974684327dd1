//! What a site checks of the coordinator's plan: how it differs from the
//! plan the site agreed to (`--expect-plan`), and that the files it names lie
//! where the site's operator allows.

use tessera_engine::Plan;

/// The top-level sections in which two plans differ.
pub fn plan_differences(a: &Plan, b: &Plan) -> Vec<String> {
    let (Ok(toml::Value::Table(a)), Ok(toml::Value::Table(b))) =
        (toml::Value::try_from(a), toml::Value::try_from(b))
    else {
        return vec!["the whole plan".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// The coordinator's plan may name files this site reads (a split
/// membership file): an absolute path must lie under `plan_dir`, the folder
/// the site's operator gave, so that a coordinator cannot make a site read
/// any file it likes. Relative paths are read from `plan_dir`.
pub(crate) fn plan_paths_within(
    data: &tessera_data::DataConfig,
    plan_dir: &std::path::Path,
) -> Result<(), String> {
    let named = data.split.membership.as_ref().map(|m| m.path.as_path());
    let Some(path) = named.filter(|p| p.is_absolute()) else {
        return Ok(());
    };
    let inside = match (path.canonicalize(), plan_dir.canonicalize()) {
        (Ok(file), Ok(dir)) => file.starts_with(dir),
        _ => false,
    };
    if inside {
        Ok(())
    } else {
        Err(format!(
            "the coordinator's plan names '{}', outside this site's --plan-dir ({}): a site reads \
             only files under the folder its operator gives",
            tessera_proto::shown(&path.display().to_string(), 200),
            plan_dir.display()
        ))
    }
}
