//! Every kernel against `gemm_i8_reference`.

use super::*;
use proptest::prelude::*;

/// SplitMix64: small seeded PRNG so the tests are reproducible without extra deps.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Random i8 with extra weight on the extremes -128, -127, 127 and 0.
    fn i8(&mut self) -> i8 {
        let r = self.next_u64();
        match r % 16 {
            0 => -128,
            1 => 127,
            2 => -127,
            3 => 0,
            _ => (r >> 8) as i8,
        }
    }

    fn vec(&mut self, len: usize) -> Vec<i8> {
        (0..len).map(|_| self.i8()).collect()
    }
}

/// Runs every supported kernel on `a` (tight slice: exactly `(m-1)*lda + k` bytes, so an
/// over-read past the end would have to leave the slice) and compares with the reference.
fn check(a: &[i8], m: usize, lda: usize, b: &[i8], n: usize, k: usize) {
    let a = &a[..(m - 1) * lda + k];
    let mut want = vec![0i32; m * n];
    gemm_i8_reference(a, m, lda, b, n, k, &mut want);
    for kernel in Kernel::supported() {
        let w = PackedWeights::with_kernel(b, n, k, kernel);
        assert_eq!((w.n(), w.k(), w.kernel()), (n, k, kernel));
        let mut got = vec![i32::MIN; m * n];
        gemm_i8(a, m, lda, &w, &mut got);
        if got != want {
            let idx = got.iter().zip(&want).position(|(g, w)| g != w).unwrap();
            panic!(
                "{kernel}: m={m} n={n} k={k} lda={lda}: C[{}][{}] = {} != {}",
                idx / n,
                idx % n,
                got[idx],
                want[idx]
            );
        }
    }
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        let p = vnni::pack(b, n, k);
        let mut got = vec![i32::MIN; m * n];
        vnni::emulate(a, m, lda, &p, n, k, &mut got);
        assert_eq!(got, want, "vnni emulation: m={m} n={n} k={k} lda={lda}");
    }
}

fn check_random(rng: &mut Rng, m: usize, n: usize, k: usize, extra: usize) {
    let lda = k + extra;
    let a = rng.vec((m - 1) * lda + k);
    let b = rng.vec(n * k);
    check(&a, m, lda, &b, n, k);
}

#[test]
fn detected_kernel_is_supported_and_named() {
    let k = Kernel::detect();
    assert!(k.is_supported());
    assert_eq!(kernel_name(), k.name());
    assert!(["avx512-vnni", "avx2", "portable"].contains(&kernel_name()));
    assert_eq!(PackedWeights::new(&[1, 2], 1, 2).kernel(), k);
    assert_eq!(Kernel::supported().last(), Some(&Kernel::Portable));
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        assert!(Kernel::supported().contains(&Kernel::Avx2));
    }
}

#[test]
fn small_shapes_all_k_and_n() {
    let mut rng = Rng(1);
    for k in 1..=70 {
        for n in 1..=20 {
            let m = 1 + (k * 7 + n * 3) % 15;
            let extra = (k + n) % 4;
            check_random(&mut rng, m, n, k, extra);
        }
    }
}

#[test]
fn row_counts_cover_every_tile_remainder() {
    let mut rng = Rng(2);
    for m in 1..=40 {
        for &(n, k) in &[(8, 25), (16, 33), (10, 17), (24, 3), (17, 64)] {
            check_random(&mut rng, m, n, k, m % 3);
        }
    }
}

/// The real layer shapes with the batch dimension scaled down.
#[test]
fn model_shapes_scaled_down() {
    let mut rng = Rng(3);
    for &(m, k, n) in &[
        (13, 784, 256),
        (14, 256, 128),
        (9, 128, 10),
        (301, 25, 8),
        (53, 200, 16),
        (25, 784, 64),
        (7, 64, 10),
    ] {
        check_random(&mut rng, m, n, k, 0);
        check_random(&mut rng, m, n, k, 5);
    }
}

#[test]
fn extremes_do_not_saturate() {
    for &(m, n, k) in &[
        (7, 19, 1),
        (13, 16, 25),
        (6, 8, 32),
        (5, 3, 4097),
        (3, 33, 1000),
    ] {
        for &(va, vb) in &[(-128, -128), (-128, 127), (127, -128), (127, 127)] {
            let a = vec![va; m * k];
            let b = vec![vb; n * k];
            check(&a, m, k, &b, n, k);
        }
        // Alternating extremes so that neighbouring pair products have equal signs.
        let a: Vec<i8> = (0..m * k)
            .map(|i| if i % 2 == 0 { -128 } else { 127 })
            .collect();
        let b: Vec<i8> = (0..n * k)
            .map(|i| if (i / 3) % 2 == 0 { -128 } else { 127 })
            .collect();
        check(&a, m, k, &b, n, k);
    }
    // Largest magnitude sums: 4096 · 128 · 128 = 2^26 per output.
    let mut want = vec![0i32; 2];
    let a = vec![-128i8; 4096];
    let b = vec![-128i8; 2 * 4096];
    gemm_i8_reference(&a, 1, 4096, &b, 2, 4096, &mut want);
    assert_eq!(want, vec![1 << 26; 2]);
}

#[test]
fn column_slice_of_wider_matrix() {
    // A is a 9 × 100 matrix; use columns 40..71 (k = 31, lda = 100).
    let mut rng = Rng(4);
    let full = rng.vec(9 * 100);
    let (m, k, lda, n) = (9, 31, 100, 13);
    let a = &full[40..];
    let b = rng.vec(n * k);
    check(a, m, lda, &b, n, k);
}

#[test]
fn degenerate_sizes() {
    let w = PackedWeights::new(&[], 0, 5);
    let mut c: Vec<i32> = vec![];
    gemm_i8(&[1; 15], 3, 5, &w, &mut c);
    let w = PackedWeights::new(&[], 4, 0);
    let mut c = vec![7; 8];
    gemm_i8(&[], 2, 0, &w, &mut c);
    assert_eq!(c, vec![0; 8]);
    let w = PackedWeights::new(&[3; 6], 2, 3);
    let mut c: Vec<i32> = vec![];
    gemm_i8(&[], 0, 3, &w, &mut c);
}

#[test]
#[should_panic(expected = "too short")]
fn short_a_panics() {
    let w = PackedWeights::new(&[1; 6], 2, 3);
    let mut c = vec![0; 4];
    gemm_i8(&[1; 5], 2, 3, &w, &mut c);
}

#[test]
fn packed_weights_are_send_sync_and_debug() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PackedWeights>();
    let w = PackedWeights::new(&[1; 12], 3, 4);
    let s = format!("{w:?}");
    assert!(s.contains("n: 3") && s.contains("k: 4"), "{s}");
    assert!(w.packed_bytes() >= 12);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn prop_matches_reference(
        m in 1usize..20,
        n in 1usize..40,
        k in 1usize..100,
        extra in 0usize..6,
        seed in any::<u64>(),
    ) {
        let lda = k + extra;
        let mut rng = Rng(seed);
        let a = rng.vec((m - 1) * lda + k);
        let b = rng.vec(n * k);
        check(&a, m, lda, &b, n, k);
    }

    #[test]
    fn prop_arbitrary_bytes(
        (m, n, k, a, b) in (1usize..8, 1usize..24, 1usize..48).prop_flat_map(|(m, n, k)| (
            Just(m), Just(n), Just(k),
            proptest::collection::vec(any::<i8>(), m * k),
            proptest::collection::vec(any::<i8>(), n * k),
        ))
    ) {
        check(&a, m, k, &b, n, k);
    }
}

#[test]
fn shifted_rows_match_the_reference() {
    // Rows of x ^ 0x80 read in place, tight (lda = k, k not a multiple of 4, the last row's
    // quad running past k into slack) and strided; junk past k must not matter.
    let mut rng = Rng(0x5eed_0001);
    for (m, n, k, lda) in [
        (13, 16, 150, 150),
        (8, 40, 7, 9),
        (1, 5, 3, 3),
        (17, 64, 576, 580),
    ] {
        let a = rng.vec(m * lda);
        let b = rng.vec(n * k);
        let w = PackedWeights::new(&b, n, k);
        let mut want = vec![0i32; m * n];
        gemm_i8_reference(&a, m, lda, &b, n, k, &mut want);
        let mut shifted: Vec<i8> = a.iter().map(|&v| v ^ i8::MIN).collect();
        shifted.extend(std::iter::repeat_n(0x55, shifted_row_bytes(k)));
        for (i, v) in shifted.iter_mut().enumerate() {
            if i % lda >= k && i < m * lda {
                *v = 0x3c; // junk between rows
            }
        }
        let mut got = vec![0i32; m * n];
        if gemm_i8_shifted(&shifted, m, lda, &w, &mut got) {
            assert_eq!(got, want, "m {m} n {n} k {k} lda {lda}");
        } else {
            assert_ne!(
                w.kernel(),
                Kernel::Avx512Vnni,
                "the VNNI kernel takes shifted rows"
            );
        }
    }
}

#[test]
fn rows_in_runs_match_the_reference_on_the_gathered_rows() {
    // Rows that overlap (lda below k, as a conv's pixels in a padded image) with their k values
    // in runs at fixed offsets: gathered into a plain matrix, they go to the reference.
    let mut rng = Rng(0x5eed_0002);
    for (m, n, lda, offsets, len) in [
        (21, 16, 16, vec![0, 480, 960], 48),
        (9, 40, 8, vec![0, 24, 200, 224], 8),
        (3, 5, 64, vec![0], 36),
        (1, 17, 4, vec![100, 0], 4),
        // Runs of 8 (AVX2's chunk) past a row block of 12, overlapping rows.
        (29, 9, 24, vec![0, 90, 180], 24),
        (13, 33, 40, vec![56, 0], 16),
    ] {
        let k = offsets.len() * len;
        let span = offsets.iter().max().unwrap() + len;
        let image = rng.vec((m - 1) * lda + span);
        let rows: Vec<i8> = (0..m)
            .flat_map(|i| {
                offsets
                    .iter()
                    .flat_map(move |&o| i * lda + o..i * lda + o + len)
            })
            .map(|j| image[j])
            .collect();
        let b = rng.vec(n * k);
        let w = PackedWeights::new(&b, n, k);
        let mut want = vec![0i32; m * n];
        gemm_i8_reference(&rows, m, k, &b, n, k, &mut want);
        let shifted: Vec<i8> = image.iter().map(|&v| v ^ i8::MIN).collect();
        let mut got = vec![0i32; m * n];
        if gemm_i8_shifted_runs(&shifted, m, lda, (&offsets, len), &w, &mut got) {
            assert_eq!(got, want, "m {m} n {n} lda {lda} offsets {offsets:?}");
        } else {
            assert_ne!(w.kernel(), Kernel::Avx512Vnni, "the VNNI kernel takes runs");
        }
        // Every kernel this CPU has that reads runs, in its own codes (AVX2: as they are, runs
        // of whole 8-code chunks).
        for kernel in Kernel::supported() {
            let w = PackedWeights::with_kernel(&b, n, k, kernel);
            let Some(how) = runs_layout(&w) else {
                continue;
            };
            if len % how.granule != 0 {
                continue;
            }
            let codes = if how.shifted { &shifted } else { &image };
            let mut got = vec![0i32; m * n];
            assert!(gemm_i8_runs(codes, m, lda, (&offsets, len), &w, &mut got));
            assert_eq!(
                got, want,
                "{kernel}: m {m} n {n} lda {lda} offsets {offsets:?}"
            );
        }
    }
}
