//! The parameters a QDQ ONNX file fixes, as a qscope parameters file resolved against the
//! file's float graph: activation Q/DQ pairs become points, DequantizeLinear'd weights become
//! weight entries. Settings that Q/DQ cannot say (bit widths under 8, strategies, ranges) come
//! from the `qscope.params` metadata of qscope's own export when its numbers agree.

use super::params_file::{
    ActEntry, FORMAT_V2, LayerEntry, ModelId, ParamsFile, PointEntry, Resolved, Syntax,
    WeightEntry, WeightInts,
};
use crate::error::{Error, Result};
use crate::model::onnx::{ActQdq, ConstQdq, QdqImport};
use crate::model::points::Points;
use crate::model::{Model, Op, ValueId};

/// The parameters of a QDQ file for its float graph `model`.
pub fn qdq_params(label: &str, model: &Model, q: &QdqImport) -> Result<Resolved> {
    let meta = match &q.params_json {
        Some(j) => Some(ParamsFile::parse(
            &format!("{label} (metadata {})", super::onnx::PARAMS_KEY),
            j,
            Syntax::Json,
        )?),
        None => None,
    };
    let is_float = |name: &str| !q.weights.contains_key(name);
    let points = Points::find(model, is_float);
    let first_input = model.inputs.first().map(|g| g.value);
    let mut pf = ParamsFile {
        format: FORMAT_V2.into(),
        model: ModelId {
            name: model.name.clone(),
            sha256: model.sha256.clone(),
        },
        input: None,
        points: Vec::new(),
        layers: Vec::new(),
        smoothquant: Vec::new(),
        methods: meta.as_ref().and_then(|m| m.methods.clone()),
    };
    let meta_act = |name: &str| -> Option<&ActEntry> {
        let m = meta.as_ref()?;
        if name == crate::config::INPUT_POINT {
            return m.input.as_ref();
        }
        m.points
            .iter()
            .find(|p| p.name == name)
            .map(|p| &p.act)
            .or_else(|| {
                m.layers
                    .iter()
                    .find(|l| l.name == name)?
                    .activation
                    .as_ref()
            })
    };
    for e in &points.entries {
        let act = act_entry(label, model, q, e.value)?;
        let act = prefer(meta_act(&e.name), act);
        if Some(e.value) == first_input {
            pf.input = Some(act);
        } else {
            pf.points.push(PointEntry {
                name: e.name.clone(),
                act,
            });
        }
    }
    for i in model.weight_layers() {
        let l = &model.layers[i];
        let Some((c, transposed)) = q.weights.get(&l.name) else {
            pf.layers.push(LayerEntry {
                name: l.name.clone(),
                weight: None,
                activation: None,
            });
            continue;
        };
        let weight = weight_entry(label, model, i, c, *transposed)?;
        let meta_w = meta
            .as_ref()
            .and_then(|m| m.layers.iter().find(|e| e.name == l.name))
            .and_then(|e| e.weight.as_ref())
            .filter(|w| {
                let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
                f32s(&w.scale) == f32s(&weight.scale) && w.zero_point == weight.zero_point
            });
        let act = act_entry(label, model, q, model.point_value(i))?;
        pf.layers.push(LayerEntry {
            name: l.name.clone(),
            weight: Some(meta_w.cloned().unwrap_or(weight)),
            activation: Some(prefer(meta_act(&l.name), act)),
        });
    }
    pf.resolve(label, model, false, WeightInts::FromModel)
}

/// The metadata's entry when its scale and zero point are the file's, else the file's.
fn prefer(meta: Option<&ActEntry>, file: ActEntry) -> ActEntry {
    match meta {
        Some(m) if m.scale as f32 == file.scale as f32 && m.zero_point == file.zero_point => {
            m.clone()
        }
        _ => file,
    }
}

/// The Q/DQ pair of the tensor at `v`, or of a tensor that an op keeping qparams (Relu,
/// MaxPool, Reshape, …) joins to it.
fn find_act<'q>(model: &Model, q: &'q QdqImport, v: ValueId) -> Option<&'q ActQdq> {
    let by = |v: ValueId| q.acts.get(&model.values[v].name);
    if let Some(a) = by(v) {
        return Some(a);
    }
    let mut down = v;
    while let [c] = model.consumers(down).as_slice() {
        let l = &model.layers[*c];
        if !l.op.keeps_qparams() || l.data_input() != Some(down) {
            break;
        }
        down = l.output;
        if let Some(a) = by(down) {
            return Some(a);
        }
    }
    let mut up = v;
    while let Some(p) = model.layers.iter().find(|l| l.output == up) {
        if !p.op.keeps_qparams() {
            break;
        }
        up = p.data_input()?;
        if let Some(a) = by(up) {
            return Some(a);
        }
    }
    None
}

/// The activation entry of the point at `v`.
fn act_entry(label: &str, model: &Model, q: &QdqImport, v: ValueId) -> Result<ActEntry> {
    let a = find_act(model, q, v).ok_or_else(|| {
        Error::format(
            label,
            format!(
                "tensor '{}' enters an integer node but has no QuantizeLinear/DequantizeLinear pair",
                crate::error::clip(&model.values[v].name, crate::error::NAME_MAX)
            ),
        )
    })?;
    let bits = a.qtype.bits;
    let zp = a.zero_point - a.qtype.offset();
    let (qmin, qmax) = (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1);
    let s = a.scale as f64;
    Ok(ActEntry {
        bits: bits as i64,
        scheme: "asymmetric".into(),
        strategy: "manual".into(),
        percentile: None,
        range: [
            (s * (qmin - zp) as f64) as f32 as f64,
            (s * (qmax - zp) as f64) as f32 as f64,
        ],
        scale: s,
        zero_point: zp,
    })
}

/// The weight entry of weight layer `i` from its DequantizeLinear.
fn weight_entry(
    label: &str,
    model: &Model,
    i: usize,
    c: &ConstQdq,
    transposed: bool,
) -> Result<WeightEntry> {
    let l = &model.layers[i];
    let err = |m: String| Error::node(label, &c.node, "DequantizeLinear", m);
    let rows = l.op.weight_rows().map_or(0, |(_, r, _)| r);
    let khw = match &l.op {
        Op::Conv2d { weight, .. } => weight.dim().2 * weight.dim().3,
        _ => 1,
    };
    let off = c.qtype.offset();
    let zp: Vec<i64> = c.zero_point.iter().map(|z| z - off).collect();
    let (out_axis, red_axis) = if transposed { (1, 0) } else { (0, 1) };
    let (granularity, order): (String, Vec<usize>) = if c.scale.len() == 1 {
        ("per-tensor".into(), vec![0])
    } else if c.block == 0 {
        if c.axis != out_axis {
            return Err(err(format!(
                "quantizes weights of '{}' along axis {}, not along the output channels (axis {out_axis})",
                l.name, c.axis
            )));
        }
        ("per-channel".into(), (0..rows).collect())
    } else {
        if c.axis != red_axis {
            return Err(err(format!(
                "blocks weights of '{}' along axis {}, not along the input axis {red_axis}",
                l.name, c.axis
            )));
        }
        let g = c.scale_dims[c.axis];
        let order: Vec<usize> = (0..rows)
            .flat_map(|r| {
                (0..g).map(move |k| {
                    if transposed {
                        k * rows + r
                    } else {
                        (r * g + k) * khw
                    }
                })
            })
            .collect();
        if khw > 1 {
            let same = (0..rows * g).all(|b| {
                let base = b * khw;
                (0..khw).all(|t| {
                    c.scale[base + t] == c.scale[base]
                        && c.zero_point[base + t] == c.zero_point[base]
                })
            });
            if !same {
                return Err(err(format!(
                    "gives the kernel taps of one block of '{}' different scales; qscope groups whole kernels",
                    l.name
                )));
            }
        }
        (format!("group:{}", c.block * khw), order)
    };
    let bits = c.qtype.bits;
    let symmetric =
        zp.iter().all(|&z| z == 0) && c.ints.iter().all(|&v| v - off > -(1i64 << (bits - 1)));
    Ok(WeightEntry {
        bits: bits as i64,
        scheme: if symmetric { "symmetric" } else { "asymmetric" }.into(),
        granularity,
        strategy: "manual".into(),
        base_strategy: None,
        clip: None,
        percentile: None,
        range: None,
        channel_bits: None,
        scale: order.iter().map(|&k| c.scale[k] as f64).collect(),
        zero_point: order.iter().map(|&k| zp[k]).collect(),
        weights_int: None,
        bias: None,
    })
}
