//! The greedy walk over a sensitivity table (AIMET's AMP): from every layer at its highest
//! candidate, repeatedly take the bit step that adds the least predicted output noise per bit of
//! storage saved, recording each configuration as a point of the front.
//!
//! The prediction is additive in noise power: NSR(config) = NSR(top) + Σₗ (nₗ(bₗ) − nₗ(top)),
//! where nₗ(b) is the output noise-to-signal ratio measured with layer l alone at b bits. Each
//! step may jump to any lower candidate of a layer (the one with the least noise per bit saved),
//! so each layer walks down the lower convex hull of its (size, noise) curve, and every point of
//! the front minimizes NSR + λ·size for some λ ≥ 0: no configuration of the same or smaller size
//! has a lower predicted NSR. A budget between two front points costs at most the noise of the
//! step between them.

use crate::error::{Error, Result};

/// Per layer and candidate bit width, the output noise-to-signal ratio measured with that
/// layer alone at that width (every other layer at the top candidate).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SensitivityTable {
    /// Candidate bit widths, highest first.
    pub candidates: Vec<u8>,
    /// Weights per layer (the size of one bit step is `params × Δbits`).
    pub params: Vec<u64>,
    /// `nsr[l][k]`: noise-to-signal ratio with layer `l` at `candidates[k]`; must not decrease
    /// along `k` (fewer bits never predicted better).
    pub nsr: Vec<Vec<f64>>,
    /// Noise-to-signal ratio with every layer at the top candidate.
    pub base_nsr: f64,
}

/// One configuration on the greedy front.
#[derive(Debug, Clone, PartialEq)]
pub struct GreedyPoint {
    /// Candidate index per layer.
    pub choice: Vec<usize>,
    /// Σ params × bits over the searched layers.
    pub size_bits: u64,
    /// Predicted output noise-to-signal ratio.
    pub nsr: f64,
}

impl SensitivityTable {
    /// Checks shapes, order and monotonicity (a one-line error naming what is wrong).
    pub fn check(&self) -> Result<()> {
        if self.candidates.is_empty() || self.candidates.windows(2).any(|w| w[0] <= w[1]) {
            return Err(Error::config(
                "candidates",
                "must be distinct bit widths, highest first",
            ));
        }
        if self.nsr.len() != self.params.len()
            || self.nsr.iter().any(|r| r.len() != self.candidates.len())
        {
            return Err(Error::config(
                "sensitivity",
                "one row per layer, one column per candidate",
            ));
        }
        for (l, row) in self.nsr.iter().enumerate() {
            if row.iter().any(|v| !v.is_finite()) || row.windows(2).any(|w| w[1] < w[0]) {
                return Err(Error::config(
                    format!("sensitivity[{l}]"),
                    "noise must be finite and not decrease with fewer bits",
                ));
            }
        }
        Ok(())
    }

    /// Σ params × bits of a choice.
    pub fn size_bits(&self, choice: &[usize]) -> u64 {
        choice
            .iter()
            .zip(&self.params)
            .map(|(&k, &p)| p * self.candidates[k] as u64)
            .sum()
    }

    /// The predicted noise-to-signal ratio of a choice.
    pub fn predict(&self, choice: &[usize]) -> f64 {
        self.base_nsr
            + choice
                .iter()
                .zip(&self.nsr)
                .map(|(&k, row)| row[k] - row[0])
                .sum::<f64>()
    }

    /// The best step of layer `l` from candidate `k`: (noise per bit saved, target candidate).
    fn best_step(&self, l: usize, k: usize) -> Option<(f64, usize)> {
        let row = &self.nsr[l];
        let mut best: Option<(f64, usize)> = None;
        for j in k + 1..self.candidates.len() {
            let saved = (self.candidates[k] - self.candidates[j]) as f64 * self.params[l] as f64;
            if saved <= 0.0 {
                continue;
            }
            let ratio = (row[j] - row[k]) / saved;
            // Ties keep the nearer step: collinear points are optimal too.
            if best.is_none_or(|(r, _)| ratio < r) {
                best = Some((ratio, j));
            }
        }
        best
    }
}

/// The greedy front, from every layer at the top candidate down to every layer at the lowest:
/// sizes strictly decrease, predicted noise never decreases.
pub fn greedy_front(table: &SensitivityTable) -> Result<Vec<GreedyPoint>> {
    table.check()?;
    let mut choice = vec![0usize; table.params.len()];
    let point = |c: &[usize]| GreedyPoint {
        choice: c.to_vec(),
        size_bits: table.size_bits(c),
        nsr: table.predict(c),
    };
    let mut front = vec![point(&choice)];
    loop {
        let step = (0..choice.len())
            .filter_map(|l| table.best_step(l, choice[l]).map(|(r, j)| (r, l, j)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let Some((_, l, j)) = step else { break };
        choice[l] = j;
        front.push(point(&choice));
    }
    Ok(front)
}

/// The front point a size budget (Σ params × bits ≤ `max_size_bits`) takes: the largest one
/// within it (the best predicted), or `None` when even the smallest is over.
pub fn within_budget(front: &[GreedyPoint], max_size_bits: u64) -> Option<usize> {
    front.iter().position(|p| p.size_bits <= max_size_bits)
}

/// A budget between two front points leaves room the front does not use: starting from the
/// best front point that `fits`, repeatedly take the change of one or two layers' bits (to any
/// candidates) that lowers the predicted noise most and still fits, until none does. Returns the
/// improved choice, or `None` when no front point fits or nothing improves.
pub fn refine(
    table: &SensitivityTable,
    front: &[GreedyPoint],
    fits: impl Fn(&[usize]) -> bool,
) -> Option<Vec<usize>> {
    let start = front.iter().find(|p| fits(&p.choice))?;
    let (nl, nc) = (table.params.len(), table.candidates.len());
    let mut cur = start.choice.clone();
    let mut cur_nsr = table.predict(&cur);
    let mut improved = false;
    loop {
        let mut best: Option<(f64, Vec<usize>)> = None;
        let mut consider = |c: Vec<usize>| {
            let n = table.predict(&c);
            if n < cur_nsr - 1e-12 * cur_nsr.abs().max(1e-30)
                && best.as_ref().is_none_or(|(b, _)| n < *b)
                && fits(&c)
            {
                best = Some((n, c));
            }
        };
        for l in 0..nl {
            for k in 0..nc {
                let mut c = cur.clone();
                c[l] = k;
                for m in l + 1..nl {
                    for j in 0..nc {
                        let mut d = c.clone();
                        d[m] = j;
                        consider(d);
                    }
                }
                consider(c);
            }
        }
        let Some((n, c)) = best else { break };
        (cur, cur_nsr, improved) = (c, n, true);
    }
    improved.then_some(cur)
}

/// Most states [`exact_within`] keeps per layer before giving up.
pub const EXACT_STATES: usize = 50_000;

/// The assignment of least predicted noise whose size (`size(layer, candidate)` summed over the
/// layers) is at most `max`: a dynamic program over the layers keeping only the (size, noise)
/// states no other state beats on both. `None` when nothing fits or the states exceed
/// [`EXACT_STATES`] (then [`refine`] is the fallback).
pub fn exact_within(
    table: &SensitivityTable,
    size: impl Fn(usize, usize) -> u64,
    max: u64,
) -> Option<Vec<usize>> {
    // (size, noise added over the top, choice so far)
    let mut states: Vec<(u64, f64, Vec<usize>)> = vec![(0, 0.0, Vec::new())];
    for (l, row) in table.nsr.iter().enumerate() {
        let mut next: Vec<(u64, f64, Vec<usize>)> = Vec::new();
        for (s, n, c) in &states {
            for (k, v) in row.iter().enumerate() {
                let s2 = s + size(l, k);
                if s2 <= max {
                    let mut c2 = c.clone();
                    c2.push(k);
                    next.push((s2, n + (v - row[0]), c2));
                }
            }
        }
        next.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut best = f64::INFINITY;
        next.retain(|st| {
            let keep = st.1 < best;
            best = best.min(st.1);
            keep
        });
        if next.is_empty() || next.len() > EXACT_STATES {
            return None;
        }
        states = next;
    }
    states
        .into_iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|st| st.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_convex_rows_jump_over_the_dent() {
        // Layer 0: 8→4 costs 10/4 per bit saved, 8→2 only 11/6: the walk jumps straight to 2.
        let t = SensitivityTable {
            candidates: vec![8, 4, 2],
            params: vec![1, 1],
            nsr: vec![vec![0.0, 10.0, 11.0], vec![0.0, 40.0, 100.0]],
            base_nsr: 0.0,
        };
        let f = greedy_front(&t).unwrap();
        assert_eq!(f[1].choice, vec![2, 0]);
        assert!(f.windows(2).all(|w| w[1].size_bits < w[0].size_bits));
    }

    #[test]
    fn increasing_noise_is_required() {
        let t = SensitivityTable {
            candidates: vec![8, 4],
            params: vec![1],
            nsr: vec![vec![1.0, 0.5]],
            base_nsr: 1.0,
        };
        assert!(greedy_front(&t).is_err());
    }
}
