//! The accuracy methods (bias correction, GPTQ, cross-layer equalization) against independent
//! f64 references written here with direct loops, and the parameters file that carries their
//! integer weights and biases.

use crate::util::{Rng, f32t, qscope, safetensors_bytes, write};
use qscope::config::WeightRounding;
use qscope::model::{load_dataset_bytes, load_model_bytes};
use qscope::params::ModelParams;
use qscope::pipeline::{Cancel, run};
use qscope::quant::weights::{QWeights, quantize_weights};
use qscope::{Granularity, QuantConfig, Scheme, Strategy};

// ---------------------------------------------------------------------------------------------
// References in f64

/// The im2col patches (one per output position, taps ordered channel, row, column) of one
/// sample [c, h, w] for a k×k kernel, stride 1, padding `pad` (zeros).
fn patches(x: &[f64], (c, h, w): (usize, usize, usize), k: usize, pad: usize) -> Vec<Vec<f64>> {
    let (oh, ow) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
    let mut out = Vec::new();
    for oy in 0..oh {
        for ox in 0..ow {
            let mut p = Vec::with_capacity(c * k * k);
            for ci in 0..c {
                for ky in 0..k {
                    for kx in 0..k {
                        let (y, xx) = (
                            (oy + ky) as isize - pad as isize,
                            (ox + kx) as isize - pad as isize,
                        );
                        let inside = y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w;
                        p.push(if inside {
                            x[(ci * h + y as usize) * w + xx as usize]
                        } else {
                            0.0
                        });
                    }
                }
            }
            out.push(p);
        }
    }
    out
}

/// w·p + b for one row of weights.
fn dot(w: &[f64], p: &[f64]) -> f64 {
    w.iter().zip(p).map(|(a, b)| a * b).sum()
}

/// The dequantized rows of `q` in f64.
fn deq(q: &QWeights) -> Vec<Vec<f64>> {
    let gs = q.group_size();
    (0..q.rows)
        .map(|r| {
            (0..q.cols)
                .map(|c| {
                    let p = q.param(r, c / gs);
                    p.scale as f64 * (q.q[r * q.cols + c] as i32 - p.zero_point) as f64
                })
                .collect()
        })
        .collect()
}

fn rows_f64(w: &[f32], cols: usize) -> Vec<Vec<f64>> {
    w.chunks(cols)
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect()
}

/// Inverse of a symmetric positive definite matrix by Gauss-Jordan elimination.
fn inverse(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut row = r.clone();
            row.extend((0..n).map(|j| if i == j { 1.0 } else { 0.0 }));
            row
        })
        .collect();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&x, &y| m[x][col].abs().total_cmp(&m[y][col].abs()))
            .unwrap();
        m.swap(col, piv);
        let d = m[col][col];
        m[col].iter_mut().for_each(|v| *v /= d);
        for r in 0..n {
            if r != col {
                let f = m[r][col];
                let pivot_row = m[col].clone();
                m[r].iter_mut()
                    .zip(&pivot_row)
                    .for_each(|(v, p)| *v -= f * p);
            }
        }
    }
    m.into_iter().map(|r| r[n..].to_vec()).collect()
}

/// Upper U with a = Uᵀ·U (the transpose of the lower Cholesky factor).
fn cholesky_upper(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            l[i][j] = if i == j {
                (a[i][i] - s).sqrt()
            } else {
                (a[i][j] - s) / l[j][j]
            };
        }
    }
    (0..n).map(|i| (0..n).map(|j| l[j][i]).collect()).collect()
}

/// GPTQ as the paper's Algorithm 1 (no lazy batches) on rows `w` with Hessian `h`, the grid of
/// `q` (its scales), optional act-order; returns the integers.
fn gptq_reference(w: &[Vec<f64>], h: &[Vec<f64>], q: &QWeights, act_order: bool) -> Vec<i8> {
    let n = h.len();
    let mut h = h.to_vec();
    for (i, row) in h.iter_mut().enumerate() {
        if row[i] == 0.0 {
            row[i] = 1.0;
        }
    }
    let mut perm: Vec<usize> = (0..n).collect();
    if act_order {
        perm.sort_by(|&a, &b| h[b][b].total_cmp(&h[a][a]));
    }
    let mut hp: Vec<Vec<f64>> = perm
        .iter()
        .map(|&a| perm.iter().map(|&b| h[a][b]).collect())
        .collect();
    let damp = 0.01 * (0..n).map(|i| hp[i][i]).sum::<f64>() / n as f64;
    (0..n).for_each(|i| hp[i][i] += damp);
    let u = cholesky_upper(&inverse(&hp));
    let gs = q.group_size();
    let mut out = vec![0i8; q.rows * n];
    for (r, row) in w.iter().enumerate() {
        let mut wr: Vec<f64> = perm.iter().map(|&c| row[c]).collect();
        for i in 0..n {
            let p = q.param(r, perm[i] / gs);
            let v = ((wr[i] / p.scale as f64).round() as i64 + p.zero_point as i64)
                .clamp(p.qmin() as i64, p.qmax() as i64);
            out[r * n + perm[i]] = v as i8;
            let err = (wr[i] - p.scale as f64 * (v - p.zero_point as i64) as f64) / u[i][i];
            for j in i + 1..n {
                wr[j] -= err * u[i][j];
            }
        }
    }
    out
}

/// 2·Σ x·xᵀ over patches.
fn hessian(xs: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = xs[0].len();
    let mut h = vec![vec![0.0; n]; n];
    for x in xs {
        for a in 0..n {
            for b in 0..n {
                h[a][b] += 2.0 * x[a] * x[b];
            }
        }
    }
    h
}

// ---------------------------------------------------------------------------------------------
// A tiny model: conv 2→3 3×3 pad 1 on 4×4, relu, flatten (48), linear 48→4.

struct Tiny {
    model: qscope::Model,
    data: qscope::Dataset,
    x: Vec<Vec<f64>>,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

fn tiny(seed: u64) -> Tiny {
    let mut rng = Rng(seed);
    let (w1, b1) = (rng.vec(3 * 2 * 9, -0.6, 0.6), rng.vec(3, -0.2, 0.2));
    let (w2, b2) = (rng.vec(4 * 48, -0.3, 0.3), rng.vec(4, -0.2, 0.2));
    let spec = "input_shape = [2, 4, 4]\n[[layers]]\nname = \"c\"\nop = \"conv2d\"\nweight = \"w1\"\nbias = \"b1\"\npadding = 1\n[[layers]]\nop = \"relu\"\n[[layers]]\nop = \"flatten\"\n[[layers]]\nname = \"f\"\nop = \"linear\"\nweight = \"w2\"\nbias = \"b2\"\n";
    let bytes = safetensors_bytes(
        &[
            f32t("w1", &[3, 2, 3, 3], &w1),
            f32t("b1", &[3], &b1),
            f32t("w2", &[4, 48], &w2),
            f32t("b2", &[4], &b2),
        ],
        Some(spec),
    );
    let model = load_model_bytes("tiny", "tiny", &bytes, None).unwrap();
    let n = 24;
    let xs = rng.vec(n * 32, -1.0, 2.0);
    let data = load_dataset_bytes(
        "tiny data",
        &safetensors_bytes(&[f32t("inputs", &[n, 2, 4, 4], &xs)], None),
    )
    .unwrap();
    let x = xs
        .chunks(32)
        .map(|s| s.iter().map(|&v| v as f64).collect())
        .collect();
    Tiny {
        model,
        data,
        x,
        w1,
        b1,
        w2,
        b2,
    }
}

fn tiny_config(bc: bool, rounding: WeightRounding) -> QuantConfig {
    QuantConfig {
        weight_bits: 3,
        weight_strategy: Strategy::MinMax,
        granularity: Granularity::PerChannel,
        bias_correction: bc,
        weight_rounding: rounding,
        ..Default::default()
    }
}

fn run_tiny(t: &Tiny, config: &QuantConfig) -> ModelParams {
    run(&t.model, &t.data, &t.data, config, &Cancel::new())
        .unwrap()
        .params
}

/// The conv layer's output (pre-relu) for each sample, [3][16], with weights `w` and bias `b`.
fn conv_out(x: &[f64], w: &[Vec<f64>], b: &[f64]) -> Vec<Vec<f64>> {
    let ps = patches(x, (2, 4, 4), 3, 1);
    (0..3)
        .map(|o| ps.iter().map(|p| dot(&w[o], p) + b[o]).collect())
        .collect()
}

/// Fake quantization in f64 (formats.md §3): s·(clamp(round(x/s) + z) − z).
fn fq(x: f64, q: &qscope::quant::QParams) -> f64 {
    let (lo, hi) = (q.qmin(), q.qmax());
    let v = ((x / q.scale as f64).round() + q.zero_point as f64).clamp(lo as f64, hi as f64);
    q.scale as f64 * (v - q.zero_point as f64)
}

/// Σ over samples of the rows of `y` ([channels][positions]) summed per channel.
fn add_means(acc: &mut [f64], y: &[Vec<f64>], n: f64) {
    for (a, row) in acc.iter_mut().zip(y) {
        *a += row.iter().sum::<f64>() / (row.len() as f64 * n);
    }
}

#[test]
fn bias_correction_matches_the_float_means_through_fake_quant_reference() {
    let t = tiny(0x5eed_b1a5);
    let params = run_tiny(&t, &tiny_config(true, WeightRounding::Nearest));
    let (q1, q2) = (
        &params.layers[0].weight.as_ref().unwrap(),
        &params.layers[1].weight.as_ref().unwrap(),
    );
    let (w1, w2) = (rows_f64(&t.w1, 18), rows_f64(&t.w2, 48));
    let (d1, d2) = (deq(&q1.q), deq(&q2.q));
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let (b1, b2) = (f64s(&t.b1), f64s(&t.b2));
    let got1 = f64s(q1.bias.as_ref().expect("conv bias corrected"));
    let got2 = f64s(q2.bias.as_ref().expect("linear bias corrected"));
    let qin = params.input().expect("input point").qparams;
    let qh = params.layers[0].act.as_ref().unwrap().qparams;
    let n = t.x.len() as f64;
    // Float means of each layer's output, and the quantized network's means with the corrected
    // biases: input fake-quantized, 3-bit weights, the relu output fake-quantized.
    let (mut f1, mut g1, mut f2, mut g2) = ([0.0; 3], [0.0; 3], [0.0; 4], [0.0; 4]);
    for x in &t.x {
        let xq: Vec<f64> = x.iter().map(|&v| fq(v, &qin)).collect();
        let (y, yq) = (conv_out(x, &w1, &b1), conv_out(&xq, &d1, &got1));
        add_means(&mut f1, &y, n);
        add_means(&mut g1, &yq, n);
        let h: Vec<f64> = y.into_iter().flatten().map(|v| v.max(0.0)).collect();
        let hq: Vec<f64> = yq
            .into_iter()
            .flatten()
            .map(|v| fq(v.max(0.0), &qh))
            .collect();
        for o in 0..4 {
            f2[o] += (dot(&w2[o], &h) + b2[o]) / n;
            g2[o] += (dot(&d2[o], &hq) + got2[o]) / n;
        }
    }
    // The engine rounds the bias to s_in·s_w and requantizes the conv output in fixed point:
    // a fraction of one output step apart from the f64 simulation.
    for o in 0..3 {
        assert!(
            (g1[o] - f1[o]).abs() < 0.05 * qh.scale as f64,
            "conv {o}: {} vs {}",
            g1[o],
            f1[o]
        );
        assert!(
            (got1[o] - b1[o]).abs() > 1e-4,
            "a 3-bit conv has a mean error to correct"
        );
    }
    for o in 0..4 {
        assert!(
            (g2[o] - f2[o]).abs() < 0.02 * (1.0 + f2[o].abs()),
            "linear {o}: {} vs {}",
            g2[o],
            f2[o]
        );
    }
    // Without the method the model's biases stay.
    let plain = run_tiny(&t, &tiny_config(false, WeightRounding::Nearest));
    assert!(
        plain
            .layers
            .iter()
            .all(|l| l.weight.as_ref().unwrap().bias.is_none())
    );
}

#[test]
fn gptq_in_the_pipeline_matches_the_reference_layer_by_layer() {
    let t = tiny(0x6707_0001);
    let params = run_tiny(&t, &tiny_config(false, WeightRounding::Gptq));
    let (q1, q2) = (
        &params.layers[0].weight.as_ref().unwrap().q,
        &params.layers[1].weight.as_ref().unwrap().q,
    );
    let w1 = rows_f64(&t.w1, 18);
    let p1: Vec<Vec<f64>> =
        t.x.iter()
            .flat_map(|x| patches(x, (2, 4, 4), 3, 1))
            .collect();
    let want1 = gptq_reference(&w1, &hessian(&p1), q1, false);
    assert_eq!(q1.q, want1, "conv layer");
    let nearest = run_tiny(&t, &tiny_config(false, WeightRounding::Nearest));
    assert_ne!(
        nearest.layers[0].weight.as_ref().unwrap().q.q,
        want1,
        "GPTQ changed some rounding"
    );
    // The linear layer's inputs come from the GPTQ-rounded conv.
    let d1 = deq(q1);
    let b1: Vec<f64> = t.b1.iter().map(|&v| v as f64).collect();
    let h2: Vec<Vec<f64>> =
        t.x.iter()
            .map(|x| {
                conv_out(x, &d1, &b1)
                    .into_iter()
                    .flatten()
                    .map(|v| v.max(0.0))
                    .collect()
            })
            .collect();
    let want2 = gptq_reference(&rows_f64(&t.w2, 48), &hessian(&h2), q2, false);
    assert_eq!(q2.q, want2, "linear layer");
}

/// Correlated inputs [n, k]: a few shared factors plus noise, some columns scaled up.
fn correlated_inputs(rng: &mut Rng, n: usize, k: usize) -> Vec<Vec<f64>> {
    let mix: Vec<f32> = rng.vec(4 * k, -1.0, 1.0);
    (0..n)
        .map(|_| {
            let f = rng.vec(4, -1.0, 1.0);
            (0..k)
                .map(|c| {
                    let s: f64 = (0..4).map(|j| (f[j] * mix[j * k + c]) as f64).sum();
                    (s + 0.3 * rng.uniform(-1.0, 1.0) as f64) * if c % 5 == 0 { 3.0 } else { 1.0 }
                })
                .collect()
        })
        .collect()
}

fn output_error(w: &[Vec<f64>], q: &QWeights, ints: &[i8], xs: &[Vec<f64>]) -> f64 {
    let mut q2 = q.clone();
    q2.q = ints.to_vec();
    let d = deq(&q2);
    xs.iter()
        .map(|x| {
            (0..w.len())
                .map(|r| (dot(&w[r], x) - dot(&d[r], x)).powi(2))
                .sum::<f64>()
        })
        .sum()
}

#[test]
fn gptq_core_matches_the_reference_and_beats_nearest_rounding() {
    let mut rng = Rng(0x6707_0002);
    let (rows, k) = (12, 20);
    let w: Vec<f32> = rng.vec(rows * k, -1.0, 1.0);
    let xs = correlated_inputs(&mut rng, 300, k);
    let h = hessian(&xs);
    let hflat: Vec<f64> = h.iter().flatten().copied().collect();
    let wr = rows_f64(&w, k);
    for (gran, scheme) in [
        (Granularity::PerChannel, Scheme::Symmetric),
        (Granularity::Group(8), Scheme::Symmetric),
        (Granularity::PerChannel, Scheme::Asymmetric),
    ] {
        let s = qscope::config::WeightSettings {
            bits: 3,
            scheme,
            granularity: gran,
            strategy: Strategy::MinMax,
            percentile: 99.99,
            clip: None,
        };
        let nearest = quantize_weights(&w, rows, k, &s);
        let e_near = output_error(&wr, &nearest, &nearest.q, &xs);
        for act_order in [false, true] {
            let mut q = nearest.clone();
            qscope::quant::gptq::gptq_rows(&w, &hflat, &mut q, 0..rows, act_order).unwrap();
            assert_eq!(q.params, nearest.params, "the scales stay");
            let want = gptq_reference(&wr, &h, &nearest, act_order);
            assert_eq!(q.q, want, "{gran} {scheme} act_order {act_order}");
            let e = output_error(&wr, &nearest, &q.q, &xs);
            assert!(
                e <= e_near,
                "{gran} {scheme} act_order {act_order}: GPTQ {e} > nearest {e_near}"
            );
            assert!(
                e < 0.9 * e_near,
                "{gran} {scheme}: GPTQ {e} barely beats nearest {e_near}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parameters file carries the methods' weights and biases.

#[test]
fn exported_parameters_reproduce_a_run_with_the_methods_bit_for_bit() {
    let mlp = "--model mnist-mlp --weight-bits 3 --act-bits 4 --calib-samples 200 --bias-correction --weight-rounding gptq --gptq-act-order --act-refine";
    round_trip(mlp, "mnist-mlp", false);
    let cnn = "--model mnist-cnn --weight-bits 4 --act-bits 4 --calib-samples 200 --cle --bias-correction";
    round_trip(cnn, "mnist-cnn", true);
}

/// Exports with `flags`, evaluates with them, evaluates the exported file: the integer outputs
/// agree bit for bit; the file still loads without the methods' fields.
fn round_trip(flags: &str, model: &str, cle: bool) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.json");
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let (ps, as_, bs) = (
        p.to_str().unwrap(),
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    );
    let common: Vec<&str> = flags.split(' ').collect();
    let (ok, _, err) = qscope(&[&["export", "--out", ps][..], &common].concat());
    assert!(ok, "{err}");
    let (ok, out, err) =
        qscope(&[&["eval", "--json", "--save-outputs", as_][..], &common].concat());
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["methods"]["bias_correction"], true);
    assert_eq!(
        r["methods"]["weight_rounding"],
        if cle { "nearest" } else { "gptq" }
    );
    assert_eq!(r["methods"]["gptq_act_order"], !cle);
    assert_eq!(r["methods"]["cle"], cle);
    assert_eq!(r["methods"]["act_refine"], !cle);
    assert_eq!(
        r["cle_pairs"].as_array().unwrap().len(),
        if cle { 3 } else { 0 }
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(
        file["methods"], r["methods"],
        "the file records the methods"
    );
    let layers = file["layers"].as_array().unwrap();
    for l in layers {
        assert!(
            l["weight"]["weights_int"]
                .as_array()
                .is_some_and(|v| !v.is_empty()),
            "{}",
            l["name"]
        );
    }
    // Bias correction keeps a layer's correction only where it helps; some layer keeps one.
    let biased = layers.iter().filter(|l| {
        l["weight"]["bias"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
    });
    assert!(biased.count() >= 1, "no layer carries a corrected bias");
    let (ok, out, err) = qscope(&[
        "eval",
        "--model",
        model,
        "--params",
        ps,
        "--save-outputs",
        bs,
        "--json",
    ]);
    assert!(ok, "{err}");
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        again["methods"], r["methods"],
        "--params reports the file's methods"
    );
    let quant = |path: &std::path::Path| {
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensor("quant").unwrap().data().to_vec()
    };
    assert_eq!(
        quant(&a),
        quant(&b),
        "--params reproduces the integer outputs"
    );
    // So does a quantized model file (§6) written with the same flags.
    let m = dir.path().join("m.safetensors");
    let (ms, cs) = (m.to_str().unwrap(), dir.path().join("c.safetensors"));
    let (ok, _, err) = qscope(&[&["export", "--out", ms][..], &common].concat());
    assert!(ok, "{err}");
    let (ok, _, err) = qscope(&[
        "eval",
        "--model",
        ms,
        "--save-outputs",
        cs.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        quant(&a),
        quant(&cs),
        "the quantized model file reproduces them"
    );
    // Without the fields the file still loads (the float weights are quantized again).
    let mut old = file.clone();
    for l in old["layers"].as_array_mut().unwrap() {
        let w = l["weight"].as_object_mut().unwrap();
        w.remove("weights_int");
        w.remove("bias");
    }
    let q = write(&dir, "old.json", old.to_string().as_bytes());
    let (ok, _, err) = qscope(&["eval", "--model", model, "--params", q.to_str().unwrap()]);
    assert!(ok, "{err}");
}

#[test]
fn bad_method_fields_in_a_parameters_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.json");
    let ps = p.to_str().unwrap();
    let (ok, _, err) = qscope(&[
        "export",
        "--out",
        ps,
        "--model",
        "mnist-mlp",
        "--weight-bits",
        "4",
        "--calib-samples",
        "100",
        "--bias-correction",
    ]);
    assert!(ok, "{err}");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert!(
        file["layers"][0]["weight"]["weights_int"].is_null(),
        "nearest rounding stores no integers"
    );
    for (field, value, says) in [
        ("bias", serde_json::json!([1.0, 2.0]), "output channels"),
        ("weights_int", serde_json::json!([0, 1]), "needs"),
    ] {
        let mut f = file.clone();
        f["layers"][0]["weight"][field] = value;
        let q = write(&dir, "bad.json", f.to_string().as_bytes());
        let (ok, _, err) = qscope(&[
            "eval",
            "--model",
            "mnist-mlp",
            "--params",
            q.to_str().unwrap(),
        ]);
        assert!(
            !ok && err.contains(field) && err.contains(says),
            "{field}: {err}"
        );
    }
    let mut f = file.clone();
    let n = 256 * 784;
    f["layers"][0]["weight"]["weights_int"] = serde_json::json!(vec![9; n]);
    let q = write(&dir, "bad.json", f.to_string().as_bytes());
    let (ok, _, err) = qscope(&[
        "eval",
        "--model",
        "mnist-mlp",
        "--params",
        q.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("outside"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Cross-layer equalization.

/// conv 2→4 3×3 pad 1, relu, maxpool 2, depthwise conv 4→4 3×3 pad 1, relu, flatten (36),
/// linear 36→5, relu, linear 5→3; output channels of very different sizes.
fn chain_model(seed: u64) -> qscope::Model {
    let mut rng = Rng(seed);
    let mut spread = |rows: usize, k: usize| -> Vec<f32> {
        let w = rng.vec(rows * k, -1.0, 1.0);
        w.iter()
            .enumerate()
            .map(|(i, v)| v * 4f32.powi((i / k) as i32 % 4 - 2))
            .collect()
    };
    let (w1, w2, w3, w4) = (spread(4, 18), spread(4, 9), spread(5, 36), spread(3, 5));
    let mut rng = Rng(seed ^ 0xb1a5);
    let spec = "input_shape = [2, 6, 6]\n\
        [[layers]]\nname = \"c1\"\nop = \"conv2d\"\nweight = \"w1\"\nbias = \"b1\"\npadding = 1\n\
        [[layers]]\nop = \"relu\"\n[[layers]]\nop = \"maxpool2d\"\nkernel = 2\n\
        [[layers]]\nname = \"c2\"\nop = \"conv2d\"\nweight = \"w2\"\nbias = \"b2\"\npadding = 1\ngroups = 4\n\
        [[layers]]\nop = \"relu\"\n[[layers]]\nop = \"flatten\"\n\
        [[layers]]\nname = \"f1\"\nop = \"linear\"\nweight = \"w3\"\nbias = \"b3\"\n\
        [[layers]]\nop = \"relu\"\n\
        [[layers]]\nname = \"f2\"\nop = \"linear\"\nweight = \"w4\"\nbias = \"b4\"\n";
    let bytes = safetensors_bytes(
        &[
            f32t("w1", &[4, 2, 3, 3], &w1),
            f32t("b1", &[4], &rng.vec(4, -0.5, 0.5)),
            f32t("w2", &[4, 1, 3, 3], &w2),
            f32t("b2", &[4], &rng.vec(4, -0.5, 0.5)),
            f32t("w3", &[5, 36], &w3),
            f32t("b3", &[5], &rng.vec(5, -0.5, 0.5)),
            f32t("w4", &[3, 5], &w4),
            f32t("b4", &[3], &rng.vec(3, -0.5, 0.5)),
        ],
        Some(spec),
    );
    load_model_bytes("chain", "chain", &bytes, None).unwrap()
}

/// Weights of layer `name` as [rows][k] in f64, and its bias.
fn layer_f64(m: &qscope::Model, name: &str) -> (Vec<Vec<f64>>, Vec<f64>) {
    let l = &m.layers[m.layer_index(name).unwrap()];
    let (w, _, k) = l.op.weight_rows().unwrap();
    let b = l.op.bias().unwrap().iter().map(|&v| v as f64).collect();
    (rows_f64(w, k), b)
}

/// max |w| per output row, and per input channel of `second` (`per` features each; a
/// depthwise conv's channel i is its row i).
fn ranges_by_hand(
    first: &[Vec<f64>],
    second: &[Vec<f64>],
    per: usize,
    depthwise: bool,
) -> (Vec<f64>, Vec<f64>) {
    let amax = |s: &[f64]| s.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let r1: Vec<f64> = first.iter().map(|r| amax(r)).collect();
    let r2 = (0..first.len())
        .map(|i| {
            if depthwise {
                amax(&second[i])
            } else {
                second
                    .iter()
                    .fold(0.0f64, |m, r| m.max(amax(&r[i * per..(i + 1) * per])))
            }
        })
        .collect();
    (r1, r2)
}

#[test]
fn cle_keeps_the_float_function_and_equalizes_every_pair() {
    let model = chain_model(0xc1e0_0001);
    let (eq, report) = qscope::pipeline::cle::equalize(&model, &QuantConfig::default());
    let names: Vec<(&str, &str)> = report
        .iter()
        .map(|p| (p.first.as_str(), p.second.as_str()))
        .collect();
    assert_eq!(names, [("c1", "c2"), ("c2", "f1"), ("f1", "f2")]);
    let mut rng = Rng(7);
    let x = rng.vec(16 * 72, -1.0, 2.0);
    let a = qscope::engine::float::forward_flat(&model, &x, 16).unwrap();
    let b = qscope::engine::float::forward_flat(&eq, &x, 16).unwrap();
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (u, v) in a.iter().zip(&b) {
        assert!((u - v).abs() <= 1e-5 * scale, "{u} vs {v}");
    }
    for (first, second, per, dw) in [
        ("c1", "c2", 1, true),
        ("c2", "f1", 9, false),
        ("f1", "f2", 1, false),
    ] {
        let (r1, r2) = ranges_by_hand(&layer_f64(&eq, first).0, &layer_f64(&eq, second).0, per, dw);
        for (x, y) in r1.iter().zip(&r2) {
            assert!(
                (x - y).abs() <= 1e-5 * x.max(*y),
                "{first}→{second}: {x} vs {y}"
            );
        }
        let (o1, o2) = ranges_by_hand(
            &layer_f64(&model, first).0,
            &layer_f64(&model, second).0,
            per,
            dw,
        );
        let p = report.iter().find(|p| p.first == first).unwrap();
        let spread = |r: &[f64]| {
            r.iter().copied().fold(0.0, f64::max) / r.iter().copied().fold(f64::INFINITY, f64::min)
        };
        assert!((p.out_spread_before.unwrap() - spread(&o1)).abs() < 1e-9 * spread(&o1));
        assert!((p.in_spread_before.unwrap() - spread(&o2)).abs() < 1e-9 * spread(&o2));
        assert!((p.out_spread_after.unwrap() - spread(&r1)).abs() < 1e-6 * spread(&r1));
    }
    // ReLU6 is not crossed: its bound would have to change per channel.
    let mut relu6 = model.clone();
    assert!(matches!(relu6.layers[1].op, qscope::model::Op::Relu));
    relu6.layers[1].op = qscope::model::Op::Clip { min: 0.0, max: 6.0 };
    let (_, report) = qscope::pipeline::cle::equalize(&relu6, &QuantConfig::default());
    let names: Vec<&str> = report.iter().map(|p| p.first.as_str()).collect();
    assert_eq!(names, ["c2", "f1"]);
    // Kept in float, a layer takes part in no pair.
    let c = QuantConfig {
        keep_float: vec!["c2".into()],
        ..Default::default()
    };
    let (_, report) = qscope::pipeline::cle::equalize(&model, &c);
    assert_eq!(report.len(), 1);
    assert_eq!(
        (report[0].first.as_str(), report[0].second.as_str()),
        ("f1", "f2")
    );
}

#[test]
fn cle_on_one_pair_applies_the_papers_scales() {
    let t = tiny(0xc1e0_0002);
    let (eq, report) = qscope::pipeline::cle::equalize(&t.model, &QuantConfig::default());
    assert_eq!(report.len(), 1);
    let (w1, w2) = (rows_f64(&t.w1, 18), rows_f64(&t.w2, 48));
    let (r1, r2) = ranges_by_hand(&w1, &w2, 16, false);
    // s_i = (1/r2_i)·√(r1_i·r2_i): layer 1's channel i / s_i, layer 2's inputs of channel i · s_i.
    let s: Vec<f64> = (0..3).map(|i| (r1[i] * r2[i]).sqrt() / r2[i]).collect();
    let ((e1, eb1), (e2, _)) = (layer_f64(&eq, "c"), layer_f64(&eq, "f"));
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * (a.abs() + b.abs()) + 1e-12;
    for i in 0..3 {
        assert!(
            w1[i].iter().zip(&e1[i]).all(|(a, b)| close(a / s[i], *b)),
            "conv row {i}"
        );
        assert!(close(t.b1[i] as f64 / s[i], eb1[i]), "bias {i}");
    }
    for (o, row) in w2.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            assert!(close(v * s[c / 16], e2[o][c]), "linear [{o}, {c}]");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bias correction on the bundled MLP, the table: best of minmax/mse/kl activations,
// mse weights per channel.

/// The bundled MLP's int top-1 (in samples of the 2,000 test digits) in `session` with
/// `bits` = (weight, activation), mse weights, `act_strategy` and bias correction if `bc`.
fn mlp_hits(
    session: &mut qscope::pipeline::Session,
    (weight_bits, act_bits): (u8, u8),
    act_strategy: Strategy,
    bc: bool,
) -> usize {
    let config = QuantConfig {
        weight_bits,
        act_bits,
        weight_strategy: Strategy::Mse,
        act_strategy,
        bias_correction: bc,
        ..Default::default()
    };
    let r = session.run(&config, &Cancel::new()).unwrap().report;
    (r.quant_accuracy.unwrap() * 2000.0).round() as usize
}

/// The best int top-1 (in samples of the 2,000) over the three activation strategies.
fn best_mlp_hits(weight_bits: u8, act_bits: u8, bc: bool) -> usize {
    let model = qscope::bundled::model("mnist-mlp").unwrap();
    let mut session =
        qscope::pipeline::Session::new(model, qscope::bundled::calib(), qscope::bundled::test());
    [Strategy::MinMax, Strategy::Mse, Strategy::Kl]
        .into_iter()
        .map(|s| mlp_hits(&mut session, (weight_bits, act_bits), s, bc))
        .max()
        .unwrap()
}

#[test]
fn bias_correction_never_costs_the_mlp_more_than_one_sample_and_raises_w4a4() {
    for (w, a) in [(4, 4), (3, 3), (4, 3), (2, 8)] {
        let (plain, bc) = (best_mlp_hits(w, a, false), best_mlp_hits(w, a, true));
        assert!(
            bc + 1 >= plain,
            "W{w}A{a}: {bc} with bias correction, {plain} without"
        );
        if (w, a) == (4, 4) {
            assert!(bc > plain, "W4A4: bias correction raises {plain} → {bc}");
        }
        if (w, a) == (2, 8) {
            // Measured 85.50 → 91.65 %: the 2-bit weights' mean errors are large.
            assert!(bc >= plain + 100, "W2A8: {plain} → {bc}");
        }
    }
}

#[test]
fn without_calibration_labels_bias_correction_keeps_what_lowers_the_kl_on_the_mlp_w3a3() {
    // Unlabeled calibration digits: corrections are kept on the KL of the outputs from the
    // float model's. Kept on output MSE instead, they cost 17 test digits here (95.45 → 94.60 %);
    // on KL, 6 (→ 95.15 %). On 60,000 held-out MNIST digits: −0.81 pt on MSE, −0.02 on KL.
    let model = qscope::bundled::model("mnist-mlp").unwrap();
    let mut calib = qscope::bundled::calib();
    calib.labels = None;
    let mut session = qscope::pipeline::Session::new(model, calib, qscope::bundled::test());
    let mut hits = |bc| mlp_hits(&mut session, (3, 3), Strategy::Mse, bc);
    let (plain, bc) = (hits(false), hits(true));
    assert!(bc + 8 >= plain, "{plain} → {bc} with bias correction");
}

#[test]
fn cnn_w3a3_is_within_one_and_a_half_points_of_float_with_gptq_bias_correction_and_act_refine() {
    let (ok, out, err) = qscope(&[
        "eval",
        "--model",
        "mnist-cnn",
        "--weight-bits",
        "3",
        "--act-bits",
        "3",
        "--weight-strategy",
        "mse",
        "--act-strategy",
        "kl",
        "--weight-rounding",
        "gptq",
        "--bias-correction",
        "--act-refine",
        "--json",
    ]);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (float, int) = (
        r["fp32_accuracy"].as_f64().unwrap(),
        r["quant_accuracy"].as_f64().unwrap(),
    );
    // Chosen on 50,000 MNIST digits outside the bundled ones (scripts/validation): 0.64 pt
    // below float there, 0.67 on 10,000 more; with mse activations and no refinement (97.35%
    // here) 1.44 and 1.57. Measured 97.30% (nearest rounding: 96.40%); float 98.35%.
    assert!(int >= 0.9730 - 0.001, "CNN W3A3 {int}");
    assert!(float - int <= 0.015, "{float} − {int}");
}

#[test]
fn the_layerwise_methods_report_each_layer_to_the_progress_sink() {
    let t = tiny(0x9e5_0001);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = seen.clone();
    let cancel = Cancel::new().with_progress(std::sync::Arc::new(move |m: &str| {
        sink.lock().unwrap().push(m.to_string())
    }));
    let config = tiny_config(true, WeightRounding::Gptq);
    run(&t.model, &t.data, &t.data, &config, &cancel).unwrap();
    let seen = seen.lock().unwrap();
    for want in ["gptq c (1/2)", "gptq f (2/2)", "bias correction c (1/2)"] {
        assert!(seen.iter().any(|m| m == want), "{want} not in {seen:?}");
    }
}

#[test]
fn high_bias_absorption_moves_each_channels_floor_into_the_next_layer() {
    let mut rng = Rng(0xab50_0001);
    let (w1, w2) = (rng.vec(3 * 4, -0.5, 0.5), rng.vec(2 * 3, -1.0, 1.0));
    let (b1, b2) = (vec![3.0f32, -2.0, 2.5], rng.vec(2, -0.2, 0.2));
    let spec = "input_shape = [4]\n[[layers]]\nname = \"a\"\nop = \"linear\"\nweight = \"w1\"\nbias = \"b1\"\n[[layers]]\nop = \"relu\"\n[[layers]]\nname = \"b\"\nop = \"linear\"\nweight = \"w2\"\nbias = \"b2\"\n";
    let bytes = safetensors_bytes(
        &[
            f32t("w1", &[3, 4], &w1),
            f32t("b1", &[3], &b1),
            f32t("w2", &[2, 3], &w2),
            f32t("b2", &[2], &b2),
        ],
        Some(spec),
    );
    let mut model = load_model_bytes("hb", "hb", &bytes, None).unwrap();
    let n = 50;
    let xs = rng.vec(n * 4, -1.0, 1.0);
    let data = load_dataset_bytes(
        "hb data",
        &safetensors_bytes(&[f32t("inputs", &[n, 4], &xs)], None),
    )
    .unwrap();
    // The reference in f64: each channel's floor over the data, clamped at 0.
    let y1 = |x: &[f32], c: usize| -> f64 {
        (0..4)
            .map(|k| w1[c * 4 + k] as f64 * x[k] as f64)
            .sum::<f64>()
            + b1[c] as f64
    };
    let h: Vec<f64> = (0..3)
        .map(|c| {
            xs.chunks(4)
                .map(|x| y1(x, c))
                .fold(f64::INFINITY, f64::min)
                .max(0.0)
        })
        .collect();
    assert!(h[0] > 1.0 && h[1] == 0.0 && h[2] > 1.0, "{h:?}");
    let config = QuantConfig::default();
    let pairs = qscope::pipeline::cle::find_pairs(&model, &config);
    let before = qscope::engine::float::forward_flat(&model, &xs, n).unwrap();
    let counts =
        qscope::pipeline::high_bias::absorb(&mut model, &pairs, &data, usize::MAX, &Cancel::new())
            .unwrap();
    assert_eq!(counts, vec![2]);
    let nb1 = model.layers[0].op.bias().unwrap().to_vec();
    let nb2 = model.layers[2].op.bias().unwrap().to_vec();
    for c in 0..3 {
        assert!(
            (nb1[c] as f64 - (b1[c] as f64 - h[c])).abs() < 1e-5,
            "b1[{c}]"
        );
    }
    for r in 0..2 {
        let want = b2[r] as f64 + (0..3).map(|c| w2[r * 3 + c] as f64 * h[c]).sum::<f64>();
        assert!((nb2[r] as f64 - want).abs() < 1e-5, "b2[{r}]");
    }
    // The float function is the same on the data (every pre-activation is above its floor).
    let after = qscope::engine::float::forward_flat(&model, &xs, n).unwrap();
    for (a, b) in before.iter().zip(&after) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

#[test]
fn plot_draws_a_methods_run_and_refuses_the_model_changing_methods() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("fc1.svg");
    let out = svg.to_str().unwrap();
    let base = [
        "plot",
        "--model",
        "mnist-mlp",
        "--calib-samples",
        "200",
        "--layer",
        "fc1",
    ];
    let (ok, _, err) = qscope(&[&base[..], &["--bias-correction", "--out", out]].concat());
    assert!(ok, "{err}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    std::fs::remove_file(&svg).unwrap();
    let (ok, _, err) = qscope(&[&base[..], &["--cle", "--out", out]].concat());
    assert!(
        !ok && err.trim().lines().count() == 1 && err.contains("--cle"),
        "{err}"
    );
    assert!(!svg.exists(), "no file on refusal");
}
