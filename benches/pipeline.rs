//! One full re-run (weight quantization + calibration on 1,000 samples + evaluation of both
//! engines on 2,000) on the bundled models: the budget that keeps the UI live
//! (MLP < 150 ms, CNN < 1 s), and the activation-only re-runs that reuse histograms: every
//! point's strategy or bits switched (`activation_change_cached`), and one layer's output bits
//! switched as in the UI (`one_layer_activation_change_cached`: the middle weight layer, so the
//! layers before it keep their isolated SQNR sums), and that layer's weight bits switched
//! (`one_layer_weight_change_cached`: calibration and evaluation resume at that layer).

use criterion::{BenchmarkId, Criterion};
use qscope::pipeline::{Cancel, Session, run};
use qscope::{QuantConfig, Strategy, bundled};
use std::time::Duration;

pub fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("full_rerun");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    let (calib, test) = (bundled::calib(), bundled::test());
    for name in bundled::MODEL_NAMES {
        let model = bundled::model(name).unwrap();
        let config = QuantConfig::default();
        g.bench_function(BenchmarkId::new("default_weights", name), |b| {
            b.iter(|| run(&model, &calib, &test, &config, &Cancel::new()).unwrap())
        });
        let mut session = Session::new(model.clone(), calib.clone(), test.clone());
        let configs = [
            QuantConfig {
                act_strategy: Strategy::Kl,
                ..Default::default()
            },
            QuantConfig {
                act_bits: 4,
                ..Default::default()
            },
        ];
        toggle(
            &mut g,
            "activation_change_cached",
            name,
            &mut session,
            configs,
        );
        let middle = |o: qscope::config::LayerOverride| {
            let wl = model.weight_layers();
            let mut c = QuantConfig::default();
            c.layers
                .insert(model.layers[wl[wl.len() / 2]].name.clone(), o);
            [QuantConfig::default(), c]
        };
        let act = middle(qscope::config::LayerOverride {
            act_bits: Some(6),
            ..Default::default()
        });
        toggle(
            &mut g,
            "one_layer_activation_change_cached",
            name,
            &mut session,
            act,
        );
        let weights = middle(qscope::config::LayerOverride {
            weight_bits: Some(6),
            ..Default::default()
        });
        toggle(
            &mut g,
            "one_layer_weight_change_cached",
            name,
            &mut session,
            weights,
        );
    }
    g.finish();
}

/// Bench row `row` of model `name`: `session` switching between the two `configs` (after one
/// run of the first, so every timed run is a change).
fn toggle(
    g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    row: &str,
    name: &str,
    session: &mut Session,
    configs: [QuantConfig; 2],
) {
    session.run(&configs[0], &Cancel::new()).unwrap();
    let mut i = 0;
    g.bench_function(BenchmarkId::new(row, name), |b| {
        b.iter(|| {
            i += 1;
            session.run(&configs[i % 2], &Cancel::new()).unwrap()
        })
    });
}
