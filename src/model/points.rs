//! Which tensors of a graph are quantization points (architecture.md "Graphs"): each integer
//! weight node's (fused) output, and each tensor that enters an integer weight node without
//! already being integers — traced back through ops that keep qparams (Relu, MaxPool,
//! reshapes), so the input is quantized once where the float region ends.

use super::{Model, ValueId};
use crate::config::INPUT_POINT;

/// A quantization point that no integer weight node produces.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryPoint {
    /// Its name: `input` for the first graph input, else the tensor name.
    pub name: String,
    /// The value.
    pub value: ValueId,
}

/// The points of a model for a set of float-kept weight nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Points {
    /// Per integer weight node (node index): its (fused) output value.
    pub layers: Vec<(usize, ValueId)>,
    /// The other points, in graph order.
    pub entries: Vec<EntryPoint>,
}

impl Points {
    /// Finds the points; `is_float(name)` says whether a weight node stays in float.
    pub fn find(model: &Model, is_float: impl Fn(&str) -> bool) -> Points {
        let mut quantized = vec![false; model.values.len()];
        let mut layers = Vec::new();
        let mut entries: Vec<EntryPoint> = Vec::new();
        let producer = |v: ValueId| model.layers.iter().position(|l| l.output == v);
        for (i, l) in model.layers.iter().enumerate() {
            if l.op.has_weights() && !is_float(&l.name) {
                if let Some(d) = l.data_input().filter(|&d| !quantized[d]) {
                    // Trace back through qparam-keeping ops to where the float region ends.
                    let mut chain = vec![d];
                    let mut v = d;
                    while let Some(p) = producer(v) {
                        let pl = &model.layers[p];
                        let single = pl.inputs.iter().flatten().count() == 1
                            || matches!(pl.op, crate::model::Op::Reshape { .. });
                        // A weight node's fused activation is its output point: stop there.
                        let fused = pl.data_input().and_then(producer).is_some_and(|w| {
                            model.layers[w].op.has_weights() && model.fused_activation(w) == Some(p)
                        });
                        match pl.data_input() {
                            Some(src)
                                if pl.op.keeps_qparams()
                                    && !fused
                                    && single
                                    && model.constant(src).is_none() =>
                            {
                                if quantized[src] {
                                    break;
                                }
                                chain.push(src);
                                v = src;
                            }
                            _ => break,
                        }
                    }
                    let origin = *chain.last().expect("non-empty");
                    chain.iter().for_each(|&c| quantized[c] = true);
                    if !entries.iter().any(|e| e.value == origin) {
                        entries.push(EntryPoint {
                            name: Self::entry_name(model, origin),
                            value: origin,
                        });
                    }
                }
                let p = model.point_value(i);
                quantized[l.output] = true;
                quantized[p] = true;
                layers.push((i, p));
            } else if l.op.keeps_qparams()
                && let Some(d) = l.data_input()
            {
                quantized[l.output] = quantized[d];
            }
        }
        Points { layers, entries }
    }

    /// A point's name: `input` for the first graph input, else its tensor name.
    pub fn entry_name(model: &Model, v: ValueId) -> String {
        if model.inputs.first().is_some_and(|g| g.value == v) {
            INPUT_POINT.to_string()
        } else {
            model.values[v].name.clone()
        }
    }

    /// Every point value: entries first, then layer outputs.
    pub fn values(&self) -> Vec<ValueId> {
        self.entries
            .iter()
            .map(|e| e.value)
            .chain(self.layers.iter().map(|l| l.1))
            .collect()
    }
}
