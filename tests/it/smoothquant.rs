//! SmoothQuant (issue 12): the scales against the definition computed in f64 here, the float
//! function kept, the gain on activations with outlier channels against an f64 reference, the
//! BERT fixture's figures, bad α, and `--params` reproducing a run bit for bit.

use crate::util::Rng;
use ndarray::{Array1, Array2};
use qscope::engine::float::{forward, infer_shapes};
use qscope::engine::tensor::Tensor;
use qscope::model::{BinaryOp, DType, Dataset, GraphInput, Model, Op, Source, Value};
use qscope::pipeline::{Cancel, make_batch, run, smoothquant};
use qscope::{QuantConfig, Strategy};
use std::path::PathBuf;

/// Tokens per sample and channels of the encoder-like graph.
const T: usize = 8;
const C: usize = 32;
/// Hidden width of its MLP.
const H: usize = 64;
/// The LayerNorm's outlier channels (scale ×50).
const OUTLIERS: [usize; 2] = [3, 17];
const EPS: f32 = 1e-5;

/// The float parameters of the encoder-like graph.
struct Enc {
    g1: Vec<f32>,
    b1: Vec<f32>,
    wa: Vec<f32>,
    wb: Vec<f32>,
    g2: Vec<f32>,
    b2: Vec<f32>,
    w1: Vec<f32>,
    bf1: Vec<f32>,
    w2: Vec<f32>,
    bf2: Vec<f32>,
}

/// Parameters with two outlier channels after the first LayerNorm (scale ×50; the linear
/// layers' columns for them ÷50, as trained models compensate).
fn enc_params(seed: u64) -> Enc {
    let mut r = Rng(seed);
    let mut g1 = r.vec(C, 0.8, 1.2);
    let mut wa = r.vec(C * C, -0.3, 0.3);
    let mut wb = r.vec(C * C, -0.3, 0.3);
    for &j in &OUTLIERS {
        g1[j] *= 50.0;
        for row in 0..C {
            wa[row * C + j] /= 50.0;
            wb[row * C + j] /= 50.0;
        }
    }
    Enc {
        g1,
        b1: r.vec(C, -0.1, 0.1),
        wa,
        wb,
        g2: r.vec(C, 0.8, 1.2),
        b2: r.vec(C, -0.1, 0.1),
        w1: r.vec(H * C, -0.3, 0.3),
        bf1: r.vec(H, -0.1, 0.1),
        w2: r.vec(C * H, -0.2, 0.2),
        bf2: r.vec(C, -0.1, 0.1),
    }
}

/// The graph: h = LN1(x); y = la(h) + lb(h); z = x + y; out = fc2(relu(fc1(LN2(z)))).
fn enc_model(p: &Enc) -> Model {
    let mut values: Vec<Value> = Vec::new();
    let mut val = |n: &str| {
        values.push(Value { name: n.into() });
        values.len() - 1
    };
    let x = val("x");
    let (g1, b1, g2, b2) = (val("g1"), val("b1"), val("g2"), val("b2"));
    let (h, a, b, y, z, h2, f1, r, out) = (
        val("h"),
        val("a"),
        val("b"),
        val("y"),
        val("z"),
        val("h2"),
        val("f1"),
        val("r"),
        val("out"),
    );
    let lin = |w: &[f32], bias: &[f32], rows: usize, k: usize| Op::Linear {
        weight: Array2::from_shape_vec((rows, k), w.to_vec()).unwrap(),
        bias: Array1::from(bias.to_vec()),
    };
    let ln = Op::LayerNorm {
        axis: -1,
        epsilon: EPS,
    };
    let node = |name: &str, op: Op, inputs: &[usize], output: usize| {
        crate::util::node(name.into(), op, inputs, output)
    };
    let zeros = vec![0.0; C];
    let layers = vec![
        node("ln1", ln.clone(), &[x, g1, b1], h),
        node("la", lin(&p.wa, &zeros, C, C), &[h], a),
        node("lb", lin(&p.wb, &zeros, C, C), &[h], b),
        node("sum", Op::Binary(BinaryOp::Add), &[a, b], y),
        node("residual", Op::Binary(BinaryOp::Add), &[x, y], z),
        node("ln2", ln, &[z, g2, b2], h2),
        node("fc1", lin(&p.w1, &p.bf1, H, C), &[h2], f1),
        node("relu", Op::Relu, &[f1], r),
        node("fc2", lin(&p.w2, &p.bf2, C, H), &[r], out),
    ];
    let t = |v: &[f32]| Tensor::f32(vec![C], v.to_vec());
    let mut m = Model {
        name: "encoder-like".into(),
        input_shape: vec![T, C],
        input_mean: Vec::new(),
        input_std: Vec::new(),
        layers,
        values,
        consts: vec![
            (g1, t(&p.g1)),
            (b1, t(&p.b1)),
            (g2, t(&p.g2)),
            (b2, t(&p.b2)),
        ],
        inputs: vec![GraphInput {
            value: x,
            dtype: DType::F32,
            shape: vec![Some(T), Some(C)],
        }],
        outputs: vec![out],
        source_kind: Source::Onnx,
        sha256: String::new(),
        source: "encoder-like graph".into(),
        notes: Vec::new(),
    };
    infer_shapes(&mut m).unwrap();
    m
}

fn enc_data(seed: u64, n: usize) -> Dataset {
    let mut r = Rng(seed);
    Dataset {
        label: "tokens".into(),
        inputs: r.vec(n * T * C, -2.0, 2.0),
        n,
        sample_len: T * C,
        labels: None,
        named: Vec::new(),
    }
}

// ------------------------------------------------------------- the graph in f64

fn ln64(x: &[f64], g: &[f32], b: &[f32]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let d = (var + EPS as f64).sqrt();
    x.iter()
        .zip(g.iter().zip(b))
        .map(|(v, (g, b))| (v - mean) / d * *g as f64 + *b as f64)
        .collect()
}

fn lin64(x: &[f64], w: &[f32], b: Option<&[f32]>, rows: usize) -> Vec<f64> {
    let k = x.len();
    (0..rows)
        .map(|o| {
            b.map_or(0.0, |b| b[o] as f64) + (0..k).map(|i| x[i] * w[o * k + i] as f64).sum::<f64>()
        })
        .collect()
}

/// One token through the graph in f64: (LN1 output, LN2 output, relu output, graph output).
fn token64(p: &Enc, x: &[f32]) -> [Vec<f64>; 4] {
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let h = ln64(&x, &p.g1, &p.b1);
    let (a, b) = (lin64(&h, &p.wa, None, C), lin64(&h, &p.wb, None, C));
    let z: Vec<f64> = (0..C).map(|j| x[j] + a[j] + b[j]).collect();
    let h2 = ln64(&z, &p.g2, &p.b2);
    let r: Vec<f64> = lin64(&h2, &p.w1, Some(&p.bf1), H)
        .into_iter()
        .map(|v| v.max(0.0))
        .collect();
    let out = lin64(&r, &p.w2, Some(&p.bf2), C);
    [h, h2, r, out]
}

/// Per channel max |w| over the rows of `ws` (each [rows, k]).
fn col_max(ws: &[&[f32]], k: usize) -> Vec<f64> {
    let mut m = vec![0.0f64; k];
    for w in ws {
        for row in w.chunks(k) {
            for (a, &v) in m.iter_mut().zip(row) {
                *a = a.max((v as f64).abs());
            }
        }
    }
    m
}

fn sqnr_db(reference: &[f64], got: &[f32]) -> f64 {
    let s: f64 = reference.iter().map(|v| v * v).sum();
    let e: f64 = reference
        .iter()
        .zip(got)
        .map(|(r, &g)| (r - g as f64).powi(2))
        .sum();
    10.0 * (s / e).log10()
}

#[test]
fn scales_follow_the_definition_computed_in_f64() {
    let p = enc_params(0x5100_7401);
    let model = enc_model(&p);
    let calib = enc_data(0xca11b, 32);
    let alpha = 0.5f32;
    let config = QuantConfig::default();
    let s = smoothquant::smooth(&model, &calib, &config, alpha, &Cancel::new()).unwrap();
    // Per channel max |x| of LN1's, LN2's and the Relu's outputs over every token.
    let (mut m1, mut m2, mut mr) = (vec![0.0f64; C], vec![0.0f64; C], vec![0.0f64; H]);
    for tok in calib.inputs.chunks(C) {
        let [h, h2, r, _] = token64(&p, tok);
        for (m, v) in [(&mut m1, &h), (&mut m2, &h2), (&mut mr, &r)] {
            m.iter_mut().zip(v).for_each(|(a, x)| *a = a.max(x.abs()));
        }
    }
    let a = alpha as f64;
    let want = |am: &[f64], wm: &[f64]| -> Vec<f64> {
        am.iter()
            .zip(wm)
            .map(|(x, w)| x.powf(a) / w.powf(1.0 - a))
            .collect()
    };
    let expect = [
        (
            "ln1",
            vec!["la", "lb"],
            want(&m1, &col_max(&[&p.wa, &p.wb], C)),
        ),
        ("ln2", vec!["fc1"], want(&m2, &col_max(&[&p.w1], C))),
        ("fc1", vec!["fc2"], want(&mr, &col_max(&[&p.w2], H))),
    ];
    assert_eq!(s.entries.len(), 3, "{:?}", s.report);
    for (e, (producer, consumers, w)) in s.entries.iter().zip(&expect) {
        assert_eq!(&e.producer, producer);
        assert_eq!(&e.consumers, consumers);
        assert_eq!(e.scales.len(), w.len());
        for (j, (&g, &w)) in e.scales.iter().zip(w).enumerate() {
            assert!(
                ((g as f64 - w) / w).abs() < 1e-5,
                "{producer} channel {j}: {g} vs {w}"
            );
        }
    }
    // The outlier channels get the largest scales of LN1's group.
    let s1 = &s.entries[0].scales;
    let top = s1.iter().copied().fold(0.0f32, f32::max);
    assert!(OUTLIERS.iter().all(|&j| s1[j] > 0.5 * top), "{s1:?}");
    let kinds: Vec<&str> = s.report.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["layernorm", "layernorm", "linear"]);
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    // The smoothed graph computes the same function.
    let eval = enc_data(0xe7a1, 16);
    let out = |m: &Model| forward_all(m, &eval);
    let (f0, f1) = (out(&model), out(&s.model));
    assert!(max_rel_diff(&f0, &f1) < 1e-5, "{}", max_rel_diff(&f0, &f1));
}

/// The first output of `model` over every sample of `data`, flattened.
fn forward_all(model: &Model, data: &Dataset) -> Vec<f32> {
    let mut all = Vec::new();
    for s in (0..data.n).step_by(64) {
        let e = (s + 64).min(data.n);
        let ins = make_batch(model, data, s, e).unwrap();
        let out = forward(model, ins, usize::MAX, |_, _| {}).unwrap();
        all.extend(out[0].to_f32_vec());
    }
    all
}

/// max |a − b| / max |a|.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
    let d = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    d / scale
}

#[test]
fn outlier_channels_quantize_far_better_with_smoothquant() {
    let p = enc_params(0x5100_7402);
    let model = enc_model(&p);
    let (calib, eval) = (enc_data(0xca11c, 64), enc_data(0xe7a2, 64));
    let reference: Vec<f64> = eval
        .inputs
        .chunks(C)
        .flat_map(|tok| token64(&p, tok)[3].clone())
        .collect();
    let figures = |sq: Option<f32>| {
        let config = QuantConfig {
            act_strategy: Strategy::MinMax,
            smoothquant: sq,
            save_outputs: true,
            ..QuantConfig::default()
        };
        let o = run(&model, &calib, &eval, &config, &Cancel::new()).unwrap();
        let q = o.saved.unwrap().quant;
        (sqnr_db(&reference, &q), o.report)
    };
    let (base, r0) = figures(None);
    let (smooth, r1) = figures(Some(0.5));
    eprintln!(
        "encoder-like W8A8 per-tensor activations, output SQNR vs f64: {base:.2} dB → {smooth:.2} dB with SmoothQuant 0.5 (cosine {:?} → {:?})",
        r0.output_cosine, r1.output_cosine
    );
    assert!(smooth > base + 6.0, "{base} dB → {smooth} dB");
    assert!(r1.output_cosine.unwrap() > r0.output_cosine.unwrap());
    assert_eq!(r1.methods.smoothquant, Some(0.5));
    assert_eq!(r0.methods.smoothquant, None);
    let ln1 = &r1.smoothquant[0];
    assert_eq!(ln1.folded_into, "ln1");
    assert!(ln1.act_spread_after.unwrap() < ln1.act_spread_before.unwrap() / 5.0);
    assert!(r1.timings_ms.smoothquant > 0.0);
}

fn fixture(p: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn bert() -> (Model, Dataset, Dataset) {
    let m = qscope::model::load_model(&fixture("tests/fixtures/onnx/bert_ts.onnx"), None).unwrap();
    let d =
        qscope::model::load_dataset(&fixture("tests/fixtures/onnx/bert_data.safetensors")).unwrap();
    let rows = |s: usize, e: usize| Dataset {
        label: d.label.clone(),
        inputs: Vec::new(),
        n: e - s,
        sample_len: 0,
        labels: None,
        named: d
            .named
            .iter()
            .map(|(n, _)| (n.clone(), d.named_rows(n, s, e).unwrap()))
            .collect(),
    };
    let (calib, eval) = (rows(0, 150), rows(150, 300));
    (m, calib, eval)
}

#[test]
fn bert_float_outputs_stay_the_same_and_every_layernorm_group_is_smoothed() {
    let (model, calib, eval) = bert();
    let s =
        smoothquant::smooth(&model, &calib, &QuantConfig::default(), 0.5, &Cancel::new()).unwrap();
    let (f0, f1) = (forward_all(&model, &eval), forward_all(&s.model, &eval));
    let d = max_rel_diff(&f0, &f1);
    eprintln!("BERT float output max rel diff after SmoothQuant: {d:e}");
    assert!(d < 1e-5, "{d}");
    // Q/K/V after each LayerNorm that also feeds a residual Add (a copy), the FFN input
    // after the attention LayerNorm (also residual): 4 groups; the attention output and FFN
    // output projections (after an attention MatMul and GELU) cannot be folded.
    assert_eq!(s.report.len(), 4, "{:?}", s.report);
    assert!(s.report.iter().all(|r| r.kind == "layernorm-copy"));
    assert_eq!(s.report[0].layers.len(), 3);
    assert_eq!(s.skipped.len(), 4, "{:?}", s.skipped);
    assert!(
        s.skipped.iter().all(|n| n.ends_with("output/dense/MatMul")),
        "{:?}",
        s.skipped
    );
}

#[test]
fn bert_cosines_with_and_without_smoothquant() {
    let (model, calib, eval) = bert();
    for (w, a) in [(8, 8), (8, 4), (4, 8)] {
        let cos = |sq: Option<f32>| {
            let config = QuantConfig {
                weight_bits: w,
                act_bits: a,
                smoothquant: sq,
                ..QuantConfig::default()
            };
            let r = run(&model, &calib, &eval, &config, &Cancel::new())
                .unwrap()
                .report;
            // The residual branches stay integer: only Softmax and LayerNorm run in float.
            crate::util::assert_only_softmax_layernorm_islands(&r);
            r.output_cosine.unwrap()
        };
        let (c0, c1) = (cos(None), cos(Some(0.5)));
        eprintln!("BERT W{w}A{a}: output cosine {c0:.6} → {c1:.6} with SmoothQuant 0.5");
        // The fixture's random weights have no outlier channels: no gain expected, no loss.
        assert!(c1 > c0 - 2e-3, "W{w}A{a}: {c0} → {c1}");
    }
}

#[test]
fn a_bad_alpha_is_a_one_line_error_naming_the_key() {
    for a in ["1.5", "-0.1", "NaN"] {
        let flag = format!("--smoothquant={a}");
        let (ok, _, err) = crate::util::qscope(&["eval", &flag]);
        assert!(!ok, "{a}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("smoothquant") && !err.contains("panicked"),
            "{err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::util::write(&dir, "c.toml", b"smoothquant = 2.0\n");
    let (ok, _, err) = crate::util::qscope(&["eval", "--config", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("smoothquant"), "{err}");
}

/// `eval --json --save-outputs` with `args`: the report and the quantized output's bytes.
fn eval_run(args: &[&str], outs: &std::path::Path) -> (serde_json::Value, Vec<u8>) {
    let mut all = vec!["eval", "--json", "--save-outputs", outs.to_str().unwrap()];
    all.extend(args);
    let (ok, json, err) = crate::util::qscope(&all);
    assert!(ok, "{err}");
    let bytes = std::fs::read(outs).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let q = st.tensor("quant").unwrap().data().to_vec();
    (serde_json::from_str(&json).unwrap(), q)
}

#[test]
fn params_of_a_smoothquant_run_reproduce_it_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture("tests/fixtures/onnx/bert_ts.onnx");
    let d = fixture("tests/fixtures/onnx/bert_data.safetensors");
    let (m, d) = (m.to_str().unwrap(), d.to_str().unwrap());
    let json = dir.path().join("p.json");
    let common = [
        "--model",
        m,
        "--calib",
        d,
        "--eval",
        d,
        "--calib-samples",
        "150",
        "--act-bits",
        "6",
    ];
    let mut run_args = common.to_vec();
    run_args.extend(["--smoothquant", "0.5"]);
    let (r0, q0) = eval_run(&run_args, &dir.path().join("a.safetensors"));
    let mut export = vec!["export", "--out", json.to_str().unwrap()];
    export.extend(&run_args);
    let (ok, _, err) = crate::util::qscope(&export);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&json).unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        file["smoothquant"].as_array().map(Vec::len),
        Some(4),
        "{text}"
    );
    let mut load = common.to_vec();
    load.extend(["--params", json.to_str().unwrap()]);
    let (r1, q1) = eval_run(&load, &dir.path().join("b.safetensors"));
    assert!(q0 == q1, "the quantized outputs differ");
    assert_eq!(r0["output_cosine"], r1["output_cosine"]);
    assert_eq!(r0["points"], r1["points"]);
    assert_eq!(r1["methods"]["smoothquant"].as_f64(), Some(0.5));
    // A chain model: only linear → Relu → linear folds apply (fc2, fc3); fc1 reads the input.
    let mlp = [
        "--model",
        "mnist-mlp",
        "--weight-bits",
        "4",
        "--act-bits",
        "4",
    ];
    let mut run_args = mlp.to_vec();
    run_args.extend(["--smoothquant", "0.5"]);
    let (r0, q0) = eval_run(&run_args, &dir.path().join("c.safetensors"));
    let names: Vec<&str> = r0["smoothquant"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["folded_into"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fc1", "fc2"], "{}", r0["smoothquant"]);
    assert_eq!(r0["smoothquant_skipped"], serde_json::json!(["fc1"]));
    let mlp_json = dir.path().join("mlp.toml");
    let mut export = vec!["export", "--out", mlp_json.to_str().unwrap()];
    export.extend(&run_args);
    let (ok, _, err) = crate::util::qscope(&export);
    assert!(ok, "{err}");
    let mut load = mlp.to_vec();
    load.extend(["--params", mlp_json.to_str().unwrap()]);
    let (r1, q1) = eval_run(&load, &dir.path().join("d.safetensors"));
    assert!(q0 == q1, "the MLP's quantized outputs differ");
    assert_eq!(r0["quant_accuracy"], r1["quant_accuracy"]);
}
