//! From raw site columns to standardised per-site datasets, in the steps a
//! federation takes, so that simulation and deployment share them:
//!
//! 1. each site reads its rows and decides locally which rows it keeps and
//!    how they split ([`LocalSite`]);
//! 2. sites offer their column types ([`KindsOffer`]); a column that is text
//!    at any site is categorical everywhere ([`agree_kinds`]);
//! 3. sites offer the *sets* of categorical levels and target classes in
//!    their kept rows ([`LevelsOffer`]); the union is the shared vocabulary
//!    ([`agree_vocabulary`] gives the [`Agreement`]);
//! 4. each site encodes, imputes and standardises its own rows
//!    ([`LocalSite::prepare`]).
//!
//! No row crosses sites in any step.

use std::path::Path;

use crate::DataError;
use crate::config::{DataConfig, ScaleScope};
use crate::dataset::{FederatedData, Scaler, SiteData, SiteSummary};
use crate::read::FileSource;

mod agreement;
mod derived;
mod encode;
mod membership;
mod records;
mod site;
mod test_rows;

pub use agreement::{
    Agreement, ColumnKinds, Encoding, Group, KindsOffer, LevelsOffer, MAX_DECLARED_ROWS,
    MAX_DECLARED_SITES, agree_kinds, agree_multitask, agree_vocabulary, declared_rows,
};
pub use derived::{DeriveFeature, SiteIdentifiers};
pub use records::{
    FederatedRecords, MISSING_LEVEL, RecordColumn, SiteRecords, load_records, records_schema,
};
pub use site::{
    LocalSite, PendingSite, read_local_site, read_local_sites, read_member_sites, read_pending_site,
};

/// `[data.synthetic]`: the generated rows at `path`, every other file from
/// `rest`.
pub(crate) struct Generated<'a> {
    path: std::path::PathBuf,
    csv: Vec<u8>,
    rest: &'a dyn FileSource,
}

impl<'a> Generated<'a> {
    fn new(
        config: &crate::SyntheticConfig,
        path: std::path::PathBuf,
        rest: &'a dyn FileSource,
    ) -> Result<Self, DataError> {
        let mut csv = Vec::new();
        crate::synth::write_synthetic(&config.synth(), &mut csv).map_err(|source| {
            DataError::Io {
                path: path.clone(),
                source,
            }
        })?;
        Ok(Self { path, csv, rest })
    }
}

impl FileSource for Generated<'_> {
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        if path == self.path {
            Ok(Box::new(self.csv.as_slice()))
        } else {
            self.rest.open(path)
        }
    }
}

/// With `[data.synthetic]`: the configuration naming the generated rows
/// (by `path`, or by a name of their own) and a source that serves them,
/// every other file from `source`; `None` for data read from files.
pub(crate) fn generated<'a>(
    config: &DataConfig,
    base_dir: &Path,
    source: &'a dyn FileSource,
) -> Result<Option<(DataConfig, Generated<'a>)>, DataError> {
    let Some(synthetic) = &config.synthetic else {
        return Ok(None);
    };
    let mut named = config.clone();
    let path = named
        .path
        .get_or_insert_with(|| "synthetic.csv".into())
        .clone();
    let generated = Generated::new(synthetic, base_dir.join(path), source)?;
    Ok(Some((named, generated)))
}

/// Reads and prepares every site's data as `config` describes, running the
/// agreement steps in process. Relative paths are resolved against
/// `base_dir` (the plan file's folder).
pub fn load(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<FederatedData, DataError> {
    load_with(config, base_dir, source, Unstandardised::Keep)
}

/// [`load`], each site's rows before standardisation and its statistics
/// released as soon as they are no longer needed
/// ([`SiteData::release_unstandardised`]): for a run that reads neither,
/// which then never holds every site's copy at once.
pub fn load_releasing(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
) -> Result<FederatedData, DataError> {
    load_with(config, base_dir, source, Unstandardised::Release)
}

/// Whether loading keeps the sites' rows before standardisation.
#[derive(Clone, Copy, PartialEq)]
enum Unstandardised {
    Keep,
    Release,
}

fn load_with(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
    unstandardised: Unstandardised,
) -> Result<FederatedData, DataError> {
    match config.path.as_deref() {
        Some(path) if crate::read::is_rows_file(path) && config.synthetic.is_none() => {
            load_rows_file(config, base_dir, source, path, unstandardised)
        }
        _ => with_agreed_sites(
            config,
            base_dir,
            source,
            None,
            None,
            |config, sites, agreement| prepare_sites(config, sites, agreement, unstandardised),
        ),
    }
}

/// [`load`] of a rows file, streamed: the file is read three times (the
/// column kinds' offers, then the levels' offers, then each site prepared),
/// one site's rows held at a time, so that reading never holds every
/// site's raw columns beside the prepared ones (ten million sites' raw
/// columns outweigh this machine's memory). The same sites, offers,
/// agreement and preparation, in the same order, as reading the file
/// whole: the same data to the bit.
fn load_rows_file(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
    path: &Path,
    unstandardised: Unstandardised,
) -> Result<FederatedData, DataError> {
    config.validate()?;
    let table = site::membership_table(config, base_dir, source)?;
    let full_path = base_dir.join(path);
    // A pass gives its sites' count and a digest of their names and row
    // counts: a file changed between passes is refused, not prepared with
    // an agreement made from other rows.
    type Each<'a> = dyn FnMut(Result<LocalSite, DataError>) -> Result<(), DataError> + 'a;
    let pass = |each: &mut Each<'_>| {
        use std::hash::{Hash, Hasher};
        let mut digest = std::hash::DefaultHasher::new();
        let mut sites = 0usize;
        crate::read::for_each_rows_site(config, source, &full_path, path, &mut |raw| {
            sites += 1;
            (&raw.name, raw.lines.len()).hash(&mut digest);
            each(LocalSite::new(config, raw, table.as_ref()))
        })?;
        Ok::<_, DataError>((sites, digest.finish()))
    };
    // Step 2. As reading the file whole refuses: the file's own faults
    // first (the reader stops at them), then the first site refused, then
    // the first offer that does not fit.
    let mut kinds: Option<KindsOffer> = None;
    let (mut refused, mut misfit) = (None, None);
    let first = pass(&mut |site| {
        match site {
            Err(e) => {
                refused.get_or_insert(e);
            }
            Ok(site) if refused.is_none() && misfit.is_none() => {
                let offer = site.kinds_offer();
                match &mut kinds {
                    Some(kinds) => {
                        if let Err(e) = kinds.absorb(&offer) {
                            misfit = Some(e);
                        }
                    }
                    None => kinds = Some(offer),
                }
            }
            Ok(_) => {}
        }
        Ok(())
    })?;
    if let Some(e) = refused.or(misfit) {
        return Err(e);
    }
    let kinds = kinds.ok_or_else(|| DataError::Unusable("no site has any rows".into()))?;
    let kinds = agree_kinds(config, std::slice::from_ref(&kinds))?;
    let changed = |again: (usize, u64)| {
        (again != first).then(|| {
            DataError::at(
                path,
                None,
                None,
                format!(
                    "the file changed while it was read ({} sites, then {} sites{})",
                    first.0,
                    again.0,
                    if again.0 == first.0 {
                        ", of other names or rows"
                    } else {
                        ""
                    }
                ),
            )
        })
    };
    // Step 3.
    let mut offers = LevelsOffer::empty("the federation", kinds.columns.len());
    let again = pass(&mut |site| {
        offers.absorb(&site?.levels_offer(config, &kinds)?);
        Ok(())
    })?;
    if let Some(e) = changed(again) {
        return Err(e);
    }
    let agreement = agree_vocabulary(config, &kinds, std::slice::from_ref(&offers))?;
    // Step 4.
    let mut prepared = Vec::with_capacity(first.0);
    let mut summary = Vec::with_capacity(first.0);
    let again = pass(&mut |site| {
        // Its columns put in the agreed order and kinds again before it is
        // prepared (read afresh; its levels were checked in step 3).
        let mut site = site?;
        site.apply_kinds(&kinds)?;
        let (data, counts) = site.prepare(config, &agreement)?;
        prepared.push(released_early(config, data, unstandardised));
        summary.push(counts);
        Ok(())
    })?;
    if let Some(e) = changed(again) {
        return Err(e);
    }
    federated(config, prepared, summary, agreement, unstandardised)
}

/// Which sites to read: `Ok(true)` keeps a site, `Ok(false)` leaves it out
/// before any of its rows is prepared, an error refuses the data.
pub type KeepSite<'a> = dyn FnMut(&str) -> Result<bool, DataError> + 'a;

/// [`load`] of the sites `keep` keeps (simulation's multi-task reading:
/// a task's sites only, as another task's sites need not have its
/// labels). The agreement steps run over the kept sites alone.
pub fn load_sites(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
    keep: &mut KeepSite<'_>,
) -> Result<FederatedData, DataError> {
    with_agreed_sites(
        config,
        base_dir,
        source,
        None,
        Some(keep),
        keep_unstandardised,
    )
}

/// [`load`] for a plan with `[data.cross_silo]`: each site's identifier
/// column is taken out before any agreement step (it never becomes a
/// feature) and `derive` computes the feature from every site's
/// identifiers; the feature joins the layout as a numeric column, last.
/// Without `[data.cross_silo]` this is [`load`].
pub fn load_cross_silo(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
    derive: &mut DeriveFeature<'_>,
) -> Result<FederatedData, DataError> {
    with_agreed_sites(
        config,
        base_dir,
        source,
        Some(derive),
        None,
        keep_unstandardised,
    )
}

/// Reads every site's rows as `config` describes (generated first, with
/// `[data.synthetic]`) and runs the agreement steps in process (column
/// kinds, then vocabularies); `then` gets the configuration the rows were
/// read with, the sites and the agreement.
pub(crate) fn with_agreed_sites<T>(
    config: &DataConfig,
    base_dir: &Path,
    source: &dyn FileSource,
    derive: Option<&mut DeriveFeature<'_>>,
    keep: Option<&mut KeepSite<'_>>,
    then: impl FnOnce(&DataConfig, Vec<LocalSite>, Agreement) -> Result<T, DataError>,
) -> Result<T, DataError> {
    config.validate()?;
    let synthetic = generated(config, base_dir, source)?;
    let (config, source) = match &synthetic {
        Some((named, generated)) => (named, generated as &dyn FileSource),
        None => (config, source),
    };
    let mut sites = site::read_local_sites_with(config, base_dir, source, derive, keep)?;
    if sites.is_empty() {
        return Err(DataError::Unusable("no site has any rows".into()));
    }
    // Each site's offers are folded in as they are made (a million sites'
    // offers held together would outweigh their rows).
    let mut kinds_offers = sites.iter().map(LocalSite::kinds_offer);
    let mut kinds = kinds_offers
        .next()
        .ok_or_else(|| DataError::Unusable("no site has any rows".into()))?;
    for offer in kinds_offers {
        kinds.absorb(&offer)?;
    }
    let kinds = agree_kinds(config, std::slice::from_ref(&kinds))?;
    let mut offers = LevelsOffer::empty("the federation", kinds.columns.len());
    for site in &mut sites {
        offers.absorb(&site.levels_offer(config, &kinds)?);
    }
    let agreement = agree_vocabulary(config, &kinds, std::slice::from_ref(&offers))?;
    then(config, sites, agreement)
}

/// [`prepare_sites`] keeping the rows before standardisation.
fn keep_unstandardised(
    config: &DataConfig,
    sites: Vec<LocalSite>,
    agreement: Agreement,
) -> Result<FederatedData, DataError> {
    prepare_sites(config, sites, agreement, Unstandardised::Keep)
}

/// Prepares the agreed sites for training, as [`load`] returns them.
fn prepare_sites(
    config: &DataConfig,
    sites: Vec<LocalSite>,
    agreement: Agreement,
    unstandardised: Unstandardised,
) -> Result<FederatedData, DataError> {
    // Each site's raw columns are freed as soon as it is encoded.
    let mut prepared = Vec::with_capacity(sites.len());
    let mut summary = Vec::with_capacity(sites.len());
    for site in sites {
        let (data, counts) = site.prepare(config, &agreement)?;
        prepared.push(released_early(config, data, unstandardised));
        summary.push(counts);
    }
    federated(config, prepared, summary, agreement, unstandardised)
}

/// A site just prepared, its rows before standardisation released where
/// they go and nothing reads them any more (the federation's scaler needs
/// every site's first).
fn released_early(
    config: &DataConfig,
    mut site: SiteData,
    unstandardised: Unstandardised,
) -> SiteData {
    if unstandardised == Unstandardised::Release
        && config.standardize.scope != ScaleScope::Federation
    {
        site.release_unstandardised();
    }
    site
}

/// The prepared sites as [`load`] returns them (rescaled with the
/// federation's statistics where the plan asks for them).
fn federated(
    config: &DataConfig,
    prepared: Vec<SiteData>,
    summary: Vec<SiteSummary>,
    agreement: Agreement,
    unstandardised: Unstandardised,
) -> Result<FederatedData, DataError> {
    let mut data = FederatedData {
        feature_names: agreement.feature_names(),
        task: agreement.task(),
        sites: prepared,
        summary,
        agreement,
    };
    if config.standardize.scope == ScaleScope::Federation {
        let scaler = Scaler::from_statistics(
            &data.federation_statistics(),
            &config.standardize,
            &data.indicators(),
        );
        for site in &mut data.sites {
            site.rescale(scaler.clone());
            if unstandardised == Unstandardised::Release {
                site.release_unstandardised();
            }
        }
    }
    Ok(data)
}
