//! The mutation campaign of issue 9 (ignored; run it with
//! `cargo test --release --test it campaign -- --ignored --nocapture`): thousands of generated
//! and mutated inputs through the release binary. A case fails on a panic, a signal, a hang
//! (20 s), an error of more than one line, or exit 0 on an input that must be refused.

use crate::smoke_fuzz::{DTYPES, Edit, apply, mutate_text, npz_bytes, tiny_model, tiny_quantized};
use crate::util::{Rng, T, f32t, safetensors_bytes, u8t};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One case: files to write, the arguments, and whether the input must be refused.
struct Case {
    kind: &'static str,
    files: Vec<(&'static str, Vec<u8>)>,
    args: Vec<String>,
    must_refuse: bool,
}

const SPEC: &str =
    "input_shape = [4]\n[[layers]]\nname = \"fc\"\nop = \"linear\"\nweight = \"w\"\nbias = \"b\"\n";

fn data(rng: &mut Rng, n: usize, len: usize, labels: Option<Vec<i64>>) -> Vec<u8> {
    let inputs: Vec<u8> = (0..n * len).map(|_| rng.below(256) as u8).collect();
    let mut t = vec![u8t("inputs", &[n, len], &inputs)];
    if let Some(l) = labels {
        t.push(T {
            name: "labels".into(),
            dtype: safetensors::Dtype::I64,
            shape: vec![l.len()],
            bytes: l.iter().flat_map(|x| x.to_le_bytes()).collect(),
        });
    }
    safetensors_bytes(&t, None)
}

fn eval_args(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "eval",
        "--model",
        "m.safetensors",
        "--calib",
        "d.safetensors",
        "--eval",
        "d.safetensors",
    ]
    .map(String::from)
    .to_vec();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn random_edit(rng: &mut Rng) -> Edit {
    let i = rng.next_u64() as usize;
    match rng.below(7) {
        0 => Edit::Shape(i, (0..rng.below(4)).map(|_| rng.below(6)).collect()),
        1 => Edit::Dtype(i, rng.below(DTYPES.len())),
        2 => Edit::Offsets(i, rng.below(3000), rng.below(3000)),
        3 => Edit::Metadata(
            i,
            [
                "nan",
                "\"",
                "0",
                "[[layers]]\nop = \"relu\"\n",
                "-1",
                "1e39",
                "\n",
            ][rng.below(7)]
            .into(),
        ),
        4 => Edit::Drop(i),
        5 => Edit::Truncate(i),
        _ => Edit::Flip(i, (rng.next_u64() as u8) | 1),
    }
}

fn edits(rng: &mut Rng) -> Vec<Edit> {
    (0..1 + rng.below(3)).map(|_| random_edit(rng)).collect()
}

/// A model (the test's fc over 4 inputs) that must be refused, of one of the kinds of issue 9.
fn bad_model(rng: &mut Rng) -> (&'static str, Vec<u8>) {
    let w: Vec<f32> = rng.vec(12, -1.0, 1.0);
    let model = |spec: &str, w: &[f32], b: &[f32]| {
        safetensors_bytes(&[f32t("w", &[3, 4], w), f32t("b", &[3], b)], Some(spec))
    };
    match rng.below(6) {
        0 => {
            let bad = ["0.0", "-0.0", "nan", "inf", "-inf", "1e-40", "1e-45"][rng.below(7)];
            (
                "input_std",
                model(&format!("input_std = [{bad}]\n{SPEC}"), &w, &[0.0; 3]),
            )
        }
        1 => {
            let line = [
                "input_mean = [nan]",
                "input_mean = [inf]",
                "input_mean = [-inf]",
                "input_mean = [0.1, 0.2]",
                "input_std = [1.0, 2.0, 3.0]",
            ][rng.below(5)];
            (
                "input_mean",
                model(&format!("{line}\n{SPEC}"), &w, &[0.0; 3]),
            )
        }
        2 => {
            let (o, i) = [(0, 4), (3, 0), (0, 0)][rng.below(3)];
            let spec = if i == 0 {
                SPEC.replace("[4]", "[1]")
            } else {
                SPEC.to_string()
            };
            (
                "zero-dim",
                safetensors_bytes(
                    &[f32t("w", &[o, i], &[]), f32t("b", &[o], &vec![0.0; o])],
                    Some(&spec),
                ),
            )
        }
        3 => {
            let var = [-1.0f32, 0.0, -1e-3][rng.below(3)];
            let eps = ["0.0", "-1e-5", "nan", "inf"][rng.below(4)];
            let eps = if var == 0.0 || rng.below(2) == 0 {
                eps
            } else {
                "0.0"
            };
            let spec = format!(
                "input_shape = [1, 2, 2]\n[[layers]]\nname = \"c\"\nop = \"conv2d\"\nweight = \"w\"\n[[layers]]\nname = \"bn\"\nop = \"batchnorm2d\"\nrunning_mean = \"m\"\nrunning_var = \"v\"\neps = {eps}\n[[layers]]\nop = \"flatten\"\n"
            );
            (
                "batchnorm",
                safetensors_bytes(
                    &[
                        f32t("w", &[2, 1, 1, 1], &[1.0, -1.0]),
                        f32t("m", &[2], &[0.0; 2]),
                        f32t("v", &[2], &[var, 1.0]),
                    ],
                    Some(&spec),
                ),
            )
        }
        4 => {
            let big = rng.uniform(2.0e38, 3.4e38);
            ("float-overflow", model(SPEC, &[big; 12], &[big; 3]))
        }
        _ => {
            let mut w = w;
            for x in &mut w[..4] {
                *x = rng.uniform(1e-32, 1e-30);
            }
            (
                "bias-i32",
                model(SPEC, &w, &[rng.uniform(0.5, 100.0), 0.0, 0.0]),
            )
        }
    }
}

/// One generated case.
fn case(rng: &mut Rng, q: &[u8], tiny: &[u8]) -> Case {
    match rng.below(10) {
        0 | 1 => bad_model_case(rng, q, tiny),
        2 => labels_case(rng, q, tiny),
        3 => non_regular_case(rng, q, tiny),
        4 => quantized_missing_case(rng, q, tiny),
        5 => model_mutation_case(rng, q, tiny),
        6 => quantized_mutation_case(rng, q, tiny),
        7 => data_mutation_case(rng, q, tiny),
        8 => config_mutation_case(rng, q, tiny),
        _ => params_mutation_case(rng, q, tiny),
    }
}

fn bad_model_case(rng: &mut Rng, _q: &[u8], _tiny: &[u8]) -> Case {
    let (kind, m) = bad_model(rng);
    let export = rng.below(3) == 0;
    let args = if export {
        [
            "export",
            "--out",
            "out.safetensors",
            "--model",
            "m.safetensors",
            "--calib",
            "d.safetensors",
            "--eval",
            "d.safetensors",
        ]
        .map(String::from)
        .to_vec()
    } else {
        eval_args(&[])
    };
    Case {
        kind,
        files: vec![
            ("m.safetensors", m),
            ("d.safetensors", data(rng, 4, 4, None)),
        ],
        args,
        must_refuse: true,
    }
}

fn labels_case(rng: &mut Rng, _q: &[u8], _tiny: &[u8]) -> Case {
    let bad = [3i64, 10, 255, -1, 1 << 40, i64::MIN][rng.below(6)];
    let labels = vec![0, 1, bad, 2];
    let w = rng.vec(12, -1.0, 1.0);
    let m = safetensors_bytes(
        &[f32t("w", &[3, 4], &w), f32t("b", &[3], &[0.0; 3])],
        Some(SPEC),
    );
    Case {
        kind: "labels",
        files: vec![
            ("m.safetensors", m),
            ("d.safetensors", data(rng, 4, 4, Some(labels))),
        ],
        args: eval_args(&["--json"]),
        must_refuse: true,
    }
}

fn non_regular_case(rng: &mut Rng, _q: &[u8], tiny: &[u8]) -> Case {
    let (name, special) = [
        ("--model", "/dev/zero"),
        ("--calib", "/dev/zero"),
        ("--eval", "/dev/null"),
        ("--params", "/dev/zero"),
        ("--config", "/dev/zero"),
        ("--spec", "/dev/urandom"),
    ][rng.below(6)];
    let mut args = vec!["eval".to_string(), name.into(), special.into()];
    for (f, v) in [
        ("--model", "m.safetensors"),
        ("--calib", "d.safetensors"),
        ("--eval", "d.safetensors"),
    ] {
        if f != name {
            args.extend([f.to_string(), v.to_string()]);
        }
    }
    Case {
        kind: "non-regular",
        files: vec![
            ("m.safetensors", tiny.to_vec()),
            ("d.safetensors", data(rng, 4, 16, None)),
        ],
        args,
        must_refuse: true,
    }
}

fn quantized_missing_case(rng: &mut Rng, q: &[u8], _tiny: &[u8]) -> Case {
    let mut qm = q.to_vec();
    let drop = [
        "c.input_scale",
        "c.input_zero_point",
        "fc.input_scale",
        "fc.output_scale",
    ][rng.below(4)];
    qm = edit_quantized(&qm, |ts| ts.retain(|t| t.name != drop));
    Case {
        kind: "quantized-missing",
        files: vec![
            ("m.safetensors", qm),
            ("d.safetensors", data(rng, 4, 16, None)),
        ],
        args: eval_args(&[]),
        must_refuse: true,
    }
}

fn model_mutation_case(rng: &mut Rng, _q: &[u8], tiny: &[u8]) -> Case {
    Case {
        kind: "model-mutation",
        files: vec![
            ("m.safetensors", apply(tiny, &edits(rng))),
            ("d.safetensors", data(rng, 4, 16, None)),
        ],
        args: eval_args(&["--json"]),
        must_refuse: false,
    }
}

fn quantized_mutation_case(rng: &mut Rng, q: &[u8], _tiny: &[u8]) -> Case {
    Case {
        kind: "quantized-mutation",
        files: vec![
            ("m.safetensors", apply(q, &edits(rng))),
            ("d.safetensors", data(rng, 4, 16, None)),
        ],
        args: eval_args(&[]),
        must_refuse: false,
    }
}

fn data_mutation_case(rng: &mut Rng, _q: &[u8], tiny: &[u8]) -> Case {
    let d = if rng.below(2) == 0 {
        apply(&data(rng, 4, 16, Some(vec![0, 1, 2, 1])), &edits(rng))
    } else {
        let mut b = npz_bytes();
        let k = rng.below(b.len());
        b[k] ^= (rng.next_u64() as u8) | 1;
        b
    };
    let name = if d.starts_with(b"PK") {
        "d.npz"
    } else {
        "d.safetensors"
    };
    let mut args = eval_args(&[]);
    args[4] = name.into();
    args[6] = name.into();
    Case {
        kind: "data-mutation",
        files: vec![("m.safetensors", tiny.to_vec()), (name, d)],
        args,
        must_refuse: false,
    }
}

fn config_mutation_case(rng: &mut Rng, _q: &[u8], _tiny: &[u8]) -> Case {
    let config =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .unwrap();
    let ops: Vec<(usize, usize, String)> = (0..1 + rng.below(3))
        .map(|_| {
            (
                rng.below(4),
                rng.next_u64() as usize,
                ["nan", "-1", "0", "1e300", "\"", "x", "[", "99999999999"][rng.below(8)]
                    .to_string(),
            )
        })
        .collect();
    let c = mutate_text(&config, &ops);
    Case {
        kind: "config-mutation",
        files: vec![("c.toml", c.into_bytes())],
        args: ["eval", "--config", "c.toml", "--calib-samples", "30"]
            .map(String::from)
            .to_vec(),
        must_refuse: false,
    }
}

fn params_mutation_case(rng: &mut Rng, q: &[u8], tiny: &[u8]) -> Case {
    let st = safetensors::SafeTensors::read_metadata(q).unwrap().1;
    let json = st.metadata().as_ref().unwrap()["qscope.params"].clone();
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&json).unwrap())
            .unwrap();
    let ops: Vec<(usize, usize, String)> = (0..1 + rng.below(3))
        .map(|_| {
            (
                rng.below(4),
                rng.next_u64() as usize,
                ["nan", "-1", "0", "1e300", "\"", "null", "[]", "99999999999"][rng.below(8)]
                    .to_string(),
            )
        })
        .collect();
    let p = mutate_text(&pretty, &ops);
    let mut args = eval_args(&["--params", "p.json", "--force"]);
    args[2] = "m.safetensors".into();
    Case {
        kind: "params-mutation",
        files: vec![
            ("m.safetensors", tiny.to_vec()),
            ("d.safetensors", data(rng, 4, 16, None)),
            ("p.json", p.into_bytes()),
        ],
        args,
        must_refuse: false,
    }
}

fn edit_quantized(bytes: &[u8], f: impl FnOnce(&mut Vec<T>)) -> Vec<u8> {
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
    f(&mut ts);
    let views: Vec<_> = ts
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, meta.metadata().clone()).unwrap()
}

/// Runs a case in `dir`; returns a failure description, if any, and whether it exited 0.
fn run_case(dir: &Path, c: &Case) -> (Option<String>, bool) {
    for (name, bytes) in &c.files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_qscope"))
        .current_dir(dir)
        .args(&c.args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            return (Some("hang (> 20 s)".into()), false);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let fail = |m: &str| {
        Some(format!(
            "{m}: {}",
            err.chars().take(300).collect::<String>()
        ))
    };
    let failure = if std::os::unix::process::ExitStatusExt::signal(&status).is_some() {
        fail(&format!(
            "signal {:?}",
            std::os::unix::process::ExitStatusExt::signal(&status)
        ))
    } else if status.code() == Some(101) || err.contains("panicked") {
        fail("panic")
    } else if status.success() && c.must_refuse {
        fail("exit 0 on an input that must be refused")
    } else if !status.success()
        && err
            .lines()
            .filter(|l| l.starts_with("qscope: error"))
            .count()
            != 1
    {
        fail("not one error line")
    } else if err.lines().any(|l| l.len() > 1200) {
        fail("an over-long line")
    } else {
        None
    };
    (failure, status.success())
}

#[test]
#[ignore = "a long campaign through the release binary; run it by hand"]
fn campaign() {
    let cases: usize = std::env::var("QSCOPE_CAMPAIGN_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6000);
    let q = tiny_quantized();
    let tiny = tiny_model();
    let start = Instant::now();
    let results = std::sync::Mutex::new((
        std::collections::BTreeMap::<&str, [usize; 3]>::new(),
        Vec::<String>::new(),
    ));
    std::thread::scope(|s| {
        for worker in 0..2u64 {
            let (q, tiny, results) = (&q, &tiny, &results);
            s.spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (worker + 1));
                for i in (worker as usize..cases).step_by(2) {
                    let c = case(&mut rng, q, tiny);
                    let dir = tempfile::tempdir().unwrap();
                    let (failure, ok) = run_case(dir.path(), &c);
                    let mut r = results.lock().unwrap();
                    let e = r.0.entry(c.kind).or_default();
                    e[0] += 1;
                    e[1] += usize::from(ok);
                    if let Some(f) = failure {
                        e[2] += 1;
                        r.1.push(format!("case {i} ({}): {f} [{}]", c.kind, c.args.join(" ")));
                    }
                }
            });
        }
    });
    let (by_kind, failures) = results.into_inner().unwrap();
    println!(
        "campaign: {cases} cases in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    for (k, [n, ok, bad]) in &by_kind {
        println!("  {k:20} {n:5} cases, {ok:5} exit 0, {bad} failures");
    }
    for f in failures.iter().take(40) {
        println!("  FAIL {f}");
    }
    assert!(failures.is_empty(), "{} failures", failures.len());
}
