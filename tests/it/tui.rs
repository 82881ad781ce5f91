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
        mixed: false,
        mixed_unit: None,
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
        Some((params, "loaded from fc2-int4.json".into())),
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

/// The buffer row of the highlighted (selected) layer-list row, if it is on screen.
fn selected_line(app: &App, w: u16, h: u16) -> Option<String> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ui::render(app, f)).unwrap();
    let buf = t.backend().buffer().clone();
    let table = ui::layout(ui::full((w, h)), app.rows.len())?.table;
    (table.y + 2..table.bottom() - 1)
        .find(|&y| buf[(table.x + 2, y)].bg == ratatui::style::Color::DarkGray)
        .map(|y| {
            (0..w)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
        })
}

/// The mnist-mlp app with its rows replaced by `n` synthetic graph rows (entry tensor first).
fn many_rows(n: usize) -> App {
    use qscope::tui::app::RowInfo;
    let (_, mut app) = small_session();
    app.rows = (0..n)
        .map(|i| RowInfo {
            name: format!("/blocks/blocks.{i}/mixer/mixer.{i}/proj/MatMul"),
            op: if i == 0 { "tensor" } else { "MatMul" }.into(),
            shape: if i == 0 {
                String::new()
            } else {
                "64×64".into()
            },
            weights: i > 0,
        })
        .collect();
    app.sens = vec![[None; 2]; n - 1];
    app.selected = 1;
    app
}

#[test]
fn a_list_of_120_rows_scrolls_so_the_selection_stays_visible_at_any_height() {
    for h in [ui::MIN_H, 30, 40, 60] {
        let mut app = many_rows(120);
        app.resize(120, h);
        let mut k = 1;
        for step in [5, 40, 73, 1, 0] {
            for _ in 0..step {
                app.handle(key('j'));
                k = (k + 1).min(119);
            }
            assert_eq!(app.selected, k);
            let line = selected_line(&app, 120, h)
                .unwrap_or_else(|| panic!("row {k} not visible at height {h}"));
            assert!(line.contains(&format!("blocks.{k}/")), "{h}: {line}");
        }
        // And back up to the top.
        for _ in 0..119 {
            app.handle(key('k'));
        }
        assert_eq!(app.selected, 0);
        assert!(selected_line(&app, 120, h).unwrap().contains("blocks.0/"));
        // The title says which part of the list is shown.
        assert!(screen(&app, 120, h).contains("of 120)"));
    }
}

#[test]
fn the_search_prompt_is_drawn_and_a_jump_scrolls_to_the_row() {
    let mut app = many_rows(120);
    app.resize(120, 30);
    for c in "/BLOCKS.97/".chars() {
        app.handle(key(c));
    }
    assert_eq!(app.selected, 97);
    let s = screen(&app, 120, 30);
    let last = s.lines().last().unwrap();
    assert!(
        last.contains("/BLOCKS.97/█") && last.contains("1/1 matches"),
        "{last}"
    );
    assert!(last.contains("Esc cancel"), "{last}");
    assert!(selected_line(&app, 120, 30).unwrap().contains("blocks.97/"));
    // The full name of the selected row is shown under the list.
    assert!(
        s.contains("/blocks/blocks.97/mixer/mixer.97/proj/MatMul"),
        "{s}"
    );
    app.handle(key('x'));
    let last = screen(&app, 120, 30).lines().last().unwrap().to_string();
    assert!(last.contains("no row matches"), "{last}");
    app.handle(Event::Key(KeyEvent::new(
        KeyCode::Enter,
        KeyModifiers::NONE,
    )));
    assert!(app.search.is_none() && app.status.as_ref().unwrap().error);
    assert_eq!(app.selected, 97, "a search without a match leaves the row");
}

#[test]
fn graph_rows_show_op_types_and_shortened_names_and_the_results_show_float_islands() {
    let model = bundled::model("mnist-resnet").unwrap();
    let calib = bundled::calib().take(16);
    let eval = bundled::test().take(16);
    let mut app = App::new(&model, calib.n, eval.n, QuantConfig::default(), None);
    app.resize(120, 40);
    let s = screen(&app, 120, 40);
    for needle in [
        "tensor",
        "Conv ",
        "Gemm ",
        "16×16×3×3",
        "layers.1/downsample.0/Conv",
        "stem.0/Conv",
        "fc/Gemm",
        "▸ /stem/stem.0/Conv · Conv",
    ] {
        assert!(s.contains(needle), "missing {needle:?}\n{s}");
    }
    // Names too long for the column keep their tail; the list never cuts a name's end.
    assert!(
        !s.contains("/layers/layers.1/downsample/downsample.0/Conv "),
        "{s}"
    );
    let out = qscope::pipeline::run(&model, &calib, &eval, &app.config, &Cancel::new()).unwrap();
    // Every op of the residual CNN has an integer kernel: no float island.
    assert!(
        out.report.float_islands.is_empty(),
        "{:?}",
        out.report.float_islands
    );
    let computed = qscope::tui::worker::Computed {
        views: qscope::eval::layer_view::layer_views(
            &model,
            &out.params,
            out.calibration.as_ref(),
            app.bins(),
        ),
        report: out.report,
        params: out.params,
        loaded: false,
        compute: Duration::from_millis(1),
        bins: app.bins(),
    };
    let first = app.start();
    assert_eq!(first.len(), 1);
    app.handle(Event::Worker(WorkerMsg::Done {
        generation: 1,
        result: Box::new(computed),
    }));
    let s = screen(&app, 120, 40);
    assert!(s.contains("float islands: none"), "{s}");
    assert!(s.contains("int MACs 100.00% · cosine 0.9"), "{s}");
    // Narrow terminals list fewer names and say how many are left out.
    let line = ui::islands_line(
        &["/a/Add".into(), "/b/Add".into(), "/c/Add".into()],
        40,
        ratatui::style::Style::new(),
    );
    let text: String = line.spans.iter().map(|s| s.content.to_string()).collect();
    assert!(
        text.starts_with("float islands: 3 (a/Add, ") && text.contains("… +"),
        "{text}"
    );
    // The weight panel of an entry tensor says what it is.
    app.handle(key('k'));
    let s = screen(&app, 120, 40);
    assert!(
        s.contains("the tensor /pool/GlobalAveragePool_output_0 has no") && s.contains("Tab edits"),
        "{s}"
    );
}

#[test]
fn short_names_keep_the_tail() {
    let n = "/layers/layers.1/downsample/downsample.0/Conv";
    assert_eq!(ui::short_name(n, 60), "layers.1/downsample.0/Conv");
    assert_eq!(ui::short_name("fc1", 60), "fc1");
    assert_eq!(ui::short_name(n, 26), "layers.1/downsample.0/Conv");
    assert_eq!(ui::short_name(n, 22), "…/downsample.0/Conv");
    assert_eq!(ui::short_name(n, 8), "…/Conv");
    assert_eq!(ui::short_name("abcdefghij", 5), "…ghij");
    let b = "/bert/encoder/layer.0/attention/self/query/MatMul";
    assert_eq!(ui::short_name(b, 31), "…/layer.0/…/self/query/MatMul");
    assert_eq!(ui::short_name(b, 24), "…/layer.0/…/query/MatMul");
    let d = "/bert/encoder/layer.0/intermediate/dense/MatMul";
    assert_eq!(ui::short_name(d, 33), "…/layer.0/…/dense/MatMul");
    for w in 5..60 {
        assert!(ui::short_name(b, w).chars().count() <= w, "{w}");
    }
}
