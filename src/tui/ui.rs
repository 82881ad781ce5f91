//! The screen: layout, the layer list, the results, the two histogram panels, the status line
//! and the help overlay. It renders an [`App`]; every figure comes from the worker's result.

use super::app::{App, Side, WeightMode};
use super::widgets::{help::Help, histogram::HistogramWidget, ranges::RangePlot};
use crate::eval::layer_view::{HistView, WeightView};
use crate::quant::calib::Stats;
use crate::quant::{ClipRange, Granularity};
use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, Wrap};

/// The smallest terminal the layout fits in.
pub const MIN_W: u16 = 100;
/// The smallest terminal the layout fits in.
pub const MIN_H: u16 = 24;
/// Rows of the results block.
const RESULTS_H: u16 = 5;
/// Columns of names in the histogram panels' titles.
const PANEL_NAME_W: usize = 28;
/// The least height of the histogram panels.
const PANELS_MIN_H: u16 = 10;

/// Where each part of the screen goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    /// The title line.
    pub title: Rect,
    /// Accuracy and run state.
    pub results: Rect,
    /// The layer list (with borders and a header row).
    pub table: Rect,
    /// The weight panel.
    pub weights: Rect,
    /// The activation panel.
    pub acts: Rect,
    /// The status line.
    pub status: Rect,
}

/// The whole screen of a terminal of `size` (columns, rows).
pub fn full(size: (u16, u16)) -> Rect {
    Rect::new(0, 0, size.0, size.1)
}

/// The layout for `rows` layer-list rows, or `None` when `area` is too small for it.
pub fn layout(area: Rect, rows: usize) -> Option<Areas> {
    if area.width < MIN_W || area.height < MIN_H {
        return None;
    }
    let spare = area.height - 1 - RESULTS_H - 1 - PANELS_MIN_H;
    let table_h = (rows as u16).saturating_add(3).min(spare).max(4);
    let [title, results, table, panels, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(RESULTS_H),
        Constraint::Length(table_h),
        Constraint::Min(PANELS_MIN_H),
        Constraint::Length(1),
    ])
    .areas(area);
    let [weights, acts] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(panels);
    Some(Areas {
        title,
        results,
        table,
        weights,
        acts,
        status,
    })
}

/// Layer rows visible in the list area `table`.
pub fn table_rows(table: Rect) -> usize {
    table.height.saturating_sub(3) as usize
}

/// The first visible row of a list of `rows` rows showing `visible` of them, moved from
/// `offset` as little as needed so that `selected` is visible.
pub fn scroll(offset: usize, selected: usize, visible: usize, rows: usize) -> usize {
    let visible = visible.max(1);
    let offset = offset.min(rows.saturating_sub(visible));
    if selected < offset {
        selected
    } else if selected >= offset + visible {
        selected + 1 - visible
    } else {
        offset
    }
}

/// A path-like ONNX name without the segments that only prefix the next one and without the
/// leading `/` (`/layers/layers.1/downsample/downsample.0/Conv` → `layers.1/downsample.0/Conv`);
/// other names unchanged.
pub fn compact_name(name: &str) -> String {
    if !name.contains('/') {
        return name.to_string();
    }
    let segs: Vec<&str> = name.split('/').filter(|s| !s.is_empty()).collect();
    segs.iter()
        .enumerate()
        .filter(|(i, s)| segs.get(i + 1).is_none_or(|next| !next.starts_with(**s)))
        .map(|(_, s)| *s)
        .collect::<Vec<_>>()
        .join("/")
}

/// Segments of a path with the dropped ones (`keep[i]` false) shown as one `…` per run.
fn join_kept(segs: &[&str], keep: &[bool]) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for (seg, &k) in segs.iter().zip(keep) {
        if k {
            parts.push(seg);
        } else if parts.last() != Some(&"…") {
            parts.push("…");
        }
    }
    parts.join("/")
}

/// `name` as lists show it, in at most `width` columns: its [`compact_name`], and when that is
/// still too long, its last segment, the segments with an index (a digit, as in `layer.3`)
/// that fit, then the others from the right up to the first that does not fit, each run of
/// dropped segments shown as `…`
/// (`…/layer.0/…/self/query/MatMul`). A last segment that is itself too long keeps its tail.
pub fn short_name(name: &str, width: usize) -> String {
    let len = |s: &str| s.chars().count();
    let compact = compact_name(name);
    if len(&compact) <= width {
        return compact;
    }
    let segs: Vec<&str> = compact.split('/').collect();
    let last = segs.len() - 1;
    let mut keep = vec![false; segs.len()];
    keep[last] = true;
    if len(&join_kept(&segs, &keep)) > width {
        let n = len(&compact);
        let tail = width.saturating_sub(1).min(n);
        return format!("…{}", compact.chars().skip(n - tail).collect::<String>());
    }
    let digit = |i: &usize| segs[*i].chars().any(|c| c.is_ascii_digit());
    let fits = |i: usize, keep: &mut [bool]| {
        keep[i] = true;
        let ok = len(&join_kept(&segs, keep)) <= width;
        keep[i] = ok;
        ok
    };
    for i in (0..last).rev().filter(digit) {
        fits(i, &mut keep);
    }
    // Then the other segments from the right, up to the first that does not fit.
    for i in (0..last).rev().filter(|i| !digit(i)) {
        if !fits(i, &mut keep) {
            break;
        }
    }
    join_kept(&segs, &keep)
}

/// The layer-list row under the cell (x, y), if any.
pub fn row_at(area: Rect, rows: usize, offset: usize, x: u16, y: u16) -> Option<usize> {
    let t = layout(area, rows)?.table;
    let first = t.y + 2;
    if x <= t.x || x + 1 >= t.right() || y < first || y >= first + table_rows(t) as u16 {
        return None;
    }
    let i = offset + (y - first) as usize;
    (i < rows).then_some(i)
}

/// A fraction as a percentage.
pub fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", v * 100.0))
}

/// A dB figure.
pub fn db(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

/// A number in a few significant digits.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if x == 0.0 {
        "0".into()
    } else if !x.is_finite() {
        format!("{x}")
    } else if !(1e-3..1e4).contains(&a) {
        format!("{x:.2e}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn range_str(r: ClipRange) -> String {
    format!("[{}, {}]", num(r.lo as f64), num(r.hi as f64))
}

fn clipped_str(v: &HistView) -> String {
    format!(
        "clipped {}/{} ({:.2}%)",
        v.clipped,
        v.total,
        v.clipped_share() * 100.0
    )
}

fn stats_line(s: &Stats) -> Line<'static> {
    let item = |k: &'static str, v: String| {
        vec![
            Span::styled(k, Style::new().fg(Color::DarkGray)),
            Span::raw(v),
            Span::raw("  "),
        ]
    };
    Line::from(
        [
            item("min ", num(s.min as f64)),
            item("max ", num(s.max as f64)),
            item("mean ", num(s.mean)),
            item("std ", num(s.std)),
            item("skew ", num(s.skewness)),
            item("kurt ", num(s.kurtosis)),
        ]
        .concat(),
    )
}

fn scheme_short(s: crate::quant::Scheme) -> &'static str {
    match s {
        crate::quant::Scheme::Symmetric => "sym",
        crate::quant::Scheme::Asymmetric => "asym",
    }
}

fn gran_short(g: Granularity) -> String {
    match g {
        Granularity::PerTensor => "tensor".into(),
        Granularity::PerChannel => "channel".into(),
        Granularity::Group(n) => format!("g:{n}"),
    }
}

/// Draws the whole screen.
pub fn render(app: &App, f: &mut Frame) {
    let area = f.area();
    let Some(a) = layout(area, app.rows.len()) else {
        too_small(f, area);
        return;
    };
    title(app, f, a.title);
    results(app, f, a.results);
    layers(app, f, a.table);
    weight_panel(app, f, a.weights);
    act_panel(app, f, a.acts);
    status(app, f, a.status);
    if let Some(m) = &app.mixed {
        mixed_panel(m, f, area);
    }
    if app.help {
        f.render_widget(Help, area);
    }
}

/// The mixed-precision panel over the middle of the screen: the Pareto front of per-layer
/// weight bits (size, average bits, accuracy), the selected point highlighted.
fn mixed_panel(m: &super::app::MixedPanel, f: &mut Frame, area: Rect) {
    let r = area.inner(ratatui::layout::Margin::new(
        area.width / 10,
        area.height / 6,
    ));
    f.render_widget(ratatui::widgets::Clear, r);
    let block = Block::bordered()
        .title(" Mixed precision: Pareto front · ↑↓ select · Enter apply · U unit · Esc close ")
        .border_style(Style::new().fg(Color::Cyan));
    let inner = block.inner(r);
    f.render_widget(block, r);
    let Some(s) = &m.search else {
        let line = match &m.failed {
            Some(e) => Line::from(format!("✗ {e}").fg(Color::Red)),
            None => Line::from(
                format!(
                    "◌ measuring each layer's (or channel's) sensitivity and the front… {} of {} runs",
                    m.progress.0, m.progress.1
                )
                .fg(Color::Yellow),
            ),
        };
        f.render_widget(Paragraph::new(line), inner);
        return;
    };
    let names: Vec<String> = s.layers.iter().map(|l| compact_name(&l.name)).collect();
    let mut lines = vec![Line::from(
        format!(
            "  {:>10}  {:>8}  {:>9}  {:>9}  {} ({})",
            "bytes",
            "avg bits",
            "int top-1",
            "agreement",
            match s.unit {
                crate::pipeline::mixed::Unit::Layer => "bits per layer",
                crate::pipeline::mixed::Unit::Channel => "mean bits per channel, by layer",
            },
            names.join(", ")
        )
        .fg(Color::DarkGray),
    )];
    let best = s
        .front
        .iter()
        .filter_map(|p| p.quant_accuracy)
        .fold(0.0, f64::max);
    for (k, p) in s.front.iter().enumerate() {
        let bar = p
            .quant_accuracy
            .map(|a| "█".repeat((((a - best + 0.05).max(0.0) / 0.05) * 10.0) as usize))
            .unwrap_or_default();
        let text = format!(
            "{} {:>10}  {:>8.3}  {:>9}  {:>9}  {:<24} {bar}",
            if k == m.selected { "▶" } else { " " },
            p.size_bytes,
            p.avg_bits,
            pct(p.quant_accuracy),
            pct(p.agreement),
            p.layer_bits_text().join(" "),
        );
        let style = if k == m.selected {
            Style::new().fg(Color::Black).bg(Color::Cyan)
        } else {
            Style::new()
        };
        lines.push(Line::styled(text, style));
    }
    let visible = inner.height.saturating_sub(1) as usize;
    let skip = m.selected.saturating_sub(visible.saturating_sub(2));
    let body: Vec<Line> = lines
        .into_iter()
        .enumerate()
        .filter(|(k, _)| *k == 0 || *k > skip)
        .map(|(_, l)| l)
        .collect();
    f.render_widget(Paragraph::new(body), inner);
}

fn too_small(f: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("qscope: the terminal is too small".bold()),
        Line::from(format!(
            "it is {}×{}; the layout needs at least {MIN_W}×{MIN_H}",
            area.width, area.height
        )),
        Line::from("enlarge the window, or press q to quit"),
    ];
    let y = area.height.saturating_sub(3) / 2;
    let r = Rect::new(
        area.x,
        area.y + y,
        area.width,
        area.height.saturating_sub(y).min(3),
    );
    f.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true }),
        r,
    );
}

/// The accuracy methods `c` turns on, short (`none` without any).
pub fn methods_str(c: &crate::QuantConfig) -> String {
    let mut m = Vec::new();
    if let Some(a) = c.smoothquant {
        m.push(format!("smoothquant {a}"));
    }
    if c.cle {
        m.push("cle".to_string());
    }
    if c.weight_rounding != crate::config::WeightRounding::Nearest {
        m.push(c.weight_rounding.to_string());
    }
    if c.bias_correction {
        m.push("bias-correction".to_string());
    }
    if c.act_refine {
        m.push("act-refine".to_string());
    }
    if m.is_empty() {
        "none".into()
    } else {
        m.join(" + ")
    }
}

fn title(app: &App, f: &mut Frame, r: Rect) {
    let kernel = app
        .shown
        .as_ref()
        .map(|s| s.computed.report.kernel.clone())
        .unwrap_or_else(|| "…".into());
    let side = match app.focus {
        Side::Weights => "weights",
        Side::Activations => "activations",
    };
    let line = Line::from(vec![
        Span::styled(
            " qscope ",
            Style::new().fg(Color::Black).bg(Color::Cyan).bold(),
        ),
        Span::raw(format!(
            " {} · calib {} · eval {} · kernel {} · editing ",
            app.model, app.calib_samples, app.eval_samples, kernel
        )),
        Span::styled(side, Style::new().fg(Color::Yellow).bold()),
        Span::raw(" (Tab) · methods "),
        Span::styled(methods_str(&app.config), Style::new().fg(Color::Magenta)),
    ]);
    f.render_widget(Paragraph::new(line), r);
    let right = Line::from(" ? help · q quit ".fg(Color::DarkGray)).alignment(Alignment::Right);
    f.render_widget(Paragraph::new(right), r);
}

fn results(app: &App, f: &mut Frame, r: Rect) {
    let block = Block::bordered().title(" Results ");
    let inner = block.inner(r);
    f.render_widget(block, r);
    let Some(s) = &app.shown else {
        let msg = match &app.failed {
            Some(e) => Line::from(format!("✗ the first run failed: {e}").fg(Color::Red)),
            None => Line::from("◌ calibrating and evaluating the first run…".fg(Color::Yellow)),
        };
        f.render_widget(Paragraph::new(msg), inner);
        return;
    };
    let current = app.is_current();
    let fig = if current {
        Style::new().bold()
    } else {
        Style::new().add_modifier(Modifier::DIM)
    };
    let rep = &s.computed.report;
    let delta = match (rep.fp32_accuracy, rep.quant_accuracy) {
        (Some(a), Some(b)) => format!("{:+.2} pts", (b - a) * 100.0),
        _ => "-".into(),
    };
    let label = |t: String| Span::styled(t, Style::new().fg(Color::DarkGray));
    let line1 = Line::from(vec![
        label("float ".into()),
        Span::styled(pct(rep.fp32_accuracy), fig),
        label("   int ".into()),
        Span::styled(pct(rep.quant_accuracy), fig),
        label("   Δ ".into()),
        Span::styled(delta, fig),
        label("   agreement ".into()),
        Span::styled(pct(rep.agreement), fig),
        label("   output SQNR ".into()),
        Span::styled(format!("{} dB", db(rep.output_sqnr_db)), fig),
    ]);
    let islands = graph_line(rep, inner.width as usize, fig);
    let state = if current {
        Span::styled("● current", Style::new().fg(Color::Green).bold())
    } else if app.failed.is_some() {
        Span::styled(
            "✗ last run failed; showing the one before",
            Style::new().fg(Color::Red).bold(),
        )
    } else {
        let step = app
            .progress
            .as_deref()
            .map_or(String::new(), |p| format!(" {p}"));
        Span::styled(
            format!("◌ recomputing…{step}"),
            Style::new().fg(Color::Yellow).bold(),
        )
    };
    let t = rep.timings_ms;
    let mut spans = vec![
        state,
        Span::raw(format!(
            " · computed {} s ago · change → result {:.2} s · weights {:.0} ms · calib {:.0} ms · eval {:.0} ms",
            s.at.elapsed().as_secs(),
            s.took.as_secs_f64(),
            t.weights,
            t.calibration,
            t.eval
        )),
    ];
    if t.bias_correction > 0.0 {
        spans.push(Span::raw(format!(
            " · bias correction {:.0} ms",
            t.bias_correction
        )));
    }
    if t.act_refine > 0.0 {
        spans.push(Span::raw(format!(" · act refine {:.0} ms", t.act_refine)));
    }
    if let Some(l) = app.loaded_label() {
        spans.push(Span::styled(
            format!(" · parameters {l}"),
            Style::new().fg(Color::Magenta),
        ));
    }
    f.render_widget(
        Paragraph::new(vec![line1, islands, Line::from(spans)]),
        inner,
    );
}

/// `int MACs 94.12% · cosine 0.9998 · float islands: …` in `width` columns (the figures that
/// graph models add to the report; absent ones are left out).
fn graph_line(rep: &crate::Report, width: usize, fig: Style) -> Line<'static> {
    let label = |t: &'static str| Span::styled(t, Style::new().fg(Color::DarkGray));
    let mut spans = Vec::new();
    if let Some(m) = rep.int_mac_share {
        spans.extend([label("int MACs "), Span::styled(pct(Some(m)), fig)]);
        spans.push(label(" · "));
    }
    if let Some(c) = rep.output_cosine {
        spans.extend([label("cosine "), Span::styled(format!("{c:.4}"), fig)]);
        spans.push(label(" · "));
    }
    let used: usize = spans.iter().map(|s| s.width()).sum();
    spans.extend(islands_line(&rep.float_islands, width.saturating_sub(used), fig).spans);
    Line::from(spans)
}

/// `float islands: 3 (layers.0/Add, layers.1/Add, …)`: the nodes that ran in float, as many
/// (shortened) names as fit in `width` columns.
pub fn islands_line(islands: &[String], width: usize, fig: Style) -> Line<'static> {
    let label = Span::styled("float islands: ", Style::new().fg(Color::DarkGray));
    if islands.is_empty() {
        return Line::from(vec![label, Span::styled("none", fig)]);
    }
    let head = format!("{} ", islands.len());
    let mut room = width.saturating_sub(15 + head.chars().count() + 2);
    let mut names: Vec<String> = Vec::new();
    for (k, n) in islands.iter().enumerate() {
        let short = short_name(n, 24);
        let rest = islands.len() - k - 1;
        // Leave room for ", … +N" unless this is the last name.
        let reserve = if rest > 0 { 8 } else { 0 };
        if short.chars().count() + 2 + reserve > room {
            names.push(format!("… +{}", islands.len() - k));
            break;
        }
        room -= short.chars().count() + 2;
        names.push(short);
    }
    Line::from(vec![
        label,
        Span::styled(head, fig.fg(Color::Magenta)),
        Span::styled(
            format!("({})", names.join(", ")),
            Style::new().fg(Color::Magenta),
        ),
    ])
}

/// Widths of the layer list's columns after the name (mark and name excluded).
fn fixed_widths(app: &App) -> [u16; 11] {
    let max = |f: fn(&super::app::RowInfo) -> usize, lo: usize, hi: usize| {
        app.rows.iter().map(f).max().unwrap_or(lo).clamp(lo, hi) as u16
    };
    let op_w = max(|r| r.op.chars().count(), 4, 14);
    let shape_w = max(|r| r.shape.chars().count(), 5, 14);
    [op_w, shape_w, 5, 7, 10, 10, 6, 6, 6, 6, 6]
}

/// The width of the name column in a list `inner` columns wide: the longest name, or what is
/// left by the other columns (at least 12).
fn name_width(app: &App, inner: u16) -> u16 {
    let fixed: u16 = fixed_widths(app).iter().sum::<u16>() + 1 + 12;
    let longest = app
        .rows
        .iter()
        .map(|r| compact_name(&r.name).chars().count())
        .max()
        .unwrap_or(5)
        .max(5) as u16;
    longest.min(inner.saturating_sub(fixed).max(12))
}

/// A sensitivity figure: the accuracy, or the agreement with the float model without labels.
fn sens_figure(c: &super::worker::SensitivityCell) -> Option<f64> {
    c.accuracy.or(c.agreement)
}

/// The sensitivity cells of row `i` (int8, int4) and its Δ4 cell.
fn sens_cells(app: &App, i: usize) -> [Cell<'static>; 3] {
    let dim = Style::new().add_modifier(Modifier::DIM);
    let Some(sens_row) = app.weight_index(i).and_then(|k| app.sens.get(k).copied()) else {
        return [Cell::from("-"), Cell::from("-"), Cell::from("")];
    };
    let sens = |k: usize| -> Cell<'static> {
        match sens_row[k] {
            Some(s) if s.generation == app.generation => Cell::from(pct(sens_figure(&s.cell))),
            Some(s) => Cell::from(pct(sens_figure(&s.cell))).style(dim),
            None if app.is_current() => Cell::from("…").style(dim),
            None => Cell::from("-").style(dim),
        }
    };
    let d4 = match sens_row {
        [Some(s4), Some(s8)] => match (sens_figure(&s4.cell), sens_figure(&s8.cell)) {
            (Some(x), Some(y)) => {
                let d = (x - y) * 100.0;
                let color = if d > -0.5 {
                    Color::Green
                } else if d > -2.0 {
                    Color::Yellow
                } else {
                    Color::Red
                };
                let style = if s4.generation == app.generation && s8.generation == app.generation {
                    Style::new().fg(color)
                } else {
                    dim
                };
                Cell::from(format!("{d:+.2}")).style(style)
            }
            _ => Cell::from("-"),
        },
        _ => Cell::from(""),
    };
    [sens(1), sens(0), d4]
}

/// Layer `name`'s weight bits as text: the width, or with widths per channel their mean to
/// `decimals` places.
fn weight_bits_text(c: &crate::config::QuantConfig, name: &str, decimals: usize) -> String {
    match c.channel_bits(name) {
        Some(b) => format!("{:.decimals$}", crate::quant::weights::mean_bits(b)),
        None => c.weight_settings(name).bits.to_string(),
    }
}

/// Bits, granularity and strategies of row `row` as the list shows them.
fn settings_cells(app: &App, row: &super::app::RowInfo) -> [String; 4] {
    let c = &app.config;
    let name = &row.name;
    let a = c.act_settings(name);
    let w = c.weight_settings(name);
    if !row.weights {
        [
            format!("-/{}", a.bits),
            "-".into(),
            "-".into(),
            a.strategy.to_string(),
        ]
    } else if c.is_float(name) {
        ["float".into(), "-".into(), "-".into(), "-".into()]
    } else {
        let ws = if w.clip.is_some() {
            "manual".into()
        } else {
            w.strategy.to_string()
        };
        [
            format!("{}/{}", weight_bits_text(c, name, 1), a.bits),
            gran_short(w.granularity),
            ws,
            a.strategy.to_string(),
        ]
    }
}

/// One row of the layer list.
fn layer_row(app: &App, i: usize, name_w: usize) -> Row<'static> {
    let row = &app.rows[i];
    let name = &row.name;
    let c = &app.config;
    let dim = Style::new().add_modifier(Modifier::DIM);
    let fig_style = if app.is_current() { Style::new() } else { dim };
    let marked = c.is_float(name) || c.layers.get(name).is_some_and(|o| !o.is_empty());
    let rep = app
        .shown
        .as_ref()
        .and_then(|s| s.computed.report.layers.iter().find(|l| &l.name == name));
    let [bits, gran, wstrat, astrat] = settings_cells(app, row);
    let [s8, s4, d4] = sens_cells(app, i);
    let mut style = Style::new();
    if i == app.selected {
        style = style.bg(Color::DarkGray).add_modifier(Modifier::BOLD);
    }
    let op_style = if row.weights {
        Style::new().fg(Color::Cyan)
    } else {
        Style::new().fg(Color::DarkGray)
    };
    Row::new(vec![
        Cell::from(if marked { "*" } else { " " }).style(Style::new().fg(Color::Yellow).bold()),
        Cell::from(short_name(name, name_w)),
        Cell::from(row.op.clone()).style(op_style),
        Cell::from(row.shape.clone()),
        Cell::from(bits),
        Cell::from(gran),
        Cell::from(wstrat),
        Cell::from(astrat),
        Cell::from(db(rep.and_then(|l| l.weight_sqnr_db))).style(fig_style),
        Cell::from(db(rep.filter(|_| row.weights).and_then(|l| l.act_sqnr_db))).style(fig_style),
        s8,
        s4,
        d4,
    ])
    .style(style)
}

fn layers(app: &App, f: &mut Frame, r: Rect) {
    let header = Row::new([
        "",
        "layer",
        "op",
        "shape",
        "W/A",
        "gran",
        "W strategy",
        "A strategy",
        "W SQNR",
        "A SQNR",
        "int8",
        "int4",
        "Δ4 pts",
    ])
    .style(Style::new().fg(Color::DarkGray).bold());
    let visible = table_rows(r);
    let offset = scroll(app.offset, app.selected, visible, app.rows.len());
    let name_w = name_width(app, r.width.saturating_sub(2));
    let rows: Vec<Row> = (offset..app.rows.len().min(offset + visible))
        .map(|i| layer_row(app, i, name_w as usize))
        .collect();
    let mut widths = vec![Constraint::Length(1), Constraint::Length(name_w)];
    widths.extend(fixed_widths(app).iter().map(|&w| Constraint::Length(w)));
    let more = if app.rows.len() > visible {
        format!(
            " ({}–{} of {})",
            offset + 1,
            (offset + visible).min(app.rows.len()),
            app.rows.len()
        )
    } else {
        String::new()
    };
    let sel = &app.rows[app.selected];
    let detail = Line::from(vec![
        Span::raw(" ▸ "),
        Span::styled(sel.name.clone(), Style::new().bold()),
        Span::styled(
            format!(" · {} {} ", sel.op, sel.shape),
            Style::new().fg(Color::DarkGray),
        ),
    ]);
    let block = Block::bordered()
        .title(format!(
            " Layers{more} · * changed · int8/int4: accuracy (or agreement) with that layer's weights alone at 8/4 bits "
        ))
        .title_bottom(detail);
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(block)
            .column_spacing(1),
        r,
    );
}

fn panel_block(title: String, focused: bool) -> Block<'static> {
    let (style, mark) = if focused {
        (
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
            "▶ ",
        )
    } else {
        (Style::new().fg(Color::Gray), "")
    };
    Block::new()
        .borders(Borders::ALL)
        .border_style(style)
        .title(format!(" {mark}{title} "))
}

/// Info line, histogram, stats line inside `inner`.
/// The rows of a panel: info (wrapped onto two lines when narrow), plot, statistics.
fn panel_rows(inner: Rect, info: Line<'static>, f: &mut Frame) -> (Rect, Rect) {
    let info_h = if info.width() > inner.width as usize {
        2
    } else {
        1
    };
    let [info_r, plot, stats_r] = Layout::vertical([
        Constraint::Length(info_h),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(inner);
    f.render_widget(Paragraph::new(info).wrap(Wrap { trim: true }), info_r);
    (plot, stats_r)
}

/// Info line, histogram, stats line inside `inner`.
fn hist_body(f: &mut Frame, inner: Rect, info: Line<'static>, v: &HistView, app: &App, dim: bool) {
    let (plot, stats_r) = panel_rows(inner, info, f);
    f.render_widget(
        HistogramWidget {
            view: v,
            log: app.log_scale,
            dim,
        },
        plot,
    );
    f.render_widget(Paragraph::new(stats_line(&v.stats)), stats_r);
}

fn message(f: &mut Frame, inner: Rect, text: String) {
    f.render_widget(
        Paragraph::new(text)
            .fg(Color::DarkGray)
            .wrap(Wrap { trim: true }),
        inner,
    );
}

fn weight_panel(app: &App, f: &mut Frame, r: Rect) {
    let name = app.selected_name();
    let row = &app.rows[app.selected];
    let float = app.config.is_float(name);
    let mut block = panel_block(weight_title(app, name), app.focus == Side::Weights);
    if row.weights && !float {
        block = block.title_bottom(
            Line::from(" ←/→ channel · c view · [ ] clip · l log ").fg(Color::DarkGray),
        );
    }
    let inner = block.inner(r);
    f.render_widget(block, r);
    if !row.weights {
        return message(
            f,
            inner,
            format!(
                "{} has no weights; Tab edits its activations",
                super::app::point_what(name)
            ),
        );
    }
    if float {
        return message(
            f,
            inner,
            format!("{name} is kept in float (f quantizes it)"),
        );
    }
    let Some(s) = &app.shown else {
        return message(f, inner, "waiting for the first run…".into());
    };
    let Some(v) = s
        .computed
        .views
        .get(app.selected)
        .and_then(|v| v.weight.as_ref())
    else {
        return message(
            f,
            inner,
            "no weights in this result (it is being recomputed)".into(),
        );
    };
    weight_body(app, f, inner, v);
}

/// The weight panel's title: the layer, and for quantized weights their bits, scheme,
/// granularity and clipping.
fn weight_title(app: &App, name: &str) -> String {
    let c = &app.config;
    let w = c.weight_settings(name);
    let short = short_name(name, PANEL_NAME_W);
    if !app.rows[app.selected].weights || c.is_float(name) {
        return format!("Weights {short}");
    }
    let strat = match w.clip {
        Some(k) => format!("manual ×{k:.3} of {}", w.strategy),
        None if w.strategy == crate::quant::Strategy::Percentile => {
            format!("percentile {}", w.percentile)
        }
        None => w.strategy.to_string(),
    };
    let bits = match c.channel_bits(name) {
        Some(_) => format!("{} mean, ≤{}", weight_bits_text(c, name, 2), w.bits),
        None => w.bits.to_string(),
    };
    format!(
        "Weights {short} · int{bits} {} {} {}",
        scheme_short(w.scheme),
        w.granularity,
        strat
    )
}

/// The weight panel's body in its view: one channel's histogram, every channel's range, or
/// the whole tensor's histogram (the only view of per-tensor weights).
fn weight_body(app: &App, f: &mut Frame, inner: Rect, v: &WeightView) {
    let dim = !app.is_current();
    let ch = app.channel.min(v.rows.saturating_sub(1));
    let mode = if v.granularity == Granularity::PerTensor {
        WeightMode::Tensor
    } else {
        app.weight_mode
    };
    match mode {
        WeightMode::Channel if !v.channels.is_empty() => {
            let h = &v.channels[ch];
            let groups = if let Granularity::Group(n) = v.granularity {
                format!(" envelope of groups of {n}")
            } else {
                String::new()
            };
            let info = Line::from(vec![
                Span::styled(
                    format!("channel {}/{}", ch + 1, v.rows),
                    Style::new().bold(),
                ),
                Span::raw(format!(
                    " · clip{groups} {} · {}",
                    h.clip.map_or("-".into(), range_str),
                    clipped_str(h)
                )),
            ]);
            hist_body(f, inner, info, h, app, dim);
        }
        WeightMode::Ranges if !v.ranges.is_empty() => ranges_body(f, inner, v, (ch, dim)),
        _ => {
            let h = &v.tensor;
            let info = Line::from(vec![
                Span::styled("whole tensor", Style::new().bold()),
                Span::raw(format!(
                    " · clip {} · {}",
                    h.clip.map_or_else(|| "one per channel".into(), range_str),
                    clipped_str(h)
                )),
            ]);
            hist_body(f, inner, info, h, app, dim);
        }
    }
}

/// Every channel's range with its clip, channel `ch` picked out (`dim` while a re-run is on).
fn ranges_body(f: &mut Frame, inner: Rect, v: &WeightView, (ch, dim): (usize, bool)) {
    let cr = v.ranges[ch];
    let info = Line::from(vec![
        Span::styled(
            format!("ranges of {} channels", v.rows),
            Style::new().bold(),
        ),
        Span::raw(format!(
            " · channel {}: [{}, {}] clip {} · {}",
            ch + 1,
            num(cr.min as f64),
            num(cr.max as f64),
            range_str(cr.clip),
            clipped_str(&v.tensor)
        )),
    ]);
    let (plot, stats_r) = panel_rows(inner, info, f);
    f.render_widget(
        RangePlot {
            ranges: &v.ranges,
            selected: ch,
            dim,
        },
        plot,
    );
    f.render_widget(Paragraph::new(stats_line(&v.tensor.stats)), stats_r);
}

fn act_panel(app: &App, f: &mut Frame, r: Rect) {
    let name = app.selected_name();
    let c = &app.config;
    let a = c.act_settings(name);
    let float = c.is_float(name);
    let strat = match a.strategy {
        crate::quant::Strategy::Percentile => format!("percentile {}", a.percentile),
        s => s.to_string(),
    };
    let short = short_name(name, PANEL_NAME_W);
    let what = if app.rows[app.selected].weights {
        format!("{short} output")
    } else {
        short
    };
    let title = if float {
        format!("Activations {what}")
    } else {
        format!(
            "Activations {what} · int{} {} {}",
            a.bits,
            scheme_short(a.scheme),
            strat
        )
    };
    let block = panel_block(title, app.focus == Side::Activations)
        .title_bottom(Line::from(" [ ] clip by hand · = reset · l log ").fg(Color::DarkGray));
    let inner = block.inner(r);
    f.render_widget(block, r);
    if float {
        return message(
            f,
            inner,
            format!("{name} is kept in float (f quantizes it)"),
        );
    }
    let Some(s) = &app.shown else {
        return message(f, inner, "waiting for the first run…".into());
    };
    let Some(v) = s
        .computed
        .views
        .get(app.selected)
        .and_then(|v| v.act.as_ref())
    else {
        let why = if s.computed.loaded {
            "no calibration histogram: the parameters were loaded, not calibrated; a change re-calibrates"
        } else {
            "no histogram in this result (it is being recomputed)"
        };
        return message(f, inner, why.into());
    };
    let info = Line::from(vec![
        Span::styled("calibration", Style::new().bold()),
        Span::raw(format!(
            " · clip {} · {}",
            v.clip.map_or("-".into(), range_str),
            clipped_str(v)
        )),
    ]);
    hist_body(f, inner, info, v, app, !app.is_current());
}

/// The `/` prompt: what was typed, a cursor, and how many rows match.
fn prompt_line(app: &App, query: &str) -> Line<'static> {
    let n = app.matches(query).len();
    let (count, style) = match n {
        _ if query.is_empty() => ("type a name".to_string(), Style::new().fg(Color::DarkGray)),
        0 => (
            "no row matches".to_string(),
            Style::new().fg(Color::Red).bold(),
        ),
        n => {
            let k = app.matches(query).iter().position(|&i| i == app.selected);
            let at = k.map_or(String::new(), |k| format!("{}/", k + 1));
            (format!("{at}{n} matches"), Style::new().fg(Color::Green))
        }
    };
    Line::from(vec![
        Span::styled(" /", Style::new().fg(Color::Yellow).bold()),
        Span::styled(query.to_string(), Style::new().bold()),
        Span::styled("█", Style::new().fg(Color::Yellow)),
        Span::raw("  "),
        Span::styled(count, style),
        Span::styled(
            " · Enter keep · Esc cancel · ↓/↑ next/previous",
            Style::new().fg(Color::DarkGray),
        ),
    ])
}

fn status(app: &App, f: &mut Frame, r: Rect) {
    if let Some(s) = &app.search {
        f.render_widget(Paragraph::new(prompt_line(app, &s.query)), r);
        return;
    }
    let line = match &app.status {
        Some(s) if s.error => Line::from(Span::styled(
            format!(" ✗ {}", s.text),
            Style::new().fg(Color::Red).bold(),
        )),
        Some(s) => Line::from(Span::styled(
            format!(" {}", s.text),
            Style::new().fg(Color::Green),
        )),
        None => Line::from(Span::styled(
            format!(
                " ↑↓ select · / find · Tab side · s strategy · b/B bits · p/P percentile · [ ] clip · = reset · u undo · x export → {} · ? help",
                app.export_path.display()
            ),
            Style::new().fg(Color::DarkGray),
        )),
    };
    f.render_widget(Paragraph::new(line), r);
}
