//! The mixed-precision picture (SVG): accuracy against weight storage, the greedy front as a
//! line with points, the chosen point marked, the uniform configurations as separate markers and
//! the float accuracy as a dashed line.

use super::plot::{FAMILY, draw_legend, plot_err, register_font};
use crate::error::{Error, Result};
use crate::pipeline::mixed::{FrontPoint, MixedSearch};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Picture size in pixels.
const SIZE: (u32, u32) = (1000, 640);

/// (KiB, accuracy in %) of an evaluated point.
fn xy(p: &FrontPoint) -> Option<(f64, f64)> {
    p.quant_accuracy
        .map(|a| (p.size_bytes as f64 / 1024.0, a * 100.0))
}

/// A short label of per-layer bits, e.g. `W3·2·8` (by channel, each layer's mean width).
fn bits_label(p: &FrontPoint) -> String {
    format!("W{}", p.layer_bits_text().join("·"))
}

/// The picture of `search` with front point `chosen` marked, as SVG text. The points must have
/// been evaluated (accuracies known).
pub fn mixed_svg(search: &MixedSearch, chosen: usize) -> Result<String> {
    let points = plotted_points(search, chosen)?;
    register_font()?;
    let axes = padded_axes(&points);
    let mut s = String::new();
    draw_picture(&mut s, &search.model, &points, &axes)?;
    Ok(s)
}

/// What the picture shows, in (KiB, accuracy in %).
struct Points {
    /// The evaluated front points, in front order.
    front: Vec<(f64, f64)>,
    /// The evaluated uniform configurations, with their bit width.
    uniform: Vec<(f64, f64, u8)>,
    /// The chosen front point.
    chosen: (f64, f64),
    /// The chosen point's per-layer bits label.
    label: String,
    /// The float accuracy, if known.
    fp: Option<f64>,
}

/// The axes' ranges (low, high), padded around the points.
struct Axes {
    x: (f64, f64),
    y: (f64, f64),
}

/// The chart the series are drawn on.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The points of `search` to plot; an error if front point `chosen` was not evaluated.
fn plotted_points(search: &MixedSearch, chosen: usize) -> Result<Points> {
    let front: Vec<(f64, f64)> = search.front.iter().filter_map(xy).collect();
    let uniform: Vec<(f64, f64, u8)> = search
        .uniform
        .iter()
        .filter_map(|p| xy(p).map(|(x, y)| (x, y, p.weight_bits.first().copied().unwrap_or(0))))
        .collect();
    let Some(c) = search.front.get(chosen).and_then(xy) else {
        return Err(Error::format(
            "plot",
            "the plot needs evaluated points with labels",
        ));
    };
    Ok(Points {
        front,
        uniform,
        chosen: c,
        label: bits_label(&search.front[chosen]),
        fp: search.fp32_accuracy.map(|a| a * 100.0),
    })
}

/// The axes' ranges: the extent of the front and uniform points (and the float accuracy),
/// padded by 6% in x and 8% in y (with a floor so a single point still gets a range).
fn padded_axes(points: &Points) -> Axes {
    let xs = points
        .front
        .iter()
        .copied()
        .chain(points.uniform.iter().map(|&(x, y, _)| (x, y)));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in xs {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if let Some(f) = points.fp {
        y1 = y1.max(f);
    }
    let (dx, dy) = ((x1 - x0).max(1e-3) * 0.06, (y1 - y0).max(0.1) * 0.08);
    Axes {
        x: (x0 - dx, x1 + dx),
        y: (y0 - dy, y1 + dy),
    }
}

/// Draws the whole picture into `s`: background, axes, each series and the legend.
fn draw_picture(s: &mut String, model: &str, points: &Points, axes: &Axes) -> Result<()> {
    let root = SVGBackend::with_string(s, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = build_chart(&root, model, axes)?;
    if let Some(f) = points.fp {
        draw_float_line(&mut chart, f, axes)?;
    }
    draw_front(&mut chart, &points.front)?;
    draw_uniform(&mut chart, &points.uniform)?;
    draw_chosen(&mut chart, points.chosen, &points.label)?;
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// The chart on `root`: title, axes over `axes` and their labels, no light grid lines.
fn build_chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    model: &str,
    axes: &Axes,
) -> Result<Chart<'a, 'b>> {
    let title = format!("{model} · mixed precision: accuracy vs weight size");
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FAMILY, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(axes.x.0..axes.x.1, axes.y.0..axes.y.1)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("weight storage (KiB, packed codes)")
        .y_desc("int top-1 (%)")
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

/// The float accuracy `f` as a gray dashed line across the whole x range.
fn draw_float_line(chart: &mut Chart, f: f64, axes: &Axes) -> Result<()> {
    let gray = RGBColor(120, 120, 120);
    chart
        .draw_series(DashedLineSeries::new(
            [(axes.x.0, f), (axes.x.1, f)],
            6,
            4,
            gray.stroke_width(1),
        ))
        .map_err(plot_err)?
        .label(format!("float {f:.2}%"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], gray));
    Ok(())
}

/// The greedy front as a blue line with a dot per point.
fn draw_front(chart: &mut Chart, front: &[(f64, f64)]) -> Result<()> {
    let blue = RGBColor(50, 100, 180);
    chart
        .draw_series(LineSeries::new(front.to_vec(), blue.stroke_width(2)))
        .map_err(plot_err)?
        .label("greedy front")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], blue));
    chart
        .draw_series(front.iter().map(|&p| Circle::new(p, 4, blue.filled())))
        .map_err(plot_err)?;
    Ok(())
}

/// The uniform configurations as green triangles labelled with their bit width.
fn draw_uniform(chart: &mut Chart, uniform: &[(f64, f64, u8)]) -> Result<()> {
    let green = RGBColor(40, 150, 80);
    chart
        .draw_series(uniform.iter().map(|&(x, y, b)| {
            EmptyElement::at((x, y))
                + TriangleMarker::new((0, 0), 7, green.filled())
                + Text::new(format!("W{b}"), (8, -16), (FAMILY, 13))
        }))
        .map_err(plot_err)?
        .label("uniform")
        .legend(move |(x, y)| TriangleMarker::new((x + 7, y), 6, green.filled()));
    Ok(())
}

/// The chosen point as a red ring labelled with its per-layer bits.
fn draw_chosen(chart: &mut Chart, c: (f64, f64), label: &str) -> Result<()> {
    let red = RGBColor(210, 30, 30);
    chart
        .draw_series([EmptyElement::at(c)
            + Circle::new((0, 0), 9, red.stroke_width(3))
            + Text::new(label.to_string(), (12, 8), (FAMILY, 14))])
        .map_err(plot_err)?
        .label("chosen")
        .legend(move |(x, y)| Circle::new((x + 7, y), 5, red.stroke_width(2)));
    Ok(())
}
