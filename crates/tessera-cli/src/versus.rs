//! `tessera simulate --baselines`: each site's accuracy alone, federated
//! and pooled, side by side (the mission's headline: hospitals alone
//! against together).

use tessera_engine::report::RunReport;

/// Most sites shown a line each; past it, a count.
const MOST_LINES: usize = 12;

/// The lines comparing each site's federated accuracy with its local and
/// pooled baselines', on its own test rows; none without baselines or
/// without per-site federated figures (sums-only site metrics).
pub fn lines(report: &RunReport) -> Vec<String> {
    let (Some(b), federated) = (&report.baselines, &report.final_metrics.per_site) else {
        return Vec::new();
    };
    if federated.is_empty() {
        return Vec::new();
    }
    let pooled = b.pooled.as_ref().map(|p| &p.per_site);
    // A site, and its accuracy alone, federated and pooled.
    type Row<'a> = (&'a str, Option<f64>, Option<f64>, Option<f64>);
    let rows: Vec<Row> = federated
        .iter()
        .map(|(site, m)| {
            let local = b.local.per_site.get(site).and_then(|l| l.accuracy);
            let pooled = pooled.and_then(|p| p.get(site)).and_then(|p| p.accuracy);
            (site.as_str(), local, m.accuracy, pooled)
        })
        .collect();
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |a| format!("{a:.4}"));
    let mut out = Vec::new();
    if rows.len() <= MOST_LINES {
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
        out.push(format!(
            "{:<width$}  {:>10}  {:>10}  {:>10}",
            "site", "local only", "federated", "pooled"
        ));
        for (site, local, fed, pooled) in &rows {
            out.push(format!(
                "{site:<width$}  {:>10}  {:>10}  {:>10}",
                show(*local),
                show(*fed),
                show(*pooled)
            ));
        }
    }
    // Sites with both figures: how many federated serves better than alone.
    let both: Vec<(f64, f64)> = rows.iter().filter_map(|r| Some((r.1?, r.2?))).collect();
    if !both.is_empty() {
        let better = both.iter().filter(|(l, f)| f > l).count();
        let mean_gain = both.iter().map(|(l, f)| f - l).sum::<f64>() / both.len() as f64;
        out.push(format!(
            "federated above local only at {better} of {} sites (mean accuracy {mean_gain:+.4})",
            both.len()
        ));
    }
    out
}

/// How the baselines were regularised and stopped: the pooled model's
/// choice, and at how many sites a choice was made, with the weight decays
/// chosen and the median length; none where nothing was chosen.
pub fn choices_line(b: &tessera_engine::report::Baselines) -> Option<String> {
    let made = |c: &&tessera_engine::baseline::BaselineChoice| {
        c.validation_rows > 0 && c.validation_loss.is_some()
    };
    let pooled = b
        .pooled
        .as_ref()
        .and_then(|p| p.choice.as_ref())
        .filter(made)
        .map(|c| format!("pooled {}", c.describe()));
    let local = &b.local.choices;
    let chosen: Vec<_> = local.values().filter(made).collect();
    let sites = (!chosen.is_empty()).then(|| {
        let mut by_decay: Vec<(f32, usize)> = Vec::new();
        for c in &chosen {
            match by_decay.iter_mut().find(|(d, _)| *d == c.weight_decay) {
                Some((_, n)) => *n += 1,
                None => by_decay.push((c.weight_decay, 1)),
            }
        }
        by_decay.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut lengths: Vec<u64> = chosen.iter().map(|c| c.trained).collect();
        lengths.sort_unstable();
        let decays: Vec<String> = by_decay
            .iter()
            .map(|(d, n)| format!("{d} at {n}"))
            .collect();
        format!(
            "local: chosen at {} of {} sites (weight decay {}), median {} {}",
            chosen.len(),
            local.len(),
            decays.join(", "),
            lengths[lengths.len() / 2],
            chosen[0].unit
        )
    });
    let parts: Vec<String> = pooled.into_iter().chain(sites).collect();
    (!parts.is_empty()).then(|| {
        format!(
            "baselines chosen on held-out training rows: {}",
            parts.join("; ")
        )
    })
}
