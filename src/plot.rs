//! Loss curves from a `metrics.jsonl` file, drawn with plotters as PNG or SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// One line of a `metrics.jsonl`: the step and whichever losses it logged (language-model
/// training logs a train loss every line; sequence-to-sequence training logs train and
/// validation lines separately).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LossPoint {
    pub step: usize,
    #[serde(default)]
    pub train_loss: Option<f64>,
    #[serde(default)]
    pub val_loss: Option<f64>,
}

/// Reads the metrics lines written by `decodex train` (blank lines skipped, and counted in the
/// line numbers of errors); a file without any is an error.
pub fn read_metrics(path: &Path) -> Result<Vec<LossPoint>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let points = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Data {
                path: path.to_path_buf(),
                msg: format!("line {}: {e}", i + 1),
            })
        })
        .collect::<Result<Vec<LossPoint>>>()?;
    if points.is_empty() {
        return Err(Error::Data {
            path: path.to_path_buf(),
            msg: "no metrics to plot; give the metrics.jsonl a training run writes".into(),
        });
    }
    Ok(points)
}

/// Draws train and val loss against step into `out` (`.png` or `.svg`, by extension).
pub fn plot_losses(logs: &[LossPoint], title: &str, out: &Path) -> Result<()> {
    if logs.is_empty() {
        return Err(Error::Invalid("no metrics to plot".into()));
    }
    save(&Losses { logs, title }, out, (900, 560), "plot")
}

type Area<DB> = DrawingArea<DB, plotters::coord::Shift>;
type Drawn = std::result::Result<(), String>;

/// A figure plotters draws the same on any backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: Area<DB>) -> Drawn
    where
        DB::ErrorType: 'static;
}

/// Draws `fig` into `out`, a PNG or an SVG by its extension; `what` names it in errors.
fn save(fig: &impl Figure, out: &Path, size: (u32, u32), what: &str) -> Result<()> {
    let _ =
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let drawn = match ext.as_str() {
        "png" => fig.draw(BitMapBackend::new(out, size).into_drawing_area()),
        "svg" => fig.draw(SVGBackend::new(out, size).into_drawing_area()),
        _ => {
            return Err(Error::Invalid(format!(
                "{}: the {what} file must end in .png or .svg",
                out.display()
            )))
        }
    };
    drawn.map_err(|e| Error::Invalid(format!("{}: cannot draw the {what}: {e}", out.display())))
}

struct Losses<'a> {
    logs: &'a [LossPoint],
    title: &'a str,
}

impl Figure for Losses<'_> {
    fn draw<DB: DrawingBackend>(&self, root: Area<DB>) -> Drawn
    where
        DB::ErrorType: 'static,
    {
        let (logs, title) = (self.logs, self.title);
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
        root.fill(&WHITE).map_err(e)?;
        let train: Vec<(f64, f64)> = logs
            .iter()
            .filter_map(|l| l.train_loss.map(|v| (l.step as f64, v)))
            .collect();
        let val: Vec<(f64, f64)> = logs
            .iter()
            .filter_map(|l| l.val_loss.map(|v| (l.step as f64, v)))
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
}

/// Draws attention weights as a grid, the source tokens along the bottom axis and the
/// target tokens down the side, brighter for more weight (as the figures of Bahdanau et al.,
/// 2015). `weights` has one row of `src.len()` weights per target token. PNG or SVG by extension.
pub fn attention_heatmap(
    src: &[String],
    tgt: &[String],
    weights: &[Vec<f32>],
    title: &str,
    out: &Path,
) -> Result<()> {
    if src.is_empty() || tgt.is_empty() || weights.len() != tgt.len() {
        return Err(Error::Invalid(format!(
            "{}: {} weight rows for {} target and {} source tokens",
            out.display(),
            weights.len(),
            tgt.len(),
            src.len()
        )));
    }
    let cell = 36u32;
    let size = (180 + cell * src.len() as u32, 140 + cell * tgt.len() as u32);
    save(
        &Heatmap {
            src,
            tgt,
            weights,
            title,
        },
        out,
        size,
        "heatmap",
    )
}

struct Heatmap<'a> {
    src: &'a [String],
    tgt: &'a [String],
    weights: &'a [Vec<f32>],
    title: &'a str,
}

impl Figure for Heatmap<'_> {
    fn draw<DB: DrawingBackend>(&self, root: Area<DB>) -> Drawn
    where
        DB::ErrorType: 'static,
    {
        let (src, tgt, weights, title) = (self.src, self.tgt, self.weights, self.title);
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
        root.fill(&WHITE).map_err(e)?;
        let (s, t) = (src.len(), tgt.len());
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(60)
            .y_label_area_size(120)
            .build_cartesian_2d(0f64..s as f64, 0f64..t as f64)
            .map_err(e)?;
        let label = |tokens: &[String], v: f64, flip: bool| -> String {
            let i = v.floor() as usize;
            let frac = v - v.floor();
            if (frac - 0.5).abs() > 1e-6 || i >= tokens.len() {
                return String::new();
            }
            let i = if flip { tokens.len() - 1 - i } else { i };
            tokens[i].clone()
        };
        let x_fmt = |v: &f64| label(src, *v, false);
        let y_fmt = |v: &f64| label(tgt, *v, true);
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(2 * s + 1)
            .y_labels(2 * t + 1)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .x_label_style(("sans-serif", 15))
            .y_label_style(("sans-serif", 15))
            .x_desc("source")
            .y_desc("translation")
            .draw()
            .map_err(e)?;
        let cells = weights.iter().enumerate().flat_map(|(i, row)| {
            row.iter().enumerate().map(move |(j, &w)| {
                let y = (t - 1 - i) as f64;
                let c = (255.0 * w.clamp(0.0, 1.0)).round() as u8;
                Rectangle::new(
                    [(j as f64, y), (j as f64 + 1.0, y + 1.0)],
                    RGBColor(c, c, c).filled(),
                )
            })
        });
        chart.draw_series(cells).map_err(e)?;
        root.present().map_err(e)?;
        Ok(())
    }
}
