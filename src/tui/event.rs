//! The one event type the UI loop reads, and the thread that turns terminal input into events.

use super::worker::WorkerMsg;
use crossterm::event::{self as ct, KeyEvent, MouseEvent};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Duration;

/// Everything the UI reacts to, from one channel.
#[derive(Debug)]
pub enum Event {
    /// A key press.
    Key(KeyEvent),
    /// A mouse event.
    Mouse(MouseEvent),
    /// The terminal has a new size (columns, rows).
    Resize(u16, u16),
    /// Time passed (redraw "computed N s ago", the spinner).
    Tick,
    /// The worker reports.
    Worker(WorkerMsg),
    /// An export finished (where it wrote, or why it failed).
    Exported {
        /// The file.
        path: std::path::PathBuf,
        /// `Err`: one line saying what went wrong.
        result: Result<(), String>,
    },
}

/// Reads terminal events until `stop` is set or the receiver is gone, sending a `Tick` whenever
/// `tick` passes without input.
pub fn spawn_input(
    tx: Sender<Event>,
    stop: Arc<AtomicBool>,
    tick: Duration,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("qscope-input".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ev = match ct::poll(tick) {
                    Ok(true) => match ct::read() {
                        Ok(ct::Event::Key(k)) => Event::Key(k),
                        Ok(ct::Event::Mouse(m)) => Event::Mouse(m),
                        Ok(ct::Event::Resize(w, h)) => Event::Resize(w, h),
                        Ok(_) => continue,
                        Err(_) => break,
                    },
                    Ok(false) => Event::Tick,
                    Err(_) => break,
                };
                if tx.send(ev).is_err() {
                    break;
                }
            }
        })
}
