//! Loss curves from a `metrics.jsonl` file, drawn with plotters as PNG or SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::train::StepLog;

/// Reads the metrics lines written by `decodex train`.
pub fn read_metrics(path: &Path) -> Result<Vec<StepLog>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Data {
                path: path.to_path_buf(),
                msg: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// Draws train and val loss against step into `out` (`.png` or `.svg`, by extension).
pub fn plot_losses(logs: &[StepLog], title: &str, out: &Path) -> Result<()> {
    if logs.is_empty() {
        return Err(Error::Invalid("no metrics to plot".into()));
    }
    let _ =
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let size = (900, 560);
    let err = |e: String| Error::Invalid(format!("{}: cannot draw the plot: {e}", out.display()));
    match ext.as_str() {
        "png" => draw(
            BitMapBackend::new(out, size).into_drawing_area(),
            logs,
            title,
        )
        .map_err(err),
        "svg" => draw(SVGBackend::new(out, size).into_drawing_area(), logs, title).map_err(err),
        _ => Err(Error::Invalid(format!(
            "{}: the plot file must end in .png or .svg",
            out.display()
        ))),
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    logs: &[StepLog],
    title: &str,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let train: Vec<(f64, f64)> = logs
        .iter()
        .map(|l| (l.step as f64, l.train_loss as f64))
        .collect();
    let val: Vec<(f64, f64)> = logs
        .iter()
        .filter_map(|l| l.val_loss.map(|v| (l.step as f64, v as f64)))
        .collect();
    let max_step = logs.iter().map(|l| l.step).max().unwrap_or(1).max(1) as f64;
    let losses = train.iter().chain(val.iter()).map(|p| p.1);
    let (lo, hi) = losses.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..max_step, (lo - pad)..(hi + pad))
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss (nats/token)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(train, BLUE.mix(0.6)))
        .map_err(e)?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if !val.is_empty() {
        chart
            .draw_series(LineSeries::new(val.clone(), RED.stroke_width(2)))
            .map_err(e)?
            .label("val")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
