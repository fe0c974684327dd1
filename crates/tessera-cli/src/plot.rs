//! The accuracy-per-round plot, federated against the baselines.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;
use tessera_sim::RunReport;

const COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// Writes an SVG of accuracy per round.
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
        let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let caption = format!(
            "{} · {} · seed {}",
            report.plan, report.strategy, report.seed
        );
        let mut chart = ChartBuilder::on(&root)
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
        for (i, (label, points)) in lines.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let style = ShapeStyle::from(&colour).stroke_width(if i < 2 { 2 } else { 1 });
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("{}: cannot write the plot: {e}", path.display()))
}
