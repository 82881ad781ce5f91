//! Tests through `eval`: the shape and layout ops, type checks, and a sweep of malformed inputs
//! that must give errors rather than panics.

use super::{Limits, eval};
use crate::engine::tensor::Tensor;
use crate::model::op::{BinaryOp, DType, Op, UnaryOp};

const BIG: Limits = Limits { max_elems: 1 << 20 };

fn run(op: Op, inputs: &[&Tensor]) -> Result<Tensor, String> {
    let ins: Vec<Option<&Tensor>> = inputs.iter().map(|&t| Some(t)).collect();
    eval(&op, &ins, &BIG)
}

fn ints(v: &[i64]) -> Tensor {
    Tensor::i64(vec![v.len()], v.to_vec())
}

fn iota(shape: Vec<usize>) -> Tensor {
    let n = shape.iter().product::<usize>();
    Tensor::f32(shape, (0..n).map(|i| i as f32).collect())
}

#[test]
fn reshape_copies_zeros_and_infers() {
    let x = iota(vec![2, 3, 4]);
    let y = run(Op::Reshape { allowzero: false }, &[&x, &ints(&[0, -1])]).unwrap();
    assert_eq!(y.shape, vec![2, 12]);
    assert_eq!(y.as_f32(), x.as_f32());
    let y = run(Op::Reshape { allowzero: false }, &[&x, &ints(&[-1, 0, 2])]).unwrap();
    assert_eq!(y.shape, vec![4, 3, 2]);
    assert!(run(Op::Reshape { allowzero: false }, &[&x, &ints(&[-1, -1])]).is_err());
    assert!(run(Op::Reshape { allowzero: false }, &[&x, &ints(&[5, -1])]).is_err());
    assert!(
        run(
            Op::Reshape { allowzero: false },
            &[&x, &ints(&[0, 0, 0, 0])]
        )
        .is_err()
    );
    assert!(run(Op::Reshape { allowzero: true }, &[&x, &ints(&[0, -1])]).is_err());
    assert!(run(Op::Reshape { allowzero: false }, &[&x, &ints(&[-2, 12])]).is_err());
    let empty = Tensor::f32(vec![0, 3], vec![]);
    let y = run(Op::Reshape { allowzero: true }, &[&empty, &ints(&[3, 0])]).unwrap();
    assert_eq!(y.shape, vec![3, 0]);
}

#[test]
fn flatten_squeeze_unsqueeze_shape() {
    let x = iota(vec![2, 1, 3, 1]);
    assert_eq!(
        run(Op::Flatten { axis: 0 }, &[&x]).unwrap().shape,
        vec![1, 6]
    );
    assert_eq!(
        run(Op::Flatten { axis: -1 }, &[&x]).unwrap().shape,
        vec![6, 1]
    );
    assert_eq!(
        run(Op::Flatten { axis: 4 }, &[&x]).unwrap().shape,
        vec![6, 1]
    );
    assert!(run(Op::Flatten { axis: -5 }, &[&x]).is_err());
    assert_eq!(
        run(Op::Squeeze { axes: None }, &[&x]).unwrap().shape,
        vec![2, 3]
    );
    assert_eq!(
        run(Op::Squeeze { axes: None }, &[&x, &ints(&[-1])])
            .unwrap()
            .shape,
        vec![2, 1, 3]
    );
    assert!(
        run(
            Op::Squeeze {
                axes: Some(vec![0])
            },
            &[&x]
        )
        .is_err()
    );
    let y = run(
        Op::Unsqueeze {
            axes: Some(vec![0, -1]),
        },
        &[&x],
    )
    .unwrap();
    assert_eq!(y.shape, vec![1, 2, 1, 3, 1, 1]);
    let y = run(Op::Unsqueeze { axes: None }, &[&x, &ints(&[2])]).unwrap();
    assert_eq!(y.shape, vec![2, 1, 1, 3, 1]);
    assert!(run(Op::Unsqueeze { axes: None }, &[&x]).is_err());
    assert!(
        run(
            Op::Unsqueeze {
                axes: Some(vec![1, 1])
            },
            &[&x]
        )
        .is_err()
    );
    let s = |start, end| run(Op::Shape { start, end }, &[&x]).unwrap();
    assert_eq!(s(0, None).as_i64().unwrap(), &[2, 1, 3, 1]);
    assert_eq!(s(-3, Some(-1)).as_i64().unwrap(), &[1, 3]);
    assert_eq!(s(-10, Some(10)).as_i64().unwrap(), &[2, 1, 3, 1]);
    assert_eq!(s(3, Some(1)).shape, vec![0]);
}

#[test]
fn cast_truncates_and_makes_booleans() {
    let x = Tensor::f32(vec![5], vec![-2.7, -0.5, 0.0, 1.9, f32::NAN]);
    let y = run(Op::Cast { to: DType::I64 }, &[&x]).unwrap();
    assert_eq!(y.as_i64().unwrap(), &[-2, 0, 0, 1, 0]);
    let y = run(Op::Cast { to: DType::Bool }, &[&x]).unwrap();
    assert_eq!(y.as_i64().unwrap(), &[1, 1, 0, 1, 1]);
    let y = run(Op::Cast { to: DType::F32 }, &[&ints(&[3, -4])]).unwrap();
    assert_eq!(y.as_f32().unwrap(), &[3.0, -4.0]);
}

#[test]
fn transpose_concat_expand() {
    let x = iota(vec![2, 3, 4]);
    let y = run(
        Op::Transpose {
            perm: Some(vec![1, 2, 0]),
        },
        &[&x],
    )
    .unwrap();
    assert_eq!(y.shape, vec![3, 4, 2]);
    let (xv, yv) = (x.as_f32().unwrap(), y.as_f32().unwrap());
    for i in 0..2 {
        for j in 0..3 {
            for k in 0..4 {
                assert_eq!(yv[(j * 4 + k) * 2 + i], xv[(i * 3 + j) * 4 + k]);
            }
        }
    }
    assert_eq!(
        run(Op::Transpose { perm: None }, &[&x]).unwrap().shape,
        vec![4, 3, 2]
    );
    assert!(
        run(
            Op::Transpose {
                perm: Some(vec![0, 0, 1])
            },
            &[&x]
        )
        .is_err()
    );
    assert!(
        run(
            Op::Transpose {
                perm: Some(vec![0, 1])
            },
            &[&x]
        )
        .is_err()
    );
    let a = Tensor::f32(vec![2, 1], vec![1.0, 2.0]);
    let b = Tensor::f32(vec![2, 2], vec![3.0, 4.0, 5.0, 6.0]);
    let y = run(Op::Concat { axis: -1 }, &[&a, &b]).unwrap();
    assert_eq!(
        (y.shape.clone(), y.as_f32().unwrap().to_vec()),
        (vec![2, 3], vec![1.0, 3.0, 4.0, 2.0, 5.0, 6.0])
    );
    let y = run(Op::Concat { axis: 0 }, &[&b, &b]).unwrap();
    assert_eq!(y.shape, vec![4, 2]);
    assert!(run(Op::Concat { axis: 0 }, &[&a, &b]).is_err());
    assert!(run(Op::Concat { axis: 1 }, &[&a, &ints(&[1, 2])]).is_err());
    // Expand: [3,1] to [2,1,6] → [2,3,6]; the shape's 1 keeps the input dim.
    let x = Tensor::f32(vec![3, 1], vec![1.0, 2.0, 3.0]);
    let y = run(Op::Expand, &[&x, &ints(&[2, 1, 6])]).unwrap();
    assert_eq!(y.shape, vec![2, 3, 6]);
    assert_eq!(y.as_f32().unwrap()[6..12], [2.0; 6]);
    assert!(run(Op::Expand, &[&x, &ints(&[4, 6])]).is_err());
    assert!(run(Op::Expand, &[&x, &ints(&[-1, 6])]).is_err());
    let e = eval(
        &Op::Expand,
        &[Some(&x), Some(&ints(&[1 << 30, 3, 1 << 30]))],
        &BIG,
    )
    .unwrap_err();
    assert!(
        e.starts_with("Expand: output of 3458764513820540928 elements exceeds the limit"),
        "{e}"
    );
}

#[test]
fn type_and_arity_errors() {
    use crate::quant::{QParams, Scheme};
    let qp = QParams {
        scale: 0.1,
        zero_point: 0,
        bits: 8,
        scheme: Scheme::Symmetric,
    };
    let q = Tensor::q(vec![2], vec![5, 10], qp);
    assert!(run(Op::Relu, &[&q]).unwrap_err().contains("quantized"));
    assert!(
        run(Op::Binary(BinaryOp::Add), &[&iota(vec![2])])
            .unwrap_err()
            .contains("missing")
    );
    let bad = Tensor {
        shape: vec![3],
        data: crate::engine::tensor::Data::F32(vec![1.0]),
    };
    assert!(run(Op::Unary(UnaryOp::Exp), &[&bad]).is_err());
    let lin = Op::Linear {
        weight: ndarray::Array2::zeros((1, 1)),
        bias: ndarray::Array1::zeros(1),
    };
    assert!(run(lin, &[&iota(vec![1])]).is_err());
    let y = eval(&Op::Identity, &[Some(&iota(vec![2]))], &BIG).unwrap();
    assert_eq!(y.as_f32().unwrap(), &[0.0, 1.0]);
}

/// A deterministic pseudo-random source (no dependency needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// A small random tensor: F32 or I64, rank 0..4, dims 0..4, values in −5..5.
fn random_tensor(r: &mut Lcg) -> Tensor {
    let shape: Vec<usize> = (0..r.next(5)).map(|_| r.next(4) as usize).collect();
    let n = shape.iter().product::<usize>();
    if r.next(2) == 0 {
        Tensor::f32(shape, (0..n).map(|_| r.next(11) as f32 - 5.0).collect())
    } else {
        Tensor::i64(shape, (0..n).map(|_| r.next(11) as i64 - 5).collect())
    }
}

/// The layers and elementwise ops swept by the malformed-input test.
fn math_ops() -> Vec<Op> {
    let w = |k, s, p, c| Op::MaxPool2d {
        kernel: (k, k),
        stride: (s, s),
        padding: p,
        ceil_mode: c,
    };
    let mut ops = vec![
        Op::Relu,
        Op::Clip {
            min: -1.0,
            max: 1.0,
        },
        w(2, 1, [1, 0, 0, 1], true),
        w(3, 2, [0; 4], false),
        Op::AvgPool2d {
            kernel: (2, 1),
            stride: (1, 2),
            padding: [1, 0, 1, 0],
            ceil_mode: true,
            count_include_pad: true,
        },
        Op::GlobalAvgPool,
        Op::BatchNorm {
            scale: vec![1.0, 2.0],
            shift: vec![0.0, 1.0],
        },
        Op::Softmax { axis: -1 },
        Op::Softmax { axis: 2 },
        Op::LayerNorm {
            axis: -1,
            epsilon: 1e-5,
        },
        Op::ReduceMean {
            axes: None,
            keepdims: true,
        },
        Op::ReduceMean {
            axes: Some(vec![1, -1]),
            keepdims: false,
        },
        Op::MatMul,
        Op::Where,
    ];
    ops.extend(
        [
            BinaryOp::Add,
            BinaryOp::Div,
            BinaryOp::Pow,
            BinaryOp::Equal,
            BinaryOp::Or,
        ]
        .map(Op::Binary),
    );
    ops.extend(
        [
            UnaryOp::Sqrt,
            UnaryOp::Not,
            UnaryOp::Neg,
            UnaryOp::Gelu { tanh: false },
        ]
        .map(Op::Unary),
    );
    ops
}

/// The shape and layout ops swept by the malformed-input test.
fn shape_ops() -> Vec<Op> {
    vec![
        Op::Flatten { axis: 1 },
        Op::Flatten { axis: -2 },
        Op::Reshape { allowzero: false },
        Op::Reshape { allowzero: true },
        Op::Transpose { perm: None },
        Op::Transpose {
            perm: Some(vec![1, 0, 2]),
        },
        Op::Concat { axis: 1 },
        Op::Squeeze { axes: None },
        Op::Squeeze {
            axes: Some(vec![0]),
        },
        Op::Unsqueeze { axes: None },
        Op::Unsqueeze {
            axes: Some(vec![-1]),
        },
        Op::Gather { axis: 0 },
        Op::Gather { axis: -1 },
        Op::GatherNd { batch_dims: 0 },
        Op::GatherNd { batch_dims: 1 },
        Op::Slice,
        Op::Expand,
        Op::Cast { to: DType::Bool },
        Op::Shape {
            start: -2,
            end: None,
        },
        Op::Range,
        Op::ConstantOfShape {
            value: 1.0,
            dtype: DType::I64,
        },
        Op::Identity,
    ]
}

#[test]
fn empty_tensors_with_huge_dims_allocate_nothing() {
    let huge = 1usize << 40;
    let x = Tensor::f32(vec![0, huge], vec![]);
    let small = Limits { max_elems: 1000 };
    let ev = |op: Op, ins: &[&Tensor]| {
        let ins: Vec<Option<&Tensor>> = ins.iter().map(|&t| Some(t)).collect();
        eval(&op, &ins, &small)
    };
    assert_eq!(
        ev(Op::Transpose { perm: None }, &[&x]).unwrap().shape,
        vec![huge, 0]
    );
    let s = ev(
        Op::Slice,
        &[
            &x,
            &ints(&[-1]),
            &ints(&[i64::MIN]),
            &ints(&[1]),
            &ints(&[-1]),
        ],
    );
    assert_eq!(s.unwrap().shape, vec![0, huge]);
    assert!(
        ev(
            Op::ReduceMean {
                axes: Some(vec![0]),
                keepdims: true
            },
            &[&x]
        )
        .is_err()
    );
    assert!(
        ev(
            Op::Binary(BinaryOp::Add),
            &[&x, &Tensor::f32(vec![1], vec![1.0])]
        )
        .is_ok()
    );
    assert!(ev(Op::Expand, &[&x, &ints(&[huge as i64, 1, 1])]).is_ok());
    let wide = Tensor::f32(vec![0, huge, huge], vec![]);
    assert!(
        ev(Op::Identity, &[&wide])
            .unwrap_err()
            .contains("too many elements")
    );
}

#[test]
fn malformed_inputs_give_errors_not_panics() {
    let mut r = Lcg(7);
    let limits = Limits { max_elems: 4096 };
    let mut ok = 0;
    for op in math_ops().into_iter().chain(shape_ops()) {
        for _ in 0..400 {
            let ts: Vec<Tensor> = (0..r.next(6)).map(|_| random_tensor(&mut r)).collect();
            let ins: Vec<Option<&Tensor>> =
                ts.iter().map(|t| (r.next(8) != 0).then_some(t)).collect();
            if let Ok(y) = eval(&op, &ins, &limits) {
                assert_eq!(
                    y.shape.iter().product::<usize>(),
                    super::args::len(&y),
                    "{op:?}"
                );
                ok += 1;
            }
        }
    }
    assert!(ok > 500, "only {ok} successful runs");
}
