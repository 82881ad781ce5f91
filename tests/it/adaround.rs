//! AdaRound: its hand-written gradient against finite differences of a loss written here in
//! f64, its rounding against a brute-force search over every up/down choice, the accuracy it
//! reaches on the bundled models at W2A8, and the parameters file that reproduces a run.

use crate::util::{Rng, qscope};
use qscope::quant::adaround::{
    AdaroundOptions, Block, GAMMA, Hessian, Scratch, ZETA, adaround_rows, objective,
};
use qscope::quant::weights::{QWeights, quantize_weights};
use qscope::{Granularity, Scheme, Strategy};

/// `n` input vectors of length `k` with correlated entries (three shared factors plus
/// independent noise of amplitude `noise`) and uneven magnitudes.
fn inputs(rng: &mut Rng, n: usize, k: usize, noise: f64) -> Vec<Vec<f64>> {
    let mix = rng.vec(3 * k, -1.0, 1.0);
    (0..n)
        .map(|_| {
            let f = rng.vec(3, -1.0, 1.0);
            (0..k)
                .map(|c| {
                    let s: f64 = (0..3).map(|j| (f[j] * mix[j * k + c]) as f64).sum();
                    (s + noise * rng.uniform(-1.0, 1.0) as f64) * (1.0 + (c % 3) as f64)
                })
                .collect()
        })
        .collect()
}

/// Σ x·xᵀ, row-major.
fn hessian(xs: &[Vec<f64>]) -> Vec<f64> {
    let k = xs[0].len();
    let mut h = vec![0.0; k * k];
    for x in xs {
        for a in 0..k {
            for b in 0..k {
                h[a * k + b] += x[a] * x[b];
            }
        }
    }
    h
}

fn settings(bits: u8, granularity: Granularity, scheme: Scheme) -> qscope::config::WeightSettings {
    qscope::config::WeightSettings {
        bits,
        scheme,
        granularity,
        strategy: Strategy::MinMax,
        percentile: 99.99,
        clip: None,
    }
}

/// The soft weight of row `r`, column `c` at h: s·(clip(⌊w/s⌋ + z + h, qmin, qmax) − z).
fn soft_weight(q: &QWeights, w: f64, r: usize, c: usize, h: f64) -> f64 {
    let p = q.param(r, c / q.group_size());
    let (s, z) = (p.scale as f64, p.zero_point as f64);
    let v = ((w / s).floor() + z + h).clamp(p.qmin() as f64, p.qmax() as f64);
    s * (v - z)
}

/// AdaRound's loss written out: per row eᵀHe / (m·σ²) with e = w − ŵ, m the mean of diag H and
/// σ² the mean of the row's squared scales, plus λ·Σ(1 − |2h − 1|^β).
fn reference_loss(q: &QWeights, w: &[f32], h: &[f64], v: &[f64], reg: Option<(f64, f64)>) -> f64 {
    let (rows, k) = (q.rows, q.cols);
    let m = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
    let hv: Vec<f64> = v
        .iter()
        .map(|&x| ((ZETA - GAMMA) / (1.0 + (-x).exp()) + GAMMA).clamp(0.0, 1.0))
        .collect();
    let mut loss = 0.0;
    for r in 0..rows {
        let e: Vec<f64> = (0..k)
            .map(|c| {
                let i = r * k + c;
                w[i] as f64 - soft_weight(q, w[i] as f64, r, c, hv[i])
            })
            .collect();
        let s2 = (0..k)
            .map(|c| (q.param(r, c / q.group_size()).scale as f64).powi(2))
            .sum::<f64>()
            / k as f64;
        let quad: f64 = (0..k)
            .flat_map(|a| (0..k).map(move |b| (a, b)))
            .map(|(a, b)| e[a] * h[a * k + b] * e[b])
            .sum();
        loss += quad / (m * s2);
    }
    if let Some((lambda, beta)) = reg {
        loss += lambda
            * hv.iter()
                .map(|x| 1.0 - (2.0 * x - 1.0).abs().powf(beta))
                .sum::<f64>();
    }
    loss
}

#[test]
fn gradient_matches_finite_differences_of_the_loss_written_out() {
    let mut rng = Rng(0xada0_0001);
    let (rows, k) = (3, 7);
    let w = rng.vec(rows * k, -1.0, 1.0);
    let h = hessian(&inputs(&mut rng, 40, k, 0.2));
    let q = quantize_weights(
        &w,
        rows,
        k,
        &settings(3, Granularity::Group(4), Scheme::Asymmetric),
    );
    let block = Block::new(&w, &q, 0..rows);
    let hess = Hessian::<f64>::new(&h, k).unwrap();
    let mut scratch = Scratch::new(&block);
    let v: Vec<f64> = (0..rows * k)
        .map(|_| rng.uniform(-1.8, 1.8) as f64)
        .collect();
    for reg in [None, Some((0.7, 3.5)), Some((0.05, 20.0))] {
        let mut grad = vec![0.0; v.len()];
        let loss = objective(&block, &hess, &v, reg, &mut scratch, Some(&mut grad));
        let want = reference_loss(&q, &w, &h, &v, reg);
        assert!(
            (loss - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{reg:?}: loss {loss} vs {want}"
        );
        let step = 1e-6;
        for i in 0..v.len() {
            let (mut up, mut down) = (v.clone(), v.clone());
            up[i] += step;
            down[i] -= step;
            let fd = (reference_loss(&q, &w, &h, &up, reg)
                - reference_loss(&q, &w, &h, &down, reg))
                / (2.0 * step);
            assert!(
                (grad[i] - fd).abs() <= 1e-5 * fd.abs().max(1.0),
                "{reg:?} weight {i}: gradient {} vs finite difference {fd}",
                grad[i]
            );
        }
    }
}

/// ‖(W − Ŵ)·X‖² = Σ_r e_rᵀ·H·e_r for the integers `ints` on the grid of `q`.
fn output_error(q: &QWeights, w: &[f32], h: &[f64], ints: &[i8]) -> f64 {
    let k = q.cols;
    (0..q.rows)
        .map(|r| {
            let p = q.param(r, 0);
            let e: Vec<f64> = (0..k)
                .map(|c| {
                    let deq = p.scale as f64 * (ints[r * k + c] as i32 - p.zero_point) as f64;
                    w[r * k + c] as f64 - deq
                })
                .collect();
            (0..k)
                .flat_map(|a| (0..k).map(move |b| (a, b)))
                .map(|(a, b)| e[a] * h[a * k + b] * e[b])
                .sum::<f64>()
        })
        .sum()
}

/// The least ‖(W − Ŵ)·X‖² over every choice of ⌊w/s⌋ or ⌊w/s⌋ + 1 per weight (clamped).
fn brute_force(q: &QWeights, w: &[f32], h: &[f64]) -> f64 {
    let k = q.cols;
    let mut total = 0.0;
    for r in 0..q.rows {
        let p = q.param(r, 0);
        let mut row = q.clone();
        row.rows = 1;
        row.params = vec![*p];
        let wr = &w[r * k..(r + 1) * k];
        let best = (0..1u32 << k)
            .map(|bits| {
                let ints: Vec<i8> = (0..k)
                    .map(|c| {
                        let up = (bits >> c) & 1;
                        let v = (wr[c] as f64 / p.scale as f64).floor() as i32
                            + p.zero_point
                            + up as i32;
                        v.clamp(p.qmin(), p.qmax()) as i8
                    })
                    .collect();
                output_error(&row, wr, h, &ints)
            })
            .fold(f64::INFINITY, f64::min);
        total += best;
    }
    total
}

/// Measured: AdaRound lands within 1.32× of the optimum on these six layers (and once on
/// nearest rounding, which is within it too); on nearly rank-3 inputs (noise 0.2) AdaRound and
/// GPTQ alike land 1.5–6.4× above the optimum, so those are not asserted.
#[test]
fn rounding_beats_nearest_and_comes_close_to_the_brute_force_optimum() {
    let (rows, k) = (2, 10);
    let mut worst: f64 = 1.0;
    for seed in 0..6u64 {
        let mut rng = Rng(0xada0_0100 + seed);
        let w = rng.vec(rows * k, -1.0, 1.0);
        let h = hessian(&inputs(&mut rng, 60, k, 1.0));
        let nearest = quantize_weights(
            &w,
            rows,
            k,
            &settings(3, Granularity::PerChannel, Scheme::Symmetric),
        );
        let mut q = nearest.clone();
        adaround_rows(
            &w,
            &h,
            &mut q,
            0..rows,
            &AdaroundOptions::default(),
            &|| false,
        )
        .unwrap();
        assert_eq!(q.params, nearest.params, "the scales stay");
        let e_near = output_error(&nearest, &w, &h, &nearest.q);
        let e_ada = output_error(&nearest, &w, &h, &q.q);
        let e_opt = brute_force(&nearest, &w, &h);
        assert!(e_opt <= e_ada * (1.0 + 1e-12), "the search is exhaustive");
        assert!(
            e_ada <= e_near,
            "seed {seed}: AdaRound {e_ada} > nearest {e_near}"
        );
        assert!(
            e_ada <= 1.5 * e_opt,
            "seed {seed}: AdaRound {e_ada} vs optimum {e_opt} (nearest {e_near})"
        );
        worst = worst.max(e_ada / e_opt);
    }
    eprintln!("AdaRound / optimum, worst of 6 layers: {worst:.3}");
}

#[test]
fn adaround_is_refused_on_a_hessian_of_the_wrong_size_and_stops_when_asked() {
    let w = [0.3f32, -0.2, 0.1, 0.4];
    let mut q = quantize_weights(
        &w,
        2,
        2,
        &settings(4, Granularity::PerChannel, Scheme::Symmetric),
    );
    let opts = AdaroundOptions::default();
    let e = adaround_rows(&w, &[1.0; 3], &mut q, 0..2, &opts, &|| false).unwrap_err();
    assert!(e.to_string().contains("3 entries"), "{e}");
    let h = [1.0, 0.0, 0.0, 1.0];
    let e = adaround_rows(&w, &h, &mut q, 0..2, &opts, &|| true).unwrap_err();
    assert_eq!(e, qscope::quant::adaround::AdaroundError::Stopped);
}

/// `eval --json` with `flags`: the report and the quantized outputs.
fn eval(flags: &[&str], out: &std::path::Path) -> (serde_json::Value, Vec<u8>) {
    let args = [
        &["eval", "--json", "--save-outputs", out.to_str().unwrap()][..],
        flags,
    ]
    .concat();
    let (ok, stdout, err) = qscope(&args);
    assert!(ok, "{err}");
    let bytes = std::fs::read(out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let quant = st.tensor("quant").unwrap().data().to_vec();
    (serde_json::from_str(&stdout).unwrap(), quant)
}

#[test]
fn w2a8_targets_on_the_bundled_models_and_the_parameters_file_reproduces_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let w2a8 = [
        "--weight-bits",
        "2",
        "--act-bits",
        "8",
        "--weight-strategy",
        "mse",
        "--weight-rounding",
        "adaround",
    ];
    // The CNN (nearest rounding: 90.90%, GPTQ: 97.25%).
    let cnn = [
        &["--model", "mnist-cnn", "--act-strategy", "mse"][..],
        &w2a8,
    ]
    .concat();
    let (r, _) = eval(&cnn, &dir.path().join("c.safetensors"));
    assert_eq!(r["methods"]["weight_rounding"], "adaround");
    assert!(r["timings_ms"]["adaround"].as_f64().unwrap() > 0.0);
    let acc = r["quant_accuracy"].as_f64().unwrap();
    assert!(acc >= CNN_W2A8, "CNN W2A8 AdaRound {acc}");
    // The MLP with bias correction (nearest: 85.50%, GPTQ: 88.50%).
    let mlp = [
        &[
            "--model",
            "mnist-mlp",
            "--act-strategy",
            "mse",
            "--bias-correction",
        ][..],
        &w2a8,
    ]
    .concat();
    let (r, quant) = eval(&mlp, &dir.path().join("a.safetensors"));
    let acc = r["quant_accuracy"].as_f64().unwrap();
    assert!(acc >= MLP_W2A8, "MLP W2A8 AdaRound {acc}");
    let p = dir.path().join("p.json");
    let (ok, _, err) = qscope(&[&["export", "--out", p.to_str().unwrap()][..], &mlp].concat());
    assert!(ok, "{err}");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    for l in file["layers"].as_array().unwrap() {
        assert!(l["weight"]["weights_int"].is_array(), "{}", l["name"]);
    }
    let (again, quant_again) = eval(
        &["--model", "mnist-mlp", "--params", p.to_str().unwrap()],
        &dir.path().join("b.safetensors"),
    );
    assert_eq!(
        quant, quant_again,
        "--params reproduces the integer outputs"
    );
    assert_eq!(r["quant_accuracy"], again["quant_accuracy"]);
}

/// W2A8 top-1 reached with AdaRound's defaults, 0.1 point below the measured figure (97.35%
/// today, 97.45% when first measured: AdaRound follows the last bits of its float inputs; on
/// 60,000 held-out MNIST digits 97.66%, float 98.54%).
const CNN_W2A8: f64 = 0.9735 - 0.001;
/// The same for the MLP with bias correction (measured 95.35% since the float linear sums in
/// 16 lanes, 95.55% before: AdaRound follows the last bits of its float inputs; the issue asks
/// ≥ 95.0%).
const MLP_W2A8: f64 = 0.9535 - 0.001;
