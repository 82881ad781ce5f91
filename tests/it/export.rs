//! Export and reproduce: parameter files (JSON/TOML) and quantized models give the integer
//! engine's outputs bit for bit; bad files and other models are refused with one-line errors;
//! a failed export leaves the previous file intact; the CLI does all of it as a user would.

use qscope::engine::IntModel;
use qscope::export::{
    ParamsFile, load_params, load_params_with_notes, load_quantized_model, save_params,
    save_quantized_model,
};
use qscope::model::load_model;
use qscope::params::ModelParams;
use qscope::pipeline::{Cancel, evaluate_params, run};
use qscope::{Dataset, Model, QuantConfig, bundled};
use std::path::{Path, PathBuf};

fn config(toml_text: &str) -> QuantConfig {
    let file = qscope::config::ConfigFile::parse("test config", toml_text).unwrap();
    let mut c = QuantConfig::default();
    file.apply_to(&mut c);
    c
}

/// The integer engine's outputs on `data` (bit patterns, so NaN == NaN too).
fn int_outputs(model: &Model, params: &ModelParams, data: &Dataset) -> Vec<u32> {
    let int = IntModel::new(model, params, usize::MAX);
    let mut x = data.inputs.clone();
    model.normalize(&mut x);
    int.forward_flat(&x, data.n)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// What the integer engine is built from: equal here means equal engines.
fn assert_same_engine_params(a: &ModelParams, b: &ModelParams, what: &str) {
    let qp = |p: &ModelParams| {
        p.points
            .iter()
            .map(|e| (e.name.clone(), e.act.qparams))
            .collect::<Vec<_>>()
    };
    assert_eq!(qp(a), qp(b), "{what}: points");
    assert_eq!(a.layers.len(), b.layers.len(), "{what}");
    for (x, y) in a.layers.iter().zip(&b.layers) {
        assert_eq!((x.index, &x.name), (y.index, &y.name), "{what}");
        assert_eq!(
            x.act.as_ref().map(|q| q.qparams),
            y.act.as_ref().map(|q| q.qparams),
            "{what}: {} act",
            x.name
        );
        assert_eq!(
            x.act.as_ref().map(|q| q.range),
            y.act.as_ref().map(|q| q.range),
            "{what}: {} range",
            x.name
        );
        match (&x.weight, &y.weight) {
            (Some(p), Some(q)) => {
                assert_eq!(p.q, q.q, "{what}: {} weights", x.name);
                assert_eq!(p.settings.bits, q.settings.bits);
                assert_eq!(p.settings.granularity, q.settings.granularity);
                assert_eq!(p.settings.clip, q.settings.clip);
            }
            (None, None) => {}
            _ => panic!("{what}: {} float in one, quantized in the other", x.name),
        }
    }
}

fn round_trips(model_name: &str, cfgs: &[&str]) {
    let model = bundled::model(model_name).unwrap();
    let calib = bundled::calib().take(500);
    let eval = bundled::test().take(600);
    let dir = tempfile::tempdir().unwrap();
    for (k, text) in cfgs.iter().enumerate() {
        let c = config(text);
        let outcome = run(&model, &calib, &eval, &c, &Cancel::new()).unwrap();
        let want = int_outputs(&model, &outcome.params, &eval);
        let what = format!("{model_name} config {k} ({text:?})");

        let json = dir.path().join(format!("p{k}.json"));
        let toml = dir.path().join(format!("p{k}.toml"));
        let st = dir.path().join(format!("m{k}.safetensors"));
        save_params(&json, &model, &outcome.params).unwrap();
        save_params(&toml, &model, &outcome.params).unwrap();
        save_quantized_model(&st, &model, &outcome.params).unwrap();

        let from_json = load_params(&json, &model, false).unwrap();
        let from_toml = load_params(&toml, &model, false).unwrap();
        assert_eq!(
            from_json, from_toml,
            "{what}: JSON and TOML load to the same parameters"
        );
        assert_same_engine_params(&outcome.params, &from_json, &what);
        assert_eq!(
            int_outputs(&model, &from_json, &eval),
            want,
            "{what}: JSON → integer outputs"
        );
        assert_eq!(
            int_outputs(&model, &from_toml, &eval),
            want,
            "{what}: TOML → integer outputs"
        );

        let q = load_quantized_model(&st).unwrap();
        assert_same_engine_params(&outcome.params, &q.params, &what);
        assert_eq!(
            int_outputs(&q.model, &q.params, &eval),
            want,
            "{what}: safetensors → integer outputs"
        );
        let r = evaluate_params(&q.model, q.params.clone(), &eval, &c, false, &Cancel::new())
            .unwrap()
            .report;
        assert_eq!(r.quant_accuracy, outcome.report.quant_accuracy, "{what}");
        assert_eq!(
            (r.fp32_accuracy, r.agreement, r.output_sqnr_db),
            (None, None, None),
            "{what}: no float side"
        );

        // Re-exporting what was loaded gives the same file.
        let again = dir.path().join(format!("again{k}.json"));
        save_params(&again, &model, &from_json).unwrap();
        assert_eq!(
            std::fs::read_to_string(&again).unwrap(),
            std::fs::read_to_string(&json).unwrap(),
            "{what}"
        );
        let again = dir.path().join(format!("again{k}.safetensors"));
        save_quantized_model(&again, &q.model, &q.params).unwrap();
        assert!(
            std::fs::read(&again).unwrap() == std::fs::read(&st).unwrap(),
            "{what}: quantized re-export differs"
        );
    }
}

#[test]
fn mlp_parameters_and_quantized_model_reproduce_the_integer_outputs() {
    round_trips(
        "mnist-mlp",
        &[
            "weight_bits = 4\n",
            "weight_bits = 4\ngranularity = \"group:32\"\nact_strategy = \"percentile\"\npercentile = 99.9\n",
            "weight_bits = 2\ngranularity = \"per-tensor\"\nweight_scheme = \"asymmetric\"\nact_strategy = \"kl\"\n",
            "keep_float = [\"fc2\"]\n[layers.fc1]\nact_range = [0.0, 4.0]\n[layers.fc3]\nweight_bits = 6\nweight_clip = 0.9\nact_bits = 7\n",
            "weight_bits = 3\nact_scheme = \"symmetric\"\nkeep_float = [\"fc3\"]\n[layers.input]\nact_bits = 6\n",
        ],
    );
}

#[test]
fn cnn_parameters_and_quantized_model_reproduce_the_integer_outputs() {
    round_trips(
        "mnist-cnn",
        &[
            "weight_bits = 4\n",
            "weight_bits = 4\ngranularity = \"group:8\"\nact_strategy = \"kl\"\nkeep_float = [\"conv1\"]\n",
            "weight_bits = 5\ngranularity = \"per-tensor\"\nweight_scheme = \"asymmetric\"\n",
        ],
    );
}

/// A valid exported MLP parameters file as JSON, and the model.
fn exported() -> (tempfile::TempDir, PathBuf, Model, serde_json::Value) {
    let model = bundled::model("mnist-mlp").unwrap();
    let calib = bundled::calib().take(200);
    let eval = bundled::test().take(100);
    let c = config("weight_bits = 4\n");
    let o = run(&model, &calib, &eval, &c, &Cancel::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.json");
    save_params(&p, &model, &o.params).unwrap();
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    (dir, p, model, v)
}

/// Loads `v` (JSON) and returns the one-line error.
fn load_err(dir: &Path, model: &Model, v: &serde_json::Value) -> String {
    let p = dir.join("bad.json");
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    let e = load_params(&p, model, false).unwrap_err().to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn bad_parameter_files_name_the_key() {
    let (dir, _, model, good) = exported();
    let d = dir.path();
    let mut cases: Vec<(serde_json::Value, Vec<&str>)> = Vec::new();
    let mut v = good.clone();
    v["layers"].as_array_mut().unwrap().remove(1);
    cases.push((v, vec!["layers", "no entry for weight layer 'fc2'"]));
    let mut v = good.clone();
    v["layers"][0]["weight"]["bits"] = 9.into();
    cases.push((v, vec!["layers[0].weight.bits", "9 bits is outside 2..=8"]));
    let mut v = good.clone();
    v["input"]["bits"] = 1.into();
    cases.push((v, vec!["input.bits", "1 bits"]));
    let mut v = good.clone();
    v["layers"][1]["weight"]["scale"][3] = 0.0.into();
    cases.push((v, vec!["layers[1].weight.scale[3]", "finite and > 0"]));
    let mut v = good.clone();
    v["layers"][1]["weight"]["scale"][5] = (-0.5).into();
    cases.push((v, vec!["layers[1].weight.scale[5]", "-0.5"]));
    let mut v = good.clone();
    v["layers"][2]["activation"]["scale"] = 1e39.into(); // infinite as an f32
    cases.push((v, vec!["layers[2].activation.scale", "finite"]));
    let mut v = good.clone();
    v["input"]["zero_point"] = 300.into();
    cases.push((v, vec!["input.zero_point", "300", "[-128, 127]"]));
    let mut v = good.clone();
    v["layers"][0]["weight"]["zero_point"][2] = 8.into();
    cases.push((v, vec!["layers[0].weight.zero_point[2]"]));
    let mut v = good.clone();
    v["layers"][2]["weight"]["scale"]
        .as_array_mut()
        .unwrap()
        .pop();
    cases.push((
        v,
        vec!["layers[2].weight.scale", "has 9 values", "needs 10"],
    ));
    let mut v = good.clone();
    v["layers"][0]["weight"]["zero_point"]
        .as_array_mut()
        .unwrap()
        .push(0.into());
    cases.push((v, vec!["layers[0].weight.zero_point", "has 257 values"]));
    let mut v = good.clone();
    v["format"] = "qscope-params/0".into();
    cases.push((v, vec!["format", "qscope-params/0", "qscope-params/1"]));
    let mut v = good.clone();
    v["layers"][0]["weight"]["granularity"] = "group:0".into();
    cases.push((v, vec!["layers[0].weight.granularity"]));
    let mut v = good.clone();
    v["layers"][1]["activation"] = serde_json::Value::Null;
    cases.push((v, vec!["layers[1].activation", "null"]));
    for (v, wants) in cases {
        let e = load_err(d, &model, &v);
        for w in wants {
            assert!(e.contains(w), "{e:?} should contain {w:?}");
        }
        assert!(
            e.starts_with(&d.join("bad.json").display().to_string()),
            "{e}"
        );
    }
    // NaN has no JSON spelling; TOML has one.
    let p = d.join("p.toml");
    let mut t: toml::Table = toml::from_str(
        &ParamsFile::parse(
            "x",
            &serde_json::to_string(&good).unwrap(),
            qscope::export::Syntax::Json,
        )
        .unwrap()
        .to_toml(),
    )
    .unwrap();
    t["input"]
        .as_table_mut()
        .unwrap()
        .insert("scale".into(), toml::Value::Float(f64::NAN));
    std::fs::write(&p, toml::to_string(&t).unwrap()).unwrap();
    let e = load_params(&p, &model, false).unwrap_err().to_string();
    assert!(e.contains("input.scale") && e.contains("NaN"), "{e}");
    t["input"]
        .as_table_mut()
        .unwrap()
        .insert("scale".into(), toml::Value::Float(f64::INFINITY));
    std::fs::write(&p, toml::to_string(&t).unwrap()).unwrap();
    let e = load_params(&p, &model, false).unwrap_err().to_string();
    assert!(e.contains("input.scale") && e.contains("inf"), "{e}");
}

/// A copy of the bundled MLP with one weight changed in its lowest bits (another sha256).
fn retrained_mlp(dir: &Path) -> PathBuf {
    let mut bytes = bundled::MLP.to_vec();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + header] ^= 1;
    let p = dir.join("mlp-retrained.safetensors");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn a_file_for_another_model_is_refused_unless_forced() {
    let (dir, p, model, _) = exported();
    let other = load_model(&retrained_mlp(dir.path()), None).unwrap();
    assert_ne!(other.sha256, model.sha256);
    let e = load_params(&p, &other, false).unwrap_err().to_string();
    assert!(
        e.contains("another model")
            && e.contains("sha256")
            && e.contains("--force")
            && !e.contains('\n'),
        "{e}"
    );
    let r = load_params_with_notes(&p, &other, true).unwrap();
    assert!(
        r.notes.iter().any(|n| n.contains("sha256")),
        "{:?}",
        r.notes
    );
    // Layer names differ too: the CNN has four weight layers, the file three.
    let cnn = bundled::model("mnist-cnn").unwrap();
    let e = load_params(&p, &cnn, false).unwrap_err().to_string();
    assert!(
        e.contains("another model") && e.contains("conv1") && e.contains("cannot help"),
        "{e}"
    );
    let e = load_params(&p, &cnn, true).unwrap_err().to_string();
    assert!(e.contains("conv1") && e.contains("counts differ"), "{e}");
}

#[test]
fn a_failed_export_leaves_the_previous_file_intact() {
    let model = bundled::model("mnist-mlp").unwrap();
    let o = run(
        &model,
        &bundled::calib().take(200),
        &bundled::test().take(100),
        &QuantConfig::default(),
        &Cancel::new(),
    )
    .unwrap();
    let mut broken = o.params.clone();
    broken.layers[1].act.as_mut().unwrap().qparams.scale = f32::NAN;
    let dir = tempfile::tempdir().unwrap();
    for name in ["p.json", "p.toml", "m.safetensors"] {
        let p = dir.path().join(name);
        save_params(&p, &model, &o.params).unwrap();
        let before = std::fs::read(&p).unwrap();
        let e = save_params(&p, &model, &broken).unwrap_err().to_string();
        assert!(
            e.contains("layers[1].activation.scale") || e.contains("fc2"),
            "{name}: {e}"
        );
        assert_eq!(
            std::fs::read(&p).unwrap(),
            before,
            "{name}: previous file intact"
        );
    }
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["m.safetensors", "p.json", "p.toml"],
        "no temporary file is left"
    );
    let e = save_params(&dir.path().join("missing/p.json"), &model, &o.params)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn dumped_activations_are_the_integer_engines() {
    let model = bundled::model("mnist-mlp").unwrap();
    let calib = bundled::calib().take(300);
    let o = run(
        &model,
        &calib,
        &bundled::test().take(100),
        &config("weight_bits = 4\nkeep_float = [\"fc2\"]\n"),
        &Cancel::new(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (written, skipped) = qscope::export::dump::dump_activations(
        dir.path(),
        &model,
        &o.params,
        &calib,
        &Cancel::new(),
    )
    .unwrap();
    assert!(skipped.is_empty());
    let names: Vec<&str> = written.iter().map(|d| d.point.as_str()).collect();
    assert_eq!(names, ["input", "fc1", "fc2", "fc3"]);
    let bytes = std::fs::read(dir.path().join("fc3.safetensors")).unwrap();
    let f = qscope::model::tensors::TensorFile::parse("fc3", &bytes).unwrap();
    let (dtype, shape) = f.info("activations").unwrap();
    assert_eq!(
        (format!("{dtype:?}"), shape),
        ("I8".to_string(), vec![300, 10])
    );
    let scale = f.float("scale").unwrap().data[0];
    let (_, zp) = f.int("zero_point").unwrap();
    let (_, q) = f.int("activations").unwrap();
    let deq: Vec<u32> = q
        .iter()
        .map(|&v| ((scale as f64 * (v - zp[0]) as f64) as f32).to_bits())
        .collect();
    assert_eq!(
        deq,
        int_outputs(&model, &o.params, &calib),
        "the logits are the engine's"
    );
    let bytes = std::fs::read(dir.path().join("input.safetensors")).unwrap();
    let f = qscope::model::tensors::TensorFile::parse("input", &bytes).unwrap();
    assert_eq!(f.info("activations").unwrap().1, vec![300, 784]);
}

// ---- the binary, as a user runs it ----

fn qscope(dir: &Path, args: &[&str]) -> (bool, String, String) {
    crate::util::qscope_in(dir, args)
}

fn report(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn cli_export_then_eval_reproduces_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let flags = [
        "--model",
        "mnist-cnn",
        "--weight-bits",
        "4",
        "--calib-samples",
        "300",
    ];
    let (ok, base, err) = qscope(d, &[&["eval", "--json"], &flags[..]].concat());
    assert!(ok, "{err}");
    let base = report(&base);
    for out in ["p.json", "p.toml", "m.safetensors"] {
        let (ok, stdout, err) = qscope(d, &[&["export", "--out", out], &flags[..]].concat());
        assert!(ok && stdout.contains("wrote"), "{out}: {err}");
        if out.ends_with(".safetensors") {
            assert!(stdout.contains("% of the float file"), "{stdout}");
        }
    }
    for p in ["p.json", "p.toml"] {
        let (ok, stdout, err) = qscope(
            d,
            &["eval", "--json", "--model", "mnist-cnn", "--params", p],
        );
        assert!(ok, "{p}: {err}");
        let r = report(&stdout);
        for k in [
            "quant_accuracy",
            "agreement",
            "output_sqnr_db",
            "fp32_accuracy",
        ] {
            assert_eq!(r[k], base[k], "{p}: {k}");
        }
    }
    let (ok, stdout, err) = qscope(d, &["eval", "--json", "--model", "m.safetensors"]);
    assert!(ok, "{err}");
    let r = report(&stdout);
    assert_eq!(r["quant_accuracy"], base["quant_accuracy"]);
    assert!(
        r["fp32_accuracy"].is_null() && r["agreement"].is_null() && r["output_sqnr_db"].is_null(),
        "{r}"
    );
    let (ok, stdout, err) = qscope(d, &["inspect", "m.safetensors"]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("conv1.weight_packed")
            && stdout.contains("I32")
            && stdout.contains("qscope.params"),
        "{stdout}"
    );
    let (ok, stdout, err) = qscope(
        d,
        &[
            "sensitivity",
            "--json",
            "--model",
            "mnist-cnn",
            "--params",
            "p.json",
            "--bits",
            "8",
        ],
    );
    assert!(ok, "{err}");
    let sens = report(&stdout);
    assert_eq!(sens["baseline_accuracy"], base["quant_accuracy"], "{sens}");
    assert_eq!(sens["rows"].as_array().unwrap().len(), 4);
    // Another model's parameters are refused.
    let (ok, _, err) = qscope(d, &["eval", "--params", "p.json"]);
    assert!(
        !ok && err.contains("another model") && err.trim().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn cli_refuses_a_missing_target_folder_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for args in [
        &["export", "--out", "nope/p.json"][..],
        &["export", "--out", "nope/m.safetensors"][..],
        &["plot", "--layer", "fc1", "--out", "nope/a.svg"][..],
        &["plot", "--all", "--out", "nope"][..],
        &["eval", "--dump-activations", "nope"][..],
    ] {
        let (ok, _, err) = qscope(d, args);
        assert!(
            !ok && err.contains("does not exist") && err.trim().lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    let (ok, _, err) = qscope(d, &["export", "--out", "p.yaml"]);
    assert!(!ok && err.contains(".json"), "{err}");
}

#[test]
fn cli_plots_and_dumps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, stdout, err) = qscope(
        d,
        &[
            "plot",
            "--layer",
            "fc1",
            "--out",
            "fc1.png",
            "--weight-bits",
            "4",
            "--calib-samples",
            "200",
        ],
    );
    assert!(ok, "{err}");
    assert!(stdout.contains("fc1.png"));
    assert_eq!(&std::fs::read(d.join("fc1.png")).unwrap()[1..4], b"PNG");
    std::fs::create_dir(d.join("plots")).unwrap();
    let (ok, _, err) = qscope(
        d,
        &[
            "plot",
            "--all",
            "--out",
            "plots",
            "--model",
            "mnist-cnn",
            "--calib-samples",
            "200",
        ],
    );
    assert!(ok, "{err}");
    for n in ["input", "conv1", "conv2", "fc1", "fc2"] {
        let svg = std::fs::read_to_string(d.join(format!("plots/{n}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{n}");
    }
    let (ok, _, err) = qscope(d, &["plot", "--layer", "fc9", "--out", "x.svg"]);
    assert!(!ok && err.contains("fc9") && err.contains("fc1"), "{err}");
    std::fs::create_dir(d.join("acts")).unwrap();
    let (ok, _, err) = qscope(
        d,
        &[
            "eval",
            "--dump-activations",
            "acts",
            "--calib-samples",
            "100",
        ],
    );
    assert!(ok, "{err}");
    for n in ["input", "fc1", "fc2", "fc3"] {
        assert!(
            d.join(format!("acts/{n}.safetensors")).exists(),
            "{n}: {err}"
        );
    }
}

#[test]
fn a_float_kept_graph_node_whose_output_feeds_a_float_island_exports_and_loads_back() {
    // The downsample conv of a residual block feeds the (float) Add, not the next weight node.
    let model = bundled::model("mnist-resnet").unwrap();
    let calib = bundled::calib().take(32);
    let eval = bundled::test().take(32);
    let c = QuantConfig {
        keep_float: vec!["/layers/layers.2/downsample/downsample.0/Conv".into()],
        ..Default::default()
    };
    let out = run(&model, &calib, &eval, &c, &Cancel::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    save_params(&path, &model, &out.params).unwrap();
    let back = load_params(&path, &model, false).unwrap();
    assert_same_engine_params(&out.params, &back, "float-kept downsample");
}
