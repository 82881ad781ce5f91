//! Graph models: spec layers with `inputs`, `add` and `concat` against a direct f64 loop, and
//! `qscope-params/2` round trips on an ONNX model.

use crate::util::{f32t, safetensors_bytes};
use qscope::engine::{IntModel, float};
use qscope::model::load_model_bytes;
use qscope::pipeline::{Cancel, run};
use qscope::{QuantConfig, bundled};

struct Rng(u64);
impl Rng {
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }
}

fn linear(x: &[f64], w: &[f32], b: &[f32], out: usize) -> Vec<f64> {
    let k = x.len();
    (0..out)
        .map(|o| b[o] as f64 + (0..k).map(|i| x[i] * w[o * k + i] as f64).sum::<f64>())
        .collect()
}

#[test]
fn spec_inputs_add_and_concat_match_a_direct_loop() {
    let mut r = Rng(0x9e3779b97f4a7c15);
    let (wa, ba, wb, bb, wc, bc) = (
        r.vec(12),
        r.vec(3),
        r.vec(12),
        r.vec(3),
        r.vec(12),
        r.vec(2),
    );
    let spec = r#"input_shape = [4]
[[layers]]
name = "fa"
op = "linear"
weight = "wa"
bias = "ba"
[[layers]]
name = "fb"
op = "linear"
weight = "wb"
bias = "bb"
inputs = ["input"]
[[layers]]
name = "sum"
op = "add"
inputs = ["fa", "fb"]
[[layers]]
name = "cat"
op = "concat"
inputs = ["sum", "fa"]
[[layers]]
name = "fc"
op = "linear"
weight = "wc"
bias = "bc"
"#;
    let bytes = safetensors_bytes(
        &[
            f32t("wa", &[3, 4], &wa),
            f32t("ba", &[3], &ba),
            f32t("wb", &[3, 4], &wb),
            f32t("bb", &[3], &bb),
            f32t("wc", &[2, 6], &wc),
            f32t("bc", &[2], &bc),
        ],
        Some(spec),
    );
    let model = load_model_bytes("graph", "graph", &bytes, None).unwrap();
    assert_eq!(model.layers.len(), 5);
    let n = 3;
    let x = r.vec(n * 4);
    let got = float::forward_flat(&model, &x, n).unwrap();
    for s in 0..n {
        let xs: Vec<f64> = x[s * 4..(s + 1) * 4].iter().map(|&v| v as f64).collect();
        let a = linear(&xs, &wa, &ba, 3);
        let b = linear(&xs, &wb, &bb, 3);
        let mut cat: Vec<f64> = a.iter().zip(&b).map(|(p, q)| p + q).collect();
        cat.extend(&a);
        let want = linear(&cat, &wc, &bc, 2);
        for (k, w) in want.iter().enumerate() {
            let g = got[s * 2 + k] as f64;
            assert!((g - w).abs() < 1e-5, "sample {s} out {k}: {g} vs {w}");
        }
    }
    // The integer engine runs it too: the add and the concat have integer kernels, so their
    // outputs become quantization points of their own (named after the layers' tensors).
    let out = run(
        &model,
        &qscope::model::Dataset {
            label: "x".into(),
            inputs: x.clone(),
            n,
            sample_len: 4,
            labels: None,
            named: Vec::new(),
        },
        &qscope::model::Dataset {
            label: "x".into(),
            inputs: x,
            n,
            sample_len: 4,
            labels: None,
            named: Vec::new(),
        },
        &QuantConfig::default(),
        &Cancel::new(),
    )
    .unwrap();
    let names: Vec<&str> = out.params.points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["input", "sum", "cat"]);
    assert!(
        out.report.float_islands.is_empty(),
        "{:?}",
        out.report.float_islands
    );
    assert_eq!(out.report.int_mac_share, Some(1.0));
    assert!(out.report.output_cosine.unwrap() > 0.999);
}

#[test]
fn onnx_parameters_round_trip_bit_for_bit_through_a_v2_file() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/resnet_ts.onnx");
    let model = qscope::model::load_model(&path, None).unwrap();
    let calib = bundled::calib().take(200);
    let eval = bundled::test().take(200);
    let c = QuantConfig {
        act_strategy: qscope::quant::Strategy::Percentile,
        ..QuantConfig::default()
    };
    let outcome = run(&model, &calib, &eval, &c, &Cancel::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    qscope::export::save_params(&json, &model, &outcome.params).unwrap();
    let text = std::fs::read_to_string(&json).unwrap();
    assert!(text.contains("\"qscope-params/2\""), "{text}");
    assert!(
        text.contains("\"points\""),
        "entry points by tensor name: {text}"
    );
    let back = qscope::export::load_params(&json, &model, false).unwrap();
    let mut x = eval.samples(0, eval.n).to_vec();
    model.normalize(&mut x);
    let bits = |p| -> Vec<u32> {
        IntModel::new(&model, p, usize::MAX)
            .forward_flat(&x, eval.n)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    assert_eq!(bits(&outcome.params), bits(&back));
    assert_eq!(outcome.params.points, back.points);
}
