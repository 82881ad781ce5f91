//! The plain triple loop every fast kernel is tested against.

/// Reference `C = A · Bᵀ` in i32: `C[i*n + j] = Σ_{t<k} A[i*lda + t] · B[j*k + t]`.
///
/// `a` holds `m` rows of `k` used values each with row stride `lda ≥ k`
/// (only `a[i*lda .. i*lda + k]` is read for row `i`), `b` is `n × k` row-major,
/// `c` (length `m*n`) is overwritten. Sums wrap on i32 overflow, which cannot happen
/// for `k < 131_072` (`|a·b| ≤ 2^14`).
///
/// # Panics
/// If `lda < k`, `b.len() != n*k`, `c.len() != m*n`, or `a` is too short for `m` rows.
pub fn gemm_i8_reference(
    a: &[i8],
    m: usize,
    lda: usize,
    b: &[i8],
    n: usize,
    k: usize,
    c: &mut [i32],
) {
    super::check_a(a, m, lda, k);
    assert_eq!(b.len(), n * k, "b.len() must be n*k");
    assert_eq!(c.len(), m * n, "c.len() must be m*n");
    for i in 0..m {
        let arow = &a[i * lda..i * lda + k];
        for j in 0..n {
            let brow = &b[j * k..j * k + k];
            let mut sum = 0i32;
            for (&x, &y) in arow.iter().zip(brow) {
                sum = sum.wrapping_add(x as i32 * y as i32);
            }
            c[i * n + j] = sum;
        }
    }
}
