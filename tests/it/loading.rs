//! Model and data loading: spec from file or metadata, the nn.Sequential fallback, half-precision
//! weights, batchnorm folding, npz data sets.

use crate::util::{Rng, T, f32t, safetensors_bytes, write};
use qscope::engine::float;
use qscope::model::{load_dataset, load_model, load_model_bytes};
use safetensors::Dtype;

#[test]
fn no_spec_sequential_mlp_is_assumed_and_said() {
    let mut r = Rng(7);
    let bytes = safetensors_bytes(
        &[
            f32t("0.weight", &[5, 3], &r.vec(15, -1.0, 1.0)),
            f32t("0.bias", &[5], &r.vec(5, -1.0, 1.0)),
            f32t("2.weight", &[2, 5], &r.vec(10, -1.0, 1.0)),
            f32t("2.bias", &[2], &r.vec(2, -1.0, 1.0)),
        ],
        None,
    );
    let m = load_model_bytes("seq.safetensors", "seq", &bytes, None).unwrap();
    let kinds: Vec<&str> = m.layers.iter().map(|l| l.op.kind()).collect();
    assert_eq!(kinds, ["linear", "relu", "linear"]);
    assert_eq!(m.layers[0].name, "0");
    assert_eq!(m.layers[2].name, "2");
    assert_eq!(m.input_shape, vec![3]);
    assert!(m.notes[0].contains("assumed"), "{:?}", m.notes);
}

#[test]
fn f16_and_bf16_weights_load_close_to_f32() {
    let w: Vec<f32> = (0..12).map(|i| i as f32 * 0.125 - 0.7).collect();
    let spec = "input_shape = [4]\n[[layers]]\nname = \"fc\"\nop = \"linear\"\nweight = \"w\"\n";
    for (dtype, bytes) in [
        (
            Dtype::F16,
            w.iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
        (
            Dtype::BF16,
            w.iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
    ] {
        let t = T {
            name: "w".into(),
            dtype,
            shape: vec![3, 4],
            bytes,
        };
        let m = load_model_bytes("h", "h", &safetensors_bytes(&[t], Some(spec)), None).unwrap();
        let (got, _, _) = m.layers[0].op.weight_rows().unwrap();
        for (a, b) in got.iter().zip(&w) {
            assert!(
                (a - b).abs() <= 0.01 * b.abs().max(0.1),
                "{dtype:?}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn batchnorm_folds_into_the_conv_before_it() {
    let mut r = Rng(11);
    let (w, b) = (r.vec(18, -1.0, 1.0), r.vec(2, -0.5, 0.5));
    let (gamma, beta, mean, var) = (
        vec![1.5, 0.5],
        vec![0.1, -0.2],
        vec![0.3, -0.1],
        vec![2.0, 0.25],
    );
    let tensors = [
        f32t("c.weight", &[2, 1, 3, 3], &w),
        f32t("c.bias", &[2], &b),
        f32t("bn.weight", &[2], &gamma),
        f32t("bn.bias", &[2], &beta),
        f32t("bn.running_mean", &[2], &mean),
        f32t("bn.running_var", &[2], &var),
    ];
    let spec = "input_shape = [1, 5, 5]\n[[layers]]\nop = \"conv2d\"\nweight = \"c.weight\"\nbias = \"c.bias\"\npadding = 1\n\
[[layers]]\nop = \"batchnorm2d\"\nweight = \"bn.weight\"\nbias = \"bn.bias\"\nrunning_mean = \"bn.running_mean\"\nrunning_var = \"bn.running_var\"\neps = 1e-5\n";
    let bytes = safetensors_bytes(&tensors, Some(spec));
    let folded = load_model_bytes("bn", "bn", &bytes, None).unwrap();
    assert_eq!(folded.layers.len(), 1, "batchnorm is folded away");
    assert_eq!(folded.layers[0].name, "c");
    // Reference: conv without batchnorm, then y = γ (x − μ)/√(σ² + ε) + β in f64.
    let plain_spec = "input_shape = [1, 5, 5]\n[[layers]]\nop = \"conv2d\"\nweight = \"c.weight\"\nbias = \"c.bias\"\npadding = 1\n";
    let plain = load_model_bytes("p", "p", &bytes, Some(("p.toml", plain_spec))).unwrap();
    let x = r.vec(2 * 25, -1.0, 1.0);
    let y = float::forward_flat(&folded, &x, 2).unwrap();
    let z = float::forward_flat(&plain, &x, 2).unwrap();
    for (i, (a, b)) in y.iter().zip(&z).enumerate() {
        let c = (i / 25) % 2;
        let want = gamma[c] as f64 * (*b as f64 - mean[c] as f64) / (var[c] as f64 + 1e-5).sqrt()
            + beta[c] as f64;
        assert!((*a as f64 - want).abs() < 1e-4, "{a} vs {want}");
    }
}

/// A minimal .npy file (version 1) for a little-endian array.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape_s = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

#[test]
fn npz_data_sets_load_like_safetensors() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.npz");
    let inputs: Vec<f32> = (0..12).map(|i| i as f32 / 12.0).collect();
    let labels: Vec<i64> = vec![2, 0, 1];
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    zip.start_file("inputs.npy", opts).unwrap();
    zip.write_all(&npy(
        "<f4",
        &[3, 4],
        &inputs
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    ))
    .unwrap();
    zip.start_file("labels.npy", opts).unwrap();
    zip.write_all(&npy(
        "<i8",
        &[3],
        &labels
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    ))
    .unwrap();
    zip.finish().unwrap();
    let d = load_dataset(&path).unwrap();
    assert_eq!((d.n, d.sample_len), (3, 4));
    assert_eq!(d.inputs, inputs);
    assert_eq!(d.labels, Some(labels));
}

#[test]
fn spec_file_overrides_and_model_loads_from_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = safetensors_bytes(&[f32t("w", &[2, 4], &[0.5; 8])], None);
    let m = write(&dir, "m.safetensors", &bytes);
    let s = write(
        &dir,
        "m.toml",
        b"name = \"tiny\"\ninput_shape = [4]\n[[layers]]\nop = \"linear\"\nweight = \"w\"\n",
    );
    let model = load_model(&m, Some(&s)).unwrap();
    assert_eq!(model.name, "tiny");
    assert_eq!(
        model.layers[0].name, "w",
        "a weight without '.weight' suffix names the layer by itself"
    );
}
