//! `qscope inspect FILE`: statistics and int8/int4 error per tensor.

use super::args::InspectArgs;
use super::table::{db, render};
use anyhow::{Context, Result};
use qscope::bundled;
use qscope::inspect::inspect_bytes;

/// Runs `qscope inspect`.
pub fn main(args: &InspectArgs) -> Result<()> {
    let owned;
    let bytes: &[u8] = match bundled::model_bytes(&args.file) {
        Some(b) if !std::path::Path::new(&args.file).exists() => b,
        _ => {
            owned =
                std::fs::read(&args.file).with_context(|| format!("{}: cannot read", args.file))?;
            &owned
        }
    };
    let ins = inspect_bytes(&args.file, bytes)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ins)?);
        return Ok(());
    }
    println!(
        "{}  ·  {} bytes  ·  {} tensors  ·  metadata: {}\n",
        ins.file,
        ins.file_bytes,
        ins.tensors.len(),
        if ins.metadata_keys.is_empty() {
            "none".into()
        } else {
            ins.metadata_keys.join(", ")
        }
    );
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
    let rows: Vec<Vec<String>> = ins
        .tensors
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.dtype.clone(),
                format!("{:?}", t.shape),
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
    print!(
        "{}",
        render(
            &[
                "tensor", "dtype", "shape", "min", "max", "mean", "std", "skew", "kurt", "int8 T",
                "int8 C", "int4 T", "int4 C"
            ],
            &rows
        )
    );
    println!("\nSQNR in dB of symmetric minmax quantization: T per tensor, C per output channel.");
    Ok(())
}
