//! Entering and leaving the terminal's UI mode, always restored: on quit and on error (a guard's
//! `Drop`), and on a panic of the UI thread (a panic hook). A panic on any other thread while the
//! UI is up is not printed over the screen: its location is recorded for the worker, which
//! turns it into a status-line error.

use crossterm::event::{DisableMouseCapture, EnableMouseCapture};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use std::io::{Stdout, stdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::thread::ThreadId;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static UI_THREAD: Mutex<Option<ThreadId>> = Mutex::new(None);
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);
static HOOK: Once = Once::new();

/// The location of the last panic recorded off the UI thread, taken (once).
pub fn take_panic_location() -> Option<String> {
    LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Leaves the UI mode if it is on (safe to call more than once).
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = execute!(
            stdout(),
            DisableMouseCapture,
            LeaveAlternateScreen,
            crossterm::cursor::Show
        );
        let _ = disable_raw_mode();
    }
}

fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let ui = *UI_THREAD.lock().unwrap_or_else(|e| e.into_inner());
            let on_ui = ui == Some(std::thread::current().id());
            if ACTIVE.load(Ordering::SeqCst) && !on_ui {
                let loc = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()));
                *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = loc;
                return;
            }
            if on_ui {
                restore();
            }
            previous(info);
        }));
    });
}

/// The terminal in UI mode; dropping it restores the terminal.
pub struct Tui {
    /// The ratatui terminal.
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Tui {
    /// Enters raw mode, the alternate screen and mouse capture, with the panic hook installed.
    pub fn enter() -> std::io::Result<Tui> {
        install_panic_hook();
        *UI_THREAD.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current().id());
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let setup = execute!(stdout(), EnterAlternateScreen, EnableMouseCapture)
            .and_then(|_| Terminal::new(CrosstermBackend::new(stdout())));
        match setup {
            Ok(terminal) => {
                let mut tui = Tui { terminal };
                tui.terminal.hide_cursor()?;
                tui.terminal.clear()?;
                Ok(tui)
            }
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        restore();
    }
}
