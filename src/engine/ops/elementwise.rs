//! Elementwise ops: binary ops with broadcasting (f32, or i64 computed in i64), unary ops and
//! Where.

use super::Limits;
use super::args::{check_out, count};
use super::broadcast::{broadcast_offsets, broadcast_shape};
use crate::engine::tensor::{Data, Tensor};
use crate::model::op::{BinaryOp, UnaryOp};

/// `f(a[i], b[j])` over the broadcast of `sa` and `sb` into `shape`.
fn zip<A: Copy, B: Copy, R>(
    (a, sa): (&[A], &[usize]),
    (b, sb): (&[B], &[usize]),
    shape: &[usize],
    f: impl Fn(A, B) -> R,
) -> Result<Vec<R>, String> {
    if sa == shape && sb == shape {
        return Ok(a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect());
    }
    // One side a single value (a normalization's mean or scale): no offsets to build.
    if sa == shape && b.len() == 1 {
        return Ok(a.iter().map(|&x| f(x, b[0])).collect());
    }
    if sb == shape && a.len() == 1 {
        return Ok(b.iter().map(|&y| f(a[0], y)).collect());
    }
    let (ia, ib) = (broadcast_offsets(sa, shape)?, broadcast_offsets(sb, shape)?);
    Ok(ia.iter().zip(&ib).map(|(&i, &j)| f(a[i], b[j])).collect())
}

/// A binary op of two tensors, broadcast. F32 with F32 and I64 with I64 (computed in i64);
/// Pow also takes an exponent of the other type. Comparisons and And/Or give I64 0/1.
pub(super) fn binary(
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    limits: &Limits,
) -> Result<Tensor, String> {
    let shape = broadcast_shape(&a.shape, &b.shape)?;
    check_out(&shape, limits)?;
    let (sa, sb) = (a.shape.as_slice(), b.shape.as_slice());
    let data = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => float_binary(op, (x, sa), (y, sb), &shape)?,
        (Data::I64(x), Data::I64(y)) => int_binary(op, (x, sa), (y, sb), &shape)?,
        (Data::F32(x), Data::I64(y)) if op == BinaryOp::Pow => {
            Data::F32(zip((x, sa), (y, sb), &shape, |p, q| {
                (p as f64).powf(q as f64) as f32
            })?)
        }
        (Data::I64(x), Data::F32(y)) if op == BinaryOp::Pow => {
            Data::I64(zip((x, sa), (y, sb), &shape, |p, q| {
                (p as f64).powf(q as f64) as i64
            })?)
        }
        _ => return Err("inputs must have the same element type (F32 or I64)".into()),
    };
    Ok(Tensor { shape, data })
}

type Side<'a, T> = (&'a [T], &'a [usize]);

/// A binary op on reals.
fn float_binary(op: BinaryOp, a: Side<f32>, b: Side<f32>, shape: &[usize]) -> Result<Data, String> {
    use BinaryOp::*;
    // Each op's closure is its own type, so the element loop is compiled for it (inlined and
    // vectorized; through a function pointer it would be a call per element).
    fn map<R>(
        (a, b, s): (Side<f32>, Side<f32>, &[usize]),
        f: impl Fn(f32, f32) -> R,
        data: fn(Vec<R>) -> Data,
    ) -> Result<Data, String> {
        zip(a, b, s, f).map(data)
    }
    let ab = (a, b, shape);
    match op {
        Add => map(ab, |x, y| x + y, Data::F32),
        Sub => map(ab, |x, y| x - y, Data::F32),
        Mul => map(ab, |x, y| x * y, Data::F32),
        Div => map(ab, |x, y| x / y, Data::F32),
        Pow => map(ab, f32::powf, Data::F32),
        Equal => map(ab, |x, y| (x == y) as i64, Data::I64),
        Greater => map(ab, |x, y| (x > y) as i64, Data::I64),
        GreaterOrEqual => map(ab, |x, y| (x >= y) as i64, Data::I64),
        Less => map(ab, |x, y| (x < y) as i64, Data::I64),
        LessOrEqual => map(ab, |x, y| (x <= y) as i64, Data::I64),
        And | Or => Err("logical ops take I64 booleans, not F32".into()),
    }
}

/// A binary op on integers (wrapping on overflow; division truncates; Pow through f64).
fn int_binary(op: BinaryOp, a: Side<i64>, b: Side<i64>, shape: &[usize]) -> Result<Data, String> {
    use BinaryOp::*;
    let f: fn(i64, i64) -> i64 = match op {
        Add => i64::wrapping_add,
        Sub => i64::wrapping_sub,
        Mul => i64::wrapping_mul,
        Div => {
            if zip(a, b, shape, |_, y| y == 0)?.into_iter().any(|z| z) {
                return Err("integer division by zero".into());
            }
            i64::wrapping_div
        }
        Pow => |x, y| (x as f64).powf(y as f64) as i64,
        Equal => |x, y| (x == y) as i64,
        Greater => |x, y| (x > y) as i64,
        GreaterOrEqual => |x, y| (x >= y) as i64,
        Less => |x, y| (x < y) as i64,
        LessOrEqual => |x, y| (x <= y) as i64,
        And => |x, y| (x != 0 && y != 0) as i64,
        Or => |x, y| (x != 0 || y != 0) as i64,
    };
    zip(a, b, shape, f).map(Data::I64)
}

/// A unary op. Reals for all; I64 only for Neg, Abs (wrapping) and Not.
pub(super) fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor, String> {
    let data = match (&x.data, op) {
        (Data::F32(_), UnaryOp::Not) => return Err("Not takes I64 booleans, not F32".into()),
        (Data::F32(v), _) => Data::F32(v.iter().map(|&t| unary_f32(op, t)).collect()),
        (Data::I64(v), UnaryOp::Neg) => Data::I64(v.iter().map(|t| t.wrapping_neg()).collect()),
        (Data::I64(v), UnaryOp::Abs) => Data::I64(v.iter().map(|t| t.wrapping_abs()).collect()),
        (Data::I64(v), UnaryOp::Not) => Data::I64(v.iter().map(|&t| (t == 0) as i64).collect()),
        (Data::I64(_), _) => return Err("needs an F32 input".into()),
        (Data::Q { .. }, _) => return Err("quantized input".into()),
    };
    Ok(Tensor {
        shape: x.shape.clone(),
        data,
    })
}

/// The logistic function, computed without overflow.
pub(super) fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// A unary op on one real.
fn unary_f32(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Erf => statrs::function::erf::erf(x as f64) as f32,
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Not => f32::NAN,
        UnaryOp::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
        UnaryOp::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
        UnaryOp::Gelu { tanh: false } => {
            let e = statrs::function::erf::erf(x as f64 / std::f64::consts::SQRT_2);
            (0.5 * x as f64 * (1.0 + e)) as f32
        }
        UnaryOp::Gelu { tanh: true } => {
            let k = (2.0 / std::f32::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
        }
        UnaryOp::Silu => x * sigmoid(x),
    }
}

/// Where(cond, a, b): `a` where cond ≠ 0 else `b`, all three broadcast; cond is I64.
pub(super) fn where_(
    c: &Tensor,
    a: &Tensor,
    b: &Tensor,
    limits: &Limits,
) -> Result<Tensor, String> {
    let cond = c.as_i64().ok_or("the condition must be I64 (booleans)")?;
    let shape = broadcast_shape(&broadcast_shape(&c.shape, &a.shape)?, &b.shape)?;
    check_out(&shape, limits)?;
    let ic = broadcast_offsets(&c.shape, &shape)?;
    let (ia, ib) = (
        broadcast_offsets(&a.shape, &shape)?,
        broadcast_offsets(&b.shape, &shape)?,
    );
    debug_assert_eq!(ic.len(), count(&shape)?);
    let pick = |i: usize| cond[ic[i]] != 0;
    let data = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => Data::F32(
            (0..ic.len())
                .map(|i| if pick(i) { x[ia[i]] } else { y[ib[i]] })
                .collect(),
        ),
        (Data::I64(x), Data::I64(y)) => Data::I64(
            (0..ic.len())
                .map(|i| if pick(i) { x[ia[i]] } else { y[ib[i]] })
                .collect(),
        ),
        _ => return Err("the two branches must have the same element type".into()),
    };
    Ok(Tensor { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: Limits = Limits { max_elems: 1 << 20 };

    #[test]
    fn float_binary_broadcasts_against_direct_loops() {
        let a = Tensor::f32(vec![2, 1, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = Tensor::f32(vec![4, 1], vec![0.5, -1.0, 2.0, 3.0]);
        let (av, bv) = (a.as_f32().unwrap(), b.as_f32().unwrap());
        for (op, f) in [
            (BinaryOp::Add, (|x, y| x + y) as fn(f32, f32) -> f32),
            (BinaryOp::Sub, |x, y| x - y),
            (BinaryOp::Mul, |x, y| x * y),
            (BinaryOp::Div, |x, y| x / y),
            (BinaryOp::Pow, f32::powf),
        ] {
            let y = binary(op, &a, &b, &BIG).unwrap();
            assert_eq!(y.shape, vec![2, 4, 3]);
            let v = y.as_f32().unwrap();
            for i in 0..2 {
                for j in 0..4 {
                    for k in 0..3 {
                        let want = f(av[i * 3 + k], bv[j]);
                        let got = v[(i * 4 + j) * 3 + k];
                        assert!(got == want || (got.is_nan() && want.is_nan()), "{op:?}");
                    }
                }
            }
        }
        let y = binary(BinaryOp::Greater, &a, &b, &BIG).unwrap();
        assert_eq!(&y.as_i64().unwrap()[..6], &[1, 1, 1, 1, 1, 1]);
        assert_eq!(&y.as_i64().unwrap()[6..9], &[0, 0, 1]);
        let e = binary(BinaryOp::Add, &a, &b, &Limits { max_elems: 23 }).unwrap_err();
        assert_eq!(e, "output of 24 elements exceeds the limit of 23");
    }

    #[test]
    fn a_single_value_on_either_side_against_direct_loops() {
        let a = Tensor::f32(vec![2, 3], vec![1.5, -2.0, 0.0, 4.0, 5.0, -0.25]);
        let m = Tensor::f32(vec![1, 1], vec![0.5]);
        let av = a.as_f32().unwrap();
        for (op, f) in [
            (BinaryOp::Sub, (|x, y| x - y) as fn(f32, f32) -> f32),
            (BinaryOp::Div, |x, y| x / y),
        ] {
            let right = binary(op, &a, &m, &BIG).unwrap();
            let left = binary(op, &m, &a, &BIG).unwrap();
            assert_eq!((&right.shape, &left.shape), (&a.shape, &a.shape));
            for (i, &x) in av.iter().enumerate() {
                assert_eq!(right.as_f32().unwrap()[i], f(x, 0.5), "{op:?} x, m");
                assert_eq!(left.as_f32().unwrap()[i], f(0.5, x), "{op:?} m, x");
            }
        }
        // A single value that broadcasts to a larger rank: the output takes the larger shape.
        let y = binary(
            BinaryOp::Add,
            &Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]),
            &m,
            &BIG,
        );
        assert_eq!(y.unwrap().shape, vec![1, 3]);
    }

    #[test]
    fn integer_and_mixed_types() {
        let a = Tensor::i64(vec![4], vec![7, -7, 9, i64::MAX]);
        let b = Tensor::i64(vec![4], vec![2, 2, -4, 1]);
        let y = binary(BinaryOp::Div, &a, &b, &BIG).unwrap();
        assert_eq!(y.as_i64().unwrap(), &[3, -3, -2, i64::MAX]);
        let y = binary(BinaryOp::Add, &a, &b, &BIG).unwrap();
        assert_eq!(y.as_i64().unwrap()[3], i64::MIN); // wraps, no panic
        let y = binary(BinaryOp::Pow, &a, &b, &BIG).unwrap();
        assert_eq!(&y.as_i64().unwrap()[..3], &[49, 49, 0]);
        let zero = Tensor::i64(vec![1], vec![0]);
        assert!(binary(BinaryOp::Div, &a, &zero, &BIG).is_err());
        let f = Tensor::f32(vec![1], vec![2.0]);
        assert!(binary(BinaryOp::Add, &a, &f, &BIG).is_err());
        // Pow with an exponent of the other type keeps the base type.
        let y = binary(BinaryOp::Pow, &a, &f, &BIG).unwrap();
        assert_eq!(&y.as_i64().unwrap()[..3], &[49, 49, 81]);
        let base = Tensor::f32(vec![2], vec![-2.0, 0.5]);
        let e = Tensor::i64(vec![], vec![3]);
        assert_eq!(
            binary(BinaryOp::Pow, &base, &e, &BIG)
                .unwrap()
                .as_f32()
                .unwrap(),
            &[-8.0, 0.125]
        );
        let t = Tensor::i64(vec![3], vec![0, 1, 5]);
        let u = Tensor::i64(vec![1], vec![1]);
        assert_eq!(
            binary(BinaryOp::And, &t, &u, &BIG)
                .unwrap()
                .as_i64()
                .unwrap(),
            &[0, 1, 1]
        );
        assert_eq!(
            binary(BinaryOp::Or, &t, &zero, &BIG)
                .unwrap()
                .as_i64()
                .unwrap(),
            &[0, 1, 1]
        );
        assert!(binary(BinaryOp::And, &base, &base, &BIG).is_err());
    }

    #[test]
    fn unary_ops_against_f64() {
        let xs = [-3.0f32, -0.5, 0.0, 0.7, 2.5];
        let x = Tensor::f32(vec![5], xs.to_vec());
        let erf = |v: f64| statrs::function::erf::erf(v);
        type Case = (UnaryOp, fn(f64) -> f64);
        let cases: [Case; 8] = [
            (UnaryOp::Erf, erf),
            (UnaryOp::Sigmoid, |v| 1.0 / (1.0 + (-v).exp())),
            (UnaryOp::Tanh, f64::tanh),
            (UnaryOp::Exp, f64::exp),
            (UnaryOp::Gelu { tanh: false }, |v| {
                0.5 * v * (1.0 + statrs::function::erf::erf(v / 2f64.sqrt()))
            }),
            (UnaryOp::Silu, |v| v / (1.0 + (-v).exp())),
            (UnaryOp::HardSwish, |v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0)),
            (
                UnaryOp::HardSigmoid {
                    alpha: 0.2,
                    beta: 0.5,
                },
                |v| (0.2 * v + 0.5).clamp(0.0, 1.0),
            ),
        ];
        for (op, f) in cases {
            let y = unary(op, &x).unwrap();
            for (got, &v) in y.as_f32().unwrap().iter().zip(&xs) {
                let want = f(v as f64);
                assert!(
                    (*got as f64 - want).abs() < 1e-5 * want.abs().max(1.0),
                    "{op:?}({v})"
                );
            }
        }
        let y = unary(UnaryOp::Gelu { tanh: true }, &x).unwrap();
        assert!((y.as_f32().unwrap()[3] - 0.53_f32).abs() < 0.01);
        let i = Tensor::i64(vec![3], vec![0, 2, -3]);
        assert_eq!(
            unary(UnaryOp::Not, &i).unwrap().as_i64().unwrap(),
            &[1, 0, 0]
        );
        assert_eq!(
            unary(UnaryOp::Abs, &i).unwrap().as_i64().unwrap(),
            &[0, 2, 3]
        );
        assert!(unary(UnaryOp::Sqrt, &i).is_err());
        assert!(unary(UnaryOp::Not, &x).is_err());
    }

    #[test]
    fn where_broadcasts_three_ways() {
        let c = Tensor::i64(vec![2, 1], vec![1, 0]);
        let a = Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]);
        let b = Tensor::f32(vec![], vec![-1.0]);
        let y = where_(&c, &a, &b, &BIG).unwrap();
        assert_eq!(y.shape, vec![2, 3]);
        assert_eq!(y.as_f32().unwrap(), &[1.0, 2.0, 3.0, -1.0, -1.0, -1.0]);
        let bi = Tensor::i64(vec![], vec![0]);
        assert!(where_(&c, &a, &bi, &BIG).is_err());
        assert!(where_(&a, &a, &b, &BIG).is_err());
    }
}
