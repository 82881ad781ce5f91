//! The one table of keys: it drives both dispatch ([`action_for`]) and the help overlay.
//! Defaults as in formats.md §3, plus the channel keys, `m` (scheme) and `c` (weight view).
//! Each row belongs to a [`Mode`]: the layer list, or the `/` prompt (where any other
//! printable character is typed into the prompt).

use super::action::Action;
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// One key (with Ctrl when `ctrl`; Shift is part of the character).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The key code.
    pub code: KeyCode,
    /// Whether Ctrl must be held.
    pub ctrl: bool,
}

const fn ch(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        ctrl: false,
    }
}

const fn code(code: KeyCode) -> Key {
    Key { code, ctrl: false }
}

/// Which keys are live: the layer list's, or the `/` prompt's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The layer list and panels (the usual keys).
    List,
    /// The `/` search prompt is open.
    Search,
    /// The mixed-precision panel is open.
    Mixed,
}

/// A row of the table: the mode, the keys, how the help shows them, the action and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    /// When the keys are live.
    pub mode: Mode,
    /// Keys that trigger the action.
    pub keys: &'static [Key],
    /// The keys as the help overlay shows them.
    pub label: &'static str,
    /// What they do.
    pub action: Action,
    /// One line for the help overlay.
    pub desc: &'static str,
}

/// Every key of the UI.
pub const KEYMAP: &[Binding] = &[
    Binding {
        mode: Mode::List,
        keys: &[code(KeyCode::Up), ch('k')],
        label: "↑ / k",
        action: Action::SelectPrev,
        desc: "select the layer above",
    },
    Binding {
        mode: Mode::List,
        keys: &[code(KeyCode::Down), ch('j')],
        label: "↓ / j",
        action: Action::SelectNext,
        desc: "select the layer below",
    },
    Binding {
        mode: Mode::List,
        keys: &[code(KeyCode::Tab), code(KeyCode::BackTab)],
        label: "Tab",
        action: Action::ToggleFocus,
        desc: "edit weights ↔ activations",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('s')],
        label: "s",
        action: Action::NextStrategy,
        desc: "next strategy (minmax … aciq)",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('S')],
        label: "S",
        action: Action::PrevStrategy,
        desc: "previous strategy",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('b')],
        label: "b",
        action: Action::BitsUp,
        desc: "one bit more (2–8)",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('B')],
        label: "B",
        action: Action::BitsDown,
        desc: "one bit less",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('g')],
        label: "g",
        action: Action::CycleGranularity,
        desc: "granularity: channel/tensor/g128/g32",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('m')],
        label: "m",
        action: Action::ToggleScheme,
        desc: "scheme: symmetric ↔ asymmetric",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('p')],
        label: "p",
        action: Action::PercentileUp,
        desc: "percentile strategy / raise P",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('P')],
        label: "P",
        action: Action::PercentileDown,
        desc: "percentile strategy / lower P",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('[')],
        label: "[",
        action: Action::Narrow,
        desc: "narrow the clip range 5% (manual)",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch(']')],
        label: "]",
        action: Action::Widen,
        desc: "widen the clip range 5% (manual)",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('=')],
        label: "=",
        action: Action::ResetRange,
        desc: "back to the strategy's range",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('f')],
        label: "f",
        action: Action::ToggleFloat,
        desc: "keep the layer in float / quantize",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('a')],
        label: "a",
        action: Action::ApplyToAll,
        desc: "apply this layer's settings to all",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('u')],
        label: "u",
        action: Action::Undo,
        desc: "undo the last change",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('r')],
        label: "r",
        action: Action::Rerun,
        desc: "re-run",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('x')],
        label: "x",
        action: Action::Export,
        desc: "export the parameters (JSON)",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('o')],
        label: "o",
        action: Action::ToggleBiasCorrection,
        desc: "bias correction on/off",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('e')],
        label: "e",
        action: Action::ToggleCle,
        desc: "cross-layer equalization on/off",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('w')],
        label: "w",
        action: Action::CycleRounding,
        desc: "weight rounding: nearest → gptq → adaround",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('t')],
        label: "t",
        action: Action::ToggleSmoothQuant,
        desc: "SmoothQuant (α 0.5) on/off",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('v')],
        label: "v",
        action: Action::ToggleActRefine,
        desc: "activation range refinement (calibration KL) on/off",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('M')],
        label: "M",
        action: Action::MixedOpen,
        desc: "mixed precision: search the Pareto front of weight bits",
    },
    Binding {
        mode: Mode::Mixed,
        keys: &[code(KeyCode::Up), ch('k')],
        label: "M … ↑ / k",
        action: Action::SelectPrev,
        desc: "mixed panel: the point above",
    },
    Binding {
        mode: Mode::Mixed,
        keys: &[code(KeyCode::Down), ch('j')],
        label: "M … ↓ / j",
        action: Action::SelectNext,
        desc: "mixed panel: the point below",
    },
    Binding {
        mode: Mode::Mixed,
        keys: &[code(KeyCode::Enter)],
        label: "M … Enter",
        action: Action::MixedApply,
        desc: "mixed panel: apply the point's weight bits",
    },
    Binding {
        mode: Mode::Mixed,
        keys: &[ch('U')],
        label: "M … U",
        action: Action::MixedUnit,
        desc: "mixed panel: unit (model size → layer → channel)",
    },
    Binding {
        mode: Mode::Mixed,
        keys: &[code(KeyCode::Esc), ch('M')],
        label: "M … Esc",
        action: Action::Close,
        desc: "mixed panel: close",
    },
    Binding {
        mode: Mode::Mixed,
        keys: &[ch('q')],
        label: "M … q",
        action: Action::Quit,
        desc: "quit (from the mixed panel)",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('l')],
        label: "l",
        action: Action::ToggleLog,
        desc: "log-scale counts",
    },
    Binding {
        mode: Mode::List,
        keys: &[code(KeyCode::Left), ch('<'), ch(',')],
        label: "← / ,",
        action: Action::PrevChannel,
        desc: "previous weight channel",
    },
    Binding {
        mode: Mode::List,
        keys: &[code(KeyCode::Right), ch('>'), ch('.')],
        label: "→ / .",
        action: Action::NextChannel,
        desc: "next weight channel",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('c')],
        label: "c",
        action: Action::CycleWeightView,
        desc: "weights: channel / ranges / tensor",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('?'), code(KeyCode::F(1))],
        label: "?",
        action: Action::ToggleHelp,
        desc: "this help",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('/')],
        label: "/",
        action: Action::SearchOpen,
        desc: "jump to a node by name (type to search)",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('n')],
        label: "n",
        action: Action::SearchNext,
        desc: "next match of the last search",
    },
    Binding {
        mode: Mode::List,
        keys: &[ch('N')],
        label: "N",
        action: Action::SearchPrev,
        desc: "previous match of the last search",
    },
    Binding {
        mode: Mode::Search,
        keys: &[code(KeyCode::Enter)],
        label: "/ … Enter",
        action: Action::SearchAccept,
        desc: "search: keep the row found",
    },
    Binding {
        mode: Mode::Search,
        keys: &[code(KeyCode::Esc)],
        label: "/ … Esc",
        action: Action::SearchCancel,
        desc: "search: cancel, back to the row before",
    },
    Binding {
        mode: Mode::Search,
        keys: &[code(KeyCode::Down), code(KeyCode::Tab)],
        label: "/ … ↓ Tab",
        action: Action::SearchNext,
        desc: "search: next match",
    },
    Binding {
        mode: Mode::Search,
        keys: &[code(KeyCode::Up), code(KeyCode::BackTab)],
        label: "/ … ↑",
        action: Action::SearchPrev,
        desc: "search: previous match",
    },
    Binding {
        mode: Mode::Search,
        keys: &[code(KeyCode::Backspace)],
        label: "/ … ⌫",
        action: Action::SearchBackspace,
        desc: "search: delete a character",
    },
    Binding {
        mode: Mode::Search,
        keys: &[Key {
            code: KeyCode::Char('c'),
            ctrl: true,
        }],
        label: "/ … Ctrl-c",
        action: Action::Quit,
        desc: "quit (from the prompt)",
    },
    Binding {
        mode: Mode::List,
        keys: &[code(KeyCode::Esc)],
        label: "Esc",
        action: Action::Close,
        desc: "close the help",
    },
    Binding {
        mode: Mode::List,
        keys: &[
            ch('q'),
            Key {
                code: KeyCode::Char('c'),
                ctrl: true,
            },
        ],
        label: "q / Ctrl-c",
        action: Action::Quit,
        desc: "quit",
    },
];

/// The action bound to a key press in `mode` (releases are ignored). In the search prompt a
/// printable character without Ctrl that no row binds is typed into the prompt.
pub fn action_for(ev: &KeyEvent, mode: Mode) -> Option<Action> {
    if ev.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = ev.modifiers.contains(KeyModifiers::CONTROL);
    let bound = KEYMAP
        .iter()
        .filter(|b| b.mode == mode)
        .find(|b| b.keys.iter().any(|k| k.code == ev.code && k.ctrl == ctrl))
        .map(|b| b.action);
    match (bound, mode, ev.code) {
        (None, Mode::Search, KeyCode::Char(c)) if !ctrl && !c.is_control() => {
            Some(Action::SearchType(c))
        }
        _ => bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_bound_once_and_every_action_is_described() {
        let mut seen = Vec::new();
        for b in KEYMAP {
            assert!(!b.desc.is_empty() && !b.label.is_empty());
            for k in b.keys {
                assert!(!seen.contains(&(b.mode, *k)), "{k:?} bound twice");
                seen.push((b.mode, *k));
            }
        }
    }

    #[test]
    fn keys_dispatch_with_and_without_shift_and_ctrl() {
        let k = |c, m| KeyEvent::new(KeyCode::Char(c), m);
        assert_eq!(
            action_for(&k('b', KeyModifiers::NONE), Mode::List),
            Some(Action::BitsUp)
        );
        assert_eq!(
            action_for(&k('B', KeyModifiers::SHIFT), Mode::List),
            Some(Action::BitsDown)
        );
        assert_eq!(
            action_for(&k('c', KeyModifiers::CONTROL), Mode::List),
            Some(Action::Quit)
        );
        assert_eq!(
            action_for(&k('c', KeyModifiers::NONE), Mode::List),
            Some(Action::CycleWeightView)
        );
        assert_eq!(
            action_for(
                &KeyEvent::new(KeyCode::Down, KeyModifiers::NONE),
                Mode::List
            ),
            Some(Action::SelectNext)
        );
        assert_eq!(action_for(&k('z', KeyModifiers::NONE), Mode::List), None);
    }

    #[test]
    fn the_prompt_types_letters_and_keeps_its_own_keys() {
        let k = |c, m| KeyEvent::new(KeyCode::Char(c), m);
        let s = Mode::Search;
        assert_eq!(
            action_for(&k('/', KeyModifiers::NONE), Mode::List),
            Some(Action::SearchOpen)
        );
        assert_eq!(
            action_for(&k('q', KeyModifiers::NONE), s),
            Some(Action::SearchType('q'))
        );
        assert_eq!(
            action_for(&k('C', KeyModifiers::SHIFT), s),
            Some(Action::SearchType('C'))
        );
        assert_eq!(
            action_for(&k('c', KeyModifiers::CONTROL), s),
            Some(Action::Quit)
        );
        let code = |c| KeyEvent::new(c, KeyModifiers::NONE);
        assert_eq!(
            action_for(&code(KeyCode::Enter), s),
            Some(Action::SearchAccept)
        );
        assert_eq!(
            action_for(&code(KeyCode::Esc), s),
            Some(Action::SearchCancel)
        );
        assert_eq!(
            action_for(&code(KeyCode::Esc), Mode::List),
            Some(Action::Close)
        );
        assert_eq!(action_for(&code(KeyCode::F(5)), s), None);
    }
}
