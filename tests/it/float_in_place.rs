//! The float engine writes an Add/Sub/Mul of two same-shape activations into the operand it
//! reads last: whichever side that is, the values must be the op's (a − b, never b − a),
//! checked against direct f64 loops on a graph where each side is read last in turn, where
//! one value is both operands, and where an operand is a constant; run node by node, each
//! node is checked to have written into the operand expected (or, for `d + d`, into none).

use qscope::engine::tensor::Tensor;
use qscope::engine::{float, in_place};
use qscope::model::{BinaryOp, Layer, Model, Op, Value, ValueId};

/// Node `op` of `inputs`, its output the next value.
fn node(layers: &mut Vec<Layer>, values: &mut Vec<Value>, op: Op, inputs: &[ValueId]) -> ValueId {
    let (output, name) = (values.len(), format!("n{}", layers.len()));
    values.push(Value { name: name.clone() });
    layers.push(crate::util::node(name, op, inputs, output));
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
    let consts = vec![(1, Tensor::f32(vec![n, 3], c.repeat(n)))];
    let model = crate::util::graph_model("in-place graph", (layers, values, consts), vec![4], y);
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
    let stepped = taken_in_place(&model, input.clone(), [a, b, s, m, d, t, 1]);
    for got in [
        stepped,
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

/// Runs the graph of the test node by node, checking that each binary node ran in place into
/// the operand the comments there say (that value leaves the table, the other stays) or, for
/// `d + d`, not in place; returns the output.
fn taken_in_place(
    model: &Model,
    input: Vec<Tensor>,
    [a, b, s, m, _d, t, c]: [ValueId; 7],
) -> Vec<Tensor> {
    let last = float::last_uses(model);
    let mut vals = float::Values::new(model, input);
    float::run_range(model, &mut vals, 0..2, usize::MAX, &mut |_, _| {}).unwrap();
    // (node, the operand written into, the one that stays), or no operand for `d + d`.
    for (i, into) in [
        (2, Some((b, a))),
        (3, Some((s, a))),
        (4, Some((a, m))),
        (5, None),
        (6, Some((t, c))),
    ] {
        let layer = &model.layers[i];
        match (in_place::run(layer, &mut vals, &last, i, usize::MAX), into) {
            (Some(y), Some((gone, kept))) => {
                assert!(vals.get(gone).is_none(), "node {i} wrote into value {gone}");
                assert!(vals.get(kept).is_some(), "node {i} left value {kept}");
                vals.set(layer.output, y);
            }
            (None, None) => {
                float::run_range(model, &mut vals, i..i + 1, usize::MAX, &mut |_, _| {}).unwrap();
            }
            (y, _) => panic!("node {i}: in place {}, expected {into:?}", y.is_some()),
        }
    }
    float::outputs(model, vals).unwrap()
}
