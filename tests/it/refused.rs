//! Issue 9 regressions: each input below once panicked, hung, or passed silently. Each now gets
//! one line on stderr with the key phrase, a non-zero exit, no panic, and writes no file.

use crate::util::{T, f32t, safetensors_bytes, u8t, write};
use safetensors::Dtype;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SPEC: &str =
    "input_shape = [4]\n[[layers]]\nname = \"fc\"\nop = \"linear\"\nweight = \"w\"\nbias = \"b\"\n";

fn model_with(spec: &str, w: &[usize], wv: &[f32], b: &[f32]) -> Vec<u8> {
    safetensors_bytes(&[f32t("w", w, wv), f32t("b", &[b.len()], b)], Some(spec))
}

fn good_model() -> Vec<u8> {
    let w: Vec<f32> = (0..12).map(|i| (i as f32 - 5.0) / 7.0).collect();
    model_with(SPEC, &[3, 4], &w, &[0.0, 0.1, -0.1])
}

fn data(n: usize, labels: Option<T>) -> Vec<u8> {
    let inputs: Vec<u8> = (0..n * 4).map(|i| (i * 37 % 256) as u8).collect();
    let mut t = vec![u8t("inputs", &[n, 4], &inputs)];
    t.extend(labels);
    safetensors_bytes(&t, None)
}

fn i64t(name: &str, v: &[i64]) -> T {
    T {
        name: name.into(),
        dtype: Dtype::I64,
        shape: vec![v.len()],
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Runs qscope in `dir`; returns (exit code, stdout, stderr).
fn run_in(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qscope"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The folder's entries, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Asserts a refusal: exit 1, one line, every phrase, no panic; returns stderr.
fn refused(code: Option<i32>, err: &str, phrases: &[&str]) -> String {
    assert_eq!(code, Some(1), "expected exit 1: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for p in phrases {
        assert!(err.contains(p), "stderr lacks '{p}': {err}");
    }
    err.to_string()
}

/// `eval` and `export` (to .json and .safetensors) of `model` on `data` are both refused with
/// `phrases`, and export writes nothing.
fn eval_and_export_refused(model: &[u8], data: &[u8], extra: &[&str], phrases: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "m.safetensors", model);
    write(&dir, "d.safetensors", data);
    let base = [
        "--model",
        "m.safetensors",
        "--calib",
        "d.safetensors",
        "--eval",
        "d.safetensors",
    ];
    let before = entries(dir.path());
    let (code, _, err) = run_in(dir.path(), &[&["eval"], &base[..], extra].concat());
    refused(code, &err, phrases);
    for out in ["q.safetensors", "p.json"] {
        let (code, _, err) = run_in(
            dir.path(),
            &[&["export", "--out", out], &base[..], extra].concat(),
        );
        refused(code, &err, phrases);
        assert_eq!(entries(dir.path()), before, "export wrote a file");
    }
}

#[test]
fn zero_sized_weight_dimensions_are_refused_at_load() {
    eval_and_export_refused(
        &model_with(SPEC, &[0, 4], &[], &[]),
        &data(4, None),
        &[],
        &["'w'", "0-sized dimension"],
    );
    let spec = "input_shape = [4]\n[[layers]]\nop = \"linear\"\nweight = \"w\"\n";
    eval_and_export_refused(
        &safetensors_bytes(&[f32t("w", &[3, 0], &[])], Some(spec)),
        &data(4, None),
        &[],
        &["'w'", "0-sized dimension"],
    );
    let conv = "input_shape = [1, 2, 2]\n[[layers]]\nname = \"c\"\nop = \"conv2d\"\nweight = \"w\"\n\
                [[layers]]\nop = \"batchnorm2d\"\nrunning_mean = \"m\"\nrunning_var = \"v\"\n";
    let m = safetensors_bytes(
        &[
            f32t("w", &[0, 1, 1, 1], &[]),
            f32t("m", &[0], &[]),
            f32t("v", &[0], &[]),
        ],
        Some(conv),
    );
    eval_and_export_refused(&m, &data(4, None), &[], &["0-sized dimension"]);
}

#[test]
fn unusable_input_normalization_is_refused() {
    for (line, phrase) in [
        ("input_std = [0.0]", "input_std[0]"),
        ("input_std = [-0.0]", "input_std[0]"),
        ("input_std = [nan]", "must be finite"),
        ("input_std = [inf]", "must be finite"),
        ("input_std = [-inf]", "must be finite"),
        ("input_std = [1e-40]", "subnormal"),
        ("input_mean = [nan]", "input_mean[0]"),
        ("input_mean = [inf]", "must be finite"),
        ("input_mean = [0.1, 0.2]", "2 values"),
        ("input_std = [1.0, 1.0, 1.0]", "3 values"),
    ] {
        let spec = format!("{line}\n{SPEC}");
        let w: Vec<f32> = (0..12).map(|i| i as f32 / 10.0).collect();
        eval_and_export_refused(
            &model_with(&spec, &[3, 4], &w, &[0.0; 3]),
            &data(4, None),
            &[],
            &["spec", phrase],
        );
    }
}

#[test]
fn batchnorm_folding_to_non_finite_weights_is_refused_naming_the_layer() {
    let spec = |eps: &str| {
        format!(
            "input_shape = [1, 2, 2]\n[[layers]]\nname = \"conv1\"\nop = \"conv2d\"\nweight = \"w\"\n\
             [[layers]]\nname = \"bn1\"\nop = \"batchnorm2d\"\nrunning_mean = \"m\"\nrunning_var = \"v\"\neps = {eps}\n\
             [[layers]]\nop = \"flatten\"\n"
        )
    };
    for (var, eps, phrases) in [
        (
            -1.0f32,
            "0.0",
            vec!["layer 'conv1'", "batchnorm 'bn1'", "non-finite"],
        ),
        (
            0.0,
            "0.0",
            vec!["layer 'conv1'", "batchnorm 'bn1'", "non-finite"],
        ),
        (1.0, "-1e-5", vec!["bn1", "eps"]),
        (1.0, "nan", vec!["bn1", "eps"]),
    ] {
        let m = safetensors_bytes(
            &[
                f32t("w", &[2, 1, 1, 1], &[1.0, 2.0]),
                f32t("m", &[2], &[0.0, 0.0]),
                f32t("v", &[2], &[var, 1.0]),
            ],
            Some(&spec(eps)),
        );
        eval_and_export_refused(&m, &data(4, None), &[], &phrases);
    }
}

#[test]
fn labels_outside_the_models_classes_are_refused() {
    for bad in [3i64, 10, 255, -1, 1 << 40] {
        let labels = i64t("labels", &[0, 1, bad, 2]);
        eval_and_export_refused(
            &good_model(),
            &data(4, Some(labels)),
            &[],
            &[
                "'labels'",
                "outside the model's 3 output classes",
                &bad.to_string(),
            ],
        );
    }
}

#[test]
fn a_float_model_that_overflows_says_so_instead_of_an_accuracy() {
    let w = vec![3.0e38f32; 12];
    eval_and_export_refused(
        &model_with(SPEC, &[3, 4], &w, &[3.0e38; 3]),
        &data(4, None),
        &[],
        &["overflows f32", "no accuracy"],
    );
    let spec = format!("input_std = [1e-37]\n{SPEC}");
    eval_and_export_refused(
        &model_with(&spec, &[3, 4], &[1.0e10; 12], &[0.0; 3]),
        &data(4, None),
        &[],
        &["overflows f32"],
    );
}

#[test]
fn an_integer_bias_that_does_not_fit_i32_is_refused_by_eval_and_export_alike() {
    let w = [
        1e-30f32, -1e-30, 1e-30, 0.0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0,
    ];
    eval_and_export_refused(
        &model_with(SPEC, &[3, 4], &w, &[1.0, 0.0, 0.0]),
        &data(4, None),
        &[],
        &["layers.fc", "channel 0", "does not fit the i32 accumulator"],
    );
}

/// A quantized model of the good model, exported by the binary.
fn quantized_model(dir: &Path) -> Vec<u8> {
    std::fs::write(dir.join("m.safetensors"), good_model()).unwrap();
    std::fs::write(dir.join("d.safetensors"), data(4, None)).unwrap();
    let (code, _, err) = run_in(
        dir,
        &[
            "export",
            "--out",
            "q.safetensors",
            "--model",
            "m.safetensors",
            "--calib",
            "d.safetensors",
            "--eval",
            "d.safetensors",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    std::fs::read(dir.join("q.safetensors")).unwrap()
}

/// The safetensors `bytes` with their tensors edited by `edit` (metadata kept).
fn edit_tensors(bytes: &[u8], edit: impl FnOnce(&mut Vec<T>)) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut ts: Vec<T> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| T {
            name: n,
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            bytes: v.data().to_vec(),
        })
        .collect();
    edit(&mut ts);
    let views: Vec<(String, safetensors::tensor::TensorView)> = ts
        .iter()
        .map(|t| {
            let v = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes);
            (t.name.clone(), v.unwrap())
        })
        .collect();
    safetensors::serialize(views, meta.metadata().clone()).unwrap()
}

fn quantized_refused(q: &[u8], phrases: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "bad.safetensors", q);
    write(&dir, "d.safetensors", &data(4, None));
    let before = entries(dir.path());
    for args in [
        &[
            "eval",
            "--model",
            "bad.safetensors",
            "--calib",
            "d.safetensors",
            "--eval",
            "d.safetensors",
        ][..],
        &[
            "export",
            "--out",
            "p.json",
            "--model",
            "bad.safetensors",
            "--calib",
            "d.safetensors",
            "--eval",
            "d.safetensors",
        ],
    ] {
        let (code, _, err) = run_in(dir.path(), args);
        refused(code, &err, phrases);
    }
    assert_eq!(entries(dir.path()), before);
}

#[test]
fn a_quantized_model_with_a_scalar_weight_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = edit_tensors(&quantized_model(dir.path()), |ts| {
        let w = ts.iter_mut().find(|t| t.name == "fc.weight").unwrap();
        w.shape = vec![];
        w.bytes = vec![1];
    });
    quantized_refused(&q, &["'fc.weight'", "[out, in]"]);
}

#[test]
fn a_quantized_model_missing_its_input_qparams_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = edit_tensors(&quantized_model(dir.path()), |ts| {
        ts.retain(|t| !t.name.starts_with("fc.input_"));
    });
    quantized_refused(&q, &["'fc.input_scale'", "missing"]);
}

#[cfg(unix)]
#[test]
fn fifos_and_devices_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    write(&dir, "m.safetensors", &good_model());
    write(&dir, "d.safetensors", &data(4, None));
    for special in [fifo.to_str().unwrap(), "/dev/zero"] {
        for flag in [
            "--model", "--spec", "--calib", "--eval", "--params", "--config",
        ] {
            let mut args = vec!["eval", flag, special];
            let files = [
                ("--model", "m.safetensors"),
                ("--calib", "d.safetensors"),
                ("--eval", "d.safetensors"),
            ];
            for (f, v) in files {
                if f != flag {
                    args.extend([f, v]);
                }
            }
            let (code, _, err) = run_in(dir.path(), &args);
            refused(code, &err, &[special, "not a regular file"]);
        }
        let (code, _, err) = run_in(dir.path(), &["inspect", special]);
        refused(code, &err, &["not a regular file"]);
    }
}

#[cfg(unix)]
#[test]
fn a_closed_or_full_stdout_and_an_unwritable_stderr_exit_quietly() {
    // A closed pipe: the reader is gone before qscope starts (closed before the spawn, so a
    // busy machine cannot let qscope write into the pipe's buffer first).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_qscope"))
        .args(["inspect", "mnist-cnn", "--json"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "no message on a closed pipe"
    );
    // A full disk: said on stderr.
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let out = Command::new(env!("CARGO_BIN_EXE_qscope"))
        .args(["inspect", "mnist-mlp", "--json"])
        .stdout(full())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    refused(out.status.code(), &err, &["stdout", "No space left"]);
    // An unwritable stderr (and stdout): a quiet failure, not a panic (exit 101).
    let out = Command::new(env!("CARGO_BIN_EXE_qscope"))
        .args(["eval", "--model", "/nonexistent.safetensors"])
        .stdout(full())
        .stderr(full())
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(1));
}

/// A deflated npz of `inputs` (u8 [n, 4]) whose declared sizes are patched to `declared`.
fn npz_with_declared_size(n: usize, declared: u32) -> Vec<u8> {
    use std::io::Write;
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': ({n}, 4), }}");
    let header = format!("{header:<117}\n");
    npy.extend((header.len() as u16).to_le_bytes());
    npy.extend(header.as_bytes());
    npy.extend(std::iter::repeat_n(7u8, n * 4));
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("inputs.npy", opts).unwrap();
    zip.write_all(&npy).unwrap();
    let mut bytes = zip.finish().unwrap().into_inner();
    let find = |b: &[u8], sig: &[u8]| b.windows(4).position(|w| w == sig).unwrap();
    let local = find(&bytes, b"PK\x03\x04");
    bytes[local + 22..local + 26].copy_from_slice(&declared.to_le_bytes());
    let central = find(&bytes, b"PK\x01\x02");
    bytes[central + 24..central + 28].copy_from_slice(&declared.to_le_bytes());
    bytes
}

#[test]
fn an_npz_bomb_is_refused_before_inflating() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "m.safetensors", &good_model());
    for (declared, phrase) in [
        (3u32 << 30, "more than the 2147483648 bytes"),
        (200, "inputs"),
    ] {
        write(&dir, "bomb.npz", &npz_with_declared_size(1000, declared));
        let (code, _, err) = run_in(
            dir.path(),
            &[
                "eval",
                "--model",
                "m.safetensors",
                "--calib",
                "bomb.npz",
                "--eval",
                "bomb.npz",
            ],
        );
        refused(code, &err, &["bomb.npz", phrase]);
    }
}

#[test]
fn errors_quoting_long_input_are_cut_to_a_readable_length() {
    let long = "x".repeat(60_000);
    let spec = format!("{SPEC}[[layers]]\nop = \"{long}\"\n");
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir,
        "m.safetensors",
        &model_with(&spec, &[3, 4], &[0.5; 12], &[0.0; 3]),
    );
    let (code, _, err) = run_in(dir.path(), &["eval", "--model", "m.safetensors"]);
    let err = refused(code, &err, &["unknown op", "…"]);
    assert!(err.len() < 1200, "{} bytes", err.len());
    let (code, _, err) = run_in(dir.path(), &["eval", "--act-strategy", &long]);
    assert_eq!(code, Some(2));
    assert!(err.len() < 1200 && err.contains('…'), "{} bytes", err.len());
}

/// Exports the bundled MLP's parameters to `out` in `dir`.
fn export_params(dir: &Path, out: &str) -> (Option<i32>, String) {
    let (code, _, err) = run_in(
        dir,
        &[
            "export",
            "--out",
            out,
            "--calib-samples",
            "20",
            "--eval",
            "d.safetensors",
        ],
    );
    (code, err)
}

fn bundled_eval_data(dir: &Path) -> PathBuf {
    let inputs: Vec<u8> = (0..8 * 784).map(|i| (i % 251) as u8).collect();
    let p = dir.join("d.safetensors");
    std::fs::write(
        &p,
        safetensors_bytes(&[u8t("inputs", &[8, 784], &inputs)], None),
    )
    .unwrap();
    p
}

#[test]
fn stale_temporaries_of_the_target_are_removed_and_young_or_foreign_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    bundled_eval_data(d);
    let old = ".p.json.qscope-tmp-4242-123456-0";
    let young = ".p.json.qscope-tmp-4242-123457-1";
    let foreign = ".p.json.other-tmp-1-2-3";
    for n in [old, young, foreign] {
        std::fs::write(d.join(n), vec![0u8; 4096]).unwrap();
    }
    let two_minutes_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
    for n in [old, foreign] {
        let f = std::fs::File::options()
            .write(true)
            .open(d.join(n))
            .unwrap();
        f.set_modified(two_minutes_ago).unwrap();
    }
    let (code, err) = export_params(d, "p.json");
    assert_eq!(code, Some(0), "{err}");
    let left = entries(d);
    assert!(!left.contains(&old.to_string()), "{left:?}");
    assert!(left.contains(&young.to_string()) && left.contains(&foreign.to_string()));
}

#[cfg(unix)]
#[test]
fn exporting_onto_a_symlink_replaces_the_file_it_points_to() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    bundled_eval_data(d);
    std::fs::create_dir(d.join("real")).unwrap();
    std::fs::write(d.join("real/p.json"), "old").unwrap();
    std::os::unix::fs::symlink("real/p.json", d.join("link.json")).unwrap();
    let (code, err) = export_params(d, "link.json");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        std::fs::symlink_metadata(d.join("link.json"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let text = std::fs::read_to_string(d.join("real/p.json")).unwrap();
    assert!(text.contains("qscope-params/1"), "{text}");
    assert_eq!(entries(&d.join("real")), vec!["p.json"]);
}

#[test]
fn plot_all_that_fails_midway_says_which_files_were_written_and_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    bundled_eval_data(d);
    std::fs::create_dir_all(d.join("plots/fc2.svg/blocker")).unwrap();
    let (code, _, err) = run_in(
        d,
        &[
            "plot",
            "--all",
            "--out",
            "plots",
            "--calib",
            "d.safetensors",
            "--eval",
            "d.safetensors",
        ],
    );
    refused(
        code,
        &err,
        &["fc2.svg", "already written", "input.svg", "fc1.svg"],
    );
    assert_eq!(
        entries(&d.join("plots")),
        vec!["fc1.svg", "fc2.svg", "input.svg"]
    );
}

/// Issue 9, item 3: a huge padding makes activation tensors past the per-sample limit; the
/// model is refused with the figure instead of allocating gigabytes.
#[test]
fn tensors_past_the_size_limit_are_refused_with_the_figure() {
    let dir = tempfile::tempdir().unwrap();
    let spec = "input_shape = [1, 28, 28]\n[[layers]]\nname = \"c\"\nop = \"conv2d\"\nweight = \"w\"\nbias = \"b\"\npadding = 20000\n[[layers]]\nop = \"flatten\"\n";
    let bytes = crate::util::safetensors_bytes(
        &[
            crate::util::f32t("w", &[4, 1, 3, 3], &[0.1; 36]),
            crate::util::f32t("b", &[4], &[0.0; 4]),
        ],
        Some(spec),
    );
    let m = crate::util::write(&dir, "pad.safetensors", &bytes);
    let (ok, _, err) = crate::util::qscope(&["eval", "--model", m.to_str().unwrap()]);
    assert!(!ok && !err.contains("panicked"), "{err}");
    assert!(
        err.contains("above the limit") && err.contains("MiB"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
