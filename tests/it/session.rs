//! A `Session` keeps the float model's results between runs: what it reports after a change
//! must be what a fresh run of the same configuration reports.

use qscope::pipeline::{Cancel, Session, run};
use qscope::{QuantConfig, Strategy, bundled};

/// The report as JSON without its timings (the only part that may differ).
fn figures(r: &qscope::eval::report::Report) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap();
    v.as_object_mut().unwrap().remove("timings_ms");
    v
}

fn check(model_name: &str, first: &QuantConfig, then: &[QuantConfig]) {
    let model = bundled::model(model_name).unwrap();
    let (calib, test) = (bundled::calib(), bundled::test());
    let mut session = Session::new(model.clone(), calib.clone(), test.clone());
    assert!(!session.float_cached());
    session.run(first, &Cancel::new()).unwrap();
    assert!(
        session.float_cached(),
        "{model_name}: the float side fits the budget"
    );
    for c in then {
        let got = session.run(c, &Cancel::new()).unwrap().report;
        assert!(session.float_cached());
        let fresh = run(&model, &calib, &test, c, &Cancel::new())
            .unwrap()
            .report;
        assert_eq!(figures(&got), figures(&fresh), "{model_name}: {c:?}");
    }
}

#[test]
fn a_session_after_an_activation_change_reports_what_a_fresh_run_reports() {
    let base = QuantConfig::default();
    let changed = [
        QuantConfig {
            act_bits: 4,
            act_strategy: Strategy::Kl,
            ..Default::default()
        },
        QuantConfig {
            weight_bits: 4,
            ..Default::default()
        },
    ];
    check("mnist-cnn", &base, &changed);
}

#[test]
fn a_session_after_one_layers_activation_change_reports_what_a_fresh_run_reports() {
    // One point changed at a time: the layers whose parameters and input qparams stay the same
    // keep their isolated sums from the run before; conv2's output is fc1's input, so fc1's
    // isolated output must be measured again with conv2's.
    let layer = |name: &str, o: qscope::config::LayerOverride| {
        let mut c = QuantConfig::default();
        c.layers.insert(name.into(), o);
        c
    };
    let changed = [
        layer(
            "conv2",
            qscope::config::LayerOverride {
                act_bits: Some(4),
                ..Default::default()
            },
        ),
        layer(
            "fc1",
            qscope::config::LayerOverride {
                act_strategy: Some(Strategy::Kl),
                ..Default::default()
            },
        ),
        QuantConfig::default(),
        QuantConfig {
            weight_bits: 6,
            ..Default::default()
        },
    ];
    check("mnist-cnn", &QuantConfig::default(), &changed);
}

#[test]
fn a_session_measures_the_float_model_again_when_cle_changes_it_and_shares_it_between_methods() {
    let base = QuantConfig::default();
    let changed = [
        QuantConfig {
            cle: true,
            weight_bits: 4,
            ..Default::default()
        },
        QuantConfig {
            weight_bits: 4,
            ..Default::default()
        },
        // Bias correction and refinement measure the float model on the calibration set once
        // per weight settings; the second of these reuses it.
        QuantConfig {
            weight_bits: 4,
            bias_correction: true,
            ..Default::default()
        },
        QuantConfig {
            weight_bits: 4,
            act_bits: 6,
            bias_correction: true,
            act_refine: true,
            ..Default::default()
        },
    ];
    check("mnist-mlp", &base, &changed);
}

/// A session on `model` runs `steps` in turn; each report must equal a fresh run's. Before a
/// step marked `true` the session must hold a kept run to resume from (`kept`: the node it
/// holds one at, 0 for none).
fn check_resumed(
    model: qscope::Model,
    data: (qscope::Dataset, qscope::Dataset),
    (base, kept): (&QuantConfig, fn(&Session) -> usize),
    steps: &[(QuantConfig, bool)],
) {
    let (calib, test) = data;
    let mut session = Session::new(model.clone(), calib.clone(), test.clone());
    session.run(base, &Cancel::new()).unwrap();
    assert_eq!(kept(&session), 0, "nothing changed yet");
    for (k, (c, resumes)) in steps.iter().enumerate() {
        let from = kept(&session);
        let got = session.run(c, &Cancel::new()).unwrap().report;
        let fresh = run(&model, &calib, &test, c, &Cancel::new())
            .unwrap()
            .report;
        assert_eq!(figures(&got), figures(&fresh), "step {k}: {c:?}");
        if *resumes {
            assert!(from > 0, "step {k} resumes from a kept node");
        }
    }
}

/// `base` with one weight layer's overrides.
fn with_layer(
    base: &QuantConfig,
    model: &qscope::Model,
    j: usize,
    o: qscope::config::LayerOverride,
) -> QuantConfig {
    let mut c = base.clone();
    let name = model.layers[model.weight_layers()[j]].name.clone();
    c.layers.insert(name, o);
    c
}

fn bits(b: u8) -> qscope::config::LayerOverride {
    qscope::config::LayerOverride {
        act_bits: Some(b),
        ..Default::default()
    }
}

#[test]
fn a_session_resumed_from_the_changed_layer_reports_what_a_fresh_run_reports() {
    // The ResNet: a residual branch's values cross every cut inside a block. Its classifier
    // stays float, so the integer share of multiply-adds counts the kept nodes' too.
    let model = bundled::model("mnist-resnet").unwrap();
    let data = (bundled::calib().take(300), bundled::test().take(400));
    let base = QuantConfig {
        keep_float: vec!["/fc/Gemm".into()],
        ..Default::default()
    };
    let (mid, late, early) = (5, 7, 1);
    let kl = qscope::config::LayerOverride {
        act_strategy: Some(Strategy::Kl),
        ..Default::default()
    };
    let layer = |j, o| with_layer(&base, &model, j, o);
    let steps = [
        // The change starts at the middle layer: a full run keeps the run before it.
        (layer(mid, bits(6)), false),
        // The same layer again, and a later one: both resume from it.
        (layer(mid, kl), true),
        (layer(late, bits(5)), true),
        // Back to the base (the late layer changes back): resumes.
        (base.clone(), true),
        // An earlier layer: the kept run no longer holds.
        (layer(early, bits(6)), false),
        (layer(early, bits(5)), true),
        // New weights: everything runs again.
        (
            QuantConfig {
                weight_bits: 6,
                ..base.clone()
            },
            false,
        ),
    ];
    check_resumed(model, data, (&base, Session::resume_node), &steps);
}

#[test]
fn a_session_resumed_inside_a_transformer_reports_what_a_fresh_run_reports() {
    // The BERT fixture: MatMuls (whose multiply-adds read their input's shape), Softmax islands
    // fed by mask Adds, LayerNorm islands.
    let fixture = |p: &str| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
    let model =
        qscope::model::load_model(&fixture("tests/fixtures/onnx/bert_ts.onnx"), None).unwrap();
    let d =
        qscope::model::load_dataset(&fixture("tests/fixtures/onnx/bert_data.safetensors")).unwrap();
    // The last linear stays float, so the integer share of multiply-adds counts the
    // MatMuls' too.
    let base = QuantConfig {
        keep_float: vec!["/bert/encoder/layer.1/output/dense/MatMul".into()],
        ..Default::default()
    };
    let mid = model.weight_layers().len() / 2;
    let layer = |j, o| with_layer(&base, &model, j, o);
    // The second block's Softmax output: a point its Softmax writes, fed by a mask Add whose
    // island mark a resumed run must not lose.
    let softmax = |b: u8| {
        let mut c = base.clone();
        let name = "/bert/encoder/layer.1/attention/self/Softmax_output_0";
        c.layers.insert(name.into(), bits(b));
        c
    };
    let smooth = |alpha: f32| QuantConfig {
        smoothquant: Some(alpha),
        ..base.clone()
    };
    let steps = [
        (layer(mid, bits(6)), false),
        (layer(mid, bits(5)), true),
        // The second block's key: its query is live at the cut, read by a MatMul after it.
        (layer(mid + 2, bits(6)), true),
        (softmax(6), true),
        (softmax(5), true),
        (base.clone(), true),
        // SmoothQuant migrates scales into the LayerNorms and linears: another model under
        // each α, whose kernels the build must not take from the one before.
        (smooth(0.5), false),
        (smooth(0.8), false),
        (base.clone(), false),
    ];
    let kept = (&base, Session::resume_node as fn(&Session) -> usize);
    check_resumed(model.clone(), (d.take(100), d.take(60)), kept, &steps);
}

/// `base` with one weight layer's weight bits.
fn weight_bits(base: &QuantConfig, model: &qscope::Model, j: usize, b: u8) -> QuantConfig {
    with_layer(
        base,
        model,
        j,
        qscope::config::LayerOverride {
            weight_bits: Some(b),
            ..Default::default()
        },
    )
}

#[test]
fn a_session_recalibrated_from_the_layer_whose_weights_changed_reports_what_a_fresh_run_reports() {
    // One layer's weights changed at a time on the ResNet: the calibration's float run resumes
    // at the first changed layer, the points before it keep their histograms, and the integer
    // run resumes there too.
    let model = bundled::model("mnist-resnet").unwrap();
    let (calib, test) = (bundled::calib().take(300), bundled::test().take(400));
    let base = QuantConfig::default();
    let (mid, late, early) = (5, 7, 1);
    let steps = [
        (weight_bits(&base, &model, mid, 6), false),
        (weight_bits(&base, &model, mid, 5), true),
        (weight_bits(&base, &model, late, 4), true),
        (base.clone(), true),
        (weight_bits(&base, &model, early, 4), false),
        // An activation change keeps the calibration; then a weight change after it.
        (
            QuantConfig {
                act_bits: 6,
                ..weight_bits(&base, &model, early, 4)
            },
            true,
        ),
        (weight_bits(&base, &model, early, 5), true),
    ];
    let kept = (
        &base,
        Session::calibration_resume_node as fn(&Session) -> usize,
    );
    check_resumed(model, (calib, test), kept, &steps);
}
