//! Byte matrix transposes for the integer engine's layout changes (NCHW planes to channels-last
//! rows and back): 16 × 16 blocks transposed in SSE2 registers (the x86-64 baseline, so no
//! run-time detection). A ragged edge block of at least 128 bytes goes through the same
//! registers by way of a 16 × 16 copy (channel counts such as 24 or 72 leave one on most of
//! MobileNetV2's convs, and the plain loop over it cost more than the full blocks: 4.6 against
//! 7.3–8.0 GB/s on 24 × 196); smaller ones (a plane of 49 pixels leaves one row) take the plain
//! loop.

/// `dst[c · dst_stride + r] = src[r · src_stride + c]` for `r < rows`, `c < cols`.
/// Panics when a slice is too short for the strides.
pub fn transpose_i8(
    src: &[i8],
    (rows, cols, src_stride): (usize, usize, usize),
    dst: &mut [i8],
    dst_stride: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        src_stride >= cols && dst_stride >= rows,
        "strides shorter than rows"
    );
    assert!(
        src.len() >= (rows - 1) * src_stride + cols,
        "transpose source too short"
    );
    assert!(
        dst.len() >= (cols - 1) * dst_stride + rows,
        "transpose destination too short"
    );
    #[cfg(target_arch = "x86_64")]
    blocked(src, (rows, cols, src_stride), dst, dst_stride);
    #[cfg(not(target_arch = "x86_64"))]
    plain(src, (rows, cols, src_stride), dst, dst_stride);
}

/// [`transpose_i8`] (checked) in 16 × 16 register blocks, then the edges: the columns past
/// the last full block of the full block rows, then the rows past them, each in blocks of up
/// to 16 × 16 (through the registers from 128 bytes on, byte by byte below).
#[cfg(target_arch = "x86_64")]
fn blocked(
    src: &[i8],
    (rows, cols, src_stride): (usize, usize, usize),
    dst: &mut [i8],
    dst_stride: usize,
) {
    let (r16, c16) = (rows / 16 * 16, cols / 16 * 16);
    for r0 in (0..r16).step_by(16) {
        for c0 in (0..c16).step_by(16) {
            // SAFETY: rows r0..r0+16 and columns c0..c0+16 lie inside both slices (checked
            // by the caller: r0 + 16 <= rows, c0 + 16 <= cols).
            unsafe {
                block16(
                    src,
                    r0 * src_stride + c0,
                    src_stride,
                    dst,
                    c0 * dst_stride + r0,
                    dst_stride,
                )
            };
        }
    }
    let right = (0..r16).step_by(16).map(|r0| (r0, c16));
    let bottom = (0..cols).step_by(16).map(|c0| (r16, c0));
    let edges = right
        .filter(|_| c16 < cols)
        .chain(bottom.filter(|_| r16 < rows));
    for (r0, c0) in edges {
        let (nr, nc) = ((rows - r0).min(16), (cols - c0).min(16));
        let (s0, d0) = (r0 * src_stride + c0, c0 * dst_stride + r0);
        if nr * nc >= 128 {
            edge_block(&src[s0..], (nr, nc, src_stride), &mut dst[d0..], dst_stride);
        } else {
            plain(&src[s0..], (nr, nc, src_stride), &mut dst[d0..], dst_stride);
        }
    }
}

/// The transpose of [`transpose_i8`] one byte at a time.
fn plain(src: &[i8], (rows, cols, ss): (usize, usize, usize), dst: &mut [i8], ds: usize) {
    for r in 0..rows {
        for c in 0..cols {
            dst[c * ds + r] = src[r * ss + c];
        }
    }
}

/// A block of `nr` × `nc` (at most 16 × 16) at the start of `src` transposed to the start of
/// `dst`: copied into a 16 × 16 block, transposed in registers, the first `nr` bytes of its
/// first `nc` rows copied out. (What the copy leaves in the block's other rows and columns
/// lands only in bytes that are not copied out.)
#[cfg(target_arch = "x86_64")]
fn edge_block(src: &[i8], (nr, nc, ss): (usize, usize, usize), dst: &mut [i8], ds: usize) {
    let mut a = [0i8; 256];
    for (i, row) in a.chunks_exact_mut(16).take(nr).enumerate() {
        copy_upto16(&mut row[..nc], &src[i * ss..i * ss + nc]);
    }
    let mut b = [0i8; 256];
    // SAFETY: both blocks are 16 rows of 16 bytes at stride 16.
    unsafe { block16(&a, 0, 16, &mut b, 0, 16) };
    for (j, row) in b.chunks_exact(16).take(nc).enumerate() {
        copy_upto16(&mut dst[j * ds..j * ds + nr], &row[..nr]);
    }
}

/// `dst.copy_from_slice(src)` for 1 to 16 bytes as two fixed-size moves that may overlap (a
/// call to `memcpy` per row would cost more than the transpose).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn copy_upto16(dst: &mut [i8], src: &[i8]) {
    let n = src.len();
    debug_assert!(dst.len() == n && (1..=16).contains(&n));
    macro_rules! two {
        ($w:expr) => {{
            dst[..$w].copy_from_slice(&src[..$w]);
            dst[n - $w..].copy_from_slice(&src[n - $w..]);
        }};
    }
    match n {
        16 => dst.copy_from_slice(&src[..16]),
        8.. => two!(8),
        4.. => two!(4),
        2.. => two!(2),
        _ => dst.copy_from_slice(src),
    }
}

/// One 16 × 16 block: 16 loads, four rounds of unpacks (bytes, words, dwords, qwords), 16 stores.
#[cfg(target_arch = "x86_64")]
unsafe fn block16(src: &[i8], s0: usize, ss: usize, dst: &mut [i8], d0: usize, ds: usize) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): the caller guarantees 16 rows of 16 bytes at s0 + i·ss in src and
    // at d0 + i·ds in dst; loads and stores are unaligned.
    unsafe {
        let mut r = [_mm_setzero_si128(); 16];
        for (i, v) in r.iter_mut().enumerate() {
            *v = _mm_loadu_si128(src.as_ptr().add(s0 + i * ss) as *const __m128i);
        }
        let mut t = [_mm_setzero_si128(); 16];
        for i in 0..8 {
            t[2 * i] = _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm_unpackhi_epi8(r[2 * i], r[2 * i + 1]);
        }
        // u[4q + j]: rows 4q..4q+4, columns 4j..4j+4.
        let mut u = [_mm_setzero_si128(); 16];
        for q in 0..4 {
            let (a0, a1, b0, b1) = (t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]);
            u[4 * q] = _mm_unpacklo_epi16(a0, b0);
            u[4 * q + 1] = _mm_unpackhi_epi16(a0, b0);
            u[4 * q + 2] = _mm_unpacklo_epi16(a1, b1);
            u[4 * q + 3] = _mm_unpackhi_epi16(a1, b1);
        }
        // v[8h + 2j + e]: rows 8h..8h+8, columns 4j + 2e .. 4j + 2e + 2.
        let mut v = [_mm_setzero_si128(); 16];
        for h in 0..2 {
            for j in 0..4 {
                let (a, b) = (u[8 * h + j], u[8 * h + 4 + j]);
                v[8 * h + 2 * j] = _mm_unpacklo_epi32(a, b);
                v[8 * h + 2 * j + 1] = _mm_unpackhi_epi32(a, b);
            }
        }
        for p in 0..8 {
            let (a, b) = (v[p], v[8 + p]);
            let lo = _mm_unpacklo_epi64(a, b);
            let hi = _mm_unpackhi_epi64(a, b);
            _mm_storeu_si128(dst.as_mut_ptr().add(d0 + 2 * p * ds) as *mut __m128i, lo);
            _mm_storeu_si128(
                dst.as_mut_ptr().add(d0 + (2 * p + 1) * ds) as *mut __m128i,
                hi,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_direct_loop_on_ragged_and_strided_shapes() {
        for (rows, cols) in [
            (1, 1),
            (16, 16),
            (17, 33),
            (64, 784),
            (784, 16),
            (5, 40),
            (48, 3),
            // MobileNetV2's channel counts and planes: ragged edges on one or both sides.
            (24, 196),
            (49, 72),
            (7, 15),
        ] {
            for (extra_s, extra_d) in [(0, 0), (3, 7)] {
                let ss = cols + extra_s;
                let ds = rows + extra_d;
                let src: Vec<i8> = (0..rows * ss).map(|i| (i * 37 % 251) as u8 as i8).collect();
                let mut got = vec![99i8; cols * ds];
                transpose_i8(&src, (rows, cols, ss), &mut got, ds);
                let mut want = vec![99i8; cols * ds];
                for r in 0..rows {
                    for c in 0..cols {
                        want[c * ds + r] = src[r * ss + c];
                    }
                }
                assert_eq!(got, want, "{rows}x{cols} strides {ss} {ds}");
            }
        }
    }
}
