//! [`IntModel::reusing`] against fresh builds: a build that takes unchanged kernels from a base
//! gives the codes a build from scratch gives, shares every kernel a change leaves alone, and
//! rebuilds each kernel whose weights, bias, input or output qparams moved.

use super::*;
use crate::model::{Model, Op};
use crate::params::LayerParams;
use crate::pipeline::{Cancel, make_batch, run};

/// What one variant changes in a copy of the base parameters.
type Change = fn(&Model, &mut ModelParams) -> &'static str;

/// The weight layer in the middle of the list (a layer with others before and after it).
fn middle(p: &mut ModelParams) -> &mut LayerParams {
    let k = p.layers.len() / 2;
    &mut p.layers[k]
}

/// The variants: the middle layer's output range widened (its kernel and its readers' must be
/// rebuilt), its bias moved, one of its weight codes moved, the graph input's range widened
/// (the first layer's input qparams).
fn changes() -> [Change; 4] {
    [
        |_, p| {
            let a = middle(p).act.as_mut().expect("an integer layer");
            *a = a.scaled(1.25);
            "output range"
        },
        |m, p| {
            let l = middle(p);
            let model_bias = m.layers[l.index].op.bias().expect("a weight layer");
            let w = l.weight.as_mut().expect("integer weights");
            let b: Vec<f32> = model_bias.iter().map(|&b| b + 0.05).collect();
            w.bias = Some(b);
            "bias"
        },
        |_, p| {
            let w = middle(p).weight.as_mut().expect("integer weights");
            w.q.q[0] = if w.q.q[0] > 0 {
                w.q.q[0] - 1
            } else {
                w.q.q[0] + 1
            };
            "one weight code"
        },
        |_, p| {
            let a = &mut p.points[0].act;
            *a = a.scaled(1.5);
            "input range"
        },
    ]
}

/// The weight nodes whose kernel `a` and `b` share.
fn shared(a: &IntModel, b: &IntModel) -> Vec<usize> {
    (0..a.steps.len())
        .filter(|&i| match (&a.steps[i], &b.steps[i]) {
            (Step::Gemm { kernel: x, .. }, Step::Gemm { kernel: y, .. }) => Arc::ptr_eq(x, y),
            _ => false,
        })
        .collect()
}

/// The weight nodes of `int`.
fn weight_nodes(int: &IntModel) -> Vec<usize> {
    (0..int.steps.len()).filter(|&i| int.is_gemm(i)).collect()
}

#[test]
fn a_build_reusing_unchanged_kernels_gives_a_fresh_builds_codes() {
    let models = super::tests::conv_models();
    let (calib, test) = (
        crate::bundled::calib().take(16),
        crate::bundled::test().take(8),
    );
    for model in &models {
        let base_params = run(model, &calib, &test, &Default::default(), &Cancel::new())
            .unwrap()
            .params;
        let base = IntModel::new(model, &base_params, usize::MAX);
        let all = weight_nodes(&base);
        // Unchanged parameters share every kernel.
        let same = IntModel::reusing(
            model,
            &base_params,
            usize::MAX,
            (&base.kernels(), &base_params),
        );
        assert_eq!(shared(&base, &same), all, "{}", model.name);
        let input = make_batch(model, &test, 0, test.n).unwrap();
        for change in changes() {
            let mut params = base_params.clone();
            let what = change(model, &mut params);
            let fresh = IntModel::new(model, &params, usize::MAX);
            let reused =
                IntModel::reusing(model, &params, usize::MAX, (&base.kernels(), &base_params));
            let want = fresh.forward_outputs(input.clone()).unwrap()[0].to_f32_vec();
            let got = reused.forward_outputs(input.clone()).unwrap()[0].to_f32_vec();
            let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{}: {what}: outputs differ", model.name);
            assert_eq!(got.len(), want.len());
            // A kernel is rebuilt exactly where the fresh build's differs from the base's in
            // its weights, bias or qparams (the first layer for the input's range; the middle
            // layer and the layers reading its output for its range).
            let moved: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&i| {
                    let lp = |p: &ModelParams| p.layers.iter().find(|l| l.index == i).cloned();
                    let (Step::Gemm { kernel: a, .. }, Step::Gemm { kernel: b, .. }) =
                        (&base.steps[i], &fresh.steps[i])
                    else {
                        panic!("{}: node {i} lost its kernel", model.name);
                    };
                    lp(&base_params).map(|l| l.weight) != lp(&params).map(|l| l.weight)
                        || (a.in_q(), a.out_q()) != (b.in_q(), b.out_q())
                })
                .collect();
            assert!(!moved.is_empty(), "{}: {what} moved no kernel", model.name);
            let kept: Vec<usize> = all.iter().copied().filter(|i| !moved.contains(i)).collect();
            assert_eq!(shared(&base, &reused), kept, "{}: {what}", model.name);
        }
        // The same parameters on a model whose middle layer's float bias differs (as
        // SmoothQuant's model does): that layer's kernel alone is built again.
        let mut other = model.clone();
        let k = base_params.layers[base_params.layers.len() / 2].index;
        match &mut other.layers[k].op {
            Op::Conv2d { bias, .. } | Op::Linear { bias, .. } => bias.mapv_inplace(|b| b + 0.05),
            op => panic!("{}: node {k} is a {}", model.name, op.kind()),
        }
        let fresh = IntModel::new(&other, &base_params, usize::MAX);
        let reused = IntModel::reusing(
            &other,
            &base_params,
            usize::MAX,
            (&base.kernels(), &base_params),
        );
        let want = fresh.forward_outputs(input.clone()).unwrap()[0].to_f32_vec();
        let got = reused.forward_outputs(input.clone()).unwrap()[0].to_f32_vec();
        assert!(got == want, "{}: model bias: outputs differ", model.name);
        let kept: Vec<usize> = all.iter().copied().filter(|&i| i != k).collect();
        assert_eq!(shared(&base, &reused), kept, "{}: model bias", model.name);
    }
}
