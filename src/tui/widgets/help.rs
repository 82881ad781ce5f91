//! The help overlay: every row of [`KEYMAP`], in one or two columns.

use crate::tui::keymap::KEYMAP;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Widget};

/// The overlay, centred on the area it is given.
pub struct Help;

impl Widget for Help {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let lines: Vec<Line> = KEYMAP
            .iter()
            .map(|b| {
                Line::from(vec![
                    Span::styled(
                        format!("{:<11}", b.label),
                        Style::new()
                            .fg(Color::Yellow)
                            .add_modifier(ratatui::style::Modifier::BOLD),
                    ),
                    Span::raw(b.desc),
                ])
            })
            .collect();
        let one_col = lines.len() as u16 + 2 <= area.height.saturating_sub(2);
        let cols: u16 = if one_col { 1 } else { 2 };
        let per_col = lines.len().div_ceil(cols as usize);
        let w = (80 * cols).min(area.width.saturating_sub(2));
        let h = (per_col as u16 + 2).min(area.height);
        let r = Rect::new(
            area.x + (area.width - w) / 2,
            area.y + (area.height - h) / 2,
            w,
            h,
        );
        Clear.render(r, buf);
        let block = Block::bordered()
            .title(" Keys (any key closes; q quits) ")
            .border_style(Style::new().fg(Color::Yellow));
        let inner = block.inner(r);
        block.render(r, buf);
        let areas = Layout::horizontal(vec![Constraint::Ratio(1, cols as u32); cols as usize])
            .spacing(2)
            .split(inner);
        for (chunk, a) in lines.chunks(per_col).zip(areas.iter()) {
            Paragraph::new(chunk.to_vec()).render(*a, buf);
        }
    }
}
