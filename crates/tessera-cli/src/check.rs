//! `tessera check`: a site's preflight before it joins. The site's data
//! file is read against the plan's schema with the participant's reader
//! (through the site's mapping; a cross-silo feature, computed with the
//! other sites at the join, taken as 0), then taken through the data
//! agreement as if it were the only site besides one holding the classes
//! it lacks (column kinds, levels, encoding), so that what the agreement
//! would refuse at this site is named here, with the site, before any
//! round; the schema's declared columns must all be in the file. Not
//! checked here: the site's memory limit and privacy budget, which the
//! participant checks against the agreed model when it joins. This build's protocol version and
//! capabilities are printed for the coordinator's operator to compare.

use std::path::PathBuf;

use anyhow::{Context, bail};
use tessera_data::ColumnKind;
use tessera_engine::Plan;

/// Arguments of `tessera check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The plan the site is to take part in.
    #[arg(long)]
    plan: PathBuf,
    /// This site's name, as the plan names it.
    #[arg(long)]
    site: String,
    /// This site's data file (default: the plan's file for the site).
    #[arg(long)]
    data: Option<PathBuf>,
    /// This site's mapping file, as `tessera participant --mapping`.
    #[arg(long)]
    mapping: Option<PathBuf>,
    /// The plan's folder, as `tessera participant --plan-dir` (default: the
    /// plan's own folder).
    #[arg(long)]
    plan_dir: Option<PathBuf>,
}

/// The stand-in for a class only other sites hold.
const OTHER_CLASS: &str = "(another site's class)";

pub fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let site = args.site.as_str();
    println!(
        "this build: tessera {}, protocol {}.{}, capabilities: {}",
        env!("CARGO_PKG_VERSION"),
        tessera_proto::MAJOR,
        tessera_proto::MINOR,
        tessera_proto::CAPABILITIES.join(", ")
    );
    let plan = Plan::from_file(&args.plan)
        .with_context(|| format!("site '{site}': the plan does not read"))?;
    plan.validate()
        .with_context(|| format!("site '{site}': the plan is not valid"))?;
    // What the coordinator will ask of this site's build: the plan's run's
    // capabilities (and the oldest build that has them, for the operator).
    let needed = tessera_coordinator::site_capabilities(&plan, site);
    let cohorts: Vec<&str> = plan
        .features
        .iter()
        .filter(|f| f.sites.iter().any(|s| s == site))
        .map(|f| f.name.as_str())
        .collect();
    if !plan.features.is_empty() {
        println!(
            "feature flags: site '{site}' is in the cohort of {}",
            if cohorts.is_empty() {
                "none (it runs without the flagged features)".to_string()
            } else {
                cohorts.join(", ")
            }
        );
    }
    match tessera_proto::oldest_with(&needed) {
        Some(oldest) => println!(
            "the plan's run needs of this site's participant: {} (from protocol {}.{oldest}; \
             this build has them)",
            needed.join(", "),
            tessera_proto::MAJOR
        ),
        None => bail!(
            "site '{site}': the plan's run needs a capability this build lacks ({})",
            needed.join(", ")
        ),
    }
    if plan.model.kind.is_external() {
        println!(
            "the plan's model is external: this site's learner is checked when it joins \
             (tessera.run_participant)"
        );
    }
    let named = plan.data.named_sites();
    if !named.is_empty() && !named.iter().any(|s| s == site) {
        bail!(
            "site '{site}' is not among the plan's sites ({}): the coordinator refuses it",
            tessera_core::shown(&named.join(", "), 300)
        );
    }
    let plan_dir = match &args.plan_dir {
        Some(dir) => std::path::absolute(dir).context("--plan-dir")?,
        None => args
            .plan
            .parent()
            .map_or_else(|| PathBuf::from("."), PathBuf::from),
    };
    println!(
        "the plan's paths are read from {} (the participant reads them from its --plan-dir, \
         else its --expect-plan's folder, else its working folder)",
        plan_dir.display()
    );
    let mapping = match &args.mapping {
        Some(path) => Some(
            tessera_data::mapping::Mapping::from_file(path)
                .with_context(|| format!("site '{site}': its mapping"))?,
        ),
        None => None,
    };
    let data = &plan.data;
    let fs = &tessera_data::Filesystem;
    // A path given here is read from the working folder, as everywhere.
    let file = args
        .data
        .as_deref()
        .map(std::path::absolute)
        .transpose()
        .context("--data")?;
    let file = file.as_deref();
    let read = |source: &dyn tessera_data::FileSource| match &data.cross_silo {
        // The cross-silo feature is computed with the other sites when this
        // one joins; here its rows are read, their identifiers checked, and
        // the feature taken as 0 (known at no other site).
        Some(_) => {
            let pending = tessera_data::read_pending_site(data, site, file, &plan_dir, source)?;
            let rows = pending.identifiers().identifiers.len();
            pending.finish(vec![0.0; rows])
        }
        None => tessera_data::read_local_site(data, site, file, &plan_dir, source),
    };
    let mut local = tessera_data::mapping::with_mapping(
        fs,
        file,
        &plan_dir,
        mapping.as_ref(),
        &data.schema,
        read,
    )
    .with_context(|| format!("site '{site}': its data does not read as the plan says"))?;
    if let Some(cross) = &data.cross_silo {
        println!(
            "the plan computes '{}' from this site's '{}' column with the other sites when it \
             joins: the participant needs --tls and --expect-plan (its value is taken as 0 here)",
            cross.feature, cross.identifier
        );
    }
    let summary = local.summary().clone();
    println!(
        "site '{site}': {} rows read; {} training and {} test rows; dropped: {} without a \
         target, {} with a missing feature, {} by the split's membership",
        summary.rows_read,
        summary.n_train,
        summary.n_test,
        summary.dropped_missing_target,
        summary.dropped_missing_feature,
        summary.dropped_by_membership
    );
    if summary.bounded_columns > 0 {
        println!(
            "site '{site}': {} of {} training values of the schema's bounded columns are outside \
             their bounds (kept as read; they lower the site's data quality score)",
            summary.out_of_range_values,
            summary.bounded_columns * summary.n_train
        );
    }
    let offer = local.kinds_offer();
    // Every column the schema declares (other than ignored ones and the
    // target) must be in the file: another site's would otherwise hold a
    // feature this one cannot give.
    let missing: Vec<&str> = data
        .schema
        .columns
        .iter()
        .filter(|c| c.kind != ColumnKind::Ignore && c.name != data.schema.target)
        .map(|c| c.name.as_str())
        .filter(|name| !offer.columns.iter().any(|c| c == name))
        .collect();
    if !missing.is_empty() {
        bail!(
            "site '{site}': the plan's schema declares column(s) this site's file lacks: {}",
            tessera_core::shown(&missing.join(", "), 300)
        );
    }
    if summary.n_train == 0 {
        bail!("site '{site}': no training rows are left after reading");
    }
    // The agreement as if this were the only site: what it would refuse
    // here, it refuses now.
    let kinds = tessera_data::agree_kinds(data, std::slice::from_ref(&offer))
        .with_context(|| format!("site '{site}': the column kinds do not agree"))?;
    let levels = local
        .levels_offer(data, &kinds)
        .with_context(|| format!("site '{site}': its levels do not fit the plan"))?;
    let undeclared: Vec<&str> = data
        .schema
        .columns
        .iter()
        .filter(|c| {
            c.kind == ColumnKind::Categorical
                && c.levels.is_none()
                && c.name != data.schema.target
                && kinds.columns.contains(&c.name)
        })
        .map(|c| c.name.as_str())
        .collect();
    if !undeclared.is_empty() {
        println!(
            "note: the plan makes column(s) categorical without declaring their levels ({}): \
             this site sends every distinct value of them, so the participant needs \
             --share-levels or --expect-plan",
            tessera_core::shown(&undeclared.join(", "), 300)
        );
    }
    // Another site may hold the classes this one lacks: the agreement is
    // taken as if one did, so that a one-class site is judged on the rest.
    let mut offers = vec![levels.clone()];
    // Not where the plan names this site alone: no other site can.
    if levels.train_classes.len() < 2 && named.len() != 1 {
        offers.push(tessera_data::LevelsOffer {
            site: "(another site)".into(),
            levels: vec![Vec::new(); levels.levels.len()],
            classes: vec![OTHER_CLASS.into()],
            train_classes: vec![OTHER_CLASS.into()],
            train_rows: 1,
            test_rows: 0,
        });
    }
    let agreement = tessera_data::agree_vocabulary(data, &kinds, &offers)
        .with_context(|| format!("site '{site}': its levels and classes do not agree"))?;
    let classes: Vec<String> = agreement
        .classes
        .iter()
        .filter(|c| c.as_str() != OTHER_CLASS)
        .cloned()
        .collect();
    let (prepared, _) = local
        .prepare(data, &agreement)
        .with_context(|| format!("site '{site}': its rows do not encode"))?;
    let seen: std::collections::BTreeSet<u32> = prepared.train.y.iter().copied().collect();
    println!(
        "site '{site}': {} columns, {} features once encoded; classes {} ({} of them among its \
         training rows)",
        offer.columns.len(),
        agreement.feature_names().len(),
        classes.join(", "),
        seen.len()
    );
    if seen.len() < 2 {
        println!(
            "warning: site '{site}': its training rows hold one class only; it can take part, \
             and its own model alone would predict that class"
        );
    }
    println!("site '{site}': ready for plan '{}'", plan.name);
    Ok(())
}

/// Arguments of `tessera protocol`.
#[derive(Debug, clap::Args)]
pub struct ProtocolArgs {
    /// A plan: what its run needs of every participant, and the oldest
    /// participant that joins it.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// The compatibility matrix as docs/COMPATIBILITY.md keeps it (each
    /// strategy and protocol feature on the bundled plan, or on --plan).
    #[arg(long)]
    markdown: bool,
}

/// `tessera protocol`: this build's protocol version and capabilities, what
/// a plan's run needs, and the compatibility matrix.
pub fn protocol(args: &ProtocolArgs) -> anyhow::Result<()> {
    let (plan, base) = match &args.plan {
        Some(path) => (
            Plan::from_file(path).context("--plan")?,
            format!("the plan {}", path.display()),
        ),
        None => (
            Plan::from_toml(crate::bundled::PLAN, crate::bundled::PLAN_PATH)?
                .with_settings(&["privacy.site_metrics=clear".into()])?,
            format!(
                "the bundled plan ({}) with its site metrics in the clear \
                 (`privacy.site_metrics=clear`)",
                crate::bundled::PLAN_PATH
            ),
        ),
    };
    if args.markdown {
        let rows = tessera_coordinator::compat::matrix(&plan).map_err(anyhow::Error::msg)?;
        print!("{}", tessera_coordinator::compat::markdown(&base, &rows));
        return Ok(());
    }
    println!(
        "this build: tessera {}, protocol {}.{}",
        env!("CARGO_PKG_VERSION"),
        tessera_proto::MAJOR,
        tessera_proto::MINOR
    );
    for (name, since) in tessera_proto::CAPABILITY_SINCE {
        println!("  {name:<28} since {}.{since}", tessera_proto::MAJOR);
    }
    if args.plan.is_some() {
        let needs = tessera_coordinator::run_capabilities(&plan);
        let oldest = tessera_proto::oldest_with(&needs)
            .context("the plan needs a capability this build does not know")?;
        println!(
            "plan '{}' needs of every participant: {}; the oldest participant that joins it: {}.{oldest}",
            plan.name,
            needs.join(", "),
            tessera_proto::MAJOR
        );
        // A feature flag's cohort may need more of its sites.
        for flag in &plan.features {
            let Some(site) = flag.sites.first() else {
                continue;
            };
            let cohort = tessera_coordinator::site_capabilities(&plan, site);
            let more: Vec<&str> = cohort
                .iter()
                .copied()
                .filter(|c| !needs.contains(c))
                .collect();
            if !more.is_empty() {
                let oldest = tessera_proto::oldest_with(&cohort)
                    .context("the plan needs a capability this build does not know")?;
                println!(
                    "and of the sites of feature '{}' ({} sites): also {}; the oldest \
                     participant that joins it there: {}.{oldest}",
                    tessera_core::shown(&flag.name, 64),
                    flag.sites.len(),
                    more.join(", "),
                    tessera_proto::MAJOR
                );
            }
        }
    }
    Ok(())
}
