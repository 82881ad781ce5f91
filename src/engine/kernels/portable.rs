//! Portable fallback: plain Rust shaped so that LLVM autovectorizes it
//! (i8 widened to i16 once, then i16×i16→i32 dot-product reductions, which x86 lowers
//! to `pmaddwd` and AArch64 to `smlal`-style code).

/// Rows are zero-padded to a multiple of this many values.
const LANES: usize = 8;
/// Weight rows processed together, so each widened A chunk is loaded once per 4 outputs.
const COLS: usize = 4;

/// B widened to i16, row-major `n × kpad`, zero-padded past `k`.
#[derive(Clone, Debug)]
pub(super) struct Packed {
    b: Vec<i16>,
    kpad: usize,
}

impl Packed {
    /// Bytes held by the packed weights.
    pub(super) fn bytes(&self) -> usize {
        self.b.len() * 2
    }
}

/// Packs `b` (`n × k` row-major) for [`gemm`].
pub(super) fn pack(b: &[i8], n: usize, k: usize) -> Packed {
    let kpad = k.div_ceil(LANES) * LANES;
    let mut out = vec![0i16; n * kpad];
    for (dst, src) in out.chunks_exact_mut(kpad).zip(b.chunks_exact(k)) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s as i16;
        }
    }
    Packed { b: out, kpad }
}

/// `c = A · Bᵀ` with `B` packed by [`pack`]; arguments already validated by the caller.
pub(super) fn gemm(a: &[i8], m: usize, lda: usize, p: &Packed, n: usize, k: usize, c: &mut [i32]) {
    let kpad = p.kpad;
    let mut arow = vec![0i16; kpad];
    for i in 0..m {
        for (d, &s) in arow.iter_mut().zip(&a[i * lda..i * lda + k]) {
            *d = s as i16;
        }
        let crow = &mut c[i * n..(i + 1) * n];
        let mut j = 0;
        while j + COLS <= n {
            let bs = &p.b[j * kpad..(j + COLS) * kpad];
            let out = dot4(&arow, bs, kpad);
            crow[j..j + COLS].copy_from_slice(&out);
            j += COLS;
        }
        for (jj, cv) in crow.iter_mut().enumerate().skip(j) {
            *cv = dot1(&arow, &p.b[jj * kpad..(jj + 1) * kpad]);
        }
    }
}

/// Dot products of `a` with four consecutive rows of `bs` (each `kpad` long): four
/// independent i32 reductions in one loop, which the loop vectorizer turns into
/// widening multiply-adds (`pmaddwd` on x86).
#[inline(always)]
fn dot4(a: &[i16], bs: &[i16], kpad: usize) -> [i32; COLS] {
    let (b0, rest) = bs.split_at(kpad);
    let (b1, rest) = rest.split_at(kpad);
    let (b2, b3) = rest.split_at(kpad);
    let (mut s0, mut s1, mut s2, mut s3) = (0i32, 0i32, 0i32, 0i32);
    for ((((&x, &y0), &y1), &y2), &y3) in a.iter().zip(b0).zip(b1).zip(b2).zip(b3) {
        let x = x as i32;
        s0 = s0.wrapping_add(x * y0 as i32);
        s1 = s1.wrapping_add(x * y1 as i32);
        s2 = s2.wrapping_add(x * y2 as i32);
        s3 = s3.wrapping_add(x * y3 as i32);
    }
    [s0, s1, s2, s3]
}

/// Dot product of `a` with one row `b` (both `kpad` long).
#[inline(always)]
fn dot1(a: &[i16], b: &[i16]) -> i32 {
    a.iter()
        .zip(b)
        .fold(0i32, |s, (&x, &y)| s.wrapping_add(x as i32 * y as i32))
}
