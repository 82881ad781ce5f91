//! The integer engine against a float "fake-quant" simulation of the same parameters.

use crate::util::{Rng, f32t, safetensors_bytes};
use proptest::prelude::*;
use qscope::config::{ActSettings, WeightSettings};
use qscope::engine::{IntModel, float};
use qscope::model::load_model_bytes;
use qscope::params::{ActQuant, LayerParams, ModelParams, WeightQuant};
use qscope::quant::weights::quantize_weights;
use qscope::{ClipRange, Granularity, Model, QParams, Scheme, Strategy};

fn act_quant(range: ClipRange, bits: u8, scheme: Scheme) -> ActQuant {
    ActQuant {
        settings: ActSettings {
            bits,
            scheme,
            strategy: Strategy::MinMax,
            percentile: 99.99,
            range: None,
        },
        range,
        qparams: QParams::from_range(range, bits, scheme),
    }
}

fn minmax(v: &[f32]) -> ClipRange {
    let lo = v.iter().cloned().fold(f32::INFINITY, f32::min);
    let hi = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    ClipRange::new(lo, hi)
}

/// A random one-layer model (linear or conv, maybe followed by relu) from `rng`.
fn random_layer(rng: &mut Rng) -> (Model, usize) {
    let relu = rng.below(2) == 0;
    let relu_toml = if relu {
        "\n[[layers]]\nop = \"relu\"\n"
    } else {
        ""
    };
    if rng.below(2) == 0 {
        let (inp, out) = (1 + rng.below(70), 1 + rng.below(20));
        let w = rng.vec(out * inp, -1.0, 1.0);
        let b = rng.vec(out, -0.5, 0.5);
        let spec = format!(
            "input_shape = [{inp}]\n[[layers]]\nname = \"l\"\nop = \"linear\"\nweight = \"w\"\nbias = \"b\"\n{relu_toml}"
        );
        let bytes = safetensors_bytes(
            &[f32t("w", &[out, inp], &w), f32t("b", &[out], &b)],
            Some(&spec),
        );
        (
            load_model_bytes("random", "random", &bytes, None).unwrap(),
            inp,
        )
    } else {
        let (c, o, k) = (1 + rng.below(3), 1 + rng.below(5), 1 + rng.below(3));
        let (h, w_) = (k + rng.below(6), k + rng.below(6));
        let (s, p) = (1 + rng.below(2), rng.below(2));
        let w = rng.vec(o * c * k * k, -1.0, 1.0);
        let b = rng.vec(o, -0.5, 0.5);
        let spec = format!(
            "input_shape = [{c}, {h}, {w_}]\n[[layers]]\nname = \"l\"\nop = \"conv2d\"\nweight = \"w\"\nbias = \"b\"\nstride = {s}\npadding = {p}\n{relu_toml}"
        );
        let bytes = safetensors_bytes(
            &[f32t("w", &[o, c, k, k], &w), f32t("b", &[o], &b)],
            Some(&spec),
        );
        (
            load_model_bytes("random", "random", &bytes, None).unwrap(),
            c * h * w_,
        )
    }
}

fn check_one(seed: u64) {
    let mut rng = Rng(seed | 1);
    let (model, in_len) = random_layer(&mut rng);
    let n = 1 + rng.below(6);
    let x = rng.vec(n * in_len, -2.0, 3.0);
    let schemes = [Scheme::Symmetric, Scheme::Asymmetric];
    let (wb, ab) = (2 + rng.below(7) as u8, 2 + rng.below(7) as u8);
    let granularity = [
        Granularity::PerTensor,
        Granularity::PerChannel,
        Granularity::Group(1 + rng.below(8)),
    ][rng.below(3)];
    let wsettings = WeightSettings {
        bits: wb,
        scheme: schemes[rng.below(2)],
        granularity,
        strategy: Strategy::MinMax,
        percentile: 99.99,
        clip: None,
    };
    let (w, rows, cols) = model.layers[0].op.weight_rows().unwrap();
    let qw = quantize_weights(w, rows, cols, &wsettings);
    let input = act_quant(minmax(&x), ab, schemes[rng.below(2)]);

    // The fake-quant simulation: quantize-dequantize the input, dequantized weights, f32 layer.
    let xq: Vec<f32> = x.iter().map(|&v| input.qparams.fake_quant(v)).collect();
    let mut sim_model = qscope::pipeline::with_quantized_weights(
        &model,
        &[Some(WeightQuant {
            settings: wsettings,
            q: qw.clone(),
            bias: None,
        })],
    );
    // The bias is an i32 at scale s_in · (the row's largest weight scale): simulate that too.
    let (_, bias) = sim_model.layers[0].op.weight_bias_mut().unwrap();
    for (r, b) in bias.iter_mut().enumerate() {
        let s_ref = (0..qw.groups())
            .map(|g| qw.param(r, g).scale as f64)
            .fold(0.0, f64::max);
        let unit = input.qparams.scale as f64 * s_ref;
        *b = ((*b as f64 / unit).round() * unit) as f32;
    }
    let y = float::forward_flat(&sim_model, &xq, n).unwrap();
    let out = act_quant(minmax(&y), ab, schemes[rng.below(2)]);
    let sim: Vec<f32> = y.iter().map(|&v| out.qparams.fake_quant(v)).collect();

    let params = ModelParams {
        points: vec![qscope::params::PointParams {
            name: "input".into(),
            value: 0,
            act: input,
        }],
        layers: vec![LayerParams {
            name: "l".into(),
            index: 0,
            weight: Some(WeightQuant {
                settings: wsettings,
                q: qw,
                bias: None,
            }),
            act: Some(out.clone()),
        }],
        smoothquant: Vec::new(),
        methods: None,
    };
    let got = IntModel::new(&model, &params, usize::MAX)
        .forward_flat(&x, n)
        .unwrap();
    assert_eq!(got.len(), sim.len());
    let step = out.qparams.scale;
    for (i, (g, s)) in got.iter().zip(&sim).enumerate() {
        assert!(
            (g - s).abs() <= step * 1.0001 + 1e-6,
            "seed {seed}: element {i}: integer {g} vs fake-quant {s} (step {step}, W{wb} A{ab} {granularity})"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn integer_layer_equals_fake_quant_within_one_step(seed in any::<u64>()) {
        check_one(seed);
    }
}

#[test]
fn whole_bundled_cnn_in_integers_stays_above_25_db_of_the_float_output() {
    // The per-layer error stays bounded through a whole network at W8A8.
    let model = qscope::bundled::model("mnist-cnn").unwrap();
    let calib = qscope::bundled::calib().take(64);
    let eval = qscope::bundled::test().take(64);
    let out = qscope::pipeline::run(
        &model,
        &calib,
        &eval,
        &Default::default(),
        &Default::default(),
    )
    .unwrap();
    assert!(
        out.report.output_sqnr_db.unwrap() > 25.0,
        "{:?}",
        out.report.output_sqnr_db
    );
}

#[test]
fn resuming_the_integer_engine_at_any_node_gives_the_whole_run() {
    // What activation refinement relies on: the value table before node i, continued from
    // node i, ends where one uninterrupted run ends (the ResNet has adds, pools and a Gemm).
    use qscope::pipeline::{Cancel, run};
    let model = qscope::bundled::model("mnist-resnet").unwrap();
    let (calib, test) = (qscope::bundled::calib(), qscope::bundled::test());
    let out = run(&model, &calib, &test, &Default::default(), &Cancel::new()).unwrap();
    let int = IntModel::new(&model, &out.params, usize::MAX);
    let x = test.samples(0, 4).to_vec();
    let mut xn = x.clone();
    model.normalize(&mut xn);
    let input = || vec![float::input_tensor(&model, &xn, 4)];
    let whole = int.forward(input(), |_, _, _, _| {}).unwrap()[0].to_f32_vec();
    for start in 0..=model.layers.len() {
        let vals = int.forward_prefix(input(), start).unwrap();
        let got = int.forward_resume(vals, start, |_, _, _, _| {}).unwrap();
        assert_eq!(got[0].to_f32_vec(), whole, "resumed at node {start}");
    }
}

#[test]
fn a_batch_split_over_threads_gives_the_whole_batch_run() {
    // `qscope bench` cuts a batch into parts (at least one per thread, more when activations
    // are large): every sample is computed alone in both engines, so any cut (odd sizes, more
    // parts than threads, parts of one sample) must give the same values.
    use qscope::engine::split::{forward_split, join_rows, parts_for, rows};
    for name in ["mnist-cnn", "mnist-resnet"] {
        let (model, params) = default_params(name);
        let int = IntModel::new(&model, &params, usize::MAX);
        let n = 13;
        let x = normalized(&model, n);
        let input = || vec![float::input_tensor(&model, &x, n)];
        let f = |x| float::forward(&model, x, usize::MAX, |_, _| {});
        let i = |x| int.forward(x, |_, _, _, _| {});
        let (f_whole, i_whole) = (f(input()).unwrap(), i(input()).unwrap());
        // A direct per-sample loop: each sample alone through the engine.
        let alone: Vec<f32> = (0..n)
            .flat_map(|s| i(vec![rows(&input()[0], s, s + 1)]).unwrap()[0].to_f32_vec())
            .collect();
        assert_eq!(alone, i_whole[0].to_f32_vec(), "{name}: per-sample int");
        // The cut `qscope bench` makes, and others.
        let sized = parts_for(n, 2, model.largest_sample_elems());
        for parts in [2, 3, 5, 13, sized] {
            assert_eq!(
                forward_split(&input(), parts, f).unwrap(),
                f_whole,
                "{name} float {parts}"
            );
            assert_eq!(
                forward_split(&input(), parts, i).unwrap(),
                i_whole,
                "{name} int {parts}"
            );
        }
    }
    // Parts that differ beyond the first axis, or in qparams, are not joined.
    let q = |z| qscope::QParams {
        scale: 0.5,
        zero_point: z,
        bits: 8,
        scheme: Scheme::Asymmetric,
    };
    let a = qscope::engine::tensor::Tensor::q(vec![1, 2], vec![1, 2], q(0));
    let b = qscope::engine::tensor::Tensor::q(vec![2, 2], vec![3, 4, 5, 6], q(0));
    let joined = join_rows(vec![a.clone(), b.clone()]).unwrap();
    assert_eq!(
        (joined.shape.clone(), joined.as_q().unwrap().0.to_vec()),
        (vec![3, 2], vec![1, 2, 3, 4, 5, 6])
    );
    let c = qscope::engine::tensor::Tensor::q(vec![1, 2], vec![1, 2], q(1));
    assert!(join_rows(vec![a.clone(), c]).is_none());
    let d = qscope::engine::tensor::Tensor::q(vec![1, 3], vec![1, 2, 3], q(0));
    assert!(join_rows(vec![a, d]).is_none());
}

#[test]
fn a_layer_fed_by_the_graph_input_gives_alone_what_it_gives_in_the_run() {
    // The evaluation takes such a layer's isolated output from the whole run: check that the
    // two are the same values, and that no other layer claims it.
    let (model, params) = default_params("mnist-cnn");
    let int = IntModel::new(&model, &params, usize::MAX);
    let wl = model.weight_layers();
    let claims: Vec<bool> = wl.iter().map(|&i| int.isolated_is_in_run(i)).collect();
    assert_eq!(claims, [true, false, false, false]);
    let n = 5;
    let input = float::input_tensor(&model, &normalized(&model, n), n);
    let point = model.point_value(wl[0]);
    let mut in_run = None;
    int.forward(vec![input.clone()], |_, v, t, _| {
        if v == point {
            in_run = Some(t.to_f32_vec());
        }
    })
    .unwrap();
    let alone = int.run_isolated(wl[0], &input).unwrap();
    assert_eq!(alone.to_f32_vec(), in_run.unwrap());
}

/// A bundled model and the default configuration's parameters (calibrated on the bundled set).
fn default_params(name: &str) -> (Model, ModelParams) {
    use qscope::pipeline::{Cancel, run};
    let model = qscope::bundled::model(name).unwrap();
    let (calib, test) = (qscope::bundled::calib(), qscope::bundled::test());
    let out = run(
        &model,
        &calib,
        &test.take(8),
        &Default::default(),
        &Cancel::new(),
    )
    .unwrap();
    (model, out.params)
}

/// The first `n` bundled test digits, normalized for `model`.
fn normalized(model: &Model, n: usize) -> Vec<f32> {
    let mut x = qscope::bundled::test().samples(0, n).to_vec();
    model.normalize(&mut x);
    x
}

#[test]
fn the_channels_last_run_gives_the_tapped_runs_outputs() {
    // `forward_outputs` keeps conv outputs channels-last between convs (residual adds, clamps
    // and downsampling shortcuts in between, depthwise convs and pools reading NCHW copies);
    // the tapped run, held to the references by the other tests, never does. Same bits, from
    // the input and from a tapped run's value table.
    use qscope::pipeline::{Cancel, run};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = ["resnet_ts", "resnet_dynamo", "mobilenetv2_ts"]
        .map(|f| dir.join(format!("tests/fixtures/onnx/{f}.onnx")));
    let mut models: Vec<Model> = ["mnist-cnn", "mnist-resnet"]
        .map(|n| qscope::bundled::model(n).unwrap())
        .into();
    models.extend(
        fixtures
            .iter()
            .map(|p| qscope::model::load_model(p, None).unwrap()),
    );
    let (calib, test) = (qscope::bundled::calib().take(64), qscope::bundled::test());
    for model in &models {
        let out = run(
            model,
            &calib,
            &test.take(8),
            &Default::default(),
            &Cancel::new(),
        )
        .unwrap();
        let int = IntModel::new(model, &out.params, usize::MAX);
        let n = 5;
        let input = || vec![float::input_tensor(model, &normalized(model, n), n)];
        let tapped = int.forward(input(), |_, _, _, _| {}).unwrap();
        let outputs = int.forward_outputs(input()).unwrap();
        assert_eq!(outputs, tapped, "{}", model.name);
        // Resumed channels-last from a tapped prefix cut anywhere (what activation refinement
        // and the channel search run for each candidate).
        for c in (1..model.layers.len()).step_by(3) {
            let cut = int.cut_at_or_before(c);
            let prefix = int.forward_prefix(input(), cut).unwrap();
            let resumed = int.forward_resume_outputs(prefix, cut).unwrap();
            assert_eq!(resumed, tapped, "{}: resumed at node {cut}", model.name);
        }
    }
}

#[test]
fn a_repeated_channels_last_run_allocates_no_new_buffers() {
    // MobileNetV2's depthwise convs read NCHW copies of channels-last values; those copies go
    // back to the thread's recycled buffers like every other value, so from the second run on
    // every output finds one (before, each run allocated its copies anew). Outputs unchanged.
    use qscope::engine::recycle::allocated;
    use qscope::pipeline::{Cancel, run};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx/mobilenetv2_ts.onnx");
    let model = qscope::model::load_model(&path, None).unwrap();
    let calib = qscope::bundled::calib().take(32);
    let test = qscope::bundled::test().take(4);
    let out = run(&model, &calib, &test, &Default::default(), &Cancel::new()).unwrap();
    let int = IntModel::new(&model, &out.params, usize::MAX);
    let input = || vec![float::input_tensor(&model, &normalized(&model, 4), 4)];
    let tapped = int.forward(input(), |_, _, _, _| {}).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut counts = Vec::new();
            for _ in 0..3 {
                assert_eq!(int.forward_outputs(input()).unwrap(), tapped);
                counts.push(allocated());
            }
            assert!(counts[0] > 0, "the first run allocates");
            assert_eq!(
                counts[1], counts[2],
                "buffers allocated after each run: {counts:?}"
            );
        });
    });
}

#[test]
fn a_graph_ending_in_channels_last_values_gives_them_back_in_shape_order() {
    // conv 1→8 (the planes path: NCHW out), conv 8→8 + Relu (channels-last out), conv 8→8, and
    // the output the Add of the last two: channels-last up to the end, put back in shape order.
    use crate::util::{graph_model, node};
    use qscope::model::{BinaryOp, Op, Value};
    use qscope::pipeline::{Cancel, run};
    let mut rng = Rng(11);
    let conv = |rng: &mut Rng, o: usize, c: usize| Op::Conv2d {
        weight: ndarray::Array4::from_shape_vec((o, c, 3, 3), rng.vec(o * c * 9, -0.4, 0.4))
            .unwrap(),
        bias: ndarray::Array1::from_vec(rng.vec(o, -0.1, 0.1)),
        stride: (1, 1),
        padding: [1; 4],
        dilation: (1, 1),
        groups: 1,
    };
    let ops = [
        (conv(&mut rng, 8, 1), vec![0]),
        (conv(&mut rng, 8, 8), vec![1]),
        (Op::Relu, vec![2]),
        (conv(&mut rng, 8, 8), vec![3]),
        (Op::Binary(BinaryOp::Add), vec![3, 4]),
    ];
    let values = (0..=ops.len())
        .map(|i| Value {
            name: format!("v{i}"),
        })
        .collect();
    let layers = (ops.into_iter().enumerate())
        .map(|(i, (op, ins))| node(format!("n{i}"), op, &ins, i + 1))
        .collect();
    let model = graph_model(
        "ends channels-last",
        (layers, values, vec![]),
        vec![1, 28, 28],
        5,
    );
    let (calib, mut test) = (
        qscope::bundled::calib().take(32),
        qscope::bundled::test().take(4),
    );
    // Its output is a feature map, not classes.
    test.labels = None;
    let out = run(&model, &calib, &test, &Default::default(), &Cancel::new()).unwrap();
    let int = IntModel::new(&model, &out.params, usize::MAX);
    let input = || vec![float::input_tensor(&model, &normalized(&model, 3), 3)];
    let tapped = int.forward(input(), |_, _, _, _| {}).unwrap();
    assert_eq!(int.forward_outputs(input()).unwrap(), tapped);
}
