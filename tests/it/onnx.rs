//! ONNX models: the float engine against ONNX Runtime's outputs saved beside each fixture
//! (`*.ref.npz`, made by scripts/onnx/make_assets.py), and the whole flow on graph models.

use qscope::engine::float;
use qscope::engine::tensor::Tensor;
use qscope::model::load_dataset;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// max |ours − ORT| / max |ORT| of the float engine on the fixture's saved input; the run of
/// outputs only ([`float::forward_outputs`]) must give the same bits.
fn relative_error_vs_ort(model: &str, reference: &str) -> f64 {
    let m = qscope::model::load_model(&fixture(model), None).unwrap();
    let r = load_dataset(&fixture(reference)).unwrap();
    let inputs: Vec<Tensor> = m
        .inputs
        .iter()
        .enumerate()
        .map(|(k, gi)| {
            let name = &m.values[gi.value].name;
            let t = r
                .named_rows(name, 0, r.n)
                .or_else(|| (k == 0).then(|| r.named_rows("input", 0, r.n)).flatten())
                .unwrap_or_else(|| panic!("{reference} lacks {name}"));
            match gi.dtype {
                qscope::model::DType::F32 => Tensor::f32(t.shape.clone(), t.to_f32_vec()),
                _ => t,
            }
        })
        .collect();
    let out = float::forward(&m, inputs.clone(), usize::MAX, |_, _| {}).unwrap();
    // Outputs only: activations fused into their convs and linears, the same bits.
    let fused = float::forward_outputs(&m, inputs, usize::MAX).unwrap();
    assert_eq!(fused.len(), out.len(), "{model}: outputs");
    for (a, b) in fused.iter().zip(&out) {
        let bits = |t: &Tensor| {
            t.to_f32_vec()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(a.shape, b.shape, "{model}: fused output shape");
        assert!(bits(a) == bits(b), "{model}: fused outputs differ");
    }
    let want = r.named_rows("output", 0, r.n).unwrap().to_f32_vec();
    let got = out[0].to_f32_vec();
    assert_eq!(got.len(), want.len(), "{model}: output size");
    let max_ref = want.iter().fold(0.0f64, |a, &b| a.max(b.abs() as f64));
    let max_diff = got
        .iter()
        .zip(&want)
        .fold(0.0f64, |a, (&x, &y)| a.max((x as f64 - y as f64).abs()));
    max_diff / max_ref
}

#[test]
fn float_engine_matches_onnx_runtime_on_every_fixture() {
    for (model, reference) in [
        ("assets/mnist-resnet.onnx", "assets/mnist-resnet.ref.npz"),
        (
            "tests/fixtures/onnx/resnet_ts.onnx",
            "tests/fixtures/onnx/resnet_ts.ref.npz",
        ),
        (
            "tests/fixtures/onnx/resnet_dynamo.onnx",
            "tests/fixtures/onnx/resnet_dynamo.ref.npz",
        ),
        (
            "tests/fixtures/onnx/mobilenetv2_ts.onnx",
            "tests/fixtures/onnx/mobilenetv2_ts.ref.npz",
        ),
        (
            "tests/fixtures/onnx/bert_ts.onnx",
            "tests/fixtures/onnx/bert_ts.ref.npz",
        ),
        (
            "tests/fixtures/onnx/bert_dynamo.onnx",
            "tests/fixtures/onnx/bert_dynamo.ref.npz",
        ),
        // auto_pad SAME_UPPER / SAME_LOWER on convs (stride 2, odd input) and pools.
        (
            "tests/fixtures/onnx/autopad.onnx",
            "tests/fixtures/onnx/autopad.ref.npz",
        ),
    ] {
        let e = relative_error_vs_ort(model, reference);
        eprintln!("{model}: max |qscope - ORT| / max |ORT| = {e:.2e}");
        assert!(
            e < 1e-4,
            "{model}: relative error {e:e} against ONNX Runtime"
        );
    }
}

#[test]
fn eval_runs_an_onnx_resnet_end_to_end_with_graph_report_fields() {
    let model = fixture("tests/fixtures/onnx/resnet_dynamo.onnx");
    let (ok, out, err) =
        crate::util::qscope(&["eval", "--model", model.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let f = r["fp32_accuracy"].as_f64().unwrap();
    let q = r["quant_accuracy"].as_f64().unwrap();
    assert!(f > 0.97, "float top-1 {f}");
    assert!((f - q).abs() <= 0.003, "W8A8 top-1 {q} vs float {f}");
    assert!(r["agreement"].as_f64().unwrap() >= 0.99);
    assert!(r["output_cosine"].as_f64().unwrap() > 0.99);
    assert_eq!(
        r["int_mac_share"].as_f64(),
        Some(1.0),
        "every Conv/Gemm in integers"
    );
    // `layers`: the quantized nodes in topological order, weightless integer ones (the
    // residual Adds, the global mean written as ReduceMean) with null weight fields.
    let layers = r["layers"].as_array().unwrap();
    let ops: Vec<&str> = layers.iter().filter_map(|l| l["op"].as_str()).collect();
    assert!(ops.iter().filter(|o| **o == "Conv").count() >= 7, "{ops:?}");
    let adds: Vec<&serde_json::Value> = layers.iter().filter(|l| l["op"] == "Add").collect();
    assert!(!adds.is_empty(), "{ops:?}");
    for a in &adds {
        assert!(a["weight_bits"].is_null() && a["act_bits"] == 8, "{a}");
        assert_eq!(a["float"], false);
    }
    assert!(ops.contains(&"ReduceMean"), "{ops:?}");
    assert_eq!(ops.last(), Some(&"Gemm"));
    // Residual adds and the global mean run in integers: no float island.
    assert_eq!(r["float_islands"].as_array().map(Vec::len), Some(0), "{r}");
}

#[test]
fn bad_onnx_files_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("tests/fixtures/onnx/resnet_ts.onnx")).unwrap();
    let truncated = crate::util::write(&dir, "truncated.onnx", &good[..good.len() / 3]);
    let (ok, _, err) = crate::util::qscope(&["eval", "--model", truncated.to_str().unwrap()]);
    assert!(!ok && !err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("truncated.onnx"), "{err}");
    // An unsupported op: the op_type field (tag 0x22, length 4) of the Relu nodes renamed.
    let mut bytes = good.clone();
    let mut renamed = 0;
    while let Some(k) = bytes.windows(6).position(|w| w == b"\x22\x04Relu") {
        bytes[k + 2..k + 6].copy_from_slice(b"Rxlu");
        renamed += 1;
    }
    assert!(renamed > 0, "the fixture has Relu nodes");
    let bad = crate::util::write(&dir, "badop.onnx", &bytes);
    let (ok, _, err) = crate::util::qscope(&["eval", "--model", bad.to_str().unwrap()]);
    assert!(!ok && !err.contains("panicked"), "{err}");
    assert!(
        err.contains("Rxlu") && err.contains("not supported"),
        "{err}"
    );
    // A dangling tensor name: the first output named "…Relu_output_0" renamed.
    let mut bytes = good.clone();
    let k = bytes
        .windows(13)
        .position(|w| w == b"Relu_output_0")
        .unwrap();
    bytes[k] = b'X';
    let bad = crate::util::write(&dir, "dangling.onnx", &bytes);
    let (ok, _, err) = crate::util::qscope(&["eval", "--model", bad.to_str().unwrap()]);
    assert!(!ok && !err.contains("panicked"), "{err}");
    assert!(
        err.contains("produced by no") || err.contains("graph output"),
        "{err}"
    );
}

#[test]
fn save_outputs_writes_both_engines_outputs_and_the_report_cosine_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("outs.safetensors");
    let (m, d) = (
        fixture("tests/fixtures/onnx/bert_ts.onnx"),
        fixture("tests/fixtures/onnx/bert_data.safetensors"),
    );
    let (ok, json, err) = crate::util::qscope(&[
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--calib",
        d.to_str().unwrap(),
        "--eval",
        d.to_str().unwrap(),
        "--calib-samples",
        "100",
        "--json",
        "--save-outputs",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let get = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let t = st.tensor(name).unwrap();
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), v)
    };
    let ((fs, f), (qs, q)) = (get("float"), get("quant"));
    assert_eq!(fs, [300, 16, 64]);
    assert_eq!(fs, qs);
    let per = 16 * 64;
    let mean_cos: f64 = f
        .chunks(per)
        .zip(q.chunks(per))
        .map(|(a, b)| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            dot / (na * nb)
        })
        .sum::<f64>()
        / 300.0;
    let reported = r["output_cosine"].as_f64().unwrap();
    assert!(
        (mean_cos - reported).abs() < 1e-9,
        "{mean_cos} vs {reported}"
    );
    assert!(reported > 0.99, "BERT W8A8 cosine {reported}");
    assert!(r["fp32_accuracy"].is_null(), "no labels: no accuracy");
}

/// A transformers BERT exported by torch.onnx (any size, outside the repository):
/// `QSCOPE_BIG_ONNX=m.onnx QSCOPE_BIG_REF=m.ref.npz cargo test --release -- --ignored big_onnx`
/// (scripts/onnx/README.md says how to make one).
#[test]
#[ignore]
fn big_onnx_matches_onnx_runtime() {
    let (Ok(m), Ok(r)) = (
        std::env::var("QSCOPE_BIG_ONNX"),
        std::env::var("QSCOPE_BIG_REF"),
    ) else {
        panic!("set QSCOPE_BIG_ONNX and QSCOPE_BIG_REF");
    };
    let e = relative_error_vs_ort(&m, &r);
    eprintln!("{m}: relative error {e:e} against ONNX Runtime");
    assert!(e < 1e-4, "{m}: relative error {e:e}");
}

/// Load time and peak memory of a big ONNX file (`QSCOPE_BIG_ONNX`), from bytes to a graph
/// ready to run; prints the figures (speed targets are measured, not asserted).
#[test]
#[ignore]
fn big_onnx_load_figures() {
    let m = std::env::var("QSCOPE_BIG_ONNX").expect("set QSCOPE_BIG_ONNX");
    let t = std::time::Instant::now();
    let model = qscope::model::load_model(Path::new(&m), None).unwrap();
    let hwm = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .map(str::to_string);
    eprintln!(
        "{m}: {} nodes loaded in {:?}; {hwm:?}",
        model.layers.len(),
        t.elapsed()
    );
}

/// `qscope eval --json` with `args`; the report.
fn eval_report(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["eval", "--json", "--calib-samples", "300"];
    all.extend(args);
    let (ok, out, err) = crate::util::qscope(&all);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// W8A8 minmax per-channel on a CNN: every multiply-add in integers, no float island, top-1
/// within 0.3 pt of float, agreement ≥ 99%.
fn assert_integer_cnn(model: &str) {
    let r = eval_report(&["--model", model]);
    assert_eq!(r["int_mac_share"].as_f64(), Some(1.0), "{model}");
    assert_eq!(
        r["float_islands"].as_array().map(Vec::len),
        Some(0),
        "{model}: {}",
        r["float_islands"]
    );
    let f = r["fp32_accuracy"].as_f64().unwrap();
    let q = r["quant_accuracy"].as_f64().unwrap();
    assert!(
        (f - q).abs() <= 0.003,
        "{model}: W8A8 top-1 {q} vs float {f}"
    );
    assert!(r["agreement"].as_f64().unwrap() >= 0.99, "{model}");
}

#[test]
fn integer_engine_runs_the_bundled_resnet_without_islands() {
    assert_integer_cnn("mnist-resnet");
}

#[test]
fn integer_engine_runs_the_resnet_fixtures_without_islands() {
    for m in ["resnet_ts", "resnet_dynamo"] {
        let path = fixture(&format!("tests/fixtures/onnx/{m}.onnx"));
        assert_integer_cnn(path.to_str().unwrap());
    }
}

#[test]
fn integer_engine_runs_mobilenetv2_without_islands() {
    let path = fixture("tests/fixtures/onnx/mobilenetv2_ts.onnx");
    assert_integer_cnn(path.to_str().unwrap());
}

#[test]
fn bert_keeps_only_softmax_and_layernorm_in_float() {
    let data = fixture("tests/fixtures/onnx/bert_data.safetensors");
    let data = data.to_str().unwrap();
    for m in ["bert_ts", "bert_dynamo"] {
        let path = fixture(&format!("tests/fixtures/onnx/{m}.onnx"));
        let r = eval_report(&[
            "--model",
            path.to_str().unwrap(),
            "--calib",
            data,
            "--eval",
            data,
        ]);
        let islands: Vec<&str> = r["float_islands"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(!islands.is_empty(), "{m}");
        assert!(
            islands.iter().all(|n| n.contains("oftmax")
                || n.contains("ayer_norm")
                || n.contains("LayerNorm")),
            "{m}: {islands:?}"
        );
        assert_eq!(r["int_mac_share"].as_f64(), Some(1.0), "{m}");
        assert!(r["output_cosine"].as_f64().unwrap() >= 0.99, "{m}");
    }
}

#[test]
fn shape_plumbing_that_the_sequence_length_fixes_is_folded_at_load() {
    // bert_ts builds position ids from Shape(input_ids)[1] (the sequence length, 16 in the
    // file) through Gather/Unsqueeze/Slice: all constants once loaded. Shapes that include the
    // batch axis (the Reshape targets) stay.
    let m = qscope::model::load_model(&fixture("tests/fixtures/onnx/bert_ts.onnx"), None).unwrap();
    let has = |name: &str| m.layers.iter().any(|l| l.name == name);
    assert!(!has("/bert/embeddings/Slice"), "position ids folded");
    assert!(
        !has("/bert/embeddings/Gather"),
        "the sequence length folded"
    );
    assert!(
        !has("/bert/embeddings/Shape"),
        "its Shape is gone with its reader"
    );
    assert!(
        m.layers.iter().any(|l| l.op_type == "Reshape"),
        "the reshapes stay"
    );
}
