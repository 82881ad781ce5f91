use super::*;
use crate::eval::layer_view::layer_views;
use crate::pipeline::{Cancel, run};
use crate::quant::{Scheme, Strategy};
use crate::tui::keymap::Mode;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent};

fn model() -> Model {
    crate::bundled::model("mnist-mlp").unwrap()
}

fn app() -> App {
    let mut app = App::new(&model(), 1000, 2000, QuantConfig::default(), None);
    app.size = (160, 48);
    app
}

fn key(c: char) -> Event {
    let m = if c.is_ascii_uppercase() {
        KeyModifiers::SHIFT
    } else {
        KeyModifiers::NONE
    };
    Event::Key(KeyEvent::new(KeyCode::Char(c), m))
}

fn press(app: &mut App, keys: &str) -> Vec<Effect> {
    keys.chars().flat_map(|c| app.handle(key(c))).collect()
}

fn jobs(effects: &[Effect]) -> Vec<&Job> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Submit(j) => Some(j),
            _ => None,
        })
        .collect()
}

/// A real result for `config` on a few samples.
fn computed(config: &QuantConfig, bins: usize) -> Box<Computed> {
    let m = model();
    let out = run(
        &m,
        &crate::bundled::calib().take(64),
        &crate::bundled::test().take(64),
        config,
        &Cancel::new(),
    )
    .unwrap();
    Box::new(Computed {
        views: layer_views(&m, &out.params, out.calibration.as_ref(), bins),
        report: out.report,
        params: out.params,
        loaded: false,
        compute: Duration::from_millis(1),
        bins,
    })
}

fn done(app: &App, generation: u64) -> Event {
    Event::Worker(WorkerMsg::Done {
        generation,
        result: computed(&app.config, app.bins()),
    })
}

#[test]
fn starts_on_the_first_layer_and_sends_generation_one() {
    let mut app = app();
    assert_eq!(app.selected_name(), "fc1");
    assert_eq!(
        app.rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["input", "fc1", "fc2", "fc3"]
    );
    assert_eq!(app.rows[1].shape, "256×784");
    let e = app.start();
    let j = jobs(&e);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].generation, 1);
    assert_eq!(j[0].config, QuantConfig::default());
    assert!(j[0].bins >= 8);
}

#[test]
fn a_key_sequence_gives_the_expected_config_and_one_job_per_change() {
    let mut app = app();
    app.start();
    // b at 8 bits changes nothing and sends nothing.
    assert!(press(&mut app, "b").is_empty());
    assert!(app.status.as_ref().unwrap().error);
    // Four bits less on fc1's weights: four jobs, generations 2..=5.
    let e = press(&mut app, "BBBB");
    let gens: Vec<u64> = jobs(&e).iter().map(|j| j.generation).collect();
    assert_eq!(gens, [2, 3, 4, 5]);
    assert_eq!(jobs(&e)[3].config.weight_settings("fc1").bits, 4);
    // Activations of fc2: percentile up (the strategy becomes percentile), 7 bits.
    press(&mut app, "j");
    app.handle(Event::Key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE)));
    let e = press(&mut app, "pB");
    let c = &jobs(&e)[1].config;
    assert_eq!(c.act_settings("fc2").strategy, Strategy::Percentile);
    assert_eq!(
        c.act_settings("fc2").percentile,
        99.99,
        "the first p switches to percentile"
    );
    let e = press(&mut app, "pp");
    assert_eq!(jobs(&e)[1].config.act_settings("fc2").percentile, 99.999);
    let e = press(&mut app, "P");
    assert_eq!(jobs(&e)[0].config.act_settings("fc2").percentile, 99.995);
    assert_eq!(c.act_settings("fc2").bits, 7);
    assert_eq!(c.act_settings("fc1").bits, 8);
    // Strategy and scheme on fc2's weights, float on fc3.
    app.handle(Event::Key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE)));
    press(&mut app, "ssmg");
    let w = app.config.weight_settings("fc2");
    assert_eq!(w.strategy, Strategy::Kl);
    assert_eq!(w.scheme, Scheme::Asymmetric);
    assert_eq!(w.granularity, Granularity::PerTensor);
    press(&mut app, "jf");
    assert_eq!(app.config.keep_float, ["fc3"]);
    // What the config file would hold.
    let toml = toml::to_string(&app.config.layers).unwrap();
    assert!(
        toml.contains("[fc1]") && toml.contains("weight_bits = 4"),
        "{toml}"
    );
    // Undo walks back one change at a time.
    press(&mut app, "uuuuu");
    assert_eq!(app.config.act_settings("fc2").bits, 7);
    assert!(app.config.keep_float.is_empty());
    assert_eq!(app.generation, 20);
    // Back to the global value: the override goes and so does the mark.
    press(&mut app, "kkbbbb");
    assert!(
        !app.config.layers.contains_key("fc1"),
        "{:?}",
        app.config.layers
    );
}

#[test]
fn a_stale_result_is_discarded_and_only_the_latest_counts() {
    let mut app = app();
    app.start();
    let old = done(&app, 1);
    press(&mut app, "B"); // generation 2
    app.handle(old);
    assert!(
        app.shown.is_none(),
        "a result of generation 1 must not be shown once 2 is out"
    );
    assert!(app.is_running());
    app.handle(done(&app, 2));
    assert!(app.is_current());
    assert_eq!(
        app.shown.as_ref().unwrap().computed.report.layers[0].weight_bits,
        Some(7)
    );
    // A newer change makes the shown result not current, and a failure of an old job is ignored.
    press(&mut app, "B"); // generation 3
    assert!(!app.is_current());
    app.handle(Event::Worker(WorkerMsg::Failed {
        generation: 2,
        msg: "old".into(),
    }));
    assert!(app.failed.is_none());
    app.handle(Event::Worker(WorkerMsg::Failed {
        generation: 3,
        msg: "the worker panicked: boom".into(),
    }));
    assert_eq!(app.failed.as_deref(), Some("the worker panicked: boom"));
    assert!(app.status.as_ref().unwrap().text.contains("boom"));
    // Sensitivity figures of old generations are dropped too.
    let cell = SensitivityCell {
        layer: 0,
        bits: 4,
        accuracy: Some(0.9),
        agreement: Some(0.9),
    };
    app.handle(Event::Worker(WorkerMsg::Sensitivity {
        generation: 2,
        cell,
    }));
    assert!(app.sens[0][0].is_none());
    app.handle(Event::Worker(WorkerMsg::Sensitivity {
        generation: 3,
        cell,
    }));
    assert_eq!(app.sens[0][0].unwrap().cell, cell);
}

#[test]
fn narrowing_an_activation_range_starts_from_the_strategy_range_and_resets() {
    let mut app = app();
    app.start();
    app.focus = Side::Activations;
    assert!(
        press(&mut app, "[").is_empty(),
        "no range known before the first result"
    );
    app.handle(done(&app, 1));
    let range = app
        .shown
        .as_ref()
        .unwrap()
        .computed
        .params
        .by_name("fc1")
        .unwrap()
        .act
        .as_ref()
        .unwrap()
        .range;
    let e = press(&mut app, "[");
    let [lo, hi] = jobs(&e)[0].config.layer("fc1").act_range.unwrap();
    assert!((hi - range.hi * 0.95).abs() < 1e-6 && (lo - range.lo * 0.95).abs() < 1e-6);
    assert_eq!(app.config.act_settings("fc1").strategy, Strategy::Manual);
    press(&mut app, "]");
    assert!((app.config.layer("fc1").act_range.unwrap()[1] - range.hi * 0.95 * 1.05).abs() < 1e-5);
    press(&mut app, "=");
    assert_eq!(app.config.act_settings("fc1").strategy, Strategy::MinMax);
    assert!(app.config.layers.is_empty());
    // Weights: a factor, no result needed.
    app.focus = Side::Weights;
    press(&mut app, "[[");
    assert!((app.config.weight_settings("fc1").clip.unwrap() - 0.9025).abs() < 1e-6);
}

#[test]
fn export_waits_for_the_current_result() {
    let mut app = app();
    app.start();
    assert!(press(&mut app, "x").is_empty());
    assert!(app.export_pending);
    let e = app.handle(done(&app, 1));
    match &e[..] {
        [Effect::Export { path, params }] => {
            assert_eq!(path, &PathBuf::from("mnist-mlp.params.json"));
            assert_eq!(params.layers.len(), 3);
        }
        other => panic!("expected an export, got {other:?}"),
    }
    app.exported(std::path::Path::new("/tmp/p.json"), Ok(()));
    assert!(app.status.as_ref().unwrap().text.contains("/tmp/p.json"));
}

#[test]
fn apply_to_all_makes_the_layer_settings_global() {
    let mut app = app();
    app.start();
    press(&mut app, "BBBBs");
    press(&mut app, "j");
    app.focus = Side::Activations;
    press(&mut app, "[");
    app.config.layer_mut("fc2").act_range = Some([0.0, 1.0]);
    press(&mut app, "k");
    app.focus = Side::Weights;
    press(&mut app, "a");
    let c = &app.config;
    assert_eq!(c.weight_bits, 4);
    assert_eq!(c.weight_strategy, Strategy::Percentile);
    for n in ["fc1", "fc2", "fc3"] {
        assert_eq!(c.weight_settings(n).bits, 4, "{n}");
    }
    assert_eq!(
        c.layer("fc2").act_range,
        Some([0.0, 1.0]),
        "hand-set ranges stay"
    );
    assert!(!c.layers.contains_key("fc1"));
}

#[test]
fn the_input_row_has_only_activations_and_clicks_select_rows() {
    let mut app = app();
    app.start();
    press(&mut app, "k");
    assert_eq!(app.selected_name(), "input");
    assert!(press(&mut app, "B").is_empty());
    app.focus = Side::Activations;
    let e = press(&mut app, "B");
    assert_eq!(jobs(&e)[0].config.act_settings("input").bits, 7);
    let t = ui::layout(ui::full(app.size), app.rows.len())
        .unwrap()
        .table;
    let click = |y| {
        Event::Mouse(MouseEvent {
            kind: MouseEventKind::Down(MouseButton::Left),
            column: t.x + 3,
            row: y,
            modifiers: KeyModifiers::NONE,
        })
    };
    app.handle(click(t.y + 2 + 3));
    assert_eq!(app.selected_name(), "fc3");
    app.handle(click(t.y)); // the border: nothing
    assert_eq!(app.selected_name(), "fc3");
}

#[test]
fn help_toggles_and_any_key_closes_it_without_acting() {
    let mut app = app();
    app.start();
    press(&mut app, "?");
    assert!(app.help);
    assert!(press(&mut app, "B").is_empty());
    assert!(!app.help);
    assert_eq!(app.config, QuantConfig::default());
    press(&mut app, "?q");
    assert!(app.quit);
}

#[test]
fn a_result_drawn_for_another_width_is_redrawn_for_this_one() {
    let mut app = app();
    app.start();
    let e = app.handle(Event::Worker(WorkerMsg::Done {
        generation: 1,
        result: computed(&app.config, 10),
    }));
    let j = jobs(&e);
    assert_eq!(j.len(), 1);
    assert_eq!((j[0].generation, j[0].bins), (2, app.bins()));
    assert!(app.view_only, "the figures keep their timing");
}

#[test]
fn a_resize_asks_for_histograms_of_the_new_width() {
    let mut app = app();
    app.start();
    assert!(
        app.resize(150, 40).is_empty(),
        "nothing to redraw before a result"
    );
    app.handle(done(&app, 1));
    let e = app.resize(120, 40);
    let j = jobs(&e);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].bins, app.bins());
    assert!(!j[0].rerun);
}

#[test]
fn slash_and_text_select_the_matching_row_and_esc_goes_back() {
    let mut app = app();
    app.start();
    assert_eq!(app.key_mode(), Mode::List);
    // `/` opens the prompt; letters are typed, not acted on (f, c would be keys otherwise).
    assert!(press(&mut app, "/fC3").is_empty(), "searching sends no job");
    assert_eq!(app.key_mode(), Mode::Search);
    assert_eq!(app.search.as_ref().unwrap().query, "fC3");
    assert_eq!(app.selected_name(), "fc3", "case-insensitive");
    assert!(app.config.keep_float.is_empty());
    app.handle(Event::Key(KeyEvent::new(
        KeyCode::Enter,
        KeyModifiers::NONE,
    )));
    assert!(app.search.is_none());
    assert_eq!(app.selected_name(), "fc3");
    assert_eq!(app.last_search.as_deref(), Some("fC3"));
    // The first match wins; backspace widens the search; Esc restores the row before.
    press(&mut app, "/fc");
    assert_eq!(app.selected_name(), "fc1");
    app.handle(Event::Key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE)));
    assert_eq!(app.selected_name(), "fc2", "↓ goes to the next match");
    press(&mut app, "9");
    assert_eq!(app.selected_name(), "fc2", "no match keeps the selection");
    app.handle(Event::Key(KeyEvent::new(
        KeyCode::Backspace,
        KeyModifiers::NONE,
    )));
    assert_eq!(app.search.as_ref().unwrap().query, "fc");
    app.handle(Event::Key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)));
    assert!(app.search.is_none());
    assert_eq!(app.selected_name(), "fc3");
    // n/N step through the last accepted search's matches, wrapping.
    press(&mut app, "/fc");
    app.handle(Event::Key(KeyEvent::new(
        KeyCode::Enter,
        KeyModifiers::NONE,
    )));
    assert_eq!(app.selected_name(), "fc1");
    press(&mut app, "n");
    assert_eq!(app.selected_name(), "fc2");
    press(&mut app, "NN");
    assert_eq!(app.selected_name(), "fc3");
    assert_eq!(app.generation, 1, "nothing was recomputed");
}

#[test]
fn graph_models_list_their_entry_tensors_and_start_on_the_first_weight_layer() {
    let m = crate::bundled::model("mnist-resnet").unwrap();
    let app = App::new(&m, 10, 10, QuantConfig::default(), None);
    let first = app.rows.iter().position(|r| r.weights).unwrap();
    assert!(first >= 1, "{:?}", app.rows);
    assert_eq!(app.selected, first);
    assert_eq!(app.rows[first].op, "Conv");
    assert!(
        app.rows[..first]
            .iter()
            .all(|r| r.op == "tensor" || r.op == "input")
    );
    assert_eq!(app.rows.last().unwrap().op, "Gemm");
    assert_eq!(app.sens.len(), app.rows.len() - first);
    assert_eq!(app.weight_index(first), Some(0));
    assert_eq!(app.weight_index(0), None);
}

#[test]
fn method_keys_toggle_the_methods_and_each_sends_a_job() {
    let mut app = app();
    app.start();
    let e = press(&mut app, "o");
    assert!(jobs(&e)[0].config.bias_correction);
    let e = press(&mut app, "e");
    assert!(jobs(&e)[0].config.cle && jobs(&e)[0].config.bias_correction);
    let e = press(&mut app, "w");
    assert_eq!(jobs(&e)[0].config.weight_rounding, WeightRounding::Gptq);
    let e = press(&mut app, "t");
    assert_eq!(jobs(&e)[0].config.smoothquant, Some(0.5));
    let e = press(&mut app, "w");
    assert_eq!(jobs(&e)[0].config.weight_rounding, WeightRounding::Adaround);
    let e = press(&mut app, "v");
    assert!(jobs(&e)[0].config.act_refine);
    let e = press(&mut app, "oetwv");
    let last = jobs(&e).last().unwrap().config.clone();
    assert!(!last.bias_correction && !last.cle && last.smoothquant.is_none() && !last.act_refine);
    assert_eq!(last.weight_rounding, WeightRounding::Nearest);
    press(&mut app, "u");
    assert!(app.config.act_refine, "undo");
}

#[test]
fn the_mixed_panel_searches_in_the_worker_and_enter_applies_the_selected_point() {
    let mut app = app();
    app.start();
    let e = press(&mut app, "M");
    let job = jobs(&e)[0].clone();
    assert!(job.mixed, "the search goes to the worker");
    assert_eq!(app.key_mode(), Mode::Mixed);
    let mut session = crate::pipeline::Session::new(
        model(),
        crate::bundled::calib().take(64),
        crate::bundled::test().take(64),
    );
    let opts = crate::pipeline::mixed::MixedOptions::default();
    let search =
        crate::pipeline::mixed::search(&mut session, &job.config, &opts, &Cancel::new(), |_, _| {})
            .unwrap();
    let want = search.front[1].weight_bits.clone();
    let want_rows = search.front[1].channel_bits.clone();
    app.handle(Event::Worker(WorkerMsg::Mixed {
        generation: job.generation,
        result: Ok(Box::new(search)),
    }));
    let e = press(&mut app, "j");
    assert!(jobs(&e).is_empty(), "moving in the panel runs nothing");
    let e = app.handle(Event::Key(KeyEvent::new(
        KeyCode::Enter,
        KeyModifiers::NONE,
    )));
    let config = &jobs(&e)[0].config;
    for (k, (name, bits)) in ["fc1", "fc2", "fc3"].iter().zip(&want).enumerate() {
        assert_eq!(config.weight_settings(name).bits, *bits, "{name}");
        // By channel, the widths per channel (a layer with one width keeps just that).
        if let Some(rows) = &want_rows {
            let got = config.channel_bits(name).map(<[u8]>::to_vec);
            let one = rows[k].iter().all(|&b| b == rows[k][0]);
            assert_eq!(got, (!one).then(|| rows[k].clone()), "{name}");
        }
    }
    assert!(app.mixed.is_none() && app.key_mode() == Mode::List);
}

#[test]
fn u_in_the_mixed_panel_searches_again_by_layer_by_channel_then_by_the_models_size() {
    use crate::pipeline::mixed::Unit;
    let mut app = app();
    app.start();
    let first = jobs(&press(&mut app, "M"))[0].clone();
    assert_eq!(first.mixed_unit, None);
    let mut generation = first.generation;
    for want in [Some(Unit::Layer), Some(Unit::Channel), None] {
        let job = jobs(&press(&mut app, "U"))[0].clone();
        assert!(job.mixed && job.generation > generation);
        assert_eq!(job.mixed_unit, want);
        let panel = app.mixed.as_ref().expect("the panel stays open");
        assert_eq!((panel.unit, panel.generation), (want, job.generation));
        generation = job.generation;
    }
}
