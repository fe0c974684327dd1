//! The accuracy-per-round plot, federated against the baselines, and below
//! it each round's bytes per participant (least, mean and most up; mean down).

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::types::RangedCoordu32;
use plotters::prelude::*;
use tessera_sim::RunReport;

const COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

type Lines = [(String, Vec<(u32, f64)>)];

/// Draws `lines` with their legend: colours from `first_colour` on, the first
/// `bold` lines thicker.
fn draw_lines<'a, DB: DrawingBackend + 'a, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordu32, Y>>,
    lines: &Lines,
    first_colour: usize,
    bold: usize,
    position: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    for (i, (label, points)) in lines.iter().enumerate() {
        let colour = COLOURS[(i + first_colour) % COLOURS.len()];
        let style = ShapeStyle::from(&colour).stroke_width(if i < bold { 2 } else { 1 });
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
}

fn human_bytes(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.3} GB", v / 1e9),
        v if v >= 1e6 => format!("{:.3} MB", v / 1e6),
        v if v >= 1e3 => format!("{:.3} kB", v / 1e3),
        v => format!("{v:.0} B"),
    }
}

/// Six ticks spread evenly on a log scale from `low` to `high` (both
/// positive), each rounded to two significant digits.
fn log_ticks(low: f64, high: f64) -> Vec<f64> {
    let (a, b) = (low.ln(), high.ln());
    (0..6)
        .map(|i| {
            let v = (a + (b - a) * f64::from(i) / 5.0).exp();
            let scale = 10f64.powf(v.log10().floor() - 1.0);
            (v / scale).round() * scale
        })
        .filter(|v| *v >= low && *v <= high)
        .collect()
}

/// Per round: the least, mean and most bytes a participant sent, and the
/// mean it received (from the per-site traffic; the round totals over the
/// sites when that is missing).
fn traffic_lines(report: &RunReport) -> Vec<(String, Vec<(u32, f64)>)> {
    let mut up_min = Vec::new();
    let mut up_mean = Vec::new();
    let mut up_max = Vec::new();
    let mut down_mean = Vec::new();
    let sites = report.data.len().max(1) as f64;
    for r in &report.rounds {
        let x = r.round;
        if r.traffic.is_empty() {
            up_mean.push((x, r.bytes_up as f64 / sites));
            down_mean.push((x, r.bytes_down as f64 / sites));
            continue;
        }
        let ups: Vec<f64> = r.traffic.values().map(|t| t.up as f64).collect();
        let n = ups.len() as f64;
        up_min.push((x, ups.iter().copied().fold(f64::INFINITY, f64::min)));
        up_max.push((x, ups.iter().copied().fold(0.0, f64::max)));
        up_mean.push((x, ups.iter().sum::<f64>() / n));
        down_mean.push((
            x,
            r.traffic.values().map(|t| t.down as f64).sum::<f64>() / n,
        ));
    }
    [
        ("up, mean per participant", up_mean),
        ("up, least", up_min),
        ("up, most", up_max),
        ("down, mean per participant", down_mean),
    ]
    .into_iter()
    .filter(|(_, l)| !l.is_empty())
    .map(|(n, l)| (n.to_string(), l))
    .collect()
}

/// Writes an SVG of accuracy per round, and traffic per round below it.
pub fn write_plot(report: &RunReport, path: &Path) -> anyhow::Result<()> {
    let rounds = report.rounds.len().max(1) as u32;
    let mut lines: Vec<(String, Vec<(u32, f64)>)> = vec![
        (
            "federated: all test rows".into(),
            report
                .rounds
                .iter()
                .map(|r| (r.round, r.accuracy))
                .collect(),
        ),
        (
            "federated: mean of sites".into(),
            report
                .rounds
                .iter()
                .map(|r| (r.round, r.mean_site_accuracy))
                .collect(),
        ),
    ];
    if let Some(b) = &report.baselines {
        let flat = |v: f64| vec![(1, v), (rounds, v)];
        if let Some(pooled) = &b.pooled {
            lines.push(("pooled: all test rows".into(), flat(pooled.accuracy)));
            lines.push((
                "pooled: mean of sites".into(),
                flat(pooled.mean_site_accuracy),
            ));
        }
        lines.push((
            "local only: mean of sites".into(),
            flat(b.local.mean_site_accuracy),
        ));
    }
    let values = lines.iter().flat_map(|(_, l)| l.iter().map(|p| p.1));
    let (low, high) = values.fold((1.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let low = (low - 0.05).max(0.0);
    let high = (high + 0.05).min(1.0).max(low + 0.1);
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (800, 760)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(480);
        let caption = format!(
            "{} · {} · seed {}",
            report.plan, report.strategy, report.seed
        );
        let mut chart = ChartBuilder::on(&top)
            .caption(caption, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(1u32..rounds.max(2), low..high)?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("test accuracy")
            .draw()?;
        draw_lines(&mut chart, &lines, 0, 2, SeriesLabelPosition::LowerRight)?;

        let traffic = traffic_lines(report);
        let all = traffic.iter().flat_map(|(_, l)| l.iter().map(|p| p.1));
        let (least, most) = all
            .filter(|v| *v > 0.0)
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if most > 0.0 {
            let (low, high) = ((least / 2.0).max(1.0), most * 2.0);
            // Numbered ticks whatever the span: a log axis labels only
            // powers of ten, and a span within one decade has none.
            let ticks = log_ticks(low, high);
            let mut chart = ChartBuilder::on(&bottom)
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(
                    1u32..rounds.max(2),
                    (low..high).log_scale().with_key_points(ticks),
                )?;
            chart
                .configure_mesh()
                .x_desc("round")
                .y_desc("bytes per participant")
                .y_label_formatter(&|v| human_bytes(*v))
                .draw()?;
            draw_lines(&mut chart, &traffic, 2, 1, SeriesLabelPosition::UpperRight)?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("{}: cannot write the plot: {e}", path.display()))
}

/// Where the per-site gains of personalization go: beside `plot`, its name
/// with `-personal` before the extension.
pub fn personal_plot_path(plot: &Path) -> std::path::PathBuf {
    let stem = plot
        .file_stem()
        .map_or_else(|| "plot".to_string(), |s| s.to_string_lossy().into_owned());
    let ext = plot
        .extension()
        .map_or_else(|| "svg".to_string(), |e| e.to_string_lossy().into_owned());
    plot.with_file_name(format!("{stem}-personal.{ext}"))
}

/// Writes an SVG of each site's gain from its personalized model: accuracy
/// minus the global model's and minus its local-only model's, sites in
/// order of the first gain. Nothing without a personalization section.
pub fn write_personal_plot(report: &RunReport, path: &Path) -> anyhow::Result<bool> {
    let Some(p) = &report.personalization else {
        return Ok(false);
    };
    let sites: Vec<(f64, Option<f64>)> = p
        .per_site
        .values()
        .map(|s| {
            (
                s.personalized - s.global,
                s.local_only.map(|l| s.personalized - l),
            )
        })
        .collect();
    let caption = format!(
        "{} · {} · per-site gain of the personalized model",
        report.plan, p.strategy
    );
    gain_bars(
        path,
        &caption,
        sites,
        ["over the global model", "over local-only training"],
    )?;
    Ok(true)
}

/// Writes an SVG of two gains per site, as bars, sites in order of the
/// first gain.
pub fn gain_bars(
    path: &Path,
    caption: &str,
    mut sites: Vec<(f64, Option<f64>)>,
    labels: [&str; 2],
) -> anyhow::Result<()> {
    sites.sort_by(|a, b| a.0.total_cmp(&b.0));
    let all = sites
        .iter()
        .flat_map(|(g, l)| std::iter::once(*g).chain(*l));
    let (low, high) = all.fold((-0.05f64, 0.05f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let n = sites.len().max(1) as u32;
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..f64::from(n), (low - 0.02)..(high + 0.02))?;
        chart
            .configure_mesh()
            .x_desc(format!("site (ordered by gain {})", labels[0]))
            .y_desc("accuracy gain")
            .disable_x_mesh()
            .draw()?;
        let bar = |i: usize, offset: f64, v: f64, colour: RGBColor| {
            let x = i as f64 + offset;
            Rectangle::new([(x, 0.0), (x + 0.4, v)], colour.filled())
        };
        let colour = COLOURS[0];
        chart
            .draw_series(
                sites
                    .iter()
                    .enumerate()
                    .map(|(i, s)| bar(i, 0.1, s.0, colour)),
            )?
            .label(labels[0])
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        let colour = COLOURS[1];
        chart
            .draw_series(
                sites
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.1.map(|l| bar(i, 0.5, l, colour))),
            )?
            .label(labels[1])
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("{}: cannot write the plot: {e}", path.display()))
}
