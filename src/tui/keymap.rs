//! The one table of keys: it drives both dispatch ([`action_for`]) and the help overlay.
//! Defaults as in formats.md §3, plus the channel keys, `m` (scheme) and `c` (weight view).

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

/// A row of the table: the keys, how the help shows them, the action and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
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
        keys: &[code(KeyCode::Up), ch('k')],
        label: "↑ / k",
        action: Action::SelectPrev,
        desc: "select the layer above",
    },
    Binding {
        keys: &[code(KeyCode::Down), ch('j')],
        label: "↓ / j",
        action: Action::SelectNext,
        desc: "select the layer below",
    },
    Binding {
        keys: &[code(KeyCode::Tab), code(KeyCode::BackTab)],
        label: "Tab",
        action: Action::ToggleFocus,
        desc: "edit weights ↔ activations",
    },
    Binding {
        keys: &[ch('s')],
        label: "s",
        action: Action::NextStrategy,
        desc: "next strategy (minmax … aciq)",
    },
    Binding {
        keys: &[ch('S')],
        label: "S",
        action: Action::PrevStrategy,
        desc: "previous strategy",
    },
    Binding {
        keys: &[ch('b')],
        label: "b",
        action: Action::BitsUp,
        desc: "one bit more (2–8)",
    },
    Binding {
        keys: &[ch('B')],
        label: "B",
        action: Action::BitsDown,
        desc: "one bit less",
    },
    Binding {
        keys: &[ch('g')],
        label: "g",
        action: Action::CycleGranularity,
        desc: "granularity: channel/tensor/g128/g32",
    },
    Binding {
        keys: &[ch('m')],
        label: "m",
        action: Action::ToggleScheme,
        desc: "scheme: symmetric ↔ asymmetric",
    },
    Binding {
        keys: &[ch('p')],
        label: "p",
        action: Action::PercentileUp,
        desc: "percentile strategy / raise P",
    },
    Binding {
        keys: &[ch('P')],
        label: "P",
        action: Action::PercentileDown,
        desc: "percentile strategy / lower P",
    },
    Binding {
        keys: &[ch('[')],
        label: "[",
        action: Action::Narrow,
        desc: "narrow the clip range 5% (manual)",
    },
    Binding {
        keys: &[ch(']')],
        label: "]",
        action: Action::Widen,
        desc: "widen the clip range 5% (manual)",
    },
    Binding {
        keys: &[ch('=')],
        label: "=",
        action: Action::ResetRange,
        desc: "back to the strategy's range",
    },
    Binding {
        keys: &[ch('f')],
        label: "f",
        action: Action::ToggleFloat,
        desc: "keep the layer in float / quantize",
    },
    Binding {
        keys: &[ch('a')],
        label: "a",
        action: Action::ApplyToAll,
        desc: "apply this layer's settings to all",
    },
    Binding {
        keys: &[ch('u')],
        label: "u",
        action: Action::Undo,
        desc: "undo the last change",
    },
    Binding {
        keys: &[ch('r')],
        label: "r",
        action: Action::Rerun,
        desc: "re-run",
    },
    Binding {
        keys: &[ch('x')],
        label: "x",
        action: Action::Export,
        desc: "export the parameters (JSON)",
    },
    Binding {
        keys: &[ch('l')],
        label: "l",
        action: Action::ToggleLog,
        desc: "log-scale counts",
    },
    Binding {
        keys: &[code(KeyCode::Left), ch('<'), ch(',')],
        label: "← / ,",
        action: Action::PrevChannel,
        desc: "previous weight channel",
    },
    Binding {
        keys: &[code(KeyCode::Right), ch('>'), ch('.')],
        label: "→ / .",
        action: Action::NextChannel,
        desc: "next weight channel",
    },
    Binding {
        keys: &[ch('c')],
        label: "c",
        action: Action::CycleWeightView,
        desc: "weights: channel / ranges / tensor",
    },
    Binding {
        keys: &[ch('?'), code(KeyCode::F(1))],
        label: "?",
        action: Action::ToggleHelp,
        desc: "this help",
    },
    Binding {
        keys: &[code(KeyCode::Esc)],
        label: "Esc",
        action: Action::Close,
        desc: "close the help",
    },
    Binding {
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

/// The action bound to a key press (releases and repeats of other kinds are ignored).
pub fn action_for(ev: &KeyEvent) -> Option<Action> {
    if ev.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = ev.modifiers.contains(KeyModifiers::CONTROL);
    KEYMAP
        .iter()
        .find(|b| b.keys.iter().any(|k| k.code == ev.code && k.ctrl == ctrl))
        .map(|b| b.action)
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
                assert!(!seen.contains(k), "{k:?} bound twice");
                seen.push(*k);
            }
        }
    }

    #[test]
    fn keys_dispatch_with_and_without_shift_and_ctrl() {
        let k = |c, m| KeyEvent::new(KeyCode::Char(c), m);
        assert_eq!(
            action_for(&k('b', KeyModifiers::NONE)),
            Some(Action::BitsUp)
        );
        assert_eq!(
            action_for(&k('B', KeyModifiers::SHIFT)),
            Some(Action::BitsDown)
        );
        assert_eq!(
            action_for(&k('c', KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(
            action_for(&k('c', KeyModifiers::NONE)),
            Some(Action::CycleWeightView)
        );
        assert_eq!(
            action_for(&KeyEvent::new(KeyCode::Down, KeyModifiers::NONE)),
            Some(Action::SelectNext)
        );
        assert_eq!(action_for(&k('z', KeyModifiers::NONE)), None);
    }
}
