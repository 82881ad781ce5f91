//! Ops whose output size comes from input values: Range and ConstantOfShape.

use super::Limits;
use super::args::{Scalar, check_out, scalar};
use crate::engine::tensor::{Data, Tensor};
use crate::model::op::DType;

/// Range(start, limit, delta), all F32 or all I64 scalars: max(⌈(limit − start) / delta⌉, 0)
/// values start + i · delta (F32 values computed in f32 as start + i·delta; the count in f64).
pub(super) fn range(
    start: &Tensor,
    limit: &Tensor,
    delta: &Tensor,
    limits: &Limits,
) -> Result<Tensor, String> {
    match (
        scalar(start, "start")?,
        scalar(limit, "limit")?,
        scalar(delta, "delta")?,
    ) {
        (Scalar::F32(s), Scalar::F32(l), Scalar::F32(d)) => {
            let n = ((l - s) as f64 / d as f64).ceil();
            if d == 0.0 || !n.is_finite() {
                return Err(format!("range({s}, {l}, {d}) has no finite length"));
            }
            let n = n.max(0.0);
            if n > limits.max_elems as f64 {
                return Err(format!(
                    "output of {n} elements exceeds the limit of {}",
                    limits.max_elems
                ));
            }
            let v: Vec<f32> = (0..n as usize).map(|i| s + i as f32 * d).collect();
            Ok(Tensor::f32(vec![v.len()], v))
        }
        (Scalar::I64(s), Scalar::I64(l), Scalar::I64(d)) => {
            if d == 0 {
                return Err("range with delta 0".into());
            }
            let (span, d) = (l as i128 - s as i128, d as i128);
            // Ceiling division in i128 (no overflow for any i64 inputs).
            let n = (span / d + i128::from(span % d != 0 && (span > 0) == (d > 0))).max(0);
            let n = usize::try_from(n).map_err(|_| format!("range of {n} elements"))?;
            check_out(&[n], limits)?;
            let v = (0..n).map(|i| (s as i128 + i as i128 * d) as i64).collect();
            Ok(Tensor::i64(vec![n], v))
        }
        _ => Err("start, limit and delta must all be F32 or all I64".into()),
    }
}

/// A tensor of shape `shape` filled with `value` as `dtype` (Bool: 0/1).
pub(super) fn constant_of_shape(
    shape: Vec<usize>,
    value: f32,
    dtype: DType,
    limits: &Limits,
) -> Result<Tensor, String> {
    let n = check_out(&shape, limits)?;
    let data = match dtype {
        DType::F32 => Data::F32(vec![value; n]),
        DType::I64 => Data::I64(vec![value as i64; n]),
        DType::Bool => Data::I64(vec![(value != 0.0) as i64; n]),
    };
    Ok(Tensor { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: Limits = Limits { max_elems: 1000 };

    #[test]
    fn range_spec_examples() {
        let i = |v: i64| Tensor::i64(vec![], vec![v]);
        let f = |v: f32| Tensor::f32(vec![], vec![v]);
        // Range(3, 9, 3) = [3, 6]; Range(10, 4, -2) = [10, 8, 6].
        assert_eq!(
            range(&i(3), &i(9), &i(3), &BIG).unwrap().as_i64().unwrap(),
            &[3, 6]
        );
        assert_eq!(
            range(&i(10), &i(4), &i(-2), &BIG)
                .unwrap()
                .as_i64()
                .unwrap(),
            &[10, 8, 6]
        );
        assert_eq!(
            range(&i(10), &i(3), &i(-2), &BIG)
                .unwrap()
                .as_i64()
                .unwrap(),
            &[10, 8, 6, 4]
        );
        assert_eq!(range(&i(0), &i(5), &i(-1), &BIG).unwrap().shape, vec![0]);
        let y = range(&f(1.0), &f(2.0), &f(0.25), &BIG).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[1.0, 1.25, 1.5, 1.75]);
        assert!(range(&i(0), &i(5), &i(0), &BIG).is_err());
        assert!(range(&f(0.0), &i(5), &i(1), &BIG).is_err());
        let e = range(&i(0), &i(i64::MAX), &i(1), &BIG).unwrap_err();
        assert!(e.contains("exceeds the limit of 1000"), "{e}");
        assert!(range(&f(0.0), &f(f32::INFINITY), &f(1.0), &BIG).is_err());
    }

    #[test]
    fn constant_of_shape_fills() {
        let y = constant_of_shape(vec![2, 3], 1.5, DType::F32, &BIG).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[1.5; 6]);
        let y = constant_of_shape(vec![], 2.0, DType::Bool, &BIG).unwrap();
        assert_eq!(
            (y.shape.clone(), y.as_i64().unwrap().to_vec()),
            (vec![], vec![1])
        );
        let e = constant_of_shape(vec![1 << 20, 1 << 20], 0.0, DType::I64, &BIG).unwrap_err();
        assert_eq!(
            e,
            "output of 1099511627776 elements exceeds the limit of 1000"
        );
    }
}
