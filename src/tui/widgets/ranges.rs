//! Per-channel weight ranges: one column per output channel, a bar from the channel's smallest to
//! its largest weight, cyan inside the channel's clipping range and red where it is clipped.
//! Channels beyond the width are paged so that the selected one is visible.

use crate::eval::layer_view::ChannelRange;
use crate::tui::ui::num;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::Widget;

/// The range plot.
pub struct RangePlot<'a> {
    /// One entry per output channel.
    pub ranges: &'a [ChannelRange],
    /// The selected channel (highlighted).
    pub selected: usize,
    /// Draw dimmed (the result is not current).
    pub dim: bool,
}

/// The first channel shown when `width` columns show channels around `selected` of `n`.
pub fn first_channel(selected: usize, n: usize, width: usize) -> usize {
    if n <= width {
        0
    } else {
        selected.saturating_sub(width / 2).min(n - width)
    }
}

impl Widget for RangePlot<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.height < 3 || area.width == 0 || self.ranges.is_empty() {
            return;
        }
        let rows = area.height - 1;
        let (lo, hi) = self
            .ranges
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), r| {
                (lo.min(r.min).min(r.clip.lo), hi.max(r.max).max(r.clip.hi))
            });
        let (lo, hi) = if hi > lo {
            (lo as f64, hi as f64)
        } else {
            (lo as f64 - 0.5, hi as f64 + 0.5)
        };
        let width = area.width as usize;
        let n = self.ranges.len();
        let start = first_channel(self.selected, n, width);
        let row_of = |v: f32| -> u16 {
            let t = (hi - v as f64) / (hi - lo) * rows as f64;
            (t.floor().max(0.0) as u16).min(rows - 1)
        };
        let base = if self.dim {
            Style::new().add_modifier(Modifier::DIM)
        } else {
            Style::new()
        };
        for (k, cr) in self.ranges.iter().enumerate().skip(start).take(width) {
            let x = area.x + (k - start) as u16;
            let sel = k == self.selected;
            let (top, bottom) = (row_of(cr.clip.hi), row_of(cr.clip.lo));
            for r in row_of(cr.max)..=row_of(cr.min) {
                let inside = r >= top && r <= bottom;
                let color = match (sel, inside) {
                    (true, _) => Color::Yellow,
                    (false, true) => Color::Cyan,
                    (false, false) => Color::LightRed,
                };
                let sym = if inside { "│" } else { "┃" };
                buf[(x, area.y + r)]
                    .set_symbol(sym)
                    .set_style(base.fg(color));
            }
            for end in [cr.clip.lo, cr.clip.hi] {
                let r = row_of(end);
                if end < cr.min || end > cr.max {
                    buf[(x, area.y + r)]
                        .set_symbol("·")
                        .set_style(base.fg(if sel { Color::Yellow } else { Color::DarkGray }));
                }
            }
        }
        let shown = (n - start).min(width);
        let label = format!(
            "channels {}–{} of {} · values {} … {} · red: clipped",
            start + 1,
            start + shown,
            n,
            num(lo),
            num(hi)
        );
        buf.set_stringn(
            area.x,
            area.y + rows,
            label,
            width,
            base.fg(Color::DarkGray),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_keep_the_selected_channel_visible() {
        assert_eq!(first_channel(3, 10, 20), 0);
        assert_eq!(first_channel(0, 256, 70), 0);
        assert_eq!(first_channel(100, 256, 70), 65);
        assert_eq!(first_channel(255, 256, 70), 186);
        for s in 0..256 {
            let f = first_channel(s, 256, 70);
            assert!(f <= s && s < f + 70);
        }
    }
}
