//! The simulation's report file, and its per-site figures apart where
//! asked or past [`tessera_engine::report::SPLIT_ABOVE`] sites.

use std::path::Path;

use anyhow::Context;
use tessera_engine::report::RunReport;

/// Writes the report; with `[data.cross_silo]`, its cost under the key
/// `cross_silo`; with `per_site`, the per-site figures to that file (one
/// JSON line a site) and their summary in the report (`per_site`), the
/// report in memory left as it was.
pub(crate) fn write_report(
    report: &mut RunReport,
    cross_silo: Option<&tessera_sim::CrossSiloReport>,
    path: &Path,
    per_site: Option<&Path>,
) -> anyhow::Result<()> {
    for file in std::iter::once(path).chain(per_site) {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create the folder", dir.display()))?;
        }
    }
    let Some(per_site) = per_site else {
        return write_whole_report(report, cross_silo, path);
    };
    // The per-site file first: a report never names a file not written.
    let parts = report.take_per_site();
    let written = write_lines(&parts, per_site).and_then(|()| {
        // Named as seen from the report's folder where it is inside it.
        let folder = path.parent().unwrap_or(Path::new(""));
        let named = per_site.strip_prefix(folder).unwrap_or(per_site);
        report.per_site = Some(parts.summary(&named.display().to_string()));
        write_whole_report(report, cross_silo, path)
    });
    report.per_site = None;
    report.put_per_site(parts);
    written
}

/// One JSON line a site.
fn write_lines(parts: &tessera_engine::report::PerSiteParts, file: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let cannot = |e: std::io::Error| {
        anyhow::anyhow!("{}: cannot write the per-site figures: {e}", file.display())
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(file).map_err(cannot)?);
    for line in parts.lines() {
        serde_json::to_writer(&mut out, &line).context("cannot encode a site's figures")?;
        out.write_all(b"\n").map_err(cannot)?;
    }
    out.flush().map_err(cannot)
}

fn write_whole_report(
    report: &RunReport,
    cross_silo: Option<&tessera_sim::CrossSiloReport>,
    path: &Path,
) -> anyhow::Result<()> {
    let text = match cross_silo {
        None => serde_json::to_string_pretty(report),
        Some(c) => {
            #[derive(serde::Serialize)]
            struct WithCrossSilo<'a> {
                #[serde(flatten)]
                report: &'a RunReport,
                cross_silo: &'a tessera_sim::CrossSiloReport,
            }
            serde_json::to_string_pretty(&WithCrossSilo {
                report,
                cross_silo: c,
            })
        }
    }
    .context("cannot encode the report")?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("{}: cannot write the report", path.display()))
}
