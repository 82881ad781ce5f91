//! The float engine writes an Add/Sub/Mul of two same-shape activations into the operand it
//! reads last: whichever side that is, the values must be the op's (a − b, never b − a),
//! checked against direct f64 loops on a graph where each side is read last in turn, where
//! one value is both operands, and where an operand is a constant.

use qscope::engine::float;
use qscope::engine::tensor::Tensor;
use qscope::model::{BinaryOp, DType, GraphInput, Layer, Model, Op, Source, Value, ValueId};

/// Node `op` of `inputs`, its output the next value.
fn node(layers: &mut Vec<Layer>, values: &mut Vec<Value>, op: Op, inputs: &[ValueId]) -> ValueId {
    let output = values.len();
    let name = format!("n{}", layers.len());
    values.push(Value { name: name.clone() });
    layers.push(Layer {
        name,
        op_type: op.kind().to_string(),
        op,
        inputs: inputs.iter().map(|&v| Some(v)).collect(),
        output,
        in_shape: Vec::new(),
        out_shape: Vec::new(),
    });
    output
}

fn linear(w: &[f32], b: &[f32]) -> Op {
    Op::Linear {
        weight: ndarray::Array2::from_shape_vec((b.len(), w.len() / b.len()), w.to_vec()).unwrap(),
        bias: ndarray::Array1::from_vec(b.to_vec()),
    }
}

#[test]
fn either_operand_taken_in_place_gives_the_ops_values() {
    let val = |i: usize| ((i * 7919 % 613) as f32 / 613.0) - 0.5;
    let (wa, ba): (Vec<f32>, Vec<f32>) = (
        (0..12).map(val).collect(),
        (0..3).map(|i| val(i + 40)).collect(),
    );
    let (wb, bb): (Vec<f32>, Vec<f32>) = (
        (0..12).map(|i| val(i + 7)).collect(),
        (0..3).map(|i| val(i + 50)).collect(),
    );
    let (n, c) = (5, [0.25f32, -2.0, 3.0]);
    let mut values = vec![Value { name: "x".into() }, Value { name: "c".into() }];
    let mut layers = Vec::new();
    let (l, v) = (&mut layers, &mut values);
    let a = node(l, v, linear(&wa, &ba), &[0]);
    let b = node(l, v, linear(&wb, &bb), &[0]);
    // a is read again below, b is not: into b's buffer, as a − b.
    let s = node(l, v, Op::Binary(BinaryOp::Sub), &[a, b]);
    // s read last, a again later: into s's.
    let m = node(l, v, Op::Binary(BinaryOp::Mul), &[s, a]);
    // Both read last: into a's (the left), as a − m.
    let d = node(l, v, Op::Binary(BinaryOp::Sub), &[a, m]);
    // One value on both sides: a new tensor.
    let t = node(l, v, Op::Binary(BinaryOp::Add), &[d, d]);
    // A constant on the left (never written), the activation read last on the right.
    let y = node(l, v, Op::Binary(BinaryOp::Sub), &[1, t]);
    let model = Model {
        name: "in-place".into(),
        input_shape: vec![4],
        input_mean: Vec::new(),
        input_std: Vec::new(),
        layers,
        values,
        consts: vec![(1, Tensor::f32(vec![n, 3], c.repeat(n)))],
        inputs: vec![GraphInput {
            value: 0,
            dtype: DType::F32,
            shape: vec![Some(4)],
        }],
        outputs: vec![y],
        source_kind: Source::Onnx,
        sha256: String::new(),
        source: "in-place graph".into(),
        notes: Vec::new(),
    };
    let x: Vec<f32> = (0..n * 4).map(|i| val(i + 99)).collect();
    let dense = |w: &[f32], bias: &[f32], xs: &[f32]| -> Vec<f64> {
        (0..3)
            .map(|o| {
                bias[o] as f64
                    + (0..4)
                        .map(|i| w[o * 4 + i] as f64 * xs[i] as f64)
                        .sum::<f64>()
            })
            .collect()
    };
    let input = vec![float::input_tensor(&model, &x, n)];
    for got in [
        float::forward(&model, input.clone(), usize::MAX, |_, _| {}).unwrap(),
        float::forward_outputs(&model, input, usize::MAX).unwrap(),
    ] {
        let got = got[0].as_f32().unwrap();
        for s in 0..n {
            let (av, bv) = (
                dense(&wa, &ba, &x[s * 4..][..4]),
                dense(&wb, &bb, &x[s * 4..][..4]),
            );
            for o in 0..3 {
                let sub = av[o] - bv[o];
                let d = av[o] - sub * av[o];
                let want = c[o] as f64 - (d + d);
                let g = got[s * 3 + o] as f64;
                assert!(
                    (g - want).abs() < 1e-5,
                    "sample {s} out {o}: {g}, want {want}"
                );
            }
        }
    }
}
