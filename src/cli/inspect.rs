//! `qscope inspect FILE`: statistics and int8/int4 error per tensor.

use super::args::InspectArgs;
use super::out::{out, outln};
use super::table::{db, render};
use anyhow::Result;
use qscope::bundled;
use qscope::inspect::{Checkpoint, Inspection, inspect_bytes};
use std::path::Path;

/// Inputs larger than this get a progress bar (when stderr is a terminal).
const PROGRESS_BYTES: u64 = 1 << 30;

/// The inspection of a bundled model, a safetensors file or a sharded checkpoint.
fn inspection(file: &str) -> Result<Inspection> {
    let path = Path::new(file);
    if let Some(b) = bundled::model_bytes(file).filter(|_| !path.exists()) {
        return Ok(inspect_bytes(file, b)?);
    }
    let ck = Checkpoint::open(path)?;
    let total = ck.bytes();
    let pb = (total > PROGRESS_BYTES)
        .then(|| super::progress::bytes_bar(total, "inspecting"))
        .flatten();
    let ins = ck.inspect(&|n| {
        if let Some(pb) = &pb {
            pb.inc(n)
        }
    });
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(ins?)
}

/// Runs `qscope inspect`.
pub fn main(args: &InspectArgs) -> Result<()> {
    let ins = inspection(&args.file)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&ins)?)?;
        return Ok(());
    }
    outln!(
        "{}  ·  {} bytes  ·  {} tensors  ·  metadata: {}",
        ins.file,
        ins.file_bytes,
        ins.tensors.len(),
        if ins.metadata_keys.is_empty() {
            "none".into()
        } else {
            ins.metadata_keys.join(", ")
        }
    )?;
    let mut by_dtype: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for t in &ins.tensors {
        let e = by_dtype.entry(t.dtype.as_str()).or_default();
        e.0 += 1;
        e.1 += t.bytes;
    }
    let summary: Vec<String> = by_dtype
        .iter()
        .map(|(d, (n, b))| format!("{d} {n} tensors {} bytes", super::export::bytes(*b as u64)))
        .collect();
    outln!("by dtype: {}", summary.join("  ·  "))?;
    if ins
        .metadata_keys
        .iter()
        .any(|k| k == qscope::export::quantized_model::PARAMS_KEY)
    {
        outln!(
            "a quantized model (formats.md §6): integer weights, scales and zero points; run it with `qscope eval --model {}`",
            args.file
        )?;
    }
    outln!()?;
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
    let rows: Vec<Vec<String>> = ins
        .tensors
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.dtype.clone(),
                format!("{:?}", t.shape),
                t.bytes.to_string(),
                f(t.min),
                f(t.max),
                f(t.mean),
                f(t.std),
                f(t.skewness),
                f(t.kurtosis),
                db(t.sqnr_int8_per_tensor_db),
                db(t.sqnr_int8_per_channel_db),
                db(t.sqnr_int4_per_tensor_db),
                db(t.sqnr_int4_per_channel_db),
            ]
        })
        .collect();
    out!(
        "{}",
        render(
            &[
                "tensor", "dtype", "shape", "bytes", "min", "max", "mean", "std", "skew", "kurt",
                "int8 T", "int8 C", "int4 T", "int4 C"
            ],
            &rows
        )
    )?;
    outln!("\nSQNR in dB of symmetric minmax quantization: T per tensor, C per output channel.")?;
    Ok(())
}
