//! Exact int8 matrix kernels of the integer-only engine.
//!
//! Everything computes `C = A · Bᵀ` with `A: m × k` (i8, row stride `lda ≥ k`),
//! `B: n × k` (i8, row-major: one row per output channel) and `C: m × n` (i32), with
//! results bit-identical to the i32 triple loop [`gemm_i8_reference`] for every input,
//! including -128 on both sides (no intermediate saturation anywhere).
//!
//! Weights are prepared once per layer with [`PackedWeights::new`], which picks the
//! fastest kernel for this CPU (see [`Kernel::detect`]) and lays B out for it; then
//! [`gemm_i8`] runs that kernel single-threaded (callers split the batch rows across
//! threads themselves).
//!
//! Kernels:
//! * `avx512-vnni` (x86/x86_64 with AVX-512F + VNNI): `vpdpbusd` on `a + 128` with a
//!   per-column correction; rows may be read in place already shifted, and in runs.
//! * `avx2` (x86/x86_64 with AVX2): i8 widened to i16, `vpmaddwd` with a 6×16 register tile.
//! * `portable`: plain Rust that LLVM autovectorizes; used on every other target.

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod avx2;
mod portable;
mod reference;
#[cfg(test)]
mod tests;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod vnni;

pub use reference::gemm_i8_reference;

use std::fmt;
use std::sync::OnceLock;

/// A GEMM implementation `gemm_i8` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// AVX-512 VNNI (`vpdpbusd`), x86 only. Not exercised on AVX2-only development machines.
    Avx512Vnni,
    /// AVX2 (`vpmaddwd` on i16-widened operands), x86 only.
    Avx2,
    /// Autovectorized plain Rust; available everywhere.
    Portable,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 3] = [Kernel::Avx512Vnni, Kernel::Avx2, Kernel::Portable];

    /// Short name: `"avx512-vnni"`, `"avx2"` or `"portable"`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }

    /// Whether this CPU can run the kernel (runtime feature detection).
    pub fn is_supported(self) -> bool {
        match self {
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Kernel::Avx512Vnni => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Kernel::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
            Kernel::Avx512Vnni | Kernel::Avx2 => false,
            Kernel::Portable => true,
        }
    }

    /// The fastest supported kernel; detected once and cached.
    pub fn detect() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            Kernel::ALL
                .into_iter()
                .find(|k| k.is_supported())
                .unwrap_or(Kernel::Portable)
        })
    }

    /// The supported kernels, fastest first (always ends with `Portable`).
    pub fn supported() -> Vec<Kernel> {
        Kernel::ALL
            .into_iter()
            .filter(|k| k.is_supported())
            .collect()
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which kernel [`gemm_i8`] uses on this machine: `"avx512-vnni"`, `"avx2"` or `"portable"`.
pub fn kernel_name() -> &'static str {
    Kernel::detect().name()
}

/// Kernel-specific packed layouts.
#[derive(Clone, Debug)]
enum Inner {
    /// `n == 0` or `k == 0`: nothing to pack, the product is all zeros.
    Empty,
    Portable(portable::Packed),
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    Avx2(avx2::Packed),
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    Vnni(vnni::Packed),
}

/// Weights B (`n` rows × `k`, row-major i8, any value in -128..=127) prepared once per
/// layer for the fastest kernel on this CPU.
///
/// The packed form is immutable, `Send + Sync`, and can be shared by threads that each
/// call [`gemm_i8`] on their own rows of A.
#[derive(Clone)]
pub struct PackedWeights {
    n: usize,
    k: usize,
    kernel: Kernel,
    inner: Inner,
}

impl PackedWeights {
    /// Packs `b` (`n × k` row-major, `b.len() == n*k`) for [`Kernel::detect`].
    ///
    /// # Panics
    /// If `b.len() != n * k`.
    pub fn new(b: &[i8], n: usize, k: usize) -> Self {
        Self::with_kernel(b, n, k, Kernel::detect())
    }

    /// Packs `b` for a specific kernel (tests, benchmarks, forcing the fallback).
    ///
    /// # Panics
    /// If `b.len() != n * k` or `!kernel.is_supported()`.
    pub fn with_kernel(b: &[i8], n: usize, k: usize, kernel: Kernel) -> Self {
        assert_eq!(b.len(), n * k, "b.len() must be n*k");
        assert!(
            kernel.is_supported(),
            "kernel {kernel} is not supported on this CPU"
        );
        let inner = if n == 0 || k == 0 {
            Inner::Empty
        } else {
            match kernel {
                #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                Kernel::Avx512Vnni => Inner::Vnni(vnni::pack(b, n, k)),
                #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                Kernel::Avx2 => Inner::Avx2(avx2::pack(b, n, k)),
                Kernel::Portable => Inner::Portable(portable::pack(b, n, k)),
                #[allow(unreachable_patterns)]
                _ => unreachable!("unsupported kernels are rejected above"),
            }
        };
        PackedWeights {
            n,
            k,
            kernel,
            inner,
        }
    }

    /// Number of weight rows (output columns of C).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length (columns of A and B).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The kernel these weights were packed for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Bytes of packed weight data (padding and widening included).
    pub fn packed_bytes(&self) -> usize {
        match &self.inner {
            Inner::Empty => 0,
            Inner::Portable(p) => p.bytes(),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Inner::Avx2(p) => p.bytes(),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Inner::Vnni(p) => p.bytes(),
        }
    }
}

impl fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedWeights")
            .field("n", &self.n)
            .field("k", &self.k)
            .field("kernel", &self.kernel)
            .field("packed_bytes", &self.packed_bytes())
            .finish()
    }
}

/// Checks that `a` holds `m` rows of `k` values at stride `lda`.
fn check_a(a: &[i8], m: usize, lda: usize, k: usize) {
    assert!(lda >= k, "lda ({lda}) must be >= k ({k})");
    if m > 0 {
        let need = (m - 1) * lda + k;
        assert!(
            a.len() >= need,
            "a.len() ({}) too short for m={m}, lda={lda}, k={k} (needs {need})",
            a.len()
        );
    }
}

/// Checks that the runs hold `w.k()` values and `c` holds `m` rows of `w.n()`.
fn check_runs((offsets, len): (&[usize], usize), w: &PackedWeights, m: usize, c: &[i32]) {
    assert_eq!(offsets.len() * len, w.k, "runs hold k values");
    assert_eq!(c.len(), m * w.n, "c.len() must be m*n");
}

/// Bytes a row of shifted A must have readable for [`gemm_i8_shifted`]: `k` rounded up to 4.
pub fn shifted_row_bytes(k: usize) -> usize {
    k.next_multiple_of(4)
}

/// [`gemm_i8`] on rows already shifted to unsigned bytes (`a` holds `x ^ 0x80` for each of
/// the `k` values of a row, at stride `lda`, with [`shifted_row_bytes`]`(k)` bytes readable
/// from the last row's start; bytes past `k` may hold anything), read in place with no copy.
/// Only the AVX-512 VNNI kernel takes such rows: returns `false`, touching nothing, when `w`
/// was packed for another kernel.
///
/// # Panics
/// If `lda < w.k()`, `c.len() != m * w.n()`, or `a` is shorter than the rows need.
pub fn gemm_i8_shifted(a: &[i8], m: usize, lda: usize, w: &PackedWeights, c: &mut [i32]) -> bool {
    assert!(lda >= w.k, "lda ({lda}) must be >= k ({})", w.k);
    gemm_i8_shifted_runs(a, m, lda, (&[0], w.k), w, c)
}

/// [`gemm_i8_shifted`] on rows whose k values lie in runs: `offsets.len()` runs of `len` values,
/// run `j` at `offsets[j]` bytes from the row's start (k order: run 0's values, then run 1's, …).
/// A conv reads its patch rows this way straight from a padded channels-last image: one run
/// per kernel row. With several runs `len` must be a multiple of 4; one run may end short of
/// one, with [`shifted_row_bytes`]`(len)` bytes readable. Returns `false`, touching nothing,
/// when `w` was packed for a kernel other than AVX-512 VNNI.
///
/// # Panics
/// If the runs do not hold `w.k()` values, `c.len() != m * w.n()`, or `a` is shorter than the
/// rows need.
pub fn gemm_i8_shifted_runs(
    a: &[i8],
    m: usize,
    lda: usize,
    (offsets, len): (&[usize], usize),
    w: &PackedWeights,
    c: &mut [i32],
) -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if let Inner::Vnni(p) = &w.inner {
        check_runs((offsets, len), w, m, c);
        assert!(
            offsets.len() == 1 || len % 4 == 0,
            "several runs of whole k-quads"
        );
        let runs = vnni::Runs {
            offsets,
            quads: len.div_ceil(4),
        };
        // SAFETY: `Inner::Vnni` is only built after AVX-512F + VNNI were detected; the quads
        // and the rows' length are asserted inside.
        unsafe { vnni::gemm_shifted(a, m, lda, &runs, p, w.n, c) };
        return true;
    }
    let _ = (a, m, lda, offsets, len, c);
    false
}

/// How [`gemm_i8_runs`] reads a kernel's runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunsLayout {
    /// Codes shifted to unsigned (`x ^ 0x80`, the AVX-512 VNNI kernel) or as they are (AVX2).
    pub shifted: bool,
    /// The chunk of codes each of several runs must hold a whole number of: 4 for the VNNI
    /// kernel (which reads quads), 8 for AVX2 (which widens 8 codes at a time).
    pub granule: usize,
}

/// How [`gemm_i8_runs`] reads runs for weights `w`; `None` when their kernel does not.
pub fn runs_layout(w: &PackedWeights) -> Option<RunsLayout> {
    match &w.inner {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        Inner::Vnni(_) => Some(RunsLayout {
            shifted: true,
            granule: 4,
        }),
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        Inner::Avx2(_) => Some(RunsLayout {
            shifted: false,
            granule: 8,
        }),
        _ => None,
    }
}

/// `C = A · Bᵀ` on rows read in runs, as [`gemm_i8_shifted_runs`] reads them, in the codes
/// [`runs_layout`] says (shifted for AVX-512 VNNI, as they are for AVX2; for AVX2 `len`
/// must be a multiple of 8). Returns `false`, touching nothing, for other kernels.
///
/// # Panics
/// If the runs do not hold `w.k()` values, break the kernel's rules, `c.len() != m * w.n()`,
/// or `a` is shorter than the rows need.
pub fn gemm_i8_runs(
    a: &[i8],
    m: usize,
    lda: usize,
    (offsets, len): (&[usize], usize),
    w: &PackedWeights,
    c: &mut [i32],
) -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if let Inner::Avx2(p) = &w.inner {
        check_runs((offsets, len), w, m, c);
        if m == 0 {
            return true;
        }
        // SAFETY: `Inner::Avx2` is only built after AVX2 was detected; m, n, k ≥ 1 (a packed
        // layout exists) and c's length were checked; the runs are checked inside.
        unsafe { avx2::gemm_runs(a, m, (lda, offsets, len), p, w.n, c) };
        return true;
    }
    gemm_i8_shifted_runs(a, m, lda, (offsets, len), w, c)
}

/// `C = A · Bᵀ`: `C[i*n + j] = Σ_{t<k} A[i*lda + t] as i32 * B[j*k + t] as i32`
/// for `i < m`, `j < n`, with `n`, `k` and `B` taken from `w`.
///
/// Overwrites `c` (length `m*n`). `A` is i8 row-major with row stride `lda ≥ k`, so a
/// column slice of a wider matrix can be passed; only `a[i*lda .. i*lda + k]` is read for
/// row `i`, and never anything past `a.len()`. Exact (bit-identical to
/// [`gemm_i8_reference`]) for all inputs; sums wrap on i32 overflow, which needs
/// `k ≥ 131_072`. Single-threaded; allocates a small scratch buffer per call.
///
/// # Panics
/// If `lda < w.k()`, `c.len() != m * w.n()`, or `a.len() < (m-1)*lda + w.k()`.
pub fn gemm_i8(a: &[i8], m: usize, lda: usize, w: &PackedWeights, c: &mut [i32]) {
    let (n, k) = (w.n, w.k);
    check_a(a, m, lda, k);
    assert_eq!(c.len(), m * n, "c.len() must be m*n");
    if m == 0 {
        return;
    }
    match &w.inner {
        Inner::Empty => c.fill(0),
        Inner::Portable(p) => portable::gemm(a, m, lda, p, n, k, c),
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: `Inner::Avx2` is only built by `with_kernel` after
        // `Kernel::Avx2.is_supported()` confirmed AVX2; arguments were checked above.
        Inner::Avx2(p) => unsafe { avx2::gemm(a, m, lda, p, n, k, c) },
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: `Inner::Vnni` is only built after AVX-512F + VNNI were detected;
        // arguments were checked above.
        Inner::Vnni(p) => unsafe { vnni::gemm(a, m, lda, p, n, k, c) },
    }
}
