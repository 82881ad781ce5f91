//! auto_pad SAME_UPPER / SAME_LOWER: the pads that keep out = ceil(in / stride), which depend on
//! the input's size, set node by node in graph order once the shapes before it are known.

use crate::error::{Error, Result};
use crate::model::{Model, Op};
use std::collections::HashMap;

/// (begin, end) padding of one axis so that out = ceil(size / stride); the odd pixel goes at
/// the end (`upper`) or the beginning.
pub fn same_pads(
    size: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    upper: bool,
) -> (usize, usize) {
    let out = size.div_ceil(stride.max(1));
    let span = (kernel.max(1) - 1) * dilation + 1;
    let total = ((out.max(1) - 1) * stride + span).saturating_sub(size);
    let small = total / 2;
    if upper {
        (small, total - small)
    } else {
        (total - small, small)
    }
}

/// The input's per-sample [C, H, W] of node `k`, by running the graph up to it at batch 1.
fn input_shape(model: &mut Model, k: usize) -> Result<Vec<usize>> {
    let input = model.layers[k].data_input().ok_or_else(|| {
        Error::format(
            &model.source,
            format!("node '{}' has no input", model.layers[k].name),
        )
    })?;
    let tail = model.layers.split_off(k);
    let outputs = std::mem::replace(&mut model.outputs, vec![input]);
    let r = crate::engine::float::zero_sample(model).map(|x| {
        crate::engine::float::forward(
            model,
            x,
            crate::engine::float::DEFAULT_MAX_SAMPLE_ELEMS,
            |_, _| {},
        )
    });
    model.layers.extend(tail);
    model.outputs = outputs;
    match r {
        Some(r) => Ok(r?[0].shape.get(1..).unwrap_or(&[]).to_vec()),
        None => Ok(Vec::new()),
    }
}

/// Sets the pads of every SAME node (`same`: node name → upper) from its input's size.
pub fn resolve(model: &mut Model, same: &HashMap<String, bool>) -> Result<()> {
    for k in 0..model.layers.len() {
        let Some(&upper) = same.get(&model.layers[k].name) else {
            continue;
        };
        let shape = input_shape(model, k)?;
        let [_, h, w] = shape[..] else {
            return Err(Error::node(
                &model.source,
                &model.layers[k].name,
                &model.layers[k].op_type,
                format!(
                    "auto_pad SAME needs an NCHW input with known H and W, got per-sample shape {shape:?}"
                ),
            ));
        };
        let (kernel, stride, dilation, padding) = match &mut model.layers[k].op {
            Op::Conv2d {
                weight,
                stride,
                dilation,
                padding,
                ..
            } => (
                (weight.dim().2, weight.dim().3),
                *stride,
                *dilation,
                padding,
            ),
            Op::MaxPool2d {
                kernel,
                stride,
                padding,
                ..
            }
            | Op::AvgPool2d {
                kernel,
                stride,
                padding,
                ..
            } => (*kernel, *stride, (1, 1), padding),
            _ => continue,
        };
        let (t, b) = same_pads(h, kernel.0, stride.0, dilation.0, upper);
        let (l, r) = same_pads(w, kernel.1, stride.1, dilation.1, upper);
        *padding = [t, l, b, r];
    }
    Ok(())
}
