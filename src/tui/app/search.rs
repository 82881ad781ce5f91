//! The `/` prompt: find a row by name. Typing selects the first row whose name contains the
//! text (case-insensitive); Enter keeps it, Esc goes back; `n`/`N` (↓/↑ in the prompt) step
//! through the matches. Only the selection changes, so nothing is sent to the worker.

use super::{Action, App, Search};

impl App {
    /// The rows whose name contains `query`, ignoring case (none for an empty query).
    pub fn matches(&self, query: &str) -> Vec<usize> {
        if query.is_empty() {
            return Vec::new();
        }
        let q = query.to_lowercase();
        self.rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.name.to_lowercase().contains(&q))
            .map(|(i, _)| i)
            .collect()
    }

    /// What the search keys look for: the prompt's text while it is open, else the last one.
    fn search_query(&self) -> Option<String> {
        match &self.search {
            Some(s) => Some(s.query.clone()),
            None => self.last_search.clone(),
        }
    }

    /// Applies one of the search actions.
    pub(super) fn search_action(&mut self, action: Action) {
        match action {
            Action::SearchOpen => {
                self.status = None;
                self.search = Some(Search {
                    query: String::new(),
                    origin: self.selected,
                });
            }
            Action::SearchType(c) => self.edit_query(|q| q.push(c)),
            Action::SearchBackspace => self.edit_query(|q| {
                q.pop();
            }),
            Action::SearchAccept => {
                if let Some(s) = self.search.take()
                    && !s.query.is_empty()
                {
                    let n = self.matches(&s.query).len();
                    if n == 0 {
                        self.error(format!("no row matches “{}”", s.query));
                    } else {
                        self.say(format!("“{}”: {n} match(es); n/N next/previous", s.query));
                    }
                    self.last_search = Some(s.query);
                }
            }
            Action::SearchCancel => {
                if let Some(s) = self.search.take() {
                    self.select(s.origin);
                }
            }
            Action::SearchNext => self.step_match(true),
            Action::SearchPrev => self.step_match(false),
            _ => {}
        }
    }

    /// Changes the prompt's text and selects the first match (or the origin when it is empty).
    fn edit_query(&mut self, f: impl FnOnce(&mut String)) {
        let Some(s) = self.search.as_mut() else {
            return;
        };
        f(&mut s.query);
        let (query, origin) = (s.query.clone(), s.origin);
        match self.matches(&query).first() {
            Some(&i) => self.select(i),
            None if query.is_empty() => self.select(origin),
            None => {}
        }
    }

    /// Selects the next (or previous) match after the selected row, wrapping around.
    fn step_match(&mut self, forward: bool) {
        let Some(q) = self.search_query().filter(|q| !q.is_empty()) else {
            if self.search.is_none() {
                self.error("no search yet: press / to search by name");
            }
            return;
        };
        let m = self.matches(&q);
        let cur = self.selected;
        let next = if forward {
            m.iter().copied().find(|&i| i > cur).or(m.first().copied())
        } else {
            m.iter()
                .rev()
                .copied()
                .find(|&i| i < cur)
                .or(m.last().copied())
        };
        match next {
            Some(i) => self.select(i),
            None if self.search.is_none() => self.error(format!("no row matches “{q}”")),
            None => {}
        }
    }
}
