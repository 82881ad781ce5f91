//! The accuracy figures the bundled models must reach (issue: "Figures to reach").

use qscope::pipeline::{run, Cancel};
use qscope::{bundled, Granularity, QuantConfig, Strategy};

fn eval(model: &str, config: &QuantConfig) -> qscope::Report {
    let m = bundled::model(model).unwrap();
    run(&m, &bundled::calib(), &bundled::test(), config, &Cancel::new()).unwrap().report
}

#[test]
fn bundled_models_reach_their_float_accuracy() {
    let r = eval("mnist-mlp", &QuantConfig::default());
    assert!(r.fp32_accuracy.unwrap() >= 0.95, "MLP float {:?}", r.fp32_accuracy);
    let r = eval("mnist-cnn", &QuantConfig::default());
    assert!(r.fp32_accuracy.unwrap() >= 0.975, "CNN float {:?}", r.fp32_accuracy);
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
