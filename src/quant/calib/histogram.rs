//! TEMPORARY STUB (signatures of the real module; the real one replaces this file).
use crate::quant::ClipRange;
/// Stub.
#[derive(Debug, Clone, Default)]
pub struct Histogram { min: f32, max: f32, count: u64, counts: Vec<u64> }
/// Stub.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats { pub count: u64, pub min: f32, pub max: f32, pub mean: f64, pub std: f64, pub skewness: f64, pub kurtosis: f64 }
impl Stats { /// stub
pub fn of(v: &[f32]) -> Stats { let h = Histogram::from_values(v); h.stats() } }
impl Histogram {
    /// Stub.
    pub fn new() -> Self { Histogram { min: f32::INFINITY, max: f32::NEG_INFINITY, count: 0, counts: vec![0; 2048] } }
    /// Stub.
    pub fn from_values(v: &[f32]) -> Self { let mut h = Self::new(); h.add(v); h }
    /// Stub.
    pub fn add(&mut self, v: &[f32]) { for &x in v { self.min = self.min.min(x); self.max = self.max.max(x); } self.count += v.len() as u64; }
    /// Stub.
    pub fn merge(&mut self, o: &Histogram) { self.min = self.min.min(o.min); self.max = self.max.max(o.max); self.count += o.count; }
    /// Stub.
    pub fn count(&self) -> u64 { self.count }
    /// Stub.
    pub fn min(&self) -> f32 { if self.count == 0 { 0.0 } else { self.min } }
    /// Stub.
    pub fn max(&self) -> f32 { if self.count == 0 { 0.0 } else { self.max } }
    /// Stub.
    pub fn stats(&self) -> Stats { Stats { count: self.count, min: self.min(), max: self.max(), ..Default::default() } }
    /// Stub.
    pub fn counts(&self) -> &[u64] { &self.counts }
    /// Stub: (lo, bin width).
    pub fn bin_edges(&self) -> (f64, f64) { (self.min() as f64, 1.0) }
    /// Stub.
    pub fn count_outside(&self, _r: ClipRange) -> u64 { 0 }
    /// Stub.
    pub fn rebin(&self, n: usize, _lo: f64, _hi: f64) -> Vec<f64> { vec![1.0; n] }
}
