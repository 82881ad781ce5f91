//! Writes a Llama-shaped BF16 safetensors checkpoint of deterministic pseudo-random weights,
//! streaming (never the whole file in memory): the benchmark input of `qscope inspect`.
//!
//! `cargo run --release --example make_llama_bf16 -- /tmp/llama.safetensors [--layers N]`
//!
//! Default shape: TinyLlama-1.1B's hidden 2048, intermediate 5632 and vocab 32000, with full
//! (not grouped) k/v projections and 26 layers: 1.37 G parameters, 2.74 GB.
//! Weights are Gaussian-ish (sum of four uniforms, std 0.02; norms near 1); every 97th output
//! channel of a matrix is 16× larger (outlier channels).

use std::io::{BufWriter, Write};

/// The dimensions of the model to write.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    /// Hidden size.
    pub hidden: usize,
    /// MLP intermediate size.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Vocabulary size.
    pub vocab: usize,
}

impl Dims {
    /// The default shape (2.74 GB).
    pub const LLAMA: Dims = Dims {
        hidden: 2048,
        intermediate: 5632,
        layers: 26,
        vocab: 32000,
    };
}

/// Tensor names and shapes in file order.
pub fn tensors(d: Dims) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (d.hidden, d.intermediate);
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![d.vocab, h])];
    for l in 0..d.layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![h, h]),
            ("self_attn.k_proj.weight", vec![h, h]),
            ("self_attn.v_proj.weight", vec![h, h]),
            ("self_attn.o_proj.weight", vec![h, h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
        ] {
            t.push((format!("{p}.{name}"), shape));
        }
    }
    t.push(("model.norm.weight".to_string(), vec![h]));
    t.push(("lm_head.weight".to_string(), vec![d.vocab, h]));
    t
}

/// f32 → bf16 bits, rounding to nearest even.
fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// xorshift64* stream.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Mean 0, variance 1 (sum of four uniforms, rescaled).
    fn gauss(&mut self) -> f32 {
        (self.unit() + self.unit() + self.unit() + self.unit() - 2.0) * 3.0f32.sqrt()
    }
}

/// The safetensors header for `list`, padded to a multiple of 8 bytes.
fn header(list: &[(String, Vec<usize>)]) -> Vec<u8> {
    let mut off = 0usize;
    let mut parts = vec![r#""__metadata__":{"format":"pt"}"#.to_string()];
    for (name, shape) in list {
        let bytes = 2 * shape.iter().product::<usize>();
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        parts.push(format!(
            r#""{name}":{{"dtype":"BF16","shape":[{}],"data_offsets":[{off},{}]}}"#,
            dims.join(","),
            off + bytes
        ));
        off += bytes;
    }
    let mut h = format!("{{{}}}", parts.join(",")).into_bytes();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    h
}

/// Writes the checkpoint of `dims` to `path`; returns its size in bytes.
pub fn write(path: &std::path::Path, dims: Dims) -> std::io::Result<u64> {
    let list = tensors(dims);
    let h = header(&list);
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    w.write_all(&(h.len() as u64).to_le_bytes())?;
    w.write_all(&h)?;
    let mut total = 8 + h.len() as u64;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut row = Vec::new();
    for (_, shape) in &list {
        let norm = shape.len() == 1;
        let (rows, cols) = if norm {
            (1, shape[0])
        } else {
            (shape[0], shape[1])
        };
        for r in 0..rows {
            let gain = if !norm && r % 97 == 13 { 16.0 } else { 1.0 };
            row.clear();
            for _ in 0..cols {
                let x = if norm {
                    1.0 + 0.1 * rng.gauss()
                } else {
                    0.02 * gain * rng.gauss()
                };
                row.extend_from_slice(&bf16(x).to_le_bytes());
            }
            w.write_all(&row)?;
            total += row.len() as u64;
        }
    }
    w.flush()?;
    Ok(total)
}

#[allow(dead_code)]
fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: make_llama_bf16 OUT.safetensors [--layers N]");
        std::process::exit(2);
    };
    let mut dims = Dims::LLAMA;
    if let Some(k) = args.iter().position(|a| a == "--layers") {
        dims.layers = args
            .get(k + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(dims.layers);
    }
    let t = std::time::Instant::now();
    let bytes = write(std::path::Path::new(path), dims)?;
    eprintln!(
        "{path}: {bytes} bytes in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
