//! Loss-aware activation range refinement (`--act-refine`): a brute-force search written here
//! over the same candidates finds the same range, and the bundled MLP's accuracy targets.

use crate::util::{Rng, f32t, qscope, safetensors_bytes};
use qscope::model::{load_dataset_bytes, load_model_bytes};
use qscope::pipeline::{Cancel, run};
use qscope::quant::ClipRange;
use qscope::{QuantConfig, Strategy};

/// A tiny MLP: linear 6→8 "h", relu, linear 8→4 "f", with `n` random samples.
fn tiny(seed: u64, n: usize) -> (qscope::Model, qscope::Dataset) {
    let mut rng = Rng(seed);
    let (w1, b1) = (rng.vec(8 * 6, -0.8, 0.8), rng.vec(8, -0.3, 0.3));
    let (w2, b2) = (rng.vec(4 * 8, -0.8, 0.8), rng.vec(4, -0.3, 0.3));
    let spec = "input_shape = [6]\n[[layers]]\nname = \"h\"\nop = \"linear\"\nweight = \"w1\"\nbias = \"b1\"\n[[layers]]\nop = \"relu\"\n[[layers]]\nname = \"f\"\nop = \"linear\"\nweight = \"w2\"\nbias = \"b2\"\n";
    let bytes = safetensors_bytes(
        &[
            f32t("w1", &[8, 6], &w1),
            f32t("b1", &[8], &b1),
            f32t("w2", &[4, 8], &w2),
            f32t("b2", &[4], &b2),
        ],
        Some(spec),
    );
    let model = load_model_bytes("tiny", "tiny", &bytes, None).unwrap();
    let xs = rng.vec(n * 6, -1.5, 1.5);
    let data = load_dataset_bytes(
        "tiny data",
        &safetensors_bytes(&[f32t("inputs", &[n, 6], &xs)], None),
    )
    .unwrap();
    (model, data)
}

/// 3-bit activations with the input's and the output's ranges set by hand, so that only the
/// hidden point `h` is refined.
fn config(refine: bool, h_range: Option<ClipRange>) -> QuantConfig {
    let mut c = QuantConfig {
        weight_bits: 4,
        act_bits: 3,
        act_strategy: Strategy::MinMax,
        act_refine: refine,
        save_outputs: true,
        ..Default::default()
    };
    c.layer_mut("input").act_range = Some([-1.5, 1.5]);
    c.layer_mut("f").act_range = Some([-3.0, 3.0]);
    if let Some(r) = h_range {
        c.layer_mut("h").act_range = Some([r.lo, r.hi]);
    }
    c
}

/// Mean over samples of KL(softmax(float) ‖ softmax(int)) in f64, 4 outputs per sample.
fn kl_loss(float: &[f32], quant: &[f32]) -> f64 {
    let log_softmax = |x: &[f32]| -> Vec<f64> {
        let m = x.iter().map(|&v| v as f64).fold(f64::MIN, f64::max);
        let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
        x.iter().map(|&v| v as f64 - m - s.ln()).collect()
    };
    let n = float.len() / 4;
    let mut total = 0.0;
    for (f, q) in float.chunks(4).zip(quant.chunks(4)) {
        let (lf, lq) = (log_softmax(f), log_softmax(q));
        total += (0..4).map(|k| lf[k].exp() * (lf[k] - lq[k])).sum::<f64>();
    }
    total / n as f64
}

#[test]
fn refinement_finds_the_range_a_brute_force_search_over_the_same_grid_finds() {
    let (model, data) = tiny(0xac7_2ef1, 300);
    let cancel = Cancel::new();
    let h_of = |c: &QuantConfig| {
        let o = run(&model, &data, &data, c, &cancel).unwrap();
        let saved = o.saved.unwrap();
        let act = o.params.by_name("h").unwrap().act.clone().unwrap();
        (act, kl_loss(&saved.float, &saved.quant))
    };
    // Reference: from the min/max range, SWEEPS rounds of trying the current range × k/20 for
    // k = 10..=26 (each evaluated as a hand-set range), taking a strictly lower loss.
    let (start, mut best) = h_of(&config(false, None));
    let mut current = start.range;
    for _ in 0..qscope::pipeline::act_refine::SWEEPS {
        let base = current;
        for k in 10..=26 {
            let f = k as f32 / 20.0;
            let cand = ClipRange::new(base.lo * f, base.hi * f);
            let (_, l) = h_of(&config(false, Some(cand)));
            if l < best * (1.0 - 1e-9) {
                (best, current) = (l, cand);
            }
        }
    }
    assert_ne!(current, start.range, "the grid has a better range here");
    let (refined, got) = h_of(&config(true, None));
    assert_eq!(refined.range, current, "refined vs brute force");
    assert!((got - best).abs() <= 1e-9 * best, "{got} vs {best}");
}

/// The bundled MLP's float and int top-1 in % with `flags` (mse weights per channel).
fn mlp_accuracy(flags: &[&str]) -> (f64, f64) {
    bundled_accuracy("mnist-mlp", flags)
}

/// Bundled `model`'s float and int top-1 in % with `flags` (mse weights per channel).
fn bundled_accuracy(model: &str, flags: &[&str]) -> (f64, f64) {
    let base = ["eval", "--model", model, "--weight-strategy", "mse"];
    let (ok, out, err) = qscope(&[&base[..], flags, &["--json"]].concat());
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["methods"]["act_refine"], true);
    let pct = |k: &str| r[k].as_f64().unwrap() * 100.0;
    (pct("fp32_accuracy"), pct("quant_accuracy"))
}

#[test]
fn mlp_w3a3_is_within_one_and_a_half_points_of_float_with_gptq_and_act_refine() {
    let (float, int) = mlp_accuracy(&[
        "--weight-bits",
        "3",
        "--act-bits",
        "3",
        "--act-strategy",
        "minmax",
        "--weight-rounding",
        "gptq",
        "--act-refine",
    ]);
    // Measured 96.40% (best of nearest rounding over the strategies: 95.45%); float 97.55%.
    assert!(int >= 96.40 - 0.1, "MLP W3A3 {int}");
    assert!(float - int <= 1.5, "{float} − {int}");
}

#[test]
fn mlp_w4a4_is_within_three_tenths_of_float_with_gptq_bias_correction_and_act_refine() {
    let (float, int) = mlp_accuracy(&[
        "--weight-bits",
        "4",
        "--act-bits",
        "4",
        "--act-strategy",
        "kl",
        "--weight-rounding",
        "gptq",
        "--bias-correction",
        "--act-refine",
    ]);
    // Measured 97.30% (nearest rounding: 97.00%, bias correction 97.20%); float 97.55%.
    assert!(int >= 97.30 - 0.1, "MLP W4A4 {int}");
    assert!(float - int <= 0.3 + 1e-9, "{float} − {int}");
}

#[test]
fn cnn_w4a4_is_within_three_tenths_of_float_with_gptq_and_act_refine() {
    // Chosen on 50,000 MNIST digits outside the bundled ones (scripts/validation), where plain
    // rounding with mse activations is 0.57 pt below float and this 0.18; 0.13 on 10,000 more.
    let (float, int) = bundled_accuracy(
        "mnist-cnn",
        &[
            "--weight-bits",
            "4",
            "--act-bits",
            "4",
            "--act-strategy",
            "mse",
            "--weight-rounding",
            "gptq",
            "--act-refine",
        ],
    );
    // Measured 98.30% (nearest rounding: 98.30% too); float 98.35%.
    assert!(int >= 98.30 - 0.1, "CNN W4A4 {int}");
    assert!(float - int <= 0.3 + 1e-9, "{float} − {int}");
}

#[test]
fn config_key_act_refine_turns_the_method_on() {
    let dir = tempfile::tempdir().unwrap();
    let toml = crate::util::write(&dir, "c.toml", b"act_refine = true\nact_bits = 4\n");
    let (ok, out, err) = qscope(&[
        "eval",
        "--model",
        "mnist-mlp",
        "--calib-samples",
        "100",
        "--config",
        toml.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["methods"]["act_refine"], true);
    assert!(r["timings_ms"]["act_refine"].as_f64().unwrap() > 0.0);
}
