//! Histograms of a layer's weights and (fused) output activation with the clipping ranges
//! marked, as SVG or PNG (plotters). PNG text is drawn with DejaVu Sans (assets/fonts), which is
//! registered with plotters' `ab_glyph` font support the first time a plot is drawn.

use super::atomic;
use crate::config::INPUT_POINT;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::params::{ActQuant, ModelParams, WeightQuant};
use crate::pipeline::Calibration;
use crate::quant::Granularity;
use crate::quant::calib::Histogram;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters_backend::{BackendColor, BackendCoord, DrawingErrorKind};
use std::path::Path;

/// DejaVu Sans (licence: assets/fonts/LICENSE), for text in PNG and the layout of SVG text.
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// The font family name plots use.
pub(crate) const FAMILY: &str = "sans-serif";
/// Picture size in pixels.
const SIZE: (u32, u32) = (1000, 760);
/// Bars per histogram.
const BINS: usize = 120;

pub(crate) fn register_font() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::format(
            "assets/fonts/DejaVuSans.ttf",
            "the bundled plot font cannot be read",
        ))
    }
}

/// One histogram with its clipping range.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Caption.
    pub title: String,
    /// Left edge of the first bin.
    pub lo: f64,
    /// Right edge of the last bin.
    pub hi: f64,
    /// Counts of equal bins over [lo, hi].
    pub counts: Vec<f64>,
    /// The clipping range to mark (None: not quantized).
    pub clip: Option<(f64, f64)>,
    /// What the red lines are.
    pub clip_label: String,
    /// A line of figures (values, share clipped).
    pub note: String,
}

/// What one layer's picture shows.
#[derive(Debug, Clone)]
pub struct LayerPlot {
    /// The layer (or `input`).
    pub layer: String,
    /// Title over the panels.
    pub title: String,
    /// Weights (if any), then the output activation.
    pub panels: Vec<Panel>,
    /// Log-scaled counts.
    pub log: bool,
}

/// [lo, hi] covering the data and the clip range, with a small margin.
fn span(data: (f64, f64), clip: Option<(f64, f64)>) -> (f64, f64) {
    let (mut lo, mut hi) = data;
    if let Some((a, b)) = clip {
        lo = lo.min(a);
        hi = hi.max(b);
    }
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        let c = if lo.is_finite() { lo } else { 0.0 };
        return (c - 1.0, c + 1.0);
    }
    let pad = 0.03 * (hi - lo);
    (lo - pad, hi + pad)
}

fn pct(part: u64, all: u64) -> String {
    if all == 0 {
        "0%".into()
    } else {
        format!("{:.3}%", 100.0 * part as f64 / all as f64)
    }
}

/// `dequantized`: the values are the quantized model's own (there are no float weights).
fn weight_panel(
    values: &[f32],
    rows: usize,
    cols: usize,
    wq: Option<&WeightQuant>,
    dequantized: bool,
) -> Panel {
    let (dmin, dmax) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v as f64), b.max(v as f64))
        });
    // The clipping boundary is what the integers can represent (for a symmetric scheme that is
    // ±max(|lo|, |hi|) of the chosen range).
    let reps: Vec<crate::quant::ClipRange> = wq.map_or(Vec::new(), |w| {
        w.q.params.iter().map(|p| p.representable()).collect()
    });
    let clip = wq.map(|_| {
        reps.iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), r| {
                (a.min(r.lo as f64), b.max(r.hi as f64))
            })
    });
    let (lo, hi) = span((dmin, dmax), clip);
    let mut counts = vec![0.0; BINS];
    let width = (hi - lo) / BINS as f64;
    for &v in values {
        let b = (((v as f64 - lo) / width) as usize).min(BINS - 1);
        counts[b] += 1.0;
    }
    let n = values.len() as u64;
    match wq {
        None => Panel {
            title: format!("weights · kept in float · {rows}×{cols}"),
            lo,
            hi,
            counts,
            clip: None,
            clip_label: String::new(),
            note: format!("{n} values in [{dmin:.4}, {dmax:.4}]"),
        },
        Some(w) => {
            let s = w.settings;
            let gs = w.q.group_size();
            let clipped = (0..values.len())
                .filter(|&k| {
                    let r = reps[match w.q.granularity {
                        Granularity::PerTensor => 0,
                        Granularity::PerChannel => k / cols,
                        Granularity::Group(_) => (k / cols) * w.q.groups() + (k % cols) / gs,
                    }];
                    let v = values[k];
                    v < r.lo || v > r.hi
                })
                .count() as u64;
            let blocks = reps.len();
            let strategy = if s.clip.is_some() {
                format!("manual ({} × {})", s.strategy, s.clip.unwrap_or(1.0))
            } else {
                s.strategy.to_string()
            };
            let (a, b) = clip.expect("quantized");
            Panel {
                title: format!(
                    "weights{} · W{} {} {} · {strategy}",
                    if dequantized { " (dequantized)" } else { "" },
                    s.bits,
                    s.scheme,
                    s.granularity
                ),
                lo,
                hi,
                counts,
                clip,
                clip_label: if blocks == 1 {
                    format!("clip [{a:.4}, {b:.4}]")
                } else {
                    format!("widest clip of {blocks} blocks [{a:.4}, {b:.4}]")
                },
                note: format!(
                    "{n} values in [{dmin:.4}, {dmax:.4}] · clipped {clipped} ({})",
                    pct(clipped, n)
                ),
            }
        }
    }
}

fn act_panel(what: &str, hist: &Histogram, act: Option<&ActQuant>) -> Panel {
    let rep = act.map(|a| a.qparams.representable());
    let clip = rep.map(|r| (r.lo as f64, r.hi as f64));
    let (lo, hi) = span((hist.min() as f64, hist.max() as f64), clip);
    let counts = hist.rebin(BINS, lo, hi);
    let n = hist.count();
    match act {
        None => Panel {
            title: format!("{what} · not quantized"),
            lo,
            hi,
            counts,
            clip: None,
            clip_label: String::new(),
            note: format!("{n} values in [{:.4}, {:.4}]", hist.min(), hist.max()),
        },
        Some(a) => {
            let s = a.settings;
            let rep = rep.expect("quantized");
            let clipped = hist.count_outside(rep);
            let strategy = match s.strategy {
                crate::quant::Strategy::Percentile => format!("percentile {}", s.percentile),
                other => other.to_string(),
            };
            Panel {
                title: format!("{what} · A{} {} · {strategy}", s.bits, s.scheme),
                lo,
                hi,
                counts,
                clip,
                clip_label: format!(
                    "clip [{:.4}, {:.4}] (chosen [{:.4}, {:.4}]) · scale {:.4e} zp {}",
                    rep.lo, rep.hi, a.range.lo, a.range.hi, a.qparams.scale, a.qparams.zero_point
                ),
                note: format!(
                    "{n} values in [{:.4}, {:.4}] · clipped {clipped} ({})",
                    hist.min(),
                    hist.max(),
                    pct(clipped, n)
                ),
            }
        }
    }
}

/// The picture of layer `name` (a weight layer, or `input`): the weight histogram with the
/// widest clipping range of its blocks, and the calibration histogram of its (fused) output with
/// its clipping range. A clipping range is marked where it really clips: the interval the
/// integers represent (for a symmetric scheme ±max(|lo|, |hi|) of the chosen range; the chosen
/// range is in the label). `has_float == false` (a quantized model): the weights shown are the
/// dequantized ones.
pub fn layer_plot(
    model: &Model,
    params: &ModelParams,
    calib: &Calibration,
    name: &str,
    has_float: bool,
    log: bool,
) -> Result<LayerPlot> {
    let title = |what: &str| format!("{} · {what}", model.name);
    if let (Some(hist), Some(act)) = (calib.entry(name), params.point(name)) {
        let what = if name == INPUT_POINT {
            "network input"
        } else {
            "tensor"
        };
        return Ok(LayerPlot {
            layer: name.into(),
            title: title(what),
            panels: vec![act_panel(
                &format!("{name} (as calibrated)"),
                hist,
                Some(act),
            )],
            log,
        });
    }
    let Some(j) = params.layers.iter().position(|l| l.name == name) else {
        let names: Vec<&str> = params.layers.iter().map(|l| l.name.as_str()).collect();
        return Err(Error::config(
            "layer",
            format!(
                "model '{}' has no weight layer '{name}' (it has: {}, and input)",
                model.name,
                names.join(", ")
            ),
        ));
    };
    let lp = &params.layers[j];
    let layer = &model.layers[lp.index];
    let (w, rows, cols) = layer.op.weight_rows().expect("weight layer");
    let hist = calib.outputs.get(j).ok_or_else(|| {
        Error::config(
            "layer",
            format!("no calibration histogram for layer '{name}'"),
        )
    })?;
    let what = if model.relu_follows(lp.index) {
        "output activation (after relu)"
    } else {
        "output activation"
    };
    Ok(LayerPlot {
        layer: name.into(),
        title: title(&format!("{name} ({})", layer.op.kind())),
        panels: vec![
            weight_panel(w, rows, cols, lp.weight.as_ref(), !has_float),
            act_panel(what, hist, lp.act.as_ref()),
        ],
        log,
    })
}

pub(crate) fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::format("plot", e.to_string())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    log: bool,
    color: RGBColor,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let y = |c: f64| if log { (1.0 + c).log10() } else { c };
    let ymax = p.counts.iter().copied().fold(0.0f64, f64::max);
    // Headroom so the legend in the upper right does not cover the bars.
    let ytop = (y(ymax) * 1.3).max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(p.lo..p.hi, 0.0..ytop)
        .map_err(plot_err)?;
    let y_fmt = |v: &f64| {
        let c = if log { 10f64.powf(*v) - 1.0 } else { *v };
        if c >= 1e4 {
            format!("{c:.1e}")
        } else if ytop >= 10.0 || log {
            format!("{c:.0}")
        } else {
            format!("{c:.2}")
        }
    };
    chart
        .configure_mesh()
        .x_desc("value")
        .y_desc(if log { "count (log scale)" } else { "count" })
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .y_label_formatter(&y_fmt)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_err)?;
    if let Some((a, b)) = p.clip {
        let shade = RGBColor(220, 40, 40).mix(0.08).filled();
        chart
            .draw_series([
                Rectangle::new([(p.lo, 0.0), (a.max(p.lo), ytop)], shade),
                Rectangle::new([(b.min(p.hi), 0.0), (p.hi, ytop)], shade),
            ])
            .map_err(plot_err)?;
    }
    let width = (p.hi - p.lo) / p.counts.len().max(1) as f64;
    chart
        .draw_series(
            p.counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0.0)
                .map(|(i, &c)| {
                    let x0 = p.lo + i as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, y(c))], color.filled())
                }),
        )
        .map_err(plot_err)?
        .label(p.note.clone())
        .legend(move |(x, yy)| Rectangle::new([(x, yy - 5), (x + 14, yy + 5)], color.filled()));
    if let Some((a, b)) = p.clip {
        let red = RGBColor(210, 30, 30);
        chart
            .draw_series(
                [a, b].map(|x| PathElement::new(vec![(x, 0.0), (x, ytop)], red.stroke_width(2))),
            )
            .map_err(plot_err)?
            .label(p.clip_label.clone())
            .legend(move |(x, yy)| {
                PathElement::new(vec![(x, yy), (x + 14, yy)], red.stroke_width(2))
            });
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// The series' legend at `position`, in the plots' one style: labels in the plot font on a
/// translucent white box.
pub(crate) fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    position: SeriesLabelPosition,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, plot: &LayerPlot) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(&plot.title, (FAMILY, 24)).map_err(plot_err)?;
    let areas = root.split_evenly((plot.panels.len().max(1), 1));
    let colors = [RGBColor(70, 120, 180), RGBColor(60, 150, 90)];
    let offset = 2 - plot.panels.len().min(2);
    for (k, (area, p)) in areas.iter().zip(&plot.panels).enumerate() {
        draw_panel(area, p, plot.log, colors[(k + offset).min(1)])?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// The picture as SVG text.
pub fn render_svg(plot: &LayerPlot) -> Result<String> {
    register_font()?;
    let mut s = String::new();
    draw(
        SVGBackend::with_string(&mut s, SIZE).into_drawing_area(),
        plot,
    )?;
    Ok(s)
}

/// A bitmap backend whose text is laid out with each glyph's side bearing. (plotters' own
/// `ab_glyph` text drawing drops the bearings, so "cl" reads as "d" at small sizes.) Vertical
/// placement and the layout box are plotters' own, so everything lines up as before.
struct GlyphText<'a> {
    inner: BitMapBackend<'a>,
    font: ab_glyph::FontRef<'static>,
}

impl plotters_backend::DrawingBackend for GlyphText<'_> {
    type ErrorType = <BitMapBackend<'static> as plotters_backend::DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.present()
    }
    fn draw_pixel(
        &mut self,
        p: BackendCoord,
        c: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_pixel(p, c)
    }
    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        a: BackendCoord,
        b: BackendCoord,
        s: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_line(a, b, s)
    }
    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        a: BackendCoord,
        b: BackendCoord,
        s: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_rect(a, b, s, fill)
    }
    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        s: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_path(path, s)
    }
    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        c: BackendCoord,
        r: u32,
        s: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_circle(c, r, s, fill)
    }
    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        v: I,
        s: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.fill_polygon(v, s)
    }
    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.blit_bitmap(pos, size, src)
    }
    fn draw_text<T: plotters_backend::BackendTextStyle>(
        &mut self,
        text: &str,
        style: &T,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        use ab_glyph::{Font, ScaleFont};
        use plotters_backend::text_anchor::{HPos, VPos};
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let ((min_x, min_y), (max_x, max_y)) = style
            .layout_box(text)
            .map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let (width, height) = (max_x - min_x, max_y - min_y);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let trans = style.transform();
        let (w, h) = self.get_size();
        let size = style.size() as f32;
        let font = self.font.as_scaled(size);
        let mut x = 0f32;
        let mut prev = None;
        for ch in text.chars() {
            let id = font.glyph_id(ch);
            if let Some(p) = prev {
                x += font.kern(p, id);
            }
            prev = Some(id);
            let glyph = id.with_scale_and_position(size, ab_glyph::point(x, 0.0));
            x += font.h_advance(id);
            let Some(outline) = self.font.outline_glyph(glyph) else {
                continue;
            };
            let b = outline.px_bounds();
            let (ox, oy) = (b.min.x as i32, (size / 2.0 + b.min.y) as i32);
            let mut pixels = Vec::new();
            outline.draw(|gx, gy, cov| pixels.push((gx as i32 + ox, gy as i32 + oy, cov)));
            for (gx, gy, cov) in pixels {
                let (tx, ty) = trans.transform(gx + dx - min_x, gy + dy - min_y);
                let (px, py) = (pos.0 + tx, pos.1 + ty);
                if px >= 0 && py >= 0 && (px as u32) < w && (py as u32) < h {
                    let c = BackendColor {
                        alpha: color.alpha * cov.min(1.0) as f64,
                        rgb: color.rgb,
                    };
                    self.inner.draw_pixel((px, py), c)?;
                }
            }
        }
        Ok(())
    }
}

/// The picture as PNG bytes.
pub fn render_png(plot: &LayerPlot) -> Result<Vec<u8>> {
    register_font()?;
    let (w, h) = SIZE;
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    let font = ab_glyph::FontRef::try_from_slice(FONT).map_err(plot_err)?;
    let backend = GlyphText {
        inner: BitMapBackend::with_buffer(&mut rgb, SIZE),
        font,
    };
    draw(backend.into_drawing_area(), plot)?;
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(plot_err)?;
        wr.write_image_data(&rgb).map_err(plot_err)?;
    }
    Ok(out)
}

/// Whether `path` names a picture type plots can be written as (`.svg` or `.png`).
pub fn check_plot_path(path: &Path) -> Result<()> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("svg") | Some("png") => Ok(()),
        _ => Err(Error::format(
            path.display().to_string(),
            "unknown picture type: give a .svg or .png file",
        )),
    }
}

/// Writes `plot` to `path` (`.svg` or `.png` by the extension), atomically.
pub fn write_plot(path: &Path, plot: &LayerPlot) -> Result<()> {
    atomic::write_bytes_atomic(path, &plot_bytes(path, plot)?)
}

/// The picture of `plot` as the bytes of a file at `path` (`.svg` or `.png` by the extension).
pub fn plot_bytes(path: &Path, plot: &LayerPlot) -> Result<Vec<u8>> {
    check_plot_path(path)?;
    let png = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let bytes = match if png {
        render_png(plot)
    } else {
        render_svg(plot).map(String::into_bytes)
    } {
        Ok(b) => b,
        Err(Error::Format { msg, .. }) => {
            return Err(Error::format(
                path.display().to_string(),
                format!("cannot draw the plot: {msg}"),
            ));
        }
        Err(e) => return Err(e),
    };
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LayerPlot {
        LayerPlot {
            layer: "fc1".into(),
            title: "m · fc1".into(),
            panels: vec![Panel {
                title: "weights".into(),
                lo: -1.0,
                hi: 1.0,
                counts: (0..BINS).map(|i| (i % 7) as f64).collect(),
                clip: Some((-0.5, 0.5)),
                clip_label: "clip".into(),
                note: "n".into(),
            }],
            log: false,
        }
    }

    #[test]
    fn svg_and_png_render() {
        let svg = render_svg(&sample()).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("fc1"),
            "{}",
            &svg[..100.min(svg.len())]
        );
        let png = render_png(&LayerPlot {
            log: true,
            ..sample()
        })
        .unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
