//! A histogram drawn as bars, one column per bin, with the clipping range marked: bars outside
//! it in red, its ends as `[`/`]` on the axis and as dotted lines above the bars.

use crate::eval::layer_view::HistView;
use crate::tui::ui::num;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::Widget;

const BARS: [&str; 9] = [" ", "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"];

/// A [`HistView`] on screen: bars, then an axis row and a row of labels.
pub struct HistogramWidget<'a> {
    /// What to draw.
    pub view: &'a HistView,
    /// Log-scale counts.
    pub log: bool,
    /// Draw dimmed (the result is not current).
    pub dim: bool,
}

/// Height of a bar in eighths of a cell, out of `rows` rows (a non-empty bin gets at least one).
fn eighths(v: f64, max: f64, rows: u16, log: bool) -> usize {
    if v <= 0.0 || max <= 0.0 {
        return 0;
    }
    let frac = if log {
        (1.0 + v).ln() / (1.0 + max).ln()
    } else {
        v / max
    };
    ((frac * rows as f64 * 8.0).round() as usize).max(1)
}

impl Widget for HistogramWidget<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.height < 3 || area.width == 0 {
            return;
        }
        let v = self.view;
        let rows = area.height - 2;
        let max = v.max_count();
        let n = v.counts.len().min(area.width as usize);
        let inside = |i: usize| v.clip_bins.is_none_or(|(a, b)| i >= a && i <= b);
        let base = if self.dim {
            Style::new().add_modifier(Modifier::DIM)
        } else {
            Style::new()
        };
        for (i, &c) in v.counts.iter().take(n).enumerate() {
            let x = area.x + i as u16;
            let color = if inside(i) {
                Color::Cyan
            } else {
                Color::LightRed
            };
            let h = eighths(c, max, rows, self.log);
            let marker = v.clip_bins.is_some_and(|(a, b)| i == a || i == b);
            for r in 0..rows {
                let y = area.y + rows - 1 - r;
                let level = h.saturating_sub(r as usize * 8).min(8);
                let cell = &mut buf[(x, y)];
                if level > 0 {
                    cell.set_symbol(BARS[level]).set_style(base.fg(color));
                } else if marker {
                    cell.set_symbol("┊").set_style(base.fg(Color::Yellow));
                }
            }
            let axis_y = area.y + rows;
            let (sym, color) = match v.clip_bins {
                Some((a, b)) if i == a && i == b => ("|", Color::Yellow),
                Some((a, _)) if i == a => ("[", Color::Yellow),
                Some((_, b)) if i == b => ("]", Color::Yellow),
                Some(_) if inside(i) => ("━", Color::Cyan),
                Some(_) => ("─", Color::LightRed),
                None => ("─", Color::DarkGray),
            };
            buf[(x, axis_y)]
                .set_symbol(sym)
                .set_style(base.fg(color).add_modifier(Modifier::BOLD));
        }
        let label_y = area.y + rows + 1;
        let w = n as u16;
        let lo = num(v.lo);
        let hi = num(v.hi);
        let style = base.fg(Color::DarkGray);
        buf.set_stringn(area.x, label_y, &lo, w as usize, style);
        if w as usize > lo.chars().count() + hi.chars().count() + 1 {
            buf.set_string(area.x + w - hi.chars().count() as u16, label_y, &hi, style);
        }
        let mid = if self.log {
            "counts: log (l)"
        } else {
            "counts: linear (l)"
        };
        if (w as usize) > lo.len() + hi.len() + mid.len() + 4 {
            buf.set_string(area.x + (w - mid.len() as u16) / 2, label_y, mid, style);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_heights_scale_and_keep_tiny_counts_visible() {
        assert_eq!(eighths(0.0, 10.0, 4, false), 0);
        assert_eq!(eighths(10.0, 10.0, 4, false), 32);
        assert_eq!(eighths(5.0, 10.0, 4, false), 16);
        assert_eq!(eighths(1e-6, 10.0, 4, false), 1);
        assert!(eighths(1.0, 1e6, 4, true) > eighths(1.0, 1e6, 4, false));
    }
}
