//! Issue 12, LeNet-5 KL case: a LeNet-5 trained in PyTorch (scripts/lenet/train_lenet.py),
//! W8 per-channel weights with 4-bit `kl` activations, against the figures the script
//! computed in PyTorch (float top-1; pytorch-quantization's TensorRT-style entropy amax).

use qscope::pipeline::{Cancel, run};
use qscope::{Granularity, QuantConfig, Scheme, Strategy, bundled};
use std::path::Path;

const FIXTURE: &str = "tests/fixtures/lenet/lenet5.safetensors";
const FIGURES: &str = "scripts/lenet/lenet_figures.json";
/// The W8A4 `kl` top-1 this fixture reached (asymmetric activations, the default scheme).
const REACHED: f64 = 0.9685;

fn eval(scheme: Scheme) -> qscope::Report {
    let model = qscope::model::load_model(Path::new(FIXTURE), None).unwrap();
    let config = QuantConfig {
        weight_bits: 8,
        act_bits: 4,
        granularity: Granularity::PerChannel,
        act_strategy: Strategy::Kl,
        act_scheme: scheme,
        ..Default::default()
    };
    let calib = bundled::calib();
    let test = bundled::test();
    run(&model, &calib, &test, &config, &Cancel::new())
        .unwrap()
        .report
}

fn figures() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(FIGURES).unwrap()).unwrap()
}

#[test]
fn lenet_w8a4_kl_reaches_the_tensorrt_style_figure() {
    let r = eval(Scheme::Asymmetric);
    let fig = figures();
    // The integer engine's float path agrees with PyTorch on the 2,000 test digits.
    let torch_float = fig["float_top1"].as_f64().unwrap();
    let f = r.fp32_accuracy.unwrap();
    assert!(
        (f - torch_float).abs() <= 0.001,
        "float {f} vs PyTorch {torch_float}"
    );
    let q = r.quant_accuracy.unwrap();
    assert!(
        q >= REACHED - 0.001,
        "W8A4 kl {q} < reached {REACHED} - 0.1 pt"
    );
    assert!(
        q >= 0.966,
        "W8A4 kl {q} < 96.6% (the issue's TensorRT-style KL figure)"
    );
    // Like with like: plain TensorRT-style KL on qscope's points (4-bit logits included) does
    // no better on this model.
    let trt = fig["trt_kl_w8a4"]["qscope_points_signed"]["top1"]
        .as_f64()
        .unwrap();
    assert!(
        q >= trt,
        "W8A4 kl {q} < TensorRT-style KL on the same points {trt}"
    );
}

#[test]
fn lenet_symmetric_kl_ranges_match_tensorrt_signed_amax() {
    // pytorch-quantization's signed calibration (8 groups at 4 bits, grid 0..7 for ReLU
    // outputs) is the symmetric grid's: the thresholds must agree where neither spikes nor
    // the histogram's grid make a difference (the smooth post-ReLU points conv2, fc1, fc2).
    let r = eval(Scheme::Symmetric);
    let amax = &figures()["trt_kl_w8a4"]["qscope_points_signed"]["amax"];
    for name in ["conv2", "fc1", "fc2"] {
        let layer = r.layers.iter().find(|l| l.name == name).unwrap();
        let t = layer.act_range.unwrap()[1] as f64;
        let reference = amax[name].as_f64().unwrap();
        assert!(
            (t - reference).abs() <= 0.01 * reference,
            "{name}: qscope {t} vs TensorRT-style {reference}"
        );
    }
}
