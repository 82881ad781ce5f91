//! TEMPORARY STUB kernels (replaced by the SIMD module).
/// Stub.
#[derive(Debug)]
pub struct PackedWeights { b: Vec<i8>, n: usize, k: usize }
impl PackedWeights {
    /// Stub.
    pub fn new(b: &[i8], n: usize, k: usize) -> Self { PackedWeights { b: b.to_vec(), n, k } }
    /// Stub.
    pub fn n(&self) -> usize { self.n }
    /// Stub.
    pub fn k(&self) -> usize { self.k }
}
/// Stub.
pub fn gemm_i8(a: &[i8], m: usize, lda: usize, w: &PackedWeights, c: &mut [i32]) { gemm_i8_reference(a, m, lda, &w.b, w.n, w.k, c) }
/// Stub.
pub fn gemm_i8_reference(a: &[i8], m: usize, lda: usize, b: &[i8], n: usize, k: usize, c: &mut [i32]) {
    for i in 0..m { for j in 0..n { let mut s = 0i32; for t in 0..k { s += a[i * lda + t] as i32 * b[j * k + t] as i32; } c[i * n + j] = s; } }
}
/// Stub.
pub fn kernel_name() -> &'static str { "stub" }
