//! A quick structured fuzz of every bytes loader (runs in `cargo test` in a few seconds, so CI
//! keeps what the coverage-guided targets in `fuzz/` found): valid files mutated in their
//! shapes, dtypes, offsets, header fields, spec and config values, and truncated. Errors are
//! fine; a panic is a failure. A model that loads is also run end to end on two samples.

use crate::util::{T, f32t, safetensors_bytes};
use proptest::prelude::*;
use qscope::export::params_file::WeightInts;
use qscope::export::{ParamsFile, Syntax};
use qscope::model::{load_dataset_bytes, load_model_bytes};
use qscope::pipeline::{Cancel, run};
use qscope::{Dataset, QuantConfig};
use safetensors::Dtype;
use serde_json::Value;

pub const DTYPES: [&str; 9] = [
    "F32", "F16", "BF16", "F64", "I8", "U8", "I32", "I64", "BOOL",
];

fn any_float() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(0.0f32),
        Just(-0.0),
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(1e-40),
        Just(1e30),
        -2.0f32..2.0,
    ]
}

/// A spec of 1 to 4 layers over small shapes, with odd values now and then.
fn spec_text() -> impl Strategy<Value = String> {
    let layer = (0usize..7, 0usize..4, 0usize..3, 0usize..4, any_float());
    (
        prop::collection::vec(0usize..4, 1..4),
        prop::collection::vec(any_float(), 0..3),
        prop::collection::vec(any_float(), 0..3),
        prop::collection::vec(layer, 1..5),
    )
        .prop_map(|(shape, mean, std, layers)| {
            let list = |v: &[f32]| {
                let items: Vec<String> = v.iter().map(|x| toml_float(*x)).collect();
                format!("[{}]", items.join(", "))
            };
            let mut s = format!("input_shape = {shape:?}\n");
            if !mean.is_empty() {
                s += &format!("input_mean = {}\n", list(&mean));
            }
            if !std.is_empty() {
                s += &format!("input_std = {}\n", list(&std));
            }
            for (i, (op, stride, pad, kernel, eps)) in layers.into_iter().enumerate() {
                let ops = ["linear", "conv2d", "relu", "maxpool2d", "avgpool2d", "flatten", "batchnorm2d"];
                s += &format!("[[layers]]\nop = \"{}\"\n", ops[op]);
                s += &format!("weight = \"w{i}\"\nbias = \"b{i}\"\nstride = {stride}\npadding = {pad}\nkernel = {kernel}\n");
                if ops[op] == "batchnorm2d" {
                    s += &format!("running_mean = \"w{i}\"\nrunning_var = \"b{i}\"\neps = {}\n", toml_float(eps));
                }
            }
            s
        })
}

fn toml_float(x: f32) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{x:e}")
    }
}

/// Tensors `w{i}`/`b{i}` of small random shapes and values for the spec above.
fn tensors() -> impl Strategy<Value = Vec<T>> {
    let t = (prop::collection::vec(0usize..4, 0..5), any_float());
    prop::collection::vec(t, 1..5).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .flat_map(|(i, (shape, x))| {
                let n: usize = shape.iter().product();
                let b = shape.first().copied().unwrap_or(1);
                [
                    f32t(&format!("w{i}"), &shape, &vec![x; n]),
                    f32t(&format!("b{i}"), &[b], &vec![0.5; b]),
                ]
            })
            .collect()
    })
}

/// One structured edit of a safetensors file's header (or its bytes).
#[derive(Debug, Clone)]
pub enum Edit {
    Shape(usize, Vec<usize>),
    Dtype(usize, usize),
    Offsets(usize, usize, usize),
    Metadata(usize, String),
    Drop(usize),
    Truncate(usize),
    Flip(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), prop::collection::vec(0usize..6, 0..4))
            .prop_map(|(i, s)| Edit::Shape(i, s)),
        (any::<usize>(), 0..DTYPES.len()).prop_map(|(i, d)| Edit::Dtype(i, d)),
        (any::<usize>(), 0usize..5000, 0usize..5000).prop_map(|(i, a, b)| Edit::Offsets(i, a, b)),
        (any::<usize>(), ".{0,40}").prop_map(|(i, s)| Edit::Metadata(i, s)),
        any::<usize>().prop_map(Edit::Drop),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
    ]
}

/// Applies `edits` to the safetensors `bytes` (header parsed as JSON, edited, re-serialized).
pub fn apply(bytes: &[u8], edits: &[Edit]) -> Vec<u8> {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let mut data = bytes[8 + len..].to_vec();
    let mut raw_edits = Vec::new();
    for e in edits {
        let names: Vec<String> = header.keys().cloned().collect();
        let pick = |i: usize| names[i % names.len()].clone();
        match e {
            Edit::Shape(i, s) => header[&pick(*i)]["shape"] = serde_json::json!(s),
            Edit::Dtype(i, d) => header[&pick(*i)]["dtype"] = serde_json::json!(DTYPES[*d]),
            Edit::Offsets(i, a, b) => header[&pick(*i)]["data_offsets"] = serde_json::json!([a, b]),
            Edit::Metadata(i, s) => {
                if let Some(Value::Object(m)) = header.get_mut("__metadata__") {
                    let keys: Vec<String> = m.keys().cloned().collect();
                    if !keys.is_empty() {
                        let k = &keys[i % keys.len()];
                        let v = m[k].as_str().unwrap_or("").to_string();
                        let at = (i / 7) % (v.len() + 1);
                        let at = (0..=at).rev().find(|&j| v.is_char_boundary(j)).unwrap_or(0);
                        m[k] = Value::String(format!("{}{s}{}", &v[..at], &v[at..]));
                    }
                }
            }
            Edit::Drop(i) => {
                header.remove(&pick(*i));
                if header.is_empty() {
                    header.insert(
                        "x".into(),
                        serde_json::json!({"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}),
                    );
                }
            }
            Edit::Truncate(_) | Edit::Flip(..) => raw_edits.push(e.clone()),
        }
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.append(&mut data);
    for e in raw_edits {
        match e {
            Edit::Truncate(n) => out.truncate(n % (out.len() + 1)),
            Edit::Flip(i, b) if !out.is_empty() => {
                let k = i % out.len();
                out[k] ^= b;
            }
            _ => {}
        }
    }
    out
}

/// Runs a model that loaded on two samples, when its shapes are small (sizes of intermediate
/// activations are bounded elsewhere).
fn run_small(model: &qscope::Model) {
    let small = model.input_len() <= 4096
        && model
            .layers
            .iter()
            .all(|l| l.out_shape.iter().product::<usize>() <= 100_000);
    if !small {
        return;
    }
    let data = Dataset {
        label: "d".into(),
        inputs: (0..2 * model.input_len())
            .map(|i| (i % 7) as f32 / 7.0)
            .collect(),
        n: 2,
        sample_len: model.input_len(),
        labels: None,
        named: Vec::new(),
    };
    for config in [
        QuantConfig::default(),
        QuantConfig {
            weight_bits: 4,
            granularity: qscope::Granularity::Group(3),
            ..Default::default()
        },
    ] {
        let _ = run(model, &data, &data, &config, &Cancel::new());
    }
}

pub fn tiny_model() -> Vec<u8> {
    let spec = "input_shape = [1, 4, 4]\n[[layers]]\nname = \"c\"\nop = \"conv2d\"\nweight = \"cw\"\nbias = \"cb\"\npadding = 1\n\
        [[layers]]\nop = \"batchnorm2d\"\nrunning_mean = \"m\"\nrunning_var = \"v\"\n[[layers]]\nop = \"relu\"\n\
        [[layers]]\nop = \"maxpool2d\"\nkernel = 2\n[[layers]]\nop = \"flatten\"\n\
        [[layers]]\nname = \"fc\"\nop = \"linear\"\nweight = \"fw\"\nbias = \"fb\"\n";
    let v = |n: usize| {
        (0..n)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
            .collect::<Vec<_>>()
    };
    safetensors_bytes(
        &[
            f32t("cw", &[2, 1, 3, 3], &v(18)),
            f32t("cb", &[2], &v(2)),
            f32t("m", &[2], &[0.1, -0.1]),
            f32t("v", &[2], &[1.0, 0.5]),
            f32t("fw", &[3, 8], &v(24)),
            f32t("fb", &[3], &v(3)),
        ],
        Some(spec),
    )
}

pub fn tiny_quantized() -> Vec<u8> {
    let model = load_model_bytes("m", "m", &tiny_model(), None).unwrap();
    let data = Dataset {
        label: "d".into(),
        inputs: (0..64).map(|i| (i % 5) as f32 / 5.0).collect(),
        n: 4,
        sample_len: 16,
        labels: Some(vec![0, 1, 2, 1]),
        named: Vec::new(),
    };
    let config = QuantConfig {
        weight_bits: 4,
        ..Default::default()
    };
    let out = run(&model, &data, &data, &config, &Cancel::new()).unwrap();
    qscope::export::quantized_model::quantized_model_bytes(&model, &out.params).unwrap()
}

fn dataset_bytes() -> Vec<u8> {
    let labels = T {
        name: "labels".into(),
        dtype: Dtype::I64,
        shape: vec![4],
        bytes: [0i64, 1, 2, 9]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    };
    safetensors_bytes(&[f32t("inputs", &[4, 4], &[0.25; 16]), labels], None)
}

/// Text mutations: a line dropped, duplicated, or a number replaced.
pub fn mutate_text(text: &str, ops: &[(usize, usize, String)]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for (kind, at, s) in ops {
        if lines.is_empty() {
            break;
        }
        let i = at % lines.len();
        match kind % 4 {
            0 => drop(lines.remove(i)),
            1 => lines.insert(i, lines[i].clone()),
            2 => {
                let l = &lines[i];
                let pos = l.find(|c: char| c.is_ascii_digit()).unwrap_or(l.len());
                lines[i] = format!("{}{s}{}", &l[..pos], &l[(pos + 1).min(l.len())..]);
            }
            _ => lines[i].push_str(s),
        }
    }
    lines.join("\n")
}

fn text_ops() -> impl Strategy<Value = Vec<(usize, usize, String)>> {
    let tok = prop_oneof![
        Just("nan".to_string()),
        Just("-1".into()),
        Just("0".into()),
        Just("1e300".into()),
        Just("99999999999999999999".into()),
        Just("\"".into()),
        "[ -~]{0,12}",
    ];
    prop::collection::vec((0usize..4, any::<usize>(), tok), 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_models_and_specs_never_panic(spec in spec_text(), ts in tensors(), edits in prop::collection::vec(edit(), 0..3)) {
        let bytes = safetensors_bytes(&ts, Some(&spec));
        let bytes = apply(&bytes, &edits);
        if let Ok(m) = load_model_bytes("m", "m", &bytes, None) {
            run_small(&m);
        }
        let _ = load_model_bytes("m", "m", &bytes, Some(("spec", &spec)));
    }

    #[test]
    fn mutated_models_never_panic(edits in prop::collection::vec(edit(), 1..4)) {
        let bytes = apply(&tiny_model(), &edits);
        if let Ok(m) = load_model_bytes("m", "m", &bytes, None) {
            run_small(&m);
        }
    }

    #[test]
    fn mutated_quantized_models_never_panic(edits in prop::collection::vec(edit(), 1..4)) {
        static Q: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(tiny_quantized);
        let bytes = apply(&Q, &edits);
        let _ = qscope::export::is_quantized_model(&bytes);
        if let Ok(q) = qscope::export::load_quantized_bytes("q", &bytes) {
            let _ = qscope::export::quantized_model::quantized_model_bytes(&q.model, &q.params);
            run_small(&q.model);
        }
    }

    #[test]
    fn mutated_data_sets_never_panic(edits in prop::collection::vec(edit(), 1..4), npz in any::<bool>(), cut in any::<usize>()) {
        let bytes = if npz {
            let mut b = npz_bytes();
            let k = cut % b.len();
            b[k] ^= (cut >> 8) as u8 | 1;
            if cut % 3 == 0 { b.truncate(k.max(2)); }
            b
        } else {
            apply(&dataset_bytes(), &edits)
        };
        if let Ok(d) = load_dataset_bytes("d", &bytes) {
            let _ = d.check_fits(16, &[1, 4, 4]);
            let _ = d.check_labels(3);
        }
    }

    #[test]
    fn mutated_configs_and_parameter_files_never_panic(ops in text_ops()) {
        static MODEL: std::sync::LazyLock<qscope::Model> =
            std::sync::LazyLock::new(|| load_model_bytes("m", "m", &tiny_model(), None).unwrap());
        let config = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml")).unwrap();
        if let Ok(f) = qscope::config::ConfigFile::parse("c", &mutate_text(&config, &ops)) {
            let mut c = QuantConfig::default();
            f.apply_to(&mut c);
            let _ = c.validate(Some(&MODEL));
        }
        static Q: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(tiny_quantized);
        let st = safetensors::SafeTensors::read_metadata(&Q).unwrap().1;
        let json = st.metadata().as_ref().unwrap()["qscope.params"].clone();
        let pf = ParamsFile::parse("p", &json, Syntax::Json).unwrap();
        for (text, syntax) in [(json.clone(), Syntax::Json), (pf.to_toml(), Syntax::Toml)] {
            let pretty = if syntax == Syntax::Json { serde_json::to_string_pretty(&serde_json::from_str::<Value>(&text).unwrap()).unwrap() } else { text };
            if let Ok(pf) = ParamsFile::parse("p", &mutate_text(&pretty, &ops), syntax) {
                let _ = pf.resolve("p", &MODEL, true, WeightInts::FromModel);
            }
        }
    }
}

/// A small npz (stored, not deflated) of inputs [4, 4] f32 and labels [4] i64.
pub fn npz_bytes() -> Vec<u8> {
    use std::io::Write;
    let npy = |descr: &str, shape: &str, body: Vec<u8>| {
        let h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        let h = format!("{h:<117}\n");
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend((h.len() as u16).to_le_bytes());
        v.extend(h.as_bytes());
        v.extend(body);
        v
    };
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("inputs.npy", opts).unwrap();
    zip.write_all(&npy(
        "<f4",
        "(4, 4)",
        [0.5f32; 16].iter().flat_map(|x| x.to_le_bytes()).collect(),
    ))
    .unwrap();
    zip.start_file("labels.npy", opts).unwrap();
    zip.write_all(&npy(
        "<i8",
        "(4,)",
        [0i64, 1, 2, 1]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    ))
    .unwrap();
    zip.finish().unwrap().into_inner()
}

/// One structured edit of an ONNX file's bytes.
#[derive(Debug, Clone)]
pub enum OnnxEdit {
    /// Cut the file at this offset (modulo its length).
    Truncate(usize),
    /// XOR the byte at this offset with a nonzero mask.
    Flip(usize, u8),
    /// Add to the protobuf varint that starts at (or after) this offset, keeping its length
    /// when it can: field lengths, dims, counts and enum values all become wrong.
    Varint(usize, u8),
}

fn onnx_edit() -> impl Strategy<Value = OnnxEdit> {
    prop_oneof![
        any::<usize>().prop_map(OnnxEdit::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| OnnxEdit::Flip(i, b)),
        (any::<usize>(), 1u8..=255).prop_map(|(i, d)| OnnxEdit::Varint(i, d)),
    ]
}

/// Applies `edits` to ONNX `bytes`.
pub fn apply_onnx(bytes: &[u8], edits: &[OnnxEdit]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for e in edits {
        if b.is_empty() {
            break;
        }
        match *e {
            OnnxEdit::Truncate(i) => b.truncate(i % b.len()),
            OnnxEdit::Flip(i, m) => {
                let i = i % b.len();
                b[i] ^= m;
            }
            OnnxEdit::Varint(i, d) => {
                // The varint ends at the first byte below 0x80; bump its first 7-bit group
                // (wrapping within the group, so the length is unchanged).
                let i = i % b.len();
                b[i] = (b[i] & 0x80) | ((b[i] & 0x7f).wrapping_add(d) & 0x7f);
            }
        }
    }
    b
}

fn onnx_fixture() -> &'static [u8] {
    static F: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/onnx/resnet_ts.onnx"),
        )
        .unwrap()
    });
    &F
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_onnx_models_never_panic(edits in prop::collection::vec(onnx_edit(), 1..4)) {
        let bytes = apply_onnx(onnx_fixture(), &edits);
        if let Ok(m) = qscope::model::onnx::load_onnx_bytes("m", "m", &bytes, None) {
            let _ = qscope::engine::float::forward_flat(&m, &vec![0.0; m.input_len()], 1);
        }
    }
}

/// ONNX Runtime's quantize_static output for resnet_ts (a QDQ model).
fn qdq_fixture() -> &'static [u8] {
    static F: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/onnx/resnet_ts.ortq.onnx"),
        )
        .unwrap()
    });
    &F
}

/// A quantized model file of an ONNX graph (the graph embedded as base64 ONNX).
fn graph_quantized() -> &'static [u8] {
    static F: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let m = qscope::bundled::model("mnist-resnet").unwrap();
        let d = qscope::bundled::calib().take(20);
        let config = qscope::QuantConfig::default();
        let p = qscope::pipeline::run(&m, &d, &d, &config, &qscope::pipeline::Cancel::new())
            .unwrap()
            .params;
        qscope::export::quantized_model::quantized_model_bytes(&m, &p).unwrap()
    });
    &F
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_qdq_models_never_panic(edits in prop::collection::vec(onnx_edit(), 1..4)) {
        let bytes = apply_onnx(qdq_fixture(), &edits);
        if let Ok((m, Some(q))) = qscope::model::onnx::load_onnx_bytes_qdq("m", "m", &bytes, None) {
            let _ = qscope::export::qdq_import::qdq_params("m", &m, &q);
        }
    }

    #[test]
    fn mutated_graph_quantized_models_never_panic(edits in prop::collection::vec(edit(), 1..4)) {
        let bytes = apply(graph_quantized(), &edits);
        if let Ok(q) = qscope::export::load_quantized_bytes("q", &bytes) {
            run_small(&q.model);
        }
    }
}
