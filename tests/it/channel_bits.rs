//! Weight bits per output channel (`[layers.NAME] channel_bits`, what `qscope mixed --unit
//! channel` writes): each row quantized at its own width (held to the f64 definition in the
//! library's unit tests), carried by exported parameters so that `eval --params` reproduces the
//! run bit for bit, and one-line errors for widths that cannot apply.

use crate::util::qscope;
use serde_json::Value;

/// Widths 2..=5 spread over fc1's 256 channels, with a run of each.
fn fc1_bits() -> Vec<u8> {
    (0..256).map(|r| 2 + ((r * 7 + r / 16) % 4) as u8).collect()
}

fn config_text(bits: &[u8], extra: &str) -> String {
    let list: Vec<String> = bits.iter().map(u8::to_string).collect();
    format!(
        "model = \"mnist-mlp\"\nweight_bits = 3\n{extra}\n[layers.fc1]\nchannel_bits = [{}]\n",
        list.join(", ")
    )
}

/// A change to a weight entry of a params file.
type Edit = fn(&mut Value);

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `qscope eval --params PARAMS --json` on the MLP, asserted to give `run`'s figures; returns
/// its report.
fn eval_params_like(params: &std::path::Path, run: &Value) -> Value {
    let (ok, out, err) = qscope(&[
        "eval",
        "--model",
        "mnist-mlp",
        "--params",
        params.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let again = json(&out);
    for key in ["quant_accuracy", "agreement", "output_sqnr_db"] {
        assert_eq!(again[key], run[key], "{key}");
    }
    again
}

/// `qscope export --config CFG --out PARAMS`, and the file it wrote.
fn export_params(cfg: &std::path::Path, params: &std::path::Path) -> Value {
    let (ok, _, err) = qscope(&[
        "export",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        params.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    json(&std::fs::read_to_string(params).unwrap())
}

#[test]
fn channel_bits_reach_the_params_file_and_reproduce_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, params) = (dir.path().join("c.toml"), dir.path().join("p.json"));
    let bits = fc1_bits();
    std::fs::write(&cfg, config_text(&bits, "")).unwrap();
    let (ok, out, err) = qscope(&["eval", "--config", cfg.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let run = json(&out);
    let fc1 = &run["layers"][0];
    assert_eq!(fc1["name"], "fc1");
    assert_eq!(fc1["weight_bits"], 5, "the widest channel");
    let mean = bits.iter().map(|&b| b as f64).sum::<f64>() / bits.len() as f64;
    assert!((fc1["channel_bits_mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    assert!(run["layers"][1].get("channel_bits_mean").is_none());

    let file = export_params(&cfg, &params);
    let w = &file["layers"][0]["weight"];
    assert_eq!(w["bits"], 5);
    let stored: Vec<u8> = w["channel_bits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(stored, bits);
    assert!(file["layers"][1]["weight"].get("channel_bits").is_none());
    // Each channel's scale is its own row's max |w| over its own width's qmax.
    let model = qscope::bundled::model("mnist-mlp").unwrap();
    let i = model.weight_layers()[0];
    let (wf, _, cols) = model.layers[i].op.weight_rows().unwrap();
    for (r, &b) in bits.iter().enumerate() {
        let amax = wf[r * cols..(r + 1) * cols]
            .iter()
            .fold(0.0f64, |m, &x| m.max((x as f64).abs()));
        let want = amax / ((1 << (b - 1)) - 1) as f64;
        let got = w["scale"][r].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-6 * want,
            "row {r}: {got} vs {want}"
        );
    }

    let again = eval_params_like(&params, &run);
    for (a, b) in again["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(run["layers"].as_array().unwrap())
    {
        assert_eq!(a["act_sqnr_db"], b["act_sqnr_db"], "{}", a["name"]);
        assert_eq!(
            a["channel_bits_mean"], b["channel_bits_mean"],
            "{}",
            a["name"]
        );
    }
}

#[test]
fn channel_bits_that_cannot_apply_get_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut short = fc1_bits();
    short.pop();
    let mut wide = fc1_bits();
    wide[3] = 9;
    let cases: Vec<(String, &str)> = vec![
        (config_text(&short, ""), "255 values"),
        (config_text(&wide, ""), "9 bits"),
        (config_text(&[], ""), "empty"),
        (
            config_text(&fc1_bits(), "granularity = \"per-tensor\""),
            "per-tensor",
        ),
    ];
    for (k, (text, what)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{k}.toml"));
        std::fs::write(&path, text).unwrap();
        let (ok, _, err) = qscope(&["eval", "--config", path.to_str().unwrap()]);
        assert!(!ok, "case {k} succeeded");
        assert_eq!(err.trim_end().lines().count(), 1, "case {k}: {err}");
        assert!(
            err.contains("layers.fc1.channel_bits") && err.contains(what),
            "case {k}: {err}"
        );
    }
    // A params file whose widths do not fit the layer or its `bits`.
    let (cfg, params) = (dir.path().join("c.toml"), dir.path().join("p.json"));
    std::fs::write(&cfg, config_text(&fc1_bits(), "")).unwrap();
    let good = export_params(&cfg, &params);
    let edits: [(&str, Edit); 3] = [
        ("256 output channels", |w| {
            w["channel_bits"].as_array_mut().unwrap().pop();
        }),
        ("widest", |w| w["bits"] = 6.into()),
        ("outside", |w| w["channel_bits"][0] = 1.into()),
    ];
    for (what, edit) in edits {
        let mut f = good.clone();
        edit(&mut f["layers"][0]["weight"]);
        let path = dir.path().join("bad.json");
        std::fs::write(&path, serde_json::to_string(&f).unwrap()).unwrap();
        let (ok, _, err) = qscope(&[
            "eval",
            "--model",
            "mnist-mlp",
            "--params",
            path.to_str().unwrap(),
        ]);
        assert!(!ok, "{what}: accepted");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
        assert!(
            err.contains("channel_bits") && err.contains(what),
            "{what}: {err}"
        );
    }
}

#[test]
fn gptq_rounds_each_channel_within_its_own_width_and_the_file_reproduces_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, params) = (dir.path().join("g.toml"), dir.path().join("g.json"));
    let bits = fc1_bits();
    let text = config_text(&bits, "weight_rounding = \"gptq\"");
    std::fs::write(&cfg, text).unwrap();
    let (ok, out, err) = qscope(&["eval", "--config", cfg.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let run = json(&out);
    let file = export_params(&cfg, &params);
    let w = &file["layers"][0]["weight"];
    // GPTQ chose integers that nearest rounding would not give: the file carries them, each
    // row inside the range of its own width.
    let ints: Vec<i64> = w["weights_int"]
        .as_array()
        .expect("GPTQ's integers are stored")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let cols = ints.len() / bits.len();
    for (r, &b) in bits.iter().enumerate() {
        let (lo, hi) = (-(1i64 << (b - 1)), (1i64 << (b - 1)) - 1);
        let row = &ints[r * cols..(r + 1) * cols];
        assert!(
            row.iter().all(|&v| (lo..=hi).contains(&v)),
            "row {r} at {b} bits"
        );
    }
    eval_params_like(&params, &run);
}
