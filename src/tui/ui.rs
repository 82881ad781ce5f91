//! The screen: layout, the layer list, the results, the two histogram panels, the status line
//! and the help overlay. It renders an [`App`]; every figure comes from the worker's result.

use super::app::{App, Side, WeightMode};
use super::widgets::{help::Help, histogram::HistogramWidget, ranges::RangePlot};
use crate::eval::layer_view::HistView;
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
const RESULTS_H: u16 = 4;
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
    if app.help {
        f.render_widget(Help, area);
    }
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
        Span::raw(" (Tab)"),
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
    let state = if current {
        Span::styled("● current", Style::new().fg(Color::Green).bold())
    } else if app.failed.is_some() {
        Span::styled(
            "✗ last run failed; showing the one before",
            Style::new().fg(Color::Red).bold(),
        )
    } else {
        Span::styled("◌ recomputing…", Style::new().fg(Color::Yellow).bold())
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
    if let Some(l) = app.loaded_label() {
        spans.push(Span::styled(
            format!(" · parameters loaded from {l}"),
            Style::new().fg(Color::Magenta),
        ));
    }
    f.render_widget(Paragraph::new(vec![line1, Line::from(spans)]), inner);
}

fn layers(app: &App, f: &mut Frame, r: Rect) {
    let current = app.shown.as_ref().filter(|_| app.is_current());
    let shown = app.shown.as_ref();
    let c = &app.config;
    let dim = Style::new().add_modifier(Modifier::DIM);
    let fig_style = if current.is_some() { Style::new() } else { dim };
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
    let rows: Vec<Row> = app
        .rows
        .iter()
        .enumerate()
        .skip(app.offset)
        .take(visible)
        .map(|(i, row)| {
            let name = &row.name;
            let float = c.is_float(name);
            let marked = float || c.layers.get(name).is_some_and(|o| !o.is_empty());
            let a = c.act_settings(name);
            let w = c.weight_settings(name);
            let rep = shown.and_then(|s| s.computed.report.layers.iter().find(|l| &l.name == name));
            let (bits, gran, wstrat, astrat) = if !row.weights {
                (
                    format!("-/{}", a.bits),
                    "-".into(),
                    "-".into(),
                    a.strategy.to_string(),
                )
            } else if float {
                ("float".into(), "-".into(), "-".into(), "-".into())
            } else {
                let ws = if w.clip.is_some() {
                    "manual".into()
                } else {
                    w.strategy.to_string()
                };
                (
                    format!("{}/{}", w.bits, a.bits),
                    gran_short(w.granularity),
                    ws,
                    a.strategy.to_string(),
                )
            };
            let sens_row = if row.weights {
                app.sens.get(i - 1).copied()
            } else {
                None
            };
            let sens = |k: usize| -> Cell {
                if !row.weights {
                    return Cell::from("-");
                }
                match sens_row.and_then(|s| s[k]) {
                    Some(s) if s.generation == app.generation => Cell::from(pct(s.cell.accuracy)),
                    Some(s) => Cell::from(pct(s.cell.accuracy)).style(dim),
                    None if app.is_current() => Cell::from("…").style(dim),
                    None => Cell::from("-").style(dim),
                }
            };
            let d4 = match sens_row {
                Some([Some(s4), Some(s8)]) => match (s4.cell.accuracy, s8.cell.accuracy) {
                    (Some(x), Some(y)) => {
                        let d = (x - y) * 100.0;
                        let color = if d > -0.5 {
                            Color::Green
                        } else if d > -2.0 {
                            Color::Yellow
                        } else {
                            Color::Red
                        };
                        let style =
                            if s4.generation == app.generation && s8.generation == app.generation {
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
            let mut style = Style::new();
            if i == app.selected {
                style = style.bg(Color::DarkGray).add_modifier(Modifier::BOLD);
            }
            Row::new(vec![
                Cell::from(if marked { "*" } else { " " })
                    .style(Style::new().fg(Color::Yellow).bold()),
                Cell::from(name.clone()),
                Cell::from(row.op.clone()),
                Cell::from(row.shape.clone()),
                Cell::from(bits),
                Cell::from(gran),
                Cell::from(wstrat),
                Cell::from(astrat),
                Cell::from(db(rep.and_then(|l| l.weight_sqnr_db))).style(fig_style),
                Cell::from(db(if row.weights {
                    rep.and_then(|l| l.act_sqnr_db)
                } else {
                    None
                }))
                .style(fig_style),
                sens(1),
                sens(0),
                d4,
            ])
            .style(style)
        })
        .collect();
    let name_w = app
        .rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 16) as u16;
    let shape_w = app
        .rows
        .iter()
        .map(|r| r.shape.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 14) as u16;
    let widths = [
        Constraint::Length(1),
        Constraint::Length(name_w),
        Constraint::Length(6),
        Constraint::Length(shape_w),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
    ];
    let more = if app.rows.len() > visible {
        format!(
            " ({}–{} of {})",
            app.offset + 1,
            (app.offset + visible).min(app.rows.len()),
            app.rows.len()
        )
    } else {
        String::new()
    };
    let block = Block::bordered().title(format!(" Layers{more} · * changed · int8/int4: accuracy with that layer's weights alone at 8/4 bits "));
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
    let c = &app.config;
    let w = c.weight_settings(name);
    let float = c.is_float(name);
    let strat = match w.clip {
        Some(k) => format!("manual ×{k:.3} of {}", w.strategy),
        None if w.strategy == crate::quant::Strategy::Percentile => {
            format!("percentile {}", w.percentile)
        }
        None => w.strategy.to_string(),
    };
    let title = if !row.weights || float {
        format!("Weights {name}")
    } else {
        format!(
            "Weights {name} · int{} {} {} {}",
            w.bits,
            scheme_short(w.scheme),
            w.granularity,
            strat
        )
    };
    let mut block = panel_block(title, app.focus == Side::Weights);
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
            "the network input has no weights; Tab edits its activations".into(),
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
        WeightMode::Ranges if !v.ranges.is_empty() => {
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

fn act_panel(app: &App, f: &mut Frame, r: Rect) {
    let name = app.selected_name();
    let c = &app.config;
    let a = c.act_settings(name);
    let float = c.is_float(name);
    let strat = match a.strategy {
        crate::quant::Strategy::Percentile => format!("percentile {}", a.percentile),
        s => s.to_string(),
    };
    let what = if app.rows[app.selected].weights {
        format!("{name} output")
    } else {
        name.to_string()
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

fn status(app: &App, f: &mut Frame, r: Rect) {
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
                " ↑↓ select · Tab side · s strategy · b/B bits · p/P percentile · [ ] clip · = reset · u undo · x export → {} · ? help",
                app.export_path.display()
            ),
            Style::new().fg(Color::DarkGray),
        )),
    };
    f.render_widget(Paragraph::new(line), r);
}
