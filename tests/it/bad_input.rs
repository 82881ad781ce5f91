//! Bad input: each case gets one line on stderr naming the file (or key) and the cause, a
//! non-zero exit, and no panic.

use crate::util::{T, f32t, qscope, safetensors_bytes, u8t, write};
use safetensors::Dtype;

const SPEC: &str =
    "input_shape = [4]\n[[layers]]\nname = \"fc\"\nop = \"linear\"\nweight = \"w\"\nbias = \"b\"\n";

fn good_model() -> Vec<u8> {
    safetensors_bytes(
        &[
            f32t(
                "w",
                &[3, 4],
                &[
                    0.5, -0.25, 0.0, 1.0, 0.1, 0.2, 0.3, 0.4, -1.0, 0.0, 0.0, 0.0,
                ],
            ),
            f32t("b", &[3], &[0.0, 0.1, -0.1]),
        ],
        Some(SPEC),
    )
}

fn good_data(n: usize, len: usize) -> Vec<u8> {
    let inputs: Vec<u8> = (0..n * len).map(|i| (i * 37 % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    safetensors_bytes(
        &[
            u8t("inputs", &[n, len], &inputs),
            u8t("labels", &[n], &labels),
        ],
        None,
    )
}

/// Runs eval on (model bytes, calib bytes, extra args) and checks the failure's shape; returns stderr.
fn fails(model: &[u8], data: &[u8], extra: &[&str], must_contain: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let m = write(&dir, "model.safetensors", model);
    let d = write(&dir, "data.safetensors", data);
    let mut args = vec![
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--calib",
        d.to_str().unwrap(),
        "--eval",
        d.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, _, err) = qscope(&args);
    assert!(!ok, "expected failure for {extra:?}, stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for s in must_contain {
        assert!(err.contains(s), "stderr lacks '{s}': {err}");
    }
    err
}

#[test]
fn good_inputs_pass_so_the_failures_below_are_about_the_defect() {
    let dir = tempfile::tempdir().unwrap();
    let m = write(&dir, "model.safetensors", &good_model());
    let d = write(&dir, "data.safetensors", &good_data(10, 4));
    let (ok, out, err) = qscope(&[
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--calib",
        d.to_str().unwrap(),
        "--eval",
        d.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("fc"), "{out}");
}

#[test]
fn not_safetensors() {
    fails(
        b"hello, this is not a model at all",
        &good_data(4, 4),
        &[],
        &["model.safetensors", "not a safetensors file"],
    );
}

#[test]
fn truncated_file() {
    let m = good_model();
    fails(
        &m[..m.len() - 7],
        &good_data(4, 4),
        &[],
        &["model.safetensors"],
    );
}

#[test]
fn header_length_past_the_end() {
    let mut m = good_model();
    m[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    fails(
        &m,
        &good_data(4, 4),
        &[],
        &["model.safetensors", "header length"],
    );
}

#[test]
fn spec_names_a_missing_tensor() {
    let m = safetensors_bytes(
        &[f32t("w", &[3, 4], &[0.0; 12])],
        Some(&SPEC.replace("bias = \"b\"", "bias = \"nope\"")),
    );
    fails(
        &m,
        &good_data(4, 4),
        &[],
        &["model.safetensors", "'nope'", "not found"],
    );
}

#[test]
fn weight_shape_does_not_fit_the_input() {
    let m = safetensors_bytes(
        &[f32t("w", &[3, 5], &[0.0; 15]), f32t("b", &[3], &[0.0; 3])],
        Some(SPEC),
    );
    fails(
        &m,
        &good_data(4, 4),
        &[],
        &["model.safetensors", "'w'", "does not fit"],
    );
}

#[test]
fn bias_shape_does_not_fit_the_layer() {
    let m = safetensors_bytes(
        &[f32t("w", &[3, 4], &[0.0; 12]), f32t("b", &[2], &[0.0; 2])],
        Some(SPEC),
    );
    fails(&m, &good_data(4, 4), &[], &["'b'", "[3]"]);
}

#[test]
fn unknown_op() {
    let spec = format!("{SPEC}[[layers]]\nop = \"gelu\"\n");
    let m = safetensors_bytes(
        &[f32t("w", &[3, 4], &[0.0; 12]), f32t("b", &[3], &[0.0; 3])],
        Some(&spec),
    );
    fails(&m, &good_data(4, 4), &[], &["'gelu'", "linear"]);
}

#[test]
fn unsupported_dtype() {
    let w = T {
        name: "w".into(),
        dtype: Dtype::I32,
        shape: vec![3, 4],
        bytes: vec![0; 48],
    };
    let m = safetensors_bytes(&[w, f32t("b", &[3], &[0.0; 3])], Some(SPEC));
    fails(&m, &good_data(4, 4), &[], &["'w'", "unsupported dtype I32"]);
}

#[test]
fn nan_or_infinity_in_weights() {
    for bad in [f32::NAN, f32::INFINITY] {
        let mut w = [0.1f32; 12];
        w[5] = bad;
        let m = safetensors_bytes(
            &[f32t("w", &[3, 4], &w), f32t("b", &[3], &[0.0; 3])],
            Some(SPEC),
        );
        fails(
            &m,
            &good_data(4, 4),
            &[],
            &["model.safetensors", "'w'", "non-finite"],
        );
    }
}

#[test]
fn nan_in_data() {
    let mut v = vec![0.5f32; 16];
    v[7] = f32::NAN;
    let d = safetensors_bytes(&[f32t("inputs", &[4, 4], &v)], None);
    fails(
        &good_model(),
        &d,
        &[],
        &["data.safetensors", "'inputs'", "non-finite"],
    );
}

#[test]
fn empty_calibration_set() {
    fails(
        &good_model(),
        &good_data(0, 4),
        &[],
        &["data.safetensors", "no samples"],
    );
}

#[test]
fn samples_do_not_fit_input_shape() {
    fails(
        &good_model(),
        &good_data(4, 5),
        &[],
        &["data.safetensors", "5 elements", "[4]"],
    );
}

#[test]
fn bits_outside_2_to_8() {
    for (flag, v) in [("--weight-bits", "9"), ("--act-bits", "1")] {
        fails(
            &good_model(),
            &good_data(4, 4),
            &[flag, v],
            &["bits", "outside 2..=8"],
        );
    }
}

#[test]
fn percentile_outside_0_100() {
    for v in ["--percentile=0", "--percentile=100.5", "--percentile=-3"] {
        fails(
            &good_model(),
            &good_data(4, 4),
            &[v],
            &["percentile", "outside (0, 100]"],
        );
    }
}

#[test]
fn toml_config_with_a_syntax_error_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let c = write(&dir, "bad.toml", b"weight_bits = 4\nact_bits = = 8\n");
    fails(
        &good_model(),
        &good_data(4, 4),
        &["--config", c.to_str().unwrap()],
        &["bad.toml", "line 2"],
    );
}

#[test]
fn unknown_config_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = write(&dir, "c.toml", b"weight_bitz = 4\n");
    fails(
        &good_model(),
        &good_data(4, 4),
        &["--config", c.to_str().unwrap()],
        &["c.toml", "weight_bitz"],
    );
}

#[test]
fn constant_and_all_zero_channels_quantize_without_dividing_by_zero() {
    // Row 0 all zero, row 1 constant; constant input data (zero range).
    let m = safetensors_bytes(
        &[
            f32t(
                "w",
                &[3, 4],
                &[0.0, 0.0, 0.0, 0.0, 0.3, 0.3, 0.3, 0.3, 1.0, -1.0, 0.5, 0.0],
            ),
            f32t("b", &[3], &[0.0; 3]),
        ],
        Some(SPEC),
    );
    let d = safetensors_bytes(
        &[
            u8t("inputs", &[5, 4], &[0; 20]),
            u8t("labels", &[5], &[0; 5]),
        ],
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let mp = write(&dir, "m.safetensors", &m);
    let dp = write(&dir, "d.safetensors", &d);
    for g in ["per-channel", "per-tensor", "group:3"] {
        for s in ["minmax", "percentile", "kl", "mse", "aciq"] {
            let (ok, out, err) = qscope(&[
                "eval",
                "--json",
                "--model",
                mp.to_str().unwrap(),
                "--calib",
                dp.to_str().unwrap(),
                "--eval",
                dp.to_str().unwrap(),
                "--granularity",
                g,
                "--weight-strategy",
                s,
                "--act-strategy",
                s,
            ]);
            assert!(ok, "{g} {s}: {err}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                v["quant_accuracy"],
                serde_json::json!(1.0),
                "{g} {s}: {out}"
            );
            assert!(!out.contains("NaN"), "{out}");
        }
    }
}

#[test]
fn unknown_strategy_is_one_line_too() {
    fails(
        &good_model(),
        &good_data(4, 4),
        &["--act-strategy", "magic"],
        &["magic", "minmax"],
    );
}

#[test]
fn the_shipped_example_config_parses_and_runs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let file = qscope::config::ConfigFile::load(std::path::Path::new(path)).unwrap();
    let mut c = qscope::QuantConfig::default();
    file.apply_to(&mut c);
    let model = qscope::bundled::model("mnist-mlp").unwrap();
    c.validate(Some(&model)).unwrap();
    assert_eq!(c.weight_settings("fc1").bits, 4);
    assert_eq!(file.calib_samples, Some(1000));
    let (ok, _, err) = qscope(&["eval", "--config", path, "--calib-samples", "50"]);
    assert!(ok, "{err}");
}

#[test]
fn flags_win_over_the_config_file_which_wins_over_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let c = write(
        &dir,
        "c.toml",
        b"weight_bits = 4\nact_strategy = \"mse\"\ncalib_samples = 40\n",
    );
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["eval", "--json", "--config", c.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (ok, out, err) = qscope(&args);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let file_only = run(&[]);
    assert_eq!(file_only["config"]["weight_bits"], 4);
    assert_eq!(file_only["config"]["act_strategy"], "mse");
    assert_eq!(
        file_only["config"]["act_bits"], 8,
        "unset keys keep their defaults"
    );
    assert_eq!(file_only["calib_samples"], 40);
    let flagged = run(&["--weight-bits", "6", "--calib-samples", "30"]);
    assert_eq!(flagged["config"]["weight_bits"], 6);
    assert_eq!(flagged["config"]["act_strategy"], "mse");
    assert_eq!(flagged["calib_samples"], 30);
}

#[test]
fn a_missing_file_says_why_once() {
    let (ok, _, err) = crate::util::qscope(&["eval", "--model", "/nonexistent/m.safetensors"]);
    assert!(!ok);
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(line.contains("/nonexistent/m.safetensors"), "{err}");
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "{err}"
    );
}
