//! `qscope bench`: the JSON keys outside checks read, and the multiply-adds per sample against a
//! count made here from the weights.

#[test]
fn bench_reports_rates_with_the_macs_the_weights_imply() {
    let (ok, out, err) = crate::util::qscope(&[
        "bench",
        "--model",
        "mnist-mlp",
        "--batch",
        "32",
        "--runs",
        "1",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let m = qscope::bundled::model("mnist-mlp").unwrap();
    let macs: usize = m
        .weight_layers()
        .iter()
        .map(|&i| {
            let (_, rows, cols) = m.layers[i].op.weight_rows().unwrap();
            rows * cols
        })
        .sum();
    assert_eq!(r["macs_per_sample"].as_f64(), Some(macs as f64));
    assert_eq!(r["batch"], 32);
    assert_eq!(r["threads"], 1);
    for k in [
        "float_samples_per_s",
        "int_samples_per_s",
        "float_gmacs",
        "int_gmacs",
    ] {
        assert!(
            r[k].as_f64().is_some_and(|v| v > 0.0 && v.is_finite()),
            "{k}: {r}"
        );
    }
    // A rate is the batch's multiply-adds over the median time.
    let want = macs as f64 * 32.0 / (r["int_ms"].as_f64().unwrap() / 1e3) / 1e9;
    assert!((r["int_gmacs"].as_f64().unwrap() - want).abs() < 1e-9 * want.max(1.0));
    assert!(["avx512-vnni", "avx2", "portable"].contains(&r["kernel"].as_str().unwrap()));
    let (ok, _, err) = crate::util::qscope(&["bench", "--batch", "0"]);
    assert!(!ok && err.contains("--batch"), "{err}");
}
