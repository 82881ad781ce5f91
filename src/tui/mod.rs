//! The terminal UI (issue 4): explore a model's quantization layer by layer.
//!
//! [`app`] holds the state and turns [`action`]s (from the one [`keymap`] table, or the mouse)
//! into config changes and jobs; [`worker`] runs the pipeline on its own thread and sends owned
//! results back through the one [`event`] channel; [`ui`] and [`widgets`] draw; [`terminal`]
//! enters the UI mode and always restores the terminal.

pub mod action;
pub mod app;
pub mod event;
pub mod keymap;
pub mod terminal;
pub mod ui;
pub mod widgets;
pub mod worker;

use crate::config::QuantConfig;
use crate::model::{Dataset, Model};
use crate::params::ModelParams;
use app::{App, Effect};
use event::{Event, spawn_input};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;
use terminal::Tui;
use worker::{SessionEngine, Worker};

/// How often the screen refreshes without input ("computed N s ago").
pub const TICK: Duration = Duration::from_millis(250);

/// Runs the UI until the user quits. `seed` is parameters loaded with `--params` (or from a
/// QDQ or quantized model file) and where they came from;
/// `export_path` is where the export key writes (default: MODEL.params.json).
/// The terminal is restored on return, on error and on a panic.
pub fn run(
    model: Model,
    calib: Dataset,
    eval: Dataset,
    config: QuantConfig,
    seed: Option<(ModelParams, String)>,
    export_path: Option<std::path::PathBuf>,
) -> std::io::Result<()> {
    let mut app = App::new(&model, calib.n, eval.n, config, seed);
    if let Some(p) = export_path {
        app.export_path = p;
    }
    let export_model = Arc::new(model.clone());
    let mut tui = Tui::enter()?;
    let size = tui.terminal.size()?;
    app.size = (size.width, size.height);
    let (tx, rx) = channel();
    let stop = Arc::new(AtomicBool::new(false));
    spawn_input(tx.clone(), stop.clone(), TICK)?;
    let exports = Exports {
        model: export_model,
        tx: tx.clone(),
    };
    let worker = Worker::spawn(SessionEngine::new(model, calib, eval), tx)?;
    let result = event_loop(&mut tui, &mut app, &worker, &rx, &exports);
    stop.store(true, Ordering::Relaxed);
    drop(worker);
    drop(tui);
    result
}

/// Where exports run: a thread of their own per export (a QDQ ONNX file of a large model takes
/// a while to write), reporting back through the UI's event channel.
struct Exports {
    model: Arc<Model>,
    tx: std::sync::mpsc::Sender<Event>,
}

fn perform(effects: Vec<Effect>, app: &mut App, worker: &Worker, exports: &Exports) {
    for e in effects {
        match e {
            Effect::Submit(job) => worker.submit(job),
            Effect::Export { path, params } => {
                let shown = std::path::absolute(&path).unwrap_or(path.clone());
                app.say(format!("exporting to {}…", shown.display()));
                let (model, tx, target) =
                    (exports.model.clone(), exports.tx.clone(), shown.clone());
                let spawned = std::thread::Builder::new()
                    .name("qscope-export".into())
                    .spawn(move || {
                        let result = crate::export::save_params(&path, &model, &params)
                            .map_err(|e| e.to_string());
                        let _ = tx.send(Event::Exported {
                            path: shown,
                            result,
                        });
                    });
                if let Err(e) = spawned {
                    app.exported(&target, Err(format!("could not start the export: {e}")));
                }
            }
        }
    }
}

fn event_loop(
    tui: &mut Tui,
    app: &mut App,
    worker: &Worker,
    rx: &Receiver<Event>,
    exports: &Exports,
) -> std::io::Result<()> {
    let first = app.start();
    perform(first, app, worker, exports);
    while !app.quit {
        tui.terminal.draw(|f| ui::render(app, f))?;
        let Ok(ev) = rx.recv() else { break };
        let mut effects = app.handle(ev);
        // Handle whatever else is queued before drawing again, so bursts of keys coalesce.
        while !app.quit {
            match rx.try_recv() {
                Ok(ev) => effects.extend(app.handle(ev)),
                Err(_) => break,
            }
        }
        perform(effects, app, worker, exports);
    }
    Ok(())
}
