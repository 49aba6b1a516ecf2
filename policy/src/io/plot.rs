//! PNG plots of a simulation: cost over time, and the sliding window's occupancy.
//!
//! Drawn with plotters into an RGB buffer and encoded with `png`. Text uses DejaVu Sans from
//! the `dejavu` crate, compiled into the binary, so it renders offline on any machine (no system
//! fonts or fontconfig needed).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::sim::SimReport;

/// Width of every plot, pixels.
pub const WIDTH: u32 = 1400;
/// Height of every plot, pixels.
pub const HEIGHT: u32 = 900;

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Drawing failed.
    #[error("drawing {file}: {message}")]
    Draw {
        /// Output file.
        file: PathBuf,
        /// plotters' message.
        message: String,
    },
    /// Writing the PNG failed.
    #[error("writing {file}: {message}")]
    Write {
        /// Output file.
        file: PathBuf,
        /// The cause.
        message: String,
    },
}

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 3] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
];

fn register_font() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // A font from a crate: the bytes are in the binary. Cannot fail for this font.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

fn color_of(policy: &str) -> RGBColor {
    match policy {
        crate::window::NAME => COLORS[0],
        crate::infinicache::NAME => COLORS[1],
        _ => COLORS[2],
    }
}

fn hours(t_ms: u64) -> f64 {
    t_ms as f64 / 3_600_000.0
}

/// Renders into a fresh RGB buffer with `draw` and writes `dir/name`.
fn render(
    dir: &Path,
    name: &str,
    draw: impl FnOnce(
        &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    ) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<PathBuf, PlotError> {
    register_font();
    let file = dir.join(name);
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        let res = root
            .fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|_| draw(&root).map_err(|e| e.to_string()))
            .and_then(|_| root.present().map_err(|e| e.to_string()));
        res.map_err(|message| PlotError::Draw {
            file: file.clone(),
            message,
        })?;
    }
    let write_err = |message: String| PlotError::Write {
        file: file.clone(),
        message,
    };
    let out = File::create(&file).map_err(|e| write_err(e.to_string()))?;
    let mut enc = png::Encoder::new(BufWriter::new(out), WIDTH, HEIGHT);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| write_err(e.to_string()))?;
    w.write_image_data(&buf)
        .map_err(|e| write_err(e.to_string()))?;
    w.finish().map_err(|e| write_err(e.to_string()))?;
    Ok(file)
}

/// Writes `cost.png` and `window.png` into `dir` (which must exist). `title` names the trace.
pub fn write_plots(
    dir: &Path,
    reports: &[SimReport],
    title: &str,
) -> Result<Vec<PathBuf>, PlotError> {
    let cost = render(dir, "cost.png", |root| cost_plot(root, reports, title))?;
    let window = render(dir, "window.png", |root| window_plot(root, reports, title))?;
    Ok(vec![cost, window])
}

fn cost_plot(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    reports: &[SimReport],
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let end = reports
        .iter()
        .flat_map(|r| r.timeline.last())
        .map(|s| hours(s.t_ms))
        .fold(1.0, f64::max);
    let max_all = reports
        .iter()
        .flat_map(|r| r.timeline.iter().map(|s| s.cost_usd))
        .fold(0.01, f64::max);
    let fn_reports: Vec<&SimReport> = reports.iter().filter(|r| r.cluster.is_none()).collect();
    let max_fn = fn_reports
        .iter()
        .flat_map(|r| r.timeline.iter().map(|s| s.cost_usd))
        .fold(0.01, f64::max);
    let root = root.titled(
        &format!("Cumulative cost over time ({title})"),
        (FONT, 26).into_font().style(FontStyle::Bold),
    )?;
    let (left, right) = root.split_horizontally(WIDTH / 2);

    let mut chart = ChartBuilder::on(&left)
        .caption("all policies (log scale)", (FONT, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(0f64..end, (0.001f64..max_all * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("hours since trace start")
        .y_desc("USD so far")
        .label_style((FONT, 15))
        .draw()?;
    for r in reports {
        let c = color_of(&r.policy);
        chart
            .draw_series(LineSeries::new(
                r.timeline
                    .iter()
                    .map(|s| (hours(s.t_ms), s.cost_usd.max(0.001))),
                c.stroke_width(3),
            ))?
            .label(format!("{} (${:.2})", r.policy, r.cost_usd))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 25, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;

    let mut chart = ChartBuilder::on(&right)
        .caption("function-memory policies (linear)", (FONT, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(0f64..end, 0f64..max_fn * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("hours since trace start")
        .y_desc("USD so far")
        .label_style((FONT, 15))
        .draw()?;
    for r in fn_reports {
        let c = color_of(&r.policy);
        chart
            .draw_series(LineSeries::new(
                r.timeline.iter().map(|s| (hours(s.t_ms), s.cost_usd)),
                c.stroke_width(3),
            ))?
            .label(format!("{} (${:.2})", r.policy, r.cost_usd))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 25, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn window_plot(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    reports: &[SimReport],
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let end = reports
        .iter()
        .flat_map(|r| r.timeline.last())
        .map(|s| hours(s.t_ms))
        .fold(1.0, f64::max);
    let fn_reports: Vec<&SimReport> = reports.iter().filter(|r| r.cluster.is_none()).collect();
    let root = root.titled(
        &format!("Memory occupancy over time ({title})"),
        (FONT, 26).into_font().style(FontStyle::Bold),
    )?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2 - 20);

    // Functions held: the sliding window's active and degraded functions (stacked) against the
    // fixed pool.
    let max_fns = fn_reports
        .iter()
        .flat_map(|r| r.timeline.iter().map(|s| s.functions))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(&top)
        .caption("functions held", (FONT, 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(75)
        .build_cartesian_2d(0f64..end, 0f64..max_fns * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("hours since trace start")
        .y_desc("functions")
        .label_style((FONT, 15))
        .draw()?;
    for r in &fn_reports {
        let c = color_of(&r.policy);
        if r.policy == crate::window::NAME {
            let degraded = RGBColor(0x9e, 0xc5, 0xe8);
            chart
                .draw_series(
                    AreaSeries::new(
                        r.timeline
                            .iter()
                            .map(|s| (hours(s.t_ms), f64::from(s.functions))),
                        0.0,
                        degraded.mix(0.8),
                    )
                    .border_style(degraded),
                )?
                .label("sliding-window: degraded buckets")
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 25, y + 6)], degraded.filled())
                });
            chart
                .draw_series(
                    AreaSeries::new(
                        r.timeline
                            .iter()
                            .map(|s| (hours(s.t_ms), f64::from(s.active_functions))),
                        0.0,
                        c.mix(0.8),
                    )
                    .border_style(c),
                )?
                .label("sliding-window: active buckets")
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 25, y + 6)], c.filled()));
        } else {
            chart
                .draw_series(LineSeries::new(
                    r.timeline
                        .iter()
                        .map(|s| (hours(s.t_ms), f64::from(s.functions))),
                    c.stroke_width(3),
                ))?
                .label(format!("{}: fixed pool", r.policy))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 25, y)], c.stroke_width(3))
                });
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;

    // Bytes stored against memory provisioned.
    let gib = crate::types::GIB as f64;
    let max_gb = reports
        .iter()
        .flat_map(|r| {
            r.timeline
                .iter()
                .map(|s| s.memory_bytes.max(s.stored_bytes))
        })
        .max()
        .unwrap_or(1)
        .max(1) as f64
        / gib;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("memory: stored (solid) vs provisioned (dashed)", (FONT, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(0f64..end, 0f64..max_gb * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("hours since trace start")
        .y_desc("GiB")
        .label_style((FONT, 15))
        .draw()?;
    for r in reports {
        let c = color_of(&r.policy);
        chart
            .draw_series(LineSeries::new(
                r.timeline
                    .iter()
                    .map(|s| (hours(s.t_ms), s.stored_bytes as f64 / gib)),
                c.stroke_width(3),
            ))?
            .label(format!("{} stored", r.policy))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 25, y)], c.stroke_width(3)));
        chart.draw_series(DashedLineSeries::new(
            r.timeline
                .iter()
                .map(|s| (hours(s.t_ms), s.memory_bytes as f64 / gib)),
            8,
            6,
            c.stroke_width(2),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
