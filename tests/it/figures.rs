//! The accuracy figures the bundled models must reach (issue: "Figures to reach").

use qscope::pipeline::{Cancel, run};
use qscope::{Granularity, QuantConfig, Strategy, bundled};

fn eval(model: &str, config: &QuantConfig) -> qscope::Report {
    let m = bundled::model(model).unwrap();
    run(
        &m,
        &bundled::calib(),
        &bundled::test(),
        config,
        &Cancel::new(),
    )
    .unwrap()
    .report
}

#[test]
fn bundled_models_reach_their_float_accuracy() {
    let r = eval("mnist-mlp", &QuantConfig::default());
    assert!(
        r.fp32_accuracy.unwrap() >= 0.95,
        "MLP float {:?}",
        r.fp32_accuracy
    );
    let r = eval("mnist-cnn", &QuantConfig::default());
    assert!(
        r.fp32_accuracy.unwrap() >= 0.975,
        "CNN float {:?}",
        r.fp32_accuracy
    );
}

#[test]
fn mlp_w8a8_minmax_is_within_half_a_point_and_agrees() {
    let r = eval("mnist-mlp", &QuantConfig::default());
    let (f, q) = (r.fp32_accuracy.unwrap(), r.quant_accuracy.unwrap());
    assert!(f - q <= 0.005, "float {f} int {q}");
    assert!(r.agreement.unwrap() >= 0.99, "agreement {:?}", r.agreement);
    assert_eq!(r.eval_samples, 2000);
    assert_eq!(r.calib_samples, 1000);
}

#[test]
fn mlp_int4_per_channel_weights_with_kl_or_mse_activations_is_within_two_points() {
    for strategy in [Strategy::Kl, Strategy::Mse] {
        let config = QuantConfig {
            weight_bits: 4,
            granularity: Granularity::PerChannel,
            act_strategy: strategy,
            ..Default::default()
        };
        let r = eval("mnist-mlp", &config);
        let (f, q) = (r.fp32_accuracy.unwrap(), r.quant_accuracy.unwrap());
        assert!(f - q <= 0.02, "{strategy}: float {f} int {q}");
    }
}

#[test]
fn calibration_memory_does_not_grow_with_the_calibration_set() {
    use qscope::pipeline::{calibrate, quantize_weights};
    let model = bundled::model("mnist-cnn").unwrap();
    let weights = quantize_weights(&model, &QuantConfig::default());
    let calib = bundled::calib();
    let small = calibrate(
        &model,
        &QuantConfig::default(),
        &weights,
        &calib.take(50),
        &Cancel::new(),
    )
    .unwrap();
    let large = calibrate(
        &model,
        &QuantConfig::default(),
        &weights,
        &calib,
        &Cancel::new(),
    )
    .unwrap();
    assert_eq!(large.samples, 1000);
    let bins = |c: &qscope::pipeline::Calibration| -> Vec<usize> {
        c.entries
            .iter()
            .chain(&c.outputs)
            .map(|h| h.counts().len())
            .collect()
    };
    assert_eq!(bins(&small), bins(&large));
    assert!(
        bins(&large).iter().all(|&b| b <= 4096),
        "{:?}",
        bins(&large)
    );
    // 20× the samples: the histograms counted them all in the same memory.
    assert_eq!(large.entry("input").unwrap().count(), 1000 * 784);
    assert_eq!(small.entry("input").unwrap().count(), 50 * 784);
}

#[test]
fn sensitivity_rows_at_the_configured_width_equal_the_baseline_and_2_bits_hurt() {
    use qscope::eval::sensitivity::{Target, sensitivity};
    use qscope::pipeline::Session;
    let model = bundled::model("mnist-mlp").unwrap();
    let mut session = Session::new(model, bundled::calib().take(200), bundled::test().take(300));
    let s = sensitivity(
        &mut session,
        &QuantConfig::default(),
        &[2, 8],
        Target::Weights,
        &Cancel::new(),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(s.rows.len(), 6);
    for pair in s.rows.chunks(2) {
        let (two, eight) = (&pair[0], &pair[1]);
        assert_eq!((two.bits, eight.bits), (2, 8));
        assert_eq!(
            eight.quant_accuracy, s.baseline_accuracy,
            "{}: 8 bits is the configuration as given",
            eight.layer
        );
        assert!(
            two.output_sqnr_db.unwrap() < eight.output_sqnr_db.unwrap() - 6.0,
            "{}: {two:?} vs {eight:?}",
            two.layer
        );
    }
}

#[test]
fn a_session_reuses_histograms_only_while_weight_settings_stay_and_matches_a_fresh_run() {
    use qscope::pipeline::Session;
    let model = bundled::model("mnist-mlp").unwrap();
    let (calib, test) = (bundled::calib().take(200), bundled::test().take(300));
    let mut session = Session::new(model.clone(), calib.clone(), test.clone());
    session
        .run(&QuantConfig::default(), &Cancel::new())
        .unwrap();
    let act_only = QuantConfig {
        act_strategy: Strategy::Mse,
        act_bits: 4,
        ..Default::default()
    };
    let weights_too = QuantConfig {
        weight_bits: 3,
        ..act_only.clone()
    };
    for (config, reused) in [(&act_only, true), (&weights_too, false)] {
        let cached = session.run(config, &Cancel::new()).unwrap().report;
        let fresh = run(&model, &calib, &test, config, &Cancel::new())
            .unwrap()
            .report;
        assert_eq!(
            cached.timings_ms.weights == 0.0,
            reused,
            "weights re-quantized only when they changed"
        );
        assert_eq!(cached.quant_accuracy, fresh.quant_accuracy);
        assert_eq!(cached.output_sqnr_db, fresh.output_sqnr_db);
        assert_eq!(
            cached.layers, fresh.layers,
            "same ranges and per-layer SQNR"
        );
    }
}
