//! The fast kernels against the direct loop (bit for bit) and the f64 reference (within one
//! step) over random shapes, strides, dilations, asymmetric paddings, group structures and
//! per-channel asymmetric zero points.

use super::*;
use crate::quant::{ClipRange, Granularity, Scheme};

/// A xorshift stream.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in lo..=hi.
    pub(super) fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }

    pub(super) fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.next() as usize % v.len()]
    }
}

/// Random per-channel weights of `bits` with per-channel scales and zero points (asymmetric)
/// or symmetric ones.
pub(super) fn random_weights(
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    bits: u8,
    asym: bool,
) -> QWeights {
    let (qmin, qmax) = (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1);
    let params: Vec<QParams> = (0..rows)
        .map(|_| QParams {
            scale: 0.002 + (rng.next() % 1000) as f32 * 1e-5,
            zero_point: if asym {
                rng.range(qmin, qmax) as i32
            } else {
                0
            },
            bits,
            scheme: if asym {
                Scheme::Asymmetric
            } else {
                Scheme::Symmetric
            },
        })
        .collect();
    QWeights {
        rows,
        cols,
        q: (0..rows * cols)
            .map(|_| rng.range(qmin, qmax) as i8)
            .collect(),
        granularity: Granularity::PerChannel,
        ranges: vec![ClipRange::new(-1.0, 1.0); rows],
        params,
    }
}

/// One random layer: its conv, geometry, input and what the f64 reference needs.
struct Case {
    conv: GroupConv,
    g: ConvGeom,
    n: usize,
    x: Vec<i8>,
    w: QWeights,
    bias: Vec<f32>,
    groups: usize,
    qs: (QParams, QParams),
    bounds: (i32, i32),
}

/// A random layer; `None` when the drawn kernel does not fit the drawn input.
fn random_case(rng: &mut Rng) -> Option<Case> {
    let cg = rng.pick(&[1, 1, 1, 2, 3]);
    let groups = rng.range(1, 6) as usize;
    let og = rng.pick(&[1, 1, 2]);
    let (c, o) = (cg * groups, og * groups);
    let (h, w) = (rng.range(1, 20) as usize, rng.range(1, 40) as usize);
    let kernel = (rng.range(1, 5) as usize, rng.range(1, 5) as usize);
    let stride = (rng.range(1, 3) as usize, rng.range(1, 3) as usize);
    let dilation = (rng.pick(&[1, 1, 2, 3]), rng.pick(&[1, 1, 2, 3]));
    let pad = std::array::from_fn(|_| rng.range(0, 3) as usize);
    let g = ConvGeom::general(&[c, h, w], kernel, stride, pad, dilation).ok()?;
    let (bits, asym) = rng.pick(&[(8, false), (8, true), (7, true), (4, true), (6, false)]);
    let wq = random_weights(rng, o, cg * kernel.0 * kernel.1, bits, asym);
    let any_zero = rng.range(-128, 127) as i32;
    let in_q = QParams {
        scale: 0.01 + (rng.next() % 100) as f32 * 1e-3,
        zero_point: rng.pick(&[-128, 127, 0, -3, 50, any_zero]),
        bits: 8,
        scheme: Scheme::Asymmetric,
    };
    let out_q = QParams {
        scale: 0.02 + (rng.next() % 100) as f32 * 2e-3,
        zero_point: rng.range(-128, 127) as i32,
        bits: 8,
        scheme: Scheme::Asymmetric,
    };
    let bounds = if rng.next().is_multiple_of(3) {
        (out_q.zero_point, (out_q.zero_point + 60).min(127))
    } else {
        (-128, 127)
    };
    let bias: Vec<f32> = (0..o).map(|_| rng.range(-300, 300) as f32 * 0.01).collect();
    let conv = GroupConv::new(&wq, &bias, kernel, groups, (in_q, out_q), bounds)?;
    let n = rng.range(1, 3) as usize;
    let x = (0..n * c * h * w).map(|_| rng.next() as i8).collect();
    Some(Case {
        conv,
        g,
        n,
        x,
        w: wq,
        bias,
        groups,
        qs: (in_q, out_q),
        bounds,
    })
}

/// Every kernel this CPU can run on the case.
fn paths(conv: &GroupConv, g: &ConvGeom) -> Vec<Path> {
    let mut p = vec![Path::Portable];
    #[cfg(target_arch = "x86_64")]
    if conv.path(g) == Path::Avx512 {
        p.push(Path::Avx512);
    }
    p
}

#[test]
fn fast_kernels_equal_the_direct_loop_and_the_f64_reference_on_random_layers() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (mut cases, mut simd, mut off, mut total) = (0, 0, 0, 0);
    while cases < 400 {
        let Some(t) = random_case(&mut rng) else {
            continue;
        };
        cases += 1;
        let want = t.conv.run_direct(&t.x, t.n, &t.g);
        for p in paths(&t.conv, &t.g) {
            let got = t.conv.run_path(p, &t.x, t.n, &t.g);
            assert_eq!(got, want, "{p:?} on {:?} groups {}", t.g, t.groups);
            simd += usize::from(p != Path::Portable);
        }
        assert_eq!(t.conv.run(&t.x, t.n, &t.g), want);
        let r = group_conv_reference(&t.x, t.n, &t.g, &t.w, &t.bias, t.groups, t.qs, t.bounds);
        for (a, b) in want.iter().zip(&r) {
            assert!(
                (*a as i32 - *b as i32).abs() <= 1,
                "{a} vs {b} on {:?}",
                t.g
            );
            off += usize::from(a != b);
        }
        total += want.len();
    }
    assert!(off * 50 <= total, "{off} of {total} off by one");
    #[cfg(target_arch = "x86_64")]
    if avx512::supported() {
        assert!(simd >= 150, "only {simd} cases took the AVX-512 kernel");
    }
}

#[test]
fn depthwise_3x3_takes_the_fast_path_with_every_line_verified() {
    let mut rng = Rng(77);
    for (stride, pad) in [
        ((1, 1), [1, 1, 1, 1]),
        ((2, 2), [1, 1, 1, 1]),
        ((2, 2), [0, 0, 1, 1]),
    ] {
        let c = 32;
        let g = ConvGeom::general(&[c, 28, 28], (3, 3), stride, pad, (1, 1)).unwrap();
        let wq = random_weights(&mut rng, c, 9, 8, false);
        let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.05 - 0.8).collect();
        let q = |lo, hi| QParams::from_range(ClipRange::new(lo, hi), 8, Scheme::Asymmetric);
        let (in_q, out_q) = (q(0.0, 6.0), q(0.0, 6.0));
        let bounds = (out_q.qmin(), out_q.qmax());
        let conv = GroupConv::new(&wq, &bias, (3, 3), c, (in_q, out_q), bounds).unwrap();
        assert!(conv.lines.iter().all(|l| l.fused && l.unfused));
        #[cfg(target_arch = "x86_64")]
        if avx512::supported() {
            assert_eq!(conv.kernel_name(&g), "avx512-vnni");
        }
        let x: Vec<i8> = (0..3 * c * 28 * 28).map(|_| rng.next() as i8).collect();
        assert_eq!(conv.run(&x, 3, &g), conv.run_direct(&x, 3, &g));
    }
}

#[test]
fn extreme_codes_and_biases_stay_bit_identical() {
    // Weights of ±127 against inputs of ±128 with the far zero points, and biases near the
    // i32 edge (no line can hold those: the fixed-point path takes over).
    let c = 4;
    for (bias, z) in [(0.0f32, -128), (0.0, 127), (2.1e9, 5), (-2.1e9, -128)] {
        let wq = QWeights {
            rows: c,
            cols: 9,
            q: (0..c * 9)
                .map(|i| if i % 2 == 0 { 127 } else { -127 })
                .collect(),
            granularity: Granularity::PerChannel,
            params: vec![
                QParams {
                    scale: 1.0,
                    zero_point: 0,
                    bits: 8,
                    scheme: Scheme::Symmetric,
                };
                c
            ],
            ranges: vec![ClipRange::new(-1.0, 1.0); c],
        };
        let in_q = QParams {
            scale: 1.0,
            zero_point: z,
            bits: 8,
            scheme: Scheme::Asymmetric,
        };
        let out_q = QParams {
            scale: 300.0,
            ..in_q
        };
        let conv =
            GroupConv::new(&wq, &vec![bias; c], (3, 3), c, (in_q, out_q), (-128, 127)).unwrap();
        let g = ConvGeom::general(&[c, 9, 17], (3, 3), (1, 1), [1, 2, 0, 1], (1, 1)).unwrap();
        let x: Vec<i8> = (0..c * 9 * 17)
            .map(|i| if i % 3 == 0 { -128 } else { 127 })
            .collect();
        let want = conv.run_direct(&x, 1, &g);
        for p in paths(&conv, &g) {
            assert_eq!(conv.run_path(p, &x, 1, &g), want, "{p:?} bias {bias} z {z}");
        }
    }
}
