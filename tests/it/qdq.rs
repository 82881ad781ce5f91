//! QDQ ONNX export and import: export → import → evaluate gives the integer engine's outputs
//! bit for bit; the exported file decoded here by hand (protobuf read with onnx-rs, Q/DQ values
//! dequantized in the test) says the parameters; bad QDQ files are refused naming the node; the
//! TensorRT cache says each point's amax.

use crate::util::quant_outputs;
use onnx_rs::ast::{DataType, Model as OModel, TensorProto};
use qscope::config::QuantConfig;
use qscope::export::onnx::{QdqOptions, onnx_model_bytes};
use qscope::export::qdq_import::qdq_params;
use qscope::model::onnx::load_onnx_qdq;
use qscope::model::{Dataset, Model, load_dataset, load_model};
use qscope::params::ModelParams;
use qscope::pipeline::{Cancel, evaluate_params, run};
use qscope::{Scheme, bundled};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// A model with its calibration and evaluation sets (small, for speed).
fn setup(name: &str) -> (Model, Dataset, Dataset) {
    match name {
        "bert" => {
            let m = load_model(&fixture("tests/fixtures/onnx/bert_ts.onnx"), None).unwrap();
            let d = load_dataset(&fixture("tests/fixtures/onnx/bert_data.safetensors")).unwrap();
            (m, d.take(100), d.take(60))
        }
        "mobilenet" => {
            let m = load_model(&fixture("tests/fixtures/onnx/mobilenetv2_ts.onnx"), None).unwrap();
            (m, bundled::calib().take(200), bundled::test().take(200))
        }
        b => (
            bundled::model(b).unwrap(),
            bundled::calib().take(300),
            bundled::test().take(300),
        ),
    }
}

/// Calibrates, exports as QDQ into `dir`, imports; returns the original params, the file, and
/// the imported model with its params.
fn round_trip(
    name: &str,
    config: &QuantConfig,
    dir: &Path,
) -> (Model, ModelParams, Dataset, PathBuf, Model, ModelParams) {
    let (m, calib, eval) = setup(name);
    let out = run(&m, &calib, &eval, config, &Cancel::new()).unwrap();
    let bytes = onnx_model_bytes(&m, Some(&out.params), QdqOptions::default()).unwrap();
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, bytes).unwrap();
    let (m2, q) = load_onnx_qdq(&path).unwrap();
    let p2 = qdq_params("test", &m2, &q.expect("a QDQ file")).unwrap();
    (m, out.params, eval, path, m2, p2.params)
}

#[test]
fn export_then_import_reproduces_the_integer_outputs_and_parameters_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "mnist-mlp",
        "mnist-cnn",
        "mnist-resnet",
        "mobilenet",
        "bert",
    ] {
        let (m, p, eval, _, m2, p2) = round_trip(name, &QuantConfig::default(), dir.path());
        let a = quant_outputs(&m, p.clone(), &eval);
        let b = quant_outputs(&m2, p2.clone(), &eval);
        assert_eq!(a.len(), b.len(), "{name}");
        let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{name}: integer outputs differ after export → import");
        // The same parameters: names, weights, qparams, settings and ranges.
        assert_eq!(p.layers.len(), p2.layers.len(), "{name}");
        for (l, l2) in p.layers.iter().zip(&p2.layers) {
            assert_eq!(l.name, l2.name, "{name}");
            assert_eq!(l.weight, l2.weight, "{name}: layer {}", l.name);
            assert_eq!(l.act, l2.act, "{name}: layer {}", l.name);
        }
        let names = |p: &ModelParams| {
            p.points
                .iter()
                .map(|e| (e.name.clone(), e.act.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&p), names(&p2), "{name}: points");
    }
}

#[test]
fn four_bit_weights_and_groups_round_trip_through_int8_int4_storage() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = QuantConfig {
        weight_bits: 4,
        ..QuantConfig::default()
    };
    config.granularity = qscope::Granularity::Group(16);
    let (m, p, eval, _, m2, p2) = round_trip("mnist-mlp", &config, dir.path());
    assert_eq!(p.layers[0].weight, p2.layers[0].weight);
    assert_eq!(
        p2.layers[0].weight.as_ref().unwrap().q.bits(),
        4,
        "bits from the metadata"
    );
    let a = quant_outputs(&m, p.clone(), &eval);
    let b = quant_outputs(&m2, p2, &eval);
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    // Native INT4 storage says the same integers.
    let bytes = onnx_model_bytes(
        &m,
        Some(&p),
        QdqOptions {
            native_int4: true,
            qdq_clip: false,
        },
    )
    .unwrap();
    let path = dir.path().join("int4.onnx");
    std::fs::write(&path, &bytes).unwrap();
    let om = onnx_rs::parse(&bytes).unwrap();
    let g = om.graph.as_ref().unwrap();
    let w = g
        .initializer
        .iter()
        .find(|t| t.name() == "fc1_weight_quantized")
        .unwrap();
    assert_eq!(w.data_type(), DataType::Int4);
    let (m2, q) = load_onnx_qdq(&path).unwrap();
    let p3 = qdq_params("int4", &m2, &q.unwrap()).unwrap().params;
    assert_eq!(p.layers[0].weight, p3.layers[0].weight);
}

/// Initializers of an ONNX graph by name.
fn inits<'a>(om: &'a OModel<'a>) -> HashMap<&'a str, &'a TensorProto<'a>> {
    om.graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .map(|t| (t.name(), t))
        .collect()
}

/// A tensor's values as i64 (INT8/UINT8/INT32 raw little-endian) or f32.
fn ints_of(t: &TensorProto<'_>) -> Vec<i64> {
    let Some(raw) = t.as_raw() else {
        // Small integer types may sit one per int32 (ORT writes zero points so).
        return t
            .as_i32()
            .unwrap()
            .iter()
            .map(|&v| match t.data_type() {
                DataType::Int8 => v as i8 as i64,
                _ => v as i64,
            })
            .collect();
    };
    match t.data_type() {
        DataType::Int8 => raw.iter().map(|&b| b as i8 as i64).collect(),
        DataType::Uint8 => raw.iter().map(|&b| b as i64).collect(),
        DataType::Int32 => raw
            .chunks(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        d => panic!("unexpected type {d:?}"),
    }
}

fn f32s_of(t: &TensorProto<'_>) -> Vec<f32> {
    if t.as_raw().is_none() {
        return t.as_f32().unwrap().to_vec();
    }
    t.as_raw()
        .unwrap()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn the_exported_file_decoded_by_hand_says_the_parameters() {
    let (m, calib, eval) = setup("mnist-cnn");
    let p = run(&m, &calib, &eval, &QuantConfig::default(), &Cancel::new())
        .unwrap()
        .params;
    let bytes = onnx_model_bytes(&m, Some(&p), QdqOptions::default()).unwrap();
    let om = onnx_rs::parse(&bytes).unwrap();
    let g = om.graph.as_ref().unwrap();
    assert_eq!(om.opset_import[0].version, 21);
    let inits = inits(&om);
    let producer: HashMap<&str, &onnx_rs::ast::Node<'_>> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (*o, n)))
        .collect();
    // The input quantization (after the normalization nodes) as a Q/DQ pair in UINT8.
    let input = p.input().unwrap().qparams;
    let q = g
        .node
        .iter()
        .find(|n| n.op_type.as_str() == "QuantizeLinear")
        .unwrap();
    assert_eq!(f32s_of(inits[q.input[1]]), vec![input.scale]);
    assert_eq!(
        ints_of(inits[q.input[2]]),
        vec![input.zero_point as i64 + 128]
    );
    assert_eq!(
        producer[q.input[0]].op_type.as_str(),
        "Mul",
        "normalization comes first"
    );
    for lp in &p.layers {
        let node = g.node.iter().find(|n| n.name == lp.name).unwrap();
        let dq = producer[node.input[1]];
        assert_eq!(dq.op_type.as_str(), "DequantizeLinear", "{}", lp.name);
        let wq = &lp.weight.as_ref().unwrap().q;
        let ints = ints_of(inits[dq.input[0]]);
        let scales = f32s_of(inits[dq.input[1]]);
        let zps = ints_of(inits[dq.input[2]]);
        assert_eq!(scales.len(), wq.rows, "per output channel");
        // Dequantized by hand, row by row: (q − z)·s equals the parameters' real weights.
        let real = wq.dequantize();
        for (k, &v) in ints.iter().enumerate() {
            let r = k / wq.cols;
            let want = real[k];
            let got = (v - zps[r]) as f32 * scales[r];
            assert_eq!(got, want, "{} element {k}", lp.name);
        }
        // The bias in INT32 at s_in·s_w, rounded here from the float bias.
        let bdq = producer[node.input[2]];
        let b = ints_of(inits[bdq.input[0]]);
        let bs = f32s_of(inits[bdq.input[1]]);
        let fb = m.layers[lp.index].op.bias().unwrap();
        let in_q = qscope::engine::int::input_qparams(&m, &p)[&lp.index].unwrap();
        for r in 0..wq.rows {
            let acc = in_q.scale as f64 * wq.params[r].scale as f64;
            assert_eq!(
                b[r],
                (fb[r] as f64 / acc).round() as i64,
                "{} bias {r}",
                lp.name
            );
            assert_eq!(bs[r], acc as f32);
        }
    }
}

/// Re-encodes an exported file after `edit` and loads it; returns the error text.
fn load_edited(dir: &Path, bytes: &[u8], edit: impl FnOnce(&mut OModel<'_>)) -> String {
    let mut om = onnx_rs::parse(bytes).unwrap();
    edit(&mut om);
    let path = dir.join("edited.onnx");
    std::fs::write(&path, onnx_rs::encode(&om)).unwrap();
    match load_onnx_qdq(&path) {
        Ok((m, Some(q))) => match qdq_params("edited", &m, &q) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        },
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

fn replace_init<'a>(om: &mut OModel<'a>, t: TensorProto<'a>) {
    let g = om.graph.as_mut().unwrap();
    let k = g
        .initializer
        .iter()
        .position(|i| i.name() == t.name())
        .unwrap();
    g.initializer[k] = t;
}

#[test]
fn bad_qdq_files_are_refused_naming_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let (m, calib, eval) = setup("mnist-mlp");
    let p = run(&m, &calib, &eval, &QuantConfig::default(), &Cancel::new())
        .unwrap()
        .params;
    let bytes = onnx_model_bytes(&m, Some(&p), QdqOptions::default()).unwrap();
    for bad in [0.0f32, -0.5, f32::NAN] {
        let e = load_edited(dir.path(), &bytes, |om| {
            replace_init(om, TensorProto::from_f32("relu1_scale", vec![], vec![bad]))
        });
        assert!(
            e.contains("relu1_QuantizeLinear") && e.contains("scale"),
            "{bad}: {e}"
        );
    }
    // A zero point whose type is not the weights' (UINT8 for INT8 integers).
    static ZP: [u8; 1] = [200];
    let e = load_edited(dir.path(), &bytes, |om| {
        replace_init(
            om,
            TensorProto::from_raw("fc2_weight_zero_point", vec![], DataType::Uint8, &ZP),
        )
    });
    assert!(
        e.contains("fc2_weight_DequantizeLinear") && e.contains("zero point"),
        "{e}"
    );
    let e = load_edited(dir.path(), &bytes, |om| {
        let g = om.graph.as_mut().unwrap();
        let n = g
            .node
            .iter_mut()
            .find(|n| n.name == "fc2_weight_DequantizeLinear")
            .unwrap();
        n.attribute.iter_mut().find(|a| a.name == "axis").unwrap().i = 5;
    });
    assert!(
        e.contains("fc2_weight_DequantizeLinear") && e.contains("axis 5"),
        "{e}"
    );
    // A Q whose output a Gemm reads directly, and a Q that no DQ reads.
    let e = load_edited(dir.path(), &bytes, |om| {
        let g = om.graph.as_mut().unwrap();
        g.node.retain(|n| n.name != "relu1_DequantizeLinear");
        let n = g.node.iter_mut().find(|n| n.name == "fc2").unwrap();
        n.input[0] = "relu1_quantized";
    });
    assert!(
        e.contains("'fc2'") && e.contains("relu1_QuantizeLinear") && e.contains("directly"),
        "{e}"
    );
    let e = load_edited(dir.path(), &bytes, |om| {
        let g = om.graph.as_mut().unwrap();
        g.node.retain(|n| n.name != "relu1_DequantizeLinear");
        let n = g.node.iter_mut().find(|n| n.name == "fc2").unwrap();
        n.input[0] = "relu1";
    });
    assert!(
        e.contains("relu1_QuantizeLinear") && e.contains("no DequantizeLinear"),
        "Q without DQ: {e}"
    );
    let e = load_edited(dir.path(), &bytes, |om| {
        let g = om.graph.as_mut().unwrap();
        let n = g
            .node
            .iter_mut()
            .find(|n| n.name == "fc2_weight_DequantizeLinear")
            .unwrap();
        n.attribute.push(onnx_rs::ast::Attribute {
            name: "block_size",
            r#type: onnx_rs::ast::AttributeType::Int,
            i: 7,
            ..Default::default()
        });
        n.attribute.iter_mut().find(|a| a.name == "axis").unwrap().i = 1;
    });
    assert!(
        e.contains("fc2_weight_DequantizeLinear") && e.contains("block_size 7"),
        "{e}"
    );
}

#[test]
fn activations_qdq_cannot_say_are_refused_unless_clipped_and_the_old_file_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (m, calib, eval) = setup("mnist-mlp");
    let config = QuantConfig {
        act_bits: 3,
        ..QuantConfig::default()
    };
    let p = run(&m, &calib, &eval, &config, &Cancel::new())
        .unwrap()
        .params;
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, b"previous").unwrap();
    let e = qscope::export::save_qdq_model(&path, &m, &p, QdqOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains("3-bit") && e.to_string().contains("--qdq-clip"),
        "{e}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"previous");
    let opts = QdqOptions {
        native_int4: false,
        qdq_clip: true,
    };
    qscope::export::save_qdq_model(&path, &m, &p, opts).unwrap();
    let (m2, q) = load_onnx_qdq(&path).unwrap();
    let p2 = qdq_params("clip", &m2, &q.unwrap()).unwrap().params;
    assert_eq!(p2.layers[0].act.as_ref().unwrap().qparams.bits, 3);
    let a = quant_outputs(&m, p, &eval);
    let b = quant_outputs(&m2, p2, &eval);
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "3-bit with Clip"
    );
}

#[test]
fn tensorrt_cache_lists_each_point_as_big_endian_hex_of_amax_over_127() {
    let (m, calib, eval) = setup("mnist-cnn");
    let config = QuantConfig {
        act_scheme: Scheme::Symmetric,
        ..QuantConfig::default()
    };
    let p = run(&m, &calib, &eval, &config, &Cancel::new())
        .unwrap()
        .params;
    let text = qscope::export::trt_cache::cache_text(&m, &p, "TRT-8601-EntropyCalibration2");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("TRT-8601-EntropyCalibration2"));
    let entries: HashMap<String, f32> = lines
        .map(|l| {
            let (name, hex) = l.split_once(": ").unwrap();
            assert_eq!(hex.len(), 8, "{l}");
            // Big-endian: the hex's first two digits are the f32's most significant byte.
            let bytes: Vec<u8> = (0..4)
                .map(|k| u8::from_str_radix(&hex[2 * k..2 * k + 2], 16).unwrap())
                .collect();
            let scale = f32::from_be_bytes(bytes.try_into().unwrap());
            (name.to_string(), scale)
        })
        .collect();
    let input = p.input().unwrap();
    let want = input.range.lo.abs().max(input.range.hi.abs()) / 127.0;
    assert_eq!(entries["input"], want);
    for lp in &p.layers {
        let a = lp.act.as_ref().unwrap();
        let t = &m.values[m.point_value(lp.index)].name;
        assert_eq!(
            entries[t],
            a.range.lo.abs().max(a.range.hi.abs()) / 127.0,
            "{t}"
        );
    }
    // The pooled tensor after conv1's ReLU shares its amax.
    assert!(entries.contains_key("maxpool2d2"), "{entries:?}");
}

#[test]
fn cli_exports_a_qdq_file_that_eval_opens_with_its_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cnn.onnx");
    let (ok, stdout, stderr) = crate::util::qscope(&[
        "export",
        "--model",
        "mnist-cnn",
        "--calib-samples",
        "200",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("QDQ ONNX"), "{stdout}");
    let (ok, stdout, stderr) =
        crate::util::qscope(&["eval", "--model", out.to_str().unwrap(), "--json"]);
    assert!(ok, "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(r["quant_accuracy"].as_f64().unwrap() > 0.97, "{r}");
    let cache = dir.path().join("c.cache");
    let (ok, stdout, stderr) = crate::util::qscope(&[
        "export",
        "--model",
        out.to_str().unwrap(),
        "--out",
        cache.to_str().unwrap(),
        "--trt-header",
        "TRT-100300-EntropyCalibration2",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("TensorRT"), "{stdout}");
    assert!(
        std::fs::read_to_string(&cache)
            .unwrap()
            .starts_with("TRT-100300-EntropyCalibration2\ninput: ")
    );
}

/// The graph inputs of `m` from an npz that ORT's fixture script wrote.
fn npz_inputs(m: &Model, reference: &Dataset) -> Vec<qscope::engine::tensor::Tensor> {
    m.inputs
        .iter()
        .map(|gi| {
            let name = &m.values[gi.value].name;
            let t = reference.named_rows(name, 0, reference.n).unwrap();
            match gi.dtype {
                qscope::model::DType::F32 => {
                    qscope::engine::tensor::Tensor::f32(t.shape.clone(), t.to_f32_vec())
                }
                _ => t,
            }
        })
        .collect()
}

/// qscope's integer engine on a model that ONNX Runtime's quantize_static wrote, against ORT's
/// own run of it (Q/DQ executed as written): returns (qscope, ORT) outputs and the params.
fn ort_quantized(name: &str) -> (Vec<f32>, Vec<f32>, Model, ModelParams) {
    let path = fixture(&format!("tests/fixtures/onnx/{name}.ortq.onnx"));
    let (m, q) = load_onnx_qdq(&path).unwrap();
    let p = qdq_params(name, &m, &q.expect("ORT's file is QDQ"))
        .unwrap()
        .params;
    let r = load_dataset(&fixture(&format!(
        "tests/fixtures/onnx/{name}.ortq.ref.npz"
    )))
    .unwrap();
    let int = qscope::engine::int::IntModel::new(&m, &p, usize::MAX);
    let out = int.forward(npz_inputs(&m, &r), |_, _, _, _| {}).unwrap();
    let want = r.named_rows("output", 0, r.n).unwrap().to_f32_vec();
    (out[0].to_f32_vec(), want, m, p)
}

#[test]
fn a_resnet_quantized_by_onnx_runtime_runs_in_qscope_with_orts_parameters() {
    let (got, want, m, p) = ort_quantized("resnet_ts");
    // ORT's parameters, read from the file here with onnx-rs: the stem conv's output pair.
    let bytes = std::fs::read(fixture("tests/fixtures/onnx/resnet_ts.ortq.onnx")).unwrap();
    let om = onnx_rs::parse(&bytes).unwrap();
    let inits = inits(&om);
    let stem = p
        .by_name("/stem/stem.0/Conv")
        .unwrap()
        .act
        .as_ref()
        .unwrap()
        .qparams;
    let s = f32s_of(inits["/stem/stem.2/Relu_output_0_scale"]);
    let z = ints_of(inits["/stem/stem.2/Relu_output_0_zero_point"]);
    assert_eq!((stem.scale, stem.zero_point as i64), (s[0], z[0] - 128));
    assert!(
        p.layers.iter().all(|l| l.weight.is_some()),
        "every conv fixed"
    );
    // The float graph has the Relus that ORT's quantizer dropped put back.
    assert!(m.notes.iter().any(|n| n.contains("Relu")), "{:?}", m.notes);
    // Outputs: the same class on ≥ 99% of the 200 digits, within a few output steps.
    let out_scale = p.layers.last().unwrap().act.as_ref().unwrap().qparams.scale;
    let classes = |v: &[f32]| -> Vec<usize> {
        v.chunks(10)
            .map(|r| (0..10).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap())
            .collect()
    };
    let (a, b) = (classes(&got), classes(&want));
    let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
    let steps = got
        .iter()
        .zip(&want)
        .map(|(x, y)| ((x - y) / out_scale).abs())
        .fold(0.0f32, f32::max);
    eprintln!("resnet_ts.ortq: agreement with ORT {agree:.4}, max {steps:.1} output steps");
    assert!(agree >= 0.99, "{agree}");
    assert!(steps <= 4.0, "{steps} steps");
}

#[test]
fn a_bert_quantized_by_onnx_runtime_runs_in_qscope_close_to_orts_own_run() {
    let (got, want, _, p) = ort_quantized("bert_ts");
    assert!(p.layers.iter().all(|l| l.weight.is_some()));
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in got.iter().zip(&want) {
        dot += (*x as f64) * (*y as f64);
        na += (*x as f64).powi(2);
        nb += (*y as f64).powi(2);
    }
    let cos = dot / (na.sqrt() * nb.sqrt());
    eprintln!("bert_ts.ortq: cosine with ORT {cos:.6}");
    assert!(cos > 0.999, "{cos}");
}

#[test]
fn a_quantized_safetensors_of_an_onnx_graph_stands_alone_and_reproduces_the_run() {
    for name in ["mnist-resnet", "bert"] {
        let (m, calib, eval) = setup(name);
        let p = run(&m, &calib, &eval, &QuantConfig::default(), &Cancel::new())
            .unwrap()
            .params;
        let bytes = qscope::export::quantized_model::quantized_model_bytes(&m, &p).unwrap();
        // Weights are stored [out, in…] under the ONNX node names, whatever the source layout
        // (a MatMul's [K, N] initializer is transposed); read here with the safetensors crate.
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for lp in &p.layers {
            let t = st.tensor(&format!("{}.weight", lp.name)).unwrap();
            let q = &lp.weight.as_ref().unwrap().q;
            assert_eq!(t.shape()[0], q.rows, "{name} {}", lp.name);
            assert_eq!(t.shape()[1..].iter().product::<usize>(), q.cols);
            let ints: Vec<i8> = t.data().iter().map(|&b| b as i8).collect();
            assert_eq!(ints, q.q, "{name} {}", lp.name);
        }
        let back = qscope::export::load_quantized_bytes(name, &bytes).unwrap();
        assert_eq!(back.model.layers.len(), m.layers.len(), "{name}");
        // The same file gives the same model every time, down to the order of its values.
        let names = |m: &qscope::Model| m.values.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
        for _ in 0..3 {
            let again = qscope::export::load_quantized_bytes(name, &bytes).unwrap();
            assert_eq!(
                names(&again.model),
                names(&back.model),
                "{name}: value order"
            );
        }
        let config = QuantConfig {
            save_outputs: true,
            ..QuantConfig::default()
        };
        let a = quant_outputs(&m, p, &eval);
        let b = evaluate_params(
            &back.model,
            back.params,
            &eval,
            &config,
            false,
            &Cancel::new(),
        )
        .unwrap()
        .saved
        .unwrap()
        .quant;
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}: the quantized file's integer outputs differ"
        );
    }
}

#[test]
fn calibrated_scales_match_the_ones_onnx_runtime_chose_for_the_same_fixture() {
    // ORT's quantize_static (MinMax, U8 activations, S8 per-channel weights) on the bundled
    // calibration digits wrote resnet_ts.ortq.onnx; qscope calibrates the same model on the
    // same digits with minmax. Weights: both amax/127 per channel, so equal up to f32 rounding.
    // Activations: ORT calibrates on the float model, qscope with the quantized weights in
    // place (formats.md §3), so scales differ by the weight error's effect on each range.
    let path = fixture("tests/fixtures/onnx/resnet_ts.ortq.onnx");
    let (mo, q) = load_onnx_qdq(&path).unwrap();
    let ort = qdq_params("ort", &mo, &q.unwrap()).unwrap().params;
    let m = load_model(&fixture("tests/fixtures/onnx/resnet_ts.onnx"), None).unwrap();
    let ours = run(
        &m,
        &bundled::calib(),
        &bundled::test().take(10),
        &QuantConfig::default(),
        &Cancel::new(),
    )
    .unwrap()
    .params;
    let mut worst_w = 0.0f64;
    for lp in &ours.layers {
        let theirs = ort.by_name(&lp.name).expect("same node names");
        let (a, b) = (
            &lp.weight.as_ref().unwrap().q,
            &theirs.weight.as_ref().unwrap().q,
        );
        for (x, y) in a.params.iter().zip(&b.params) {
            worst_w = worst_w.max(((x.scale - y.scale) / y.scale).abs() as f64);
        }
        assert_eq!(a.q, b.q, "{}: the same integer weights", lp.name);
    }
    let mut worst_a = 0.0f64;
    for lp in &ours.layers {
        let a = lp.act.as_ref().unwrap().qparams;
        let b = ort.by_name(&lp.name).unwrap().act.as_ref().unwrap().qparams;
        worst_a = worst_a.max(((a.scale - b.scale) / b.scale).abs() as f64);
    }
    eprintln!(
        "resnet_ts vs ORT quantize_static: weight scales within {worst_w:.1e}, activation scales within {worst_a:.3}"
    );
    assert!(worst_w < 1e-6, "{worst_w}");
    assert!(worst_a < 0.05, "{worst_a}");
}
