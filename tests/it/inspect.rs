//! `qscope inspect`: the one-pass figures against a direct f64 reference, sharded checkpoints
//! against their shards one by one, and the errors of broken inputs.

use crate::util::{Rng, T, f32t, one_line_naming, qscope_in, safetensors_bytes, write};
use qscope::inspect::{Checkpoint, Figures, analyze, inspect_bytes};
use safetensors::Dtype;

/// Reference figures from the definitions, in f64 over the decoded values.
struct Reference {
    min: f64,
    max: f64,
    mean: f64,
    std: f64,
    skew: f64,
    kurt: f64,
    /// int8 T, int8 C, int4 T, int4 C.
    sqnr: [Option<f64>; 4],
}

/// Σx², Σ(x − x̂)² of symmetric minmax quantization of `xs` at ±`l`, written from formats.md §3:
/// scale = amax / l as f32 (1 when that is 0 or subnormal), q = round half away from zero of
/// x / scale clamped to ±l, x̂ = scale·q as f32.
fn quant_sums(xs: &[f32], l: f64) -> (f64, f64) {
    let amax = xs.iter().fold(0.0f64, |a, &x| a.max((x as f64).abs()));
    let mut s = (amax / l) as f32;
    if s < f32::MIN_POSITIVE {
        s = 1.0;
    }
    let mut sums = (0.0, 0.0);
    for &x in xs {
        let q = (x as f64 / s as f64).round().clamp(-l, l);
        let xh = (s as f64 * q) as f32;
        sums.0 += (x as f64).powi(2);
        sums.1 += (x as f64 - xh as f64).powi(2);
    }
    sums
}

fn db((signal, noise): (f64, f64)) -> Option<f64> {
    (signal > 0.0 && noise > 0.0).then(|| 10.0 * (signal / noise).log10())
}

fn reference(values: &[f32], shape: &[usize]) -> Reference {
    let fin: Vec<f64> = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| v as f64)
        .collect();
    let n = fin.len() as f64;
    let mean = fin.iter().sum::<f64>() / n;
    let m = |k: i32| fin.iter().map(|x| (x - mean).powi(k)).sum::<f64>() / n;
    let var = m(2);
    let all_finite = fin.len() == values.len();
    let weight = all_finite && !shape.is_empty();
    let tensor = |l| weight.then(|| db(quant_sums(values, l))).flatten();
    let channel = |l| {
        if !weight || shape.len() < 2 {
            return None;
        }
        let rows: Vec<(f64, f64)> = values
            .chunks(values.len() / shape[0])
            .map(|r| quant_sums(r, l))
            .collect();
        db(rows.iter().fold((0.0, 0.0), |a, r| (a.0 + r.0, a.1 + r.1)))
    };
    Reference {
        min: fin.iter().cloned().fold(f64::INFINITY, f64::min),
        max: fin.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        mean,
        std: var.sqrt(),
        skew: m(3) / var.powf(1.5),
        kurt: m(4) / (var * var) - 3.0,
        sqnr: [tensor(127.0), channel(127.0), tensor(7.0), channel(7.0)],
    }
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-9 * b.abs().max(1e-12),
        "{what}: {a} vs reference {b}"
    );
}

fn check(f: &Figures, r: &Reference, what: &str) {
    let s = f.stats.unwrap_or_else(|| panic!("{what}: no stats"));
    assert_eq!(s.min as f64, r.min, "{what} min");
    assert_eq!(s.max as f64, r.max, "{what} max");
    close(s.mean, r.mean, &format!("{what} mean"));
    close(s.std, r.std, &format!("{what} std"));
    close(s.skewness, r.skew, &format!("{what} skewness"));
    close(s.kurtosis, r.kurt, &format!("{what} kurtosis"));
    for (k, (got, want)) in f.sqnr.iter().zip(&r.sqnr).enumerate() {
        match (got, want) {
            (Some(g), Some(w)) => close(*g, *w, &format!("{what} sqnr[{k}]")),
            _ => assert_eq!(got, want, "{what} sqnr[{k}]"),
        }
    }
}

/// Gaussian-ish values with outlier rows, all-zero rows, and rows of exact half steps.
fn values(rng: &mut Rng, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let rows = if shape.len() >= 2 { shape[0] } else { 1 };
    let cols = n / rows.max(1);
    let mut v = Vec::with_capacity(n);
    for r in 0..rows {
        for _ in 0..cols {
            let g = rng.uniform(-1.0, 1.0) + rng.uniform(-1.0, 1.0) + rng.uniform(-1.0, 1.0);
            v.push(match r % 7 {
                3 => 0.0,
                5 => 30.0 * g,
                // Odd multiples of 1/128 under amax 254/128: quotients at or next to x.5.
                6 => (2 * rng.below(127) + 1) as f32 / 128.0 * if g < 0.0 { -1.0 } else { 1.0 },
                _ => 0.02 * g,
            });
        }
        if r % 7 == 6 && cols > 0 {
            v[r * cols] = 254.0 / 128.0;
        }
    }
    v
}

/// `v` encoded as `dtype`, and the values that encoding holds.
fn encode(dtype: Dtype, v: &[f32]) -> (Vec<u8>, Vec<f32>) {
    match dtype {
        Dtype::BF16 => {
            let h: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
            let bytes = h.iter().flat_map(|x| x.to_le_bytes()).collect();
            (bytes, h.iter().map(|x| x.to_f32()).collect())
        }
        Dtype::F16 => {
            let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
            let bytes = h.iter().flat_map(|x| x.to_le_bytes()).collect();
            (bytes, h.iter().map(|x| x.to_f32()).collect())
        }
        _ => (v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.to_vec()),
    }
}

#[test]
fn one_pass_figures_equal_a_direct_f64_reference() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let shapes: [&[usize]; 5] = [&[70, 300], &[14, 3, 5, 5], &[5000], &[1, 40000], &[3, 17]];
    for dtype in [Dtype::BF16, Dtype::F16, Dtype::F32] {
        for shape in shapes {
            let v = values(&mut rng, shape);
            let (raw, held) = encode(dtype, &v);
            let f = analyze(dtype, shape, &raw, &|_| {});
            check(
                &f,
                &reference(&held, shape),
                &format!("{dtype:?} {shape:?}"),
            );
            if shape.len() < 2 {
                assert!(f.sqnr[1].is_none() && f.sqnr[3].is_none(), "rank 1");
                assert!(f.sqnr[0].is_some(), "rank 1 has a per-tensor figure");
            }
        }
    }
}

#[test]
fn long_rows_and_non_finite_values() {
    let mut rng = Rng(77);
    // Rows longer than one processing block (16384 elements).
    let shape = [3, 20000];
    for dtype in [Dtype::BF16, Dtype::F32] {
        let v = values(&mut rng, &shape);
        let (raw, held) = encode(dtype, &v);
        let f = analyze(dtype, &shape, &raw, &|_| {});
        check(
            &f,
            &reference(&held, &shape),
            &format!("{dtype:?} long rows"),
        );
    }
    // inf / nan: statistics of the finite values, no SQNR at all.
    for dtype in [Dtype::BF16, Dtype::F16, Dtype::F32] {
        let mut v = values(&mut rng, &[8, 50]);
        v[17] = f32::INFINITY;
        v[200] = f32::NAN;
        let (raw, held) = encode(dtype, &v);
        let f = analyze(dtype, &[8, 50], &raw, &|_| {});
        let r = reference(&held, &[8, 50]);
        assert_eq!(r.sqnr, [None; 4]);
        check(&f, &r, &format!("{dtype:?} non-finite"));
    }
}

#[test]
fn empty_scalar_and_integer_tensors() {
    for dtype in [Dtype::BF16, Dtype::F16, Dtype::F32] {
        for shape in [&[0usize, 4][..], &[4, 0], &[0]] {
            let f = analyze(dtype, shape, &[], &|_| {});
            assert!(
                f.stats.is_none() && f.sqnr == [None; 4],
                "{dtype:?} {shape:?}"
            );
        }
    }
    // A scalar: statistics, no SQNR.
    let f = analyze(Dtype::F32, &[], &2.5f32.to_le_bytes(), &|_| {});
    assert_eq!(f.stats.unwrap().mean, 2.5);
    assert_eq!(f.sqnr, [None; 4]);
    // Integers: statistics only.
    let ints: Vec<i32> = (0..1000).map(|i| (i * 37 % 101) - 50).collect();
    let raw: Vec<u8> = ints.iter().flat_map(|x| x.to_le_bytes()).collect();
    let f = analyze(Dtype::I32, &[10, 100], &raw, &|_| {});
    let held: Vec<f32> = ints.iter().map(|&x| x as f32).collect();
    let mut r = reference(&held, &[10, 100]);
    r.sqnr = [None; 4];
    check(&f, &r, "I32");
}

/// Two shards and their index in `dir`; returns the shards' tensors.
fn write_shards(dir: &tempfile::TempDir, index_map: &str) -> [Vec<T>; 2] {
    let mut rng = Rng(5);
    let a = vec![
        f32t("b.weight", &[4, 8], &rng.vec(32, -1.0, 1.0)),
        f32t("a.bias", &[4], &rng.vec(4, -1.0, 1.0)),
    ];
    let b = vec![f32t("c.weight", &[6, 5], &rng.vec(30, -2.0, 2.0))];
    write(dir, "m-1.safetensors", &safetensors_bytes(&a, None));
    write(dir, "m-2.safetensors", &safetensors_bytes(&b, None));
    let index = format!(r#"{{"metadata": {{"total_size": 1}}, "weight_map": {index_map}}}"#);
    write(dir, "model.safetensors.index.json", index.as_bytes());
    [a, b]
}

const MAP: &str = r#"{"b.weight": "m-1.safetensors", "a.bias": "m-1.safetensors", "c.weight": "m-2.safetensors"}"#;

#[test]
fn a_sharded_checkpoint_equals_its_shards_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(&dir, MAP);
    let ins = Checkpoint::open(&dir.path().join("model.safetensors.index.json"))
        .unwrap()
        .inspect(&|_| {})
        .unwrap();
    assert_eq!(ins.shards, ["m-1.safetensors", "m-2.safetensors"]);
    let mut want = Vec::new();
    for s in ["m-1.safetensors", "m-2.safetensors"] {
        let bytes = std::fs::read(dir.path().join(s)).unwrap();
        want.extend(inspect_bytes(s, &bytes).unwrap().tensors);
    }
    let json = |t: &qscope::inspect::TensorInfo| {
        let mut v = serde_json::to_value(t).unwrap();
        v.as_object_mut().unwrap().remove("shard");
        v
    };
    assert_eq!(ins.tensors.len(), 3);
    for (g, w) in ins.tensors.iter().zip(&want) {
        assert_eq!(json(g), json(w));
    }
    assert_eq!(ins.tensors[2].shard.as_deref(), Some("m-2.safetensors"));
    // The folder stands for its index, on the command line too.
    let (ok, out, err) = qscope_in(dir.path(), &["inspect", ".", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tensors"].as_array().unwrap().len(), 3);
    assert_eq!(v["tensors"][0]["name"], ins.tensors[0].name);
}

#[test]
fn a_missing_shard_or_misplaced_tensor_is_one_line_naming_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let missing = r#"{"b.weight": "m-1.safetensors", "a.bias": "m-1.safetensors", "c.weight": "m-3.safetensors"}"#;
    write_shards(&dir, missing);
    let (ok, _, err) = qscope_in(dir.path(), &["inspect", "model.safetensors.index.json"]);
    assert!(!ok);
    let line = err.trim();
    assert!(!line.contains('\n'), "{err}");
    assert!(
        line.contains("model.safetensors.index.json")
            && line.contains("m-3.safetensors")
            && line.contains("c.weight"),
        "{err}"
    );
    // The index puts c.weight in m-1, where it is not.
    let wrong = r#"{"b.weight": "m-1.safetensors", "a.bias": "m-1.safetensors", "c.weight": "m-1.safetensors"}"#;
    write_shards(&dir, wrong);
    let (ok, _, err) = qscope_in(dir.path(), &["inspect", "model.safetensors.index.json"]);
    assert!(!ok);
    let names = [
        "model.safetensors.index.json",
        "'c.weight'",
        "m-1.safetensors",
    ];
    assert!(one_line_naming(&err, &names), "{err}");
}

#[test]
fn an_index_naming_a_file_outside_its_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for shard in [
        "../m-1.safetensors",
        "/etc/passwd",
        "sub/m-1.safetensors",
        "..",
    ] {
        let map = format!(r#"{{"b.weight": "{shard}", "a.bias": "m-1.safetensors"}}"#);
        write_shards(&dir, &map);
        let (ok, _, err) = qscope_in(dir.path(), &["inspect", "model.safetensors.index.json"]);
        assert!(!ok, "{shard}");
        let names = [
            "model.safetensors.index.json",
            "b.weight",
            "not a file beside the index",
        ];
        assert!(one_line_naming(&err, &names), "{shard}: {err}");
    }
}

#[test]
fn a_truncated_file_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = safetensors_bytes(&[f32t("w", &[64, 64], &[0.5; 4096])], None);
    write(&dir, "cut.safetensors", &bytes[..bytes.len() - 100]);
    write(&dir, "empty.safetensors", &[]);
    for f in ["cut.safetensors", "empty.safetensors"] {
        let (ok, _, err) = qscope_in(dir.path(), &["inspect", f]);
        assert!(!ok);
        assert!(one_line_naming(&err, &[f]), "{f}: {err}");
    }
}
