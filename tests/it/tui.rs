//! The terminal UI: rendering with ratatui's TestBackend, the worker's job slot and panics.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use qscope::pipeline::Cancel;
use qscope::tui::app::App;
use qscope::tui::event::Event;
use qscope::tui::keymap::KEYMAP;
use qscope::tui::ui;
use qscope::tui::worker::{Engine, Job, SessionEngine, Worker, WorkerMsg};
use qscope::{QuantConfig, bundled};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn screen(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ui::render(app, f)).unwrap();
    let buf = t.backend().buffer().clone();
    (0..h)
        .map(|y| {
            (0..w)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn key(c: char) -> Event {
    let m = if c.is_ascii_uppercase() {
        KeyModifiers::SHIFT
    } else {
        KeyModifiers::NONE
    };
    Event::Key(KeyEvent::new(KeyCode::Char(c), m))
}

/// Sends the app's effects to the worker and feeds it worker events until the latest
/// generation's main result (and, with `sens`, its sensitivity figures) have arrived.
fn settle(
    app: &mut App,
    worker: &Worker,
    rx: &Receiver<Event>,
    effects: Vec<qscope::tui::app::Effect>,
    sens: usize,
) {
    for e in effects {
        if let qscope::tui::app::Effect::Submit(j) = e {
            worker.submit(j);
        }
    }
    let mut got = 0;
    while !(app.is_current() && got >= sens) {
        let ev = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the worker answers");
        if let Event::Worker(WorkerMsg::Sensitivity { generation, .. }) = &ev
            && *generation == app.generation
        {
            got += 1;
        }
        if let Event::Worker(WorkerMsg::Failed { msg, .. }) = &ev {
            panic!("run failed: {msg}");
        }
        app.handle(ev);
    }
}

fn small_session() -> (SessionEngine, App) {
    let model = bundled::model("mnist-mlp").unwrap();
    let calib = bundled::calib().take(200);
    let eval = bundled::test().take(300);
    let mut app = App::new(&model, calib.n, eval.n, QuantConfig::default(), None);
    app.size = (160, 48);
    (SessionEngine::new(model, calib, eval), app)
}

#[test]
fn the_screen_shows_every_panel_and_follows_a_change_to_int4() {
    let (engine, mut app) = small_session();
    let (tx, rx) = channel();
    let worker = Worker::spawn(engine, tx).unwrap();
    let first = app.start();
    settle(&mut app, &worker, &rx, first, 6);
    let s = screen(&app, 160, 48);
    for needle in [
        " Results ",
        " Layers",
        "Weights fc1 · int8 sym per-channel minmax",
        "Activations fc1 output · int8 asym minmax",
        "fc1",
        "fc2",
        "fc3",
        "input",
        "256×784",
        "8/8",
        "channel",
        "minmax",
        "float ",
        "agreement",
        "● current",
        "clipped ",
        "channel 1/256",
        "mean ",
        "kurt ",
        "W SQNR",
        "int4",
    ] {
        assert!(s.contains(needle), "missing {needle:?} in\n{s}");
    }
    // The clipping range is drawn on both histograms' axes.
    assert!(
        s.matches('[').count() >= 4 && s.matches(']').count() >= 4,
        "{s}"
    );
    assert!(
        s.contains('━'),
        "the inside of the clipping range is marked\n{s}"
    );
    // The accuracy figures are the report's.
    let rep = &app.shown.as_ref().unwrap().computed.report;
    assert!(
        s.contains(&ui::pct(rep.fp32_accuracy)) && s.contains(&ui::pct(rep.quant_accuracy)),
        "{s}"
    );
    // Sensitivity: every weight layer has an int4 figure.
    assert!(app.sens.iter().all(|c| c[0].is_some() && c[1].is_some()));

    // fc1 to int4: four presses of B; the screen shows the new bits and new accuracy.
    let effects: Vec<_> = "BBBB".chars().flat_map(|c| app.handle(key(c))).collect();
    assert!(screen(&app, 160, 48).contains("◌ recomputing"));
    settle(&mut app, &worker, &rx, effects, 0);
    let after = screen(&app, 160, 48);
    assert!(after.contains("Weights fc1 · int4 sym"), "{after}");
    assert!(
        after.contains("* fc1") || after.contains("*fc1"),
        "fc1 is marked as changed\n{after}"
    );
    assert!(after.contains("4/8"), "{after}");
    assert_eq!(
        app.shown.as_ref().unwrap().computed.report.layers[0].weight_bits,
        Some(4)
    );
    assert!(after.contains("● current"));

    // The range plot and the whole-tensor view of per-channel weights.
    app.handle(key('c'));
    let s = screen(&app, 160, 48);
    assert!(
        s.contains("ranges of 256 channels") && s.contains("channels 1–"),
        "{s}"
    );
    app.handle(key('c'));
    assert!(screen(&app, 160, 48).contains("whole tensor"));
    worker.join();
}

#[test]
fn help_lists_every_key_and_a_small_terminal_gets_a_message() {
    let (_, mut app) = small_session();
    app.start();
    app.handle(key('?'));
    let s = screen(&app, 160, 48);
    for b in KEYMAP {
        assert!(s.contains(b.desc), "help lacks {:?}\n{s}", b.desc);
    }
    let s = screen(&app, 100, 24);
    assert!(s.contains("Keys"), "{s}");
    let small = screen(&app, 60, 15);
    assert!(
        small.contains("too small") && small.contains("60×15"),
        "{small}"
    );
    // Before the first result the panels say so instead of vanishing.
    app.help = false;
    let s = screen(&app, ui::MIN_W, ui::MIN_H);
    assert!(
        s.contains("calibrating and evaluating the first run") && s.contains("Weights fc1"),
        "{s}"
    );
}

/// An engine that records what it ran, takes a while, and panics on request.
struct Fake {
    ran: Arc<Mutex<Vec<u64>>>,
}

impl Engine for Fake {
    fn run(&mut self, job: &Job, cancel: &Cancel, emit: &mut dyn FnMut(WorkerMsg)) {
        self.ran.lock().unwrap().push(job.generation);
        if job.config.weight_bits == 2 {
            panic!("boom in the worker");
        }
        for _ in 0..50 {
            if cancel.is_cancelled() {
                return;
            }
            std::thread::sleep(Duration::from_millis(4));
        }
        emit(WorkerMsg::Failed {
            generation: job.generation,
            msg: "done".into(),
        });
    }
}

fn job(generation: u64, weight_bits: u8) -> Job {
    Job {
        generation,
        config: QuantConfig {
            weight_bits,
            ..Default::default()
        },
        bins: 10,
        rerun: false,
        seed: None,
    }
}

#[test]
fn newer_jobs_replace_pending_ones_and_cancel_the_running_one() {
    let ran = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = channel();
    let worker = Worker::spawn(Fake { ran: ran.clone() }, tx).unwrap();
    worker.submit(job(1, 8));
    std::thread::sleep(Duration::from_millis(30)); // 1 is running
    for g in 2..=20 {
        worker.submit(job(g, 8));
    }
    let answered = loop {
        match rx.recv_timeout(Duration::from_secs(10)).unwrap() {
            Event::Worker(WorkerMsg::Failed { generation, .. }) => break generation,
            _ => continue,
        }
    };
    assert_eq!(answered, 20, "only the newest job answers");
    assert_eq!(
        *ran.lock().unwrap(),
        [1, 20],
        "pending jobs 2..19 were replaced, 1 was cancelled"
    );
    worker.join();
}

#[test]
fn a_panic_in_the_worker_becomes_an_error_and_the_worker_goes_on() {
    let ran = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = channel();
    let worker = Worker::spawn(Fake { ran: ran.clone() }, tx).unwrap();
    let (_, mut app) = small_session();
    app.start();
    worker.submit(job(1, 2));
    let ev = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    match &ev {
        Event::Worker(WorkerMsg::Failed { generation: 1, msg }) => {
            assert!(msg.contains("panicked") && msg.contains("boom"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    app.handle(ev);
    let s = screen(&app, 160, 48);
    assert!(
        s.contains("boom in the worker"),
        "the status line shows the panic\n{s}"
    );
    worker.submit(job(2, 8));
    match rx.recv_timeout(Duration::from_secs(10)).unwrap() {
        Event::Worker(WorkerMsg::Failed { generation: 2, msg }) => assert_eq!(msg, "done"),
        other => panic!("{other:?}"),
    }
    worker.join();
}

#[test]
fn the_clipped_part_of_a_histogram_is_drawn_apart() {
    use qscope::ClipRange;
    use qscope::eval::layer_view::HistView;
    use qscope::quant::calib::Stats;
    use qscope::tui::widgets::histogram::HistogramWidget;
    use ratatui::style::Color;
    let view = HistView {
        lo: -4.0,
        hi: 4.0,
        counts: vec![1.0, 3.0, 10.0, 40.0, 80.0, 40.0, 10.0, 3.0, 1.0, 0.5],
        clip: Some(ClipRange::new(-2.4, 2.4)),
        clip_bins: Some((2, 7)),
        clipped: 5,
        total: 188,
        stats: Stats::of(&[1.0, 2.0]),
    };
    let mut t = Terminal::new(TestBackend::new(10, 8)).unwrap();
    t.draw(|f| {
        f.render_widget(
            HistogramWidget {
                view: &view,
                log: false,
                dim: false,
            },
            f.area(),
        )
    })
    .unwrap();
    let buf = t.backend().buffer().clone();
    let axis: String = (0..10).map(|x| buf[(x, 6)].symbol().to_string()).collect();
    assert_eq!(axis, "──[━━━━]──");
    // The tallest bar reaches the top; bars outside the range are red, inside cyan.
    assert_eq!(buf[(4, 0)].symbol(), "█");
    assert_eq!(buf[(4, 5)].fg, Color::Cyan);
    assert_eq!(buf[(0, 5)].fg, Color::LightRed);
    assert_eq!(
        buf[(9, 5)].fg,
        Color::LightRed,
        "even a tiny clipped count shows"
    );
    // The range's ends are dotted above their bars.
    assert_eq!(buf[(2, 0)].symbol(), "┊");
    // Log scale lifts small counts.
    let height = |log: bool| {
        let mut t = Terminal::new(TestBackend::new(10, 8)).unwrap();
        t.draw(|f| {
            f.render_widget(
                HistogramWidget {
                    view: &view,
                    log,
                    dim: false,
                },
                f.area(),
            )
        })
        .unwrap();
        let b = t.backend().buffer().clone();
        (0..6).filter(|&y| b[(1, y)].symbol() != " ").count()
    };
    assert!(height(true) > height(false));
}

#[test]
fn loaded_parameters_seed_the_ui_and_a_change_recalibrates() {
    let model = bundled::model("mnist-mlp").unwrap();
    let calib = bundled::calib().take(200);
    let eval = bundled::test().take(300);
    let mut made_with = QuantConfig::default();
    made_with.layer_mut("fc2").weight_bits = Some(4);
    let params = qscope::pipeline::run(&model, &calib, &eval, &made_with, &Cancel::new())
        .unwrap()
        .params;
    let mut app = App::new(
        &model,
        calib.n,
        eval.n,
        QuantConfig::default(),
        Some((params, "fc2-int4.json".into())),
    );
    app.size = (160, 48);
    assert_eq!(
        app.config.weight_settings("fc2").bits,
        4,
        "the config comes from the parameters"
    );
    let (tx, rx) = channel();
    let worker = Worker::spawn(SessionEngine::new(model, calib, eval), tx).unwrap();
    let first = app.start();
    match &first[..] {
        [qscope::tui::app::Effect::Submit(j)] => assert!(j.seed.is_some()),
        other => panic!("{other:?}"),
    }
    settle(&mut app, &worker, &rx, first, 0);
    assert!(app.shown.as_ref().unwrap().computed.loaded);
    let s = screen(&app, 160, 48);
    assert!(s.contains("parameters loaded from fc2-int4.json"), "{s}");
    assert!(s.contains("no calibration histogram"), "{s}");
    // A change re-calibrates: the job carries no parameters and the result has histograms.
    let effects = app.handle(key('B'));
    match &effects[..] {
        [qscope::tui::app::Effect::Submit(j)] => assert!(j.seed.is_none()),
        other => panic!("{other:?}"),
    }
    settle(&mut app, &worker, &rx, effects, 0);
    let c = &app.shown.as_ref().unwrap().computed;
    assert!(!c.loaded && c.views[1].act.is_some());
    assert_eq!(
        c.report.layers[1].weight_bits,
        Some(4),
        "fc2 keeps the loaded settings"
    );
    assert_eq!(c.report.layers[0].weight_bits, Some(7));
    assert!(!screen(&app, 160, 48).contains("parameters loaded"));
    worker.join();
}
