//! TensorRT calibration cache (the text that TensorRT's implicit-INT8 calibrators read and
//! write): a header line naming the calibrator, then `tensor: hex` per activation tensor, the hex
//! being the big-endian bits of the f32 scale amax/127 (symmetric INT8). Deprecated with
//! implicit quantization in TensorRT 10, still what many pipelines consume.

use crate::model::Model;
use crate::params::ModelParams;
use std::collections::HashMap;

/// The header TensorRT 8.6's IInt8EntropyCalibrator2 writes (TensorRT skips a cache whose
/// header it deems incompatible, hence `--trt-header`).
pub const DEFAULT_HEADER: &str = "TRT-8601-EntropyCalibration2";

/// The chosen clipping range's amax of every activation tensor with qparams, by ONNX tensor
/// name: the points, and tensors that ops which keep qparams pass them to. In graph order.
pub fn tensor_amax(model: &Model, params: &ModelParams) -> Vec<(String, f32)> {
    let mut amax: HashMap<usize, f32> = params
        .points
        .iter()
        .map(|p| (p.value, p.act.range.lo.abs().max(p.act.range.hi.abs())))
        .collect();
    for lp in &params.layers {
        if let Some(a) = &lp.act {
            amax.insert(
                model.point_value(lp.index),
                a.range.lo.abs().max(a.range.hi.abs()),
            );
        }
    }
    let mut out = Vec::new();
    for gi in &model.inputs {
        if let Some(&a) = amax.get(&gi.value) {
            out.push((model.values[gi.value].name.clone(), a));
        }
    }
    // In graph order, an op that keeps qparams hands its input's amax to its output.
    for l in &model.layers {
        let v = l.output;
        let a = amax.get(&v).copied().or_else(|| {
            let d = l.data_input().filter(|_| l.op.keeps_qparams())?;
            amax.get(&d).copied()
        });
        if let Some(a) = a {
            amax.insert(v, a);
            out.push((model.values[v].name.clone(), a));
        }
    }
    out
}

/// The cache text: `header`, then one `name: hex(f32 amax/127, big-endian)` line per tensor.
pub fn cache_text(model: &Model, params: &ModelParams, header: &str) -> String {
    let mut s = format!("{header}\n");
    for (name, amax) in tensor_amax(model, params) {
        let scale = amax / 127.0;
        s += &format!("{name}: {:08x}\n", scale.to_bits());
    }
    s
}
