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
