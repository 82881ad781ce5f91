//! ONNX models: whatever loads is run by the float engine on one sample of zeros when every
//! input dimension is known and small, and through the whole pipeline on two samples when it
//! has one small float input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qscope::engine::float;
use qscope::engine::tensor::Tensor;
use qscope::model::op::DType;
use qscope::pipeline::{Cancel, run};
use qscope::{Dataset, QuantConfig};

/// Elements a fuzzed sample or activation may have before the run is skipped or refused.
const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = qscope::model::onnx::load_onnx_bytes("fuzz", "m", data, None) else {
        return;
    };
    // One sample of zeros (ids 1) for every graph input, when all dimensions are known.
    let inputs: Option<Vec<Tensor>> = model
        .inputs
        .iter()
        .map(|gi| {
            let dims: Option<Vec<usize>> = gi.shape.iter().copied().collect();
            let mut shape = vec![1];
            shape.extend(dims?);
            let len = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
            if len > LIMIT {
                return None;
            }
            Some(match gi.dtype {
                DType::F32 => Tensor::f32(shape, vec![0.0; len]),
                _ => Tensor::i64(shape, vec![1; len]),
            })
        })
        .collect();
    let Some(inputs) = inputs else { return };
    let _ = float::forward(&model, inputs, LIMIT, |_, _| {});
    let len = model.input_len();
    let small = model.inputs.len() == 1
        && len > 0
        && len <= 4096
        && model
            .layers
            .iter()
            .all(|l| l.out_shape.iter().product::<usize>() <= 100_000);
    if small {
        let data = Dataset {
            label: "d".into(),
            inputs: (0..2 * len).map(|i| (i % 7) as f32 / 7.0).collect(),
            n: 2,
            sample_len: len,
            labels: None,
            named: Vec::new(),
        };
        let _ = run(&model, &data, &data, &QuantConfig::default(), &Cancel::new());
    }
});
