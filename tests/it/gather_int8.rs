//! Embedding lookups (ONNX Gather of a constant table at integer ids) as int8 weight layers:
//! the table quantized per row like a weight (checked against a direct loop), the integer
//! Gather against an f64 fake-quant reference written here, BERT at W8A8 with its embeddings
//! quantized, and `--params` reproducing the run bit for bit.

use crate::util::{Rng, quant_outputs};
use qscope::engine::IntModel;
use qscope::engine::tensor::Tensor;
use qscope::export::onnx::proto::{AttrValue, OGraph, OIo, ONode, OTensor};
use qscope::model::{Model, Op, load_dataset, load_model};
use qscope::params::{ActQuant, LayerParams, ModelParams, WeightQuant};
use qscope::pipeline::{Cancel, quantize_weights, run};
use qscope::{ClipRange, QParams, QuantConfig, Scheme};
use std::path::{Path, PathBuf};

const ROWS: usize = 11;
const DIM: usize = 6;
const SEQ: usize = 5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// An ONNX graph: ids [batch, SEQ] (int64) → Gather(table [ROWS, DIM], ids) → output.
fn embedding_graph(table: &[f32]) -> Model {
    let g = OGraph {
        name: "emb".into(),
        nodes: vec![ONode {
            name: "embed".into(),
            op: "Gather".into(),
            inputs: vec!["table".into(), "ids".into()],
            outputs: vec!["y".into()],
            attrs: vec![("axis".into(), AttrValue::Int(0))],
        }],
        inits: vec![OTensor::f32("table", &[ROWS, DIM], table)],
        inputs: vec![OIo {
            name: "ids".into(),
            dtype: onnx_rs::ast::DataType::Int64,
            dims: Some(vec![None, Some(SEQ as i64)]),
        }],
        outputs: vec![OIo {
            name: "y".into(),
            dtype: onnx_rs::ast::DataType::Float,
            dims: None,
        }],
        metadata: vec![],
    };
    qscope::model::onnx::load_onnx_bytes("emb.onnx", "emb", &g.encode(), None).unwrap()
}

/// A table whose rows have very different magnitudes (so per-row scales matter).
fn table(rng: &mut Rng) -> Vec<f32> {
    (0..ROWS)
        .flat_map(|r| {
            let m = 0.05 * (1 + r * 3) as f32;
            rng.vec(DIM, -m, m)
        })
        .collect()
}

#[test]
fn the_table_is_quantized_per_row_with_max_abs_over_127() {
    let mut rng = Rng(7);
    let t = table(&mut rng);
    let model = embedding_graph(&t);
    assert!(matches!(model.layers[0].op, Op::Embedding { .. }));
    assert_eq!(model.weight_layers(), [0]);
    let w = quantize_weights(&model, &QuantConfig::default());
    let q = &w[0].as_ref().expect("quantized").q;
    assert_eq!((q.rows, q.cols, q.params.len()), (ROWS, DIM, ROWS));
    for r in 0..ROWS {
        let row = &t[r * DIM..(r + 1) * DIM];
        let amax = row.iter().fold(0.0f64, |a, &x| a.max((x as f64).abs()));
        let s = amax / 127.0;
        let p = q.params[r];
        assert!(
            ((p.scale as f64) - s).abs() <= s * 1e-6,
            "row {r}: {} vs {s}",
            p.scale
        );
        assert_eq!(p.zero_point, 0);
        for (c, &x) in row.iter().enumerate() {
            let want = (x as f64 / p.scale as f64).round().clamp(-127.0, 127.0) as i8;
            assert_eq!(q.q[r * DIM + c], want, "row {r} col {c}");
        }
    }
}

#[test]
fn the_integer_gather_matches_an_f64_fake_quant_reference() {
    let mut rng = Rng(11);
    let t = table(&mut rng);
    let model = embedding_graph(&t);
    let config = QuantConfig::default();
    let wq = quantize_weights(&model, &config).remove(0).unwrap();
    // An output range narrower than the largest rows: clamping is exercised too.
    let mut ops = 0;
    let mut off = 0;
    for (lo, hi, scheme) in [
        (-0.3f32, 0.45f32, Scheme::Asymmetric),
        (-1.7, 1.7, Scheme::Symmetric),
    ] {
        let range = ClipRange::new(lo, hi);
        let out_q = QParams::from_range(range, 8, scheme);
        let params = embed_params(wq.clone(), &config, range, out_q);
        let n = 3;
        let ids: Vec<i64> = (0..n * SEQ)
            .map(|i| {
                let r = rng.below(ROWS) as i64;
                if i % 4 == 0 { r - ROWS as i64 } else { r }
            })
            .collect();
        let int = IntModel::new(&model, &params, usize::MAX);
        assert!(int.is_gemm(0));
        let mut codes = Vec::new();
        let out = int
            .forward(
                vec![Tensor::i64(vec![n, SEQ], ids.clone())],
                |_, _, y, _| {
                    codes = y.as_q().expect("integers").0.to_vec();
                },
            )
            .unwrap();
        assert_eq!(out[0].shape, [n, SEQ, DIM]);
        let (qlo, qhi) = (out_q.qmin() as f64, out_q.qmax() as f64);
        for (k, &id) in ids.iter().enumerate() {
            let r = id.rem_euclid(ROWS as i64) as usize;
            let s_r = wq.q.params[r].scale as f64;
            for c in 0..DIM {
                let real = wq.q.q[r * DIM + c] as f64 * s_r;
                let want =
                    ((real / out_q.scale as f64).round() + out_q.zero_point as f64).clamp(qlo, qhi);
                let got = codes[k * DIM + c] as f64;
                assert!(
                    (got - want).abs() <= 1.0,
                    "id {id} col {c}: {got} vs {want}"
                );
                ops += 1;
                off += (got != want) as usize;
            }
        }
    }
    // The Q31 multiplier only moves values within ~2^-24 of a half: every code is exact here.
    assert_eq!(off, 0, "{off} of {ops} codes off by one");
}

#[test]
fn an_index_out_of_range_is_an_error_naming_the_node() {
    let mut rng = Rng(3);
    let model = embedding_graph(&table(&mut rng));
    let config = QuantConfig::default();
    let wq = quantize_weights(&model, &config).remove(0).unwrap();
    let range = ClipRange::new(-1.0, 1.0);
    let params = embed_params(
        wq,
        &config,
        range,
        QParams::from_range(range, 8, Scheme::Asymmetric),
    );
    let int = IntModel::new(&model, &params, usize::MAX);
    let ids = Tensor::i64(vec![1, SEQ], vec![0, 1, ROWS as i64, 2, 3]);
    let err = int.forward(vec![ids], |_, _, _, _| {}).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("embed") && msg.contains("out of range"),
        "{msg}"
    );
}

fn bert() -> (Model, qscope::Dataset, qscope::Dataset) {
    let m = load_model(&fixture("tests/fixtures/onnx/bert_ts.onnx"), None).unwrap();
    let d = load_dataset(&fixture("tests/fixtures/onnx/bert_data.safetensors")).unwrap();
    (m, d.take(100), d.take(60))
}

#[test]
fn bert_w8a8_quantizes_its_embeddings_and_keeps_its_cosine() {
    let (m, calib, eval) = bert();
    let emb: Vec<&str> = m
        .layers
        .iter()
        .filter(|l| matches!(l.op, Op::Embedding { .. }))
        .map(|l| l.name.as_str())
        .collect();
    assert!(
        emb.contains(&"/bert/embeddings/word_embeddings/Gather"),
        "{emb:?}"
    );
    let out = run(&m, &calib, &eval, &QuantConfig::default(), &Cancel::new()).unwrap();
    let r = &out.report;
    let cos = r.output_cosine.unwrap();
    eprintln!(
        "bert W8A8 with int8 embeddings: cosine {cos:.6}, int_mac_share {:?}, islands {:?}",
        r.int_mac_share, r.float_islands
    );
    assert!(cos >= 0.99, "{cos}");
    assert_eq!(r.int_mac_share, Some(1.0));
    crate::util::assert_only_softmax_layernorm_islands(r);
    for name in &emb {
        let row = r.layers.iter().find(|l| l.name == *name).expect("a row");
        assert_eq!(row.weight_bits, Some(8), "{name}");
        assert!(row.weight_sqnr_db.is_some_and(|s| s > 30.0), "{name}");
        assert!(!row.float, "{name}");
        assert!(!r.float_islands.iter().any(|n| n == name), "{name}");
    }
    // Each lookup is an integer node: the Add of the embeddings runs on integers too.
    assert!(
        !r.float_islands.iter().any(|n| n.contains("embeddings/Add")),
        "{:?}",
        r.float_islands
    );
}

#[test]
fn bert_parameters_with_embedding_tables_round_trip_bit_for_bit() {
    let (m, calib, eval) = bert();
    let config = QuantConfig {
        weight_bits: 4,
        granularity: qscope::Granularity::Group(32),
        layers: [(
            "/bert/embeddings/word_embeddings/Gather".to_string(),
            qscope::LayerOverride {
                weight_bits: Some(6),
                ..Default::default()
            },
        )]
        .into(),
        ..QuantConfig::default()
    };
    let p = run(&m, &calib, &eval, &config, &Cancel::new())
        .unwrap()
        .params;
    let word = p
        .by_name("/bert/embeddings/word_embeddings/Gather")
        .unwrap();
    assert_eq!(
        word.weight.as_ref().unwrap().q.bits(),
        6,
        "the layer override"
    );
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    qscope::export::save_params(&json, &m, &p).unwrap();
    let back = qscope::export::load_params(&json, &m, false).unwrap();
    assert_eq!(p, back);
    let a = quant_outputs(&m, p, &eval);
    let b = quant_outputs(&m, back, &eval);
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}

#[test]
fn qdq_export_writes_the_table_as_int8_rows_behind_a_per_row_dequantize_and_loads_back() {
    use qscope::export::onnx::{QdqOptions, onnx_model_bytes};
    use qscope::export::qdq_import::qdq_params;
    let mut rng = Rng(5);
    let t = table(&mut rng);
    let model = embedding_graph(&t);
    let config = QuantConfig::default();
    let wq = quantize_weights(&model, &config).remove(0).unwrap();
    let range = ClipRange::new(-1.0, 1.5);
    let params = embed_params(
        wq.clone(),
        &config,
        range,
        QParams::from_range(range, 8, Scheme::Asymmetric),
    );
    let bytes = onnx_model_bytes(&model, Some(&params), QdqOptions::default()).unwrap();
    let om = onnx_rs::parse(&bytes).unwrap();
    let g = om.graph.as_ref().unwrap();
    let gather = g
        .node
        .iter()
        .find(|n| n.op_type.as_str() == "Gather")
        .unwrap();
    let dq = g
        .node
        .iter()
        .find(|n| n.output.first() == gather.input.first())
        .expect("the table comes from a node");
    assert_eq!(dq.op_type.as_str(), "DequantizeLinear");
    let axis = dq.attribute.iter().find(|a| a.name == "axis").map(|a| a.i);
    assert_eq!(axis, Some(0));
    let init = |name: &str| g.initializer.iter().find(|t| t.name() == name).unwrap();
    let ints = init(dq.input[0]);
    assert_eq!(ints.data_type(), onnx_rs::ast::DataType::Int8);
    assert_eq!(ints.dims(), [ROWS as i64, DIM as i64]);
    let raw: Vec<i8> = ints.as_raw().unwrap().iter().map(|&b| b as i8).collect();
    assert_eq!(raw, wq.q.q);
    let scales = init(dq.input[1]);
    assert_eq!(scales.dims(), [ROWS as i64]);
    // Loaded back, the file gives the same embedding and parameters, and the same outputs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("emb.onnx");
    std::fs::write(&path, &bytes).unwrap();
    let (m2, q) = qscope::model::onnx::load_onnx_qdq(&path).unwrap();
    assert!(matches!(m2.layers[0].op, Op::Embedding { .. }));
    let p2 = qdq_params("emb", &m2, &q.unwrap()).unwrap().params;
    assert_eq!(p2.layers[0].weight.as_ref().unwrap().q, wq.q);
    assert_eq!(p2.layers[0].act, params.layers[0].act);
    let ids = Tensor::i64(vec![2, SEQ], (0..2 * SEQ as i64).map(|i| i % 11).collect());
    let run = |m: &Model, p: &ModelParams| {
        IntModel::new(m, p, usize::MAX)
            .forward(vec![ids.clone()], |_, _, _, _| {})
            .unwrap()[0]
            .to_f32_vec()
    };
    assert_eq!(run(&model, &params), run(&m2, &p2));
}

/// Parameters of the one-node embedding graph: its quantized table `wq` and output point
/// (`range` with `qparams`).
fn embed_params(
    wq: WeightQuant,
    config: &QuantConfig,
    range: ClipRange,
    qparams: QParams,
) -> ModelParams {
    ModelParams {
        points: vec![],
        layers: vec![LayerParams {
            name: "embed".into(),
            index: 0,
            weight: Some(wq),
            act: Some(ActQuant {
                settings: config.act_settings("embed"),
                range,
                qparams,
            }),
        }],
        smoothquant: vec![],
        methods: None,
    }
}
