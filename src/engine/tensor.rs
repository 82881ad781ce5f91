//! A batch-major tensor of the graph engines: a shape (batch axis first for activations) and
//! its data as f32, i64 (integers and booleans as 0/1) or quantized integers with their qparams.

use crate::quant::QParams;

/// The values of a [`Tensor`].
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// Real values.
    F32(Vec<f32>),
    /// Integers (ids, shapes, indices) and booleans (0 or 1).
    I64(Vec<i64>),
    /// Quantized values (any width up to 8 bits, stored in i8) and the qparams they are in.
    Q {
        /// Integer values.
        data: Vec<i8>,
        /// Their scale and zero point.
        qp: QParams,
    },
}

/// A tensor: row-major data of `shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first (for activations, the batch axis).
    pub shape: Vec<usize>,
    /// The values, `shape.iter().product()` of them.
    pub data: Data,
}

impl Tensor {
    /// A real-valued tensor.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape,
            data: Data::F32(data),
        }
    }

    /// An integer tensor.
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape,
            data: Data::I64(data),
        }
    }

    /// A quantized tensor.
    pub fn q(shape: Vec<usize>, data: Vec<i8>, qp: QParams) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape,
            data: Data::Q { data, qp },
        }
    }

    /// Bytes of data.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len() * 4,
            Data::I64(v) => v.len() * 8,
            Data::Q { data, .. } => data.len(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The real values as a slice, if the tensor is real-valued.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The integer values as a slice, if the tensor holds integers.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The quantized values and their qparams, if the tensor is quantized.
    pub fn as_q(&self) -> Option<(&[i8], QParams)> {
        match &self.data {
            Data::Q { data, qp } => Some((data, *qp)),
            _ => None,
        }
    }

    /// Whether the tensor holds quantized integers.
    pub fn is_quantized(&self) -> bool {
        matches!(self.data, Data::Q { .. })
    }

    /// The values as reals: dequantized if quantized, converted if integers.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
            Data::Q { data, qp } => data.iter().map(|&q| qp.dequantize(q as i32)).collect(),
        }
    }

    /// The tensor with real values (a quantized one dequantized; reals and integers unchanged).
    pub fn dequantized(self) -> Tensor {
        match self.data {
            Data::Q { .. } => Tensor::f32(self.shape.clone(), self.to_f32_vec()),
            _ => self,
        }
    }

    /// Quantizes real values with `qp` (a quantized tensor is requantized through reals).
    pub fn quantize(&self, qp: QParams) -> Tensor {
        let x = match &self.data {
            Data::F32(v) => std::borrow::Cow::Borrowed(v.as_slice()),
            _ => std::borrow::Cow::Owned(self.to_f32_vec()),
        };
        let mut data = vec![0i8; x.len()];
        qp.quantize_into(&x, &mut data);
        Tensor::q(self.shape.clone(), data, qp)
    }
}
