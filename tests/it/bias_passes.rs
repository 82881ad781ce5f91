//! Bias correction's passes (`pipeline::bias_passes`) on a graph whose weight layers sit where
//! a run may not be cut: between a mask Add and the Softmax it feeds. Each pass starts from the
//! tables the pass before left; what it measures is checked against a whole tapped run per batch
//! and f64 means taken by a direct loop.

use crate::util::{Rng, graph_model, node};
use qscope::engine::IntModel;
use qscope::engine::float::{argmax, infer_shapes};
use qscope::engine::int::input_qparams;
use qscope::model::{BinaryOp, Model, Op, Value};
use qscope::pipeline::bias_passes::{PassData, Score, Tables, pass};
use qscope::pipeline::{Cancel, batches, make_batch, run};

/// x → a = fc0(x) → m = a + c → s = Softmax(m); u = a − c → b = fc1(u); y = s + b. Nodes in that
/// order, so fc1 (node 3) sits between the mask Add (node 1) and its Softmax (node 4), and its
/// input is written by node 2, after the cut its pass stops at.
fn masked_graph() -> Model {
    let mut rng = Rng(0xb1a5);
    let mut fc = |o: usize, k: usize| Op::Linear {
        weight: ndarray::Array2::from_shape_vec((o, k), rng.vec(o * k, -0.1, 0.1)).unwrap(),
        bias: ndarray::Array1::from_vec(rng.vec(o, -0.2, 0.2)),
    };
    let (fc0, fc1) = (fc(10, 784), fc(10, 10));
    let c =
        qscope::engine::tensor::Tensor::f32(vec![10], (0..10).map(|i| i as f32 * 0.1).collect());
    let ops = [
        (fc0, vec![0], 2),
        (Op::Binary(BinaryOp::Add), vec![2, 1], 3),
        (Op::Binary(BinaryOp::Sub), vec![2, 1], 4),
        (fc1, vec![4], 5),
        (Op::Softmax { axis: -1 }, vec![3], 6),
        (Op::Binary(BinaryOp::Add), vec![6, 5], 7),
    ];
    let values = (0..8)
        .map(|i| Value {
            name: format!("v{i}"),
        })
        .collect();
    let layers = (ops.into_iter().enumerate())
        .map(|(i, (op, ins, out))| node(format!("n{i}"), op, &ins, out))
        .collect();
    let mut m = graph_model("masked", (layers, values, vec![(1, c)]), vec![784], 7);
    infer_shapes(&mut m).unwrap();
    m
}

/// The float model's first output on `data`, flattened in sample order.
fn float_out(model: &Model, data: &qscope::Dataset) -> Vec<f32> {
    let inputs = make_batch(model, data, 0, data.n).unwrap();
    qscope::engine::float::forward_outputs(model, inputs, usize::MAX).unwrap()[0].to_f32_vec()
}

/// The passes' shared inputs, with no element limit.
fn pass_data<'a>(
    data: &'a qscope::Dataset,
    float_out: &'a [f32],
    cancel: &'a Cancel,
) -> PassData<'a> {
    PassData {
        data,
        float_out,
        limit: usize::MAX,
        cancel,
    }
}

#[test]
fn passes_from_kept_tables_measure_a_whole_runs_inputs_and_outputs() {
    let model = masked_graph();
    let data = qscope::bundled::calib().take(150);
    let params = run(&model, &data, &data, &Default::default(), &Cancel::new())
        .unwrap()
        .params;
    let int = IntModel::new(&model, &params, usize::MAX);
    assert_eq!(
        int.cut_at_or_before(3),
        1,
        "fc1's pass stops at the mask Add"
    );
    let float_out = float_out(&model, &data);
    let cancel = Cancel::new();
    let pd = pass_data(&data, &float_out, &cancel);
    let in_qs = input_qparams(&model, &params);
    let labels = data.labels.as_ref().unwrap();
    let mut tables = Tables::inputs();
    for n in [0, 3] {
        let got = pass((&int, &params), &tables, Some(n), true, &pd).unwrap();
        // The reference: node n's input taken from a whole tapped run of each batch, brought
        // to n's input qparams, its rows averaged in f64; hits and squared error of the outputs.
        let want_v = model.layers[n].data_input().unwrap();
        let k = if n == 0 { 784 } else { 10 };
        let (mut sum, mut rows, mut hits, mut sq) = (vec![0.0f64; k], 0usize, 0, 0.0);
        for (s, e) in batches(data.n) {
            let batch = make_batch(&model, &data, s, e).unwrap();
            let mut seen = (n == 0).then(|| batch[0].clone());
            let out = int
                .forward(batch, |_, v, t, _| {
                    if v == want_v && seen.is_none() {
                        seen = Some(t.clone());
                    }
                })
                .unwrap();
            let x = seen.expect("node n's input was written");
            let q = in_qs[&n].expect("an integer layer");
            let x = x.dequantized().quantize(q).dequantized().to_f32_vec();
            for row in x.chunks(sum.len()) {
                sum.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64);
                rows += 1;
            }
            let y = out[0].to_f32_vec();
            for (k, r) in y.chunks(10).enumerate() {
                hits += (argmax(r) as i64 == labels[s + k]) as usize;
                let f = &float_out[(s + k) * 10..(s + k + 1) * 10];
                sq += f
                    .iter()
                    .zip(r)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>();
            }
        }
        let means: Vec<f64> = sum.iter().map(|s| s / rows as f64).collect();
        assert_eq!(got.means.len(), 1);
        for (a, b) in got.means[0].iter().zip(&means) {
            assert!(
                (a - b).abs() <= 1e-9 * (1.0 + b.abs()),
                "node {n}: {a} vs {b}"
            );
        }
        assert_eq!(got.score.0, hits, "node {n}");
        let Score(_, neg) = got.score;
        assert!((-neg - sq).abs() <= 1e-9 * sq, "node {n}: {} vs {sq}", -neg);
        tables = got.tables;
    }
}

#[test]
fn without_labels_a_pass_scores_the_summed_kl_of_the_outputs_from_the_float_models() {
    // The reference: each sample's softmax probabilities by a direct f64 loop (exponentials
    // normalized, not log-softmax), KL(p_float ‖ p_int) = Σ p_f·ln(p_f / p_int), summed.
    let model = qscope::bundled::model("mnist-mlp").unwrap();
    let mut data = qscope::bundled::calib().take(300);
    data.labels = None;
    let params = run(&model, &data, &data, &Default::default(), &Cancel::new())
        .unwrap()
        .params;
    let int = IntModel::new(&model, &params, usize::MAX);
    let float_out = float_out(&model, &data);
    let cancel = Cancel::new();
    let pd = pass_data(&data, &float_out, &cancel);
    let got = pass((&int, &params), &Tables::inputs(), None, true, &pd).unwrap();
    let probs = |r: &[f32]| -> Vec<f64> {
        let m = r.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
        let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|x| x / s).collect()
    };
    let mut kl = 0.0;
    for (s, e) in batches(data.n) {
        let out = int
            .forward_outputs(make_batch(&model, &data, s, e).unwrap())
            .unwrap();
        let q = out[0].to_f32_vec();
        for (k, r) in q.chunks(10).enumerate() {
            let (pf, pq) = (probs(&float_out[(s + k) * 10..][..10]), probs(r));
            kl += pf
                .iter()
                .zip(&pq)
                .map(|(a, b)| if *a > 0.0 { a * (a / b).ln() } else { 0.0 })
                .sum::<f64>();
        }
    }
    assert!(kl > 0.0, "the integer outputs differ from the float ones");
    assert_eq!(got.score.0, 0, "no hits without labels");
    let Score(_, neg) = got.score;
    assert!((-neg - kl).abs() <= 1e-9 * kl, "{} vs {kl}", -neg);
}
