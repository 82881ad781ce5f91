//! Top-1 accuracy and agreement counts of the float and integer engines.

use crate::engine::argmax;

/// Counts over an evaluation set (merged across batches).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccuracyCounts {
    /// Samples seen.
    pub samples: usize,
    /// Samples with a label.
    pub labelled: usize,
    /// Float predictions equal to the label.
    pub float_correct: usize,
    /// Integer predictions equal to the label.
    pub quant_correct: usize,
    /// Samples where both engines predict the same class.
    pub agree: usize,
}

impl AccuracyCounts {
    /// Adds a batch of logits (`classes` per sample); `float` may be absent (no float weights).
    pub fn add(
        &mut self,
        float: Option<&[f32]>,
        quant: &[f32],
        classes: usize,
        labels: Option<&[i64]>,
    ) {
        let n = quant.len() / classes.max(1);
        for s in 0..n {
            let q = argmax(&quant[s * classes..(s + 1) * classes]);
            let f = float.map(|f| argmax(&f[s * classes..(s + 1) * classes]));
            self.samples += 1;
            if f == Some(q) {
                self.agree += 1;
            }
            if let Some(l) = labels {
                self.labelled += 1;
                self.quant_correct += usize::from(q as i64 == l[s]);
                self.float_correct += usize::from(f.is_some_and(|f| f as i64 == l[s]));
            }
        }
    }

    /// Combines two partial counts.
    pub fn merge(&mut self, o: &AccuracyCounts) {
        self.samples += o.samples;
        self.labelled += o.labelled;
        self.float_correct += o.float_correct;
        self.quant_correct += o.quant_correct;
        self.agree += o.agree;
    }

    /// Float top-1 as a fraction (None without labels).
    pub fn float_accuracy(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.float_correct as f64 / self.labelled as f64)
    }

    /// Integer top-1 as a fraction (None without labels).
    pub fn quant_accuracy(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.quant_correct as f64 / self.labelled as f64)
    }

    /// Share of samples where both engines agree.
    pub fn agreement(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.agree as f64 / self.samples as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_hand() {
        let mut c = AccuracyCounts::default();
        // sample 0: float → 1, quant → 1, label 1; sample 1: float → 0, quant → 1 (tie → 0? no: 1 > 0), label 0.
        c.add(
            Some(&[0.0, 1.0, 0.0, 1.0, 0.5, 0.0]),
            &[0.0, 2.0, 0.0, 0.1, 0.2, 0.2],
            3,
            Some(&[1, 0]),
        );
        assert_eq!(c.samples, 2);
        assert_eq!(c.float_correct, 2);
        assert_eq!(c.quant_correct, 1);
        assert_eq!(c.agree, 1);
        assert_eq!(c.quant_accuracy(), Some(0.5));
    }
}
