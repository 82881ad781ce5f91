//! Recycled code buffers for the integer engine: when a value's last reader has run, its codes
//! go back to a short per-thread list, and the next conv, residual Add or layout copy takes its
//! output buffer from there. From the second batch on a thread, a run allocates and zeroes no
//! memory for those outputs. A buffer taken holds stale codes of an earlier value (or zeros):
//! every user writes all of it.

use crate::engine::tensor::{Data, Tensor};
use std::cell::RefCell;

/// Buffers a thread keeps at most.
const KEEP: usize = 8;

/// Bytes a thread keeps at most (a part of a batch holds a few such activations).
const KEEP_BYTES: usize = 32 << 20;

thread_local! {
    static FREE: RefCell<Vec<Vec<i8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` codes with unspecified values (the caller writes every one): the
/// smallest kept buffer that holds `len` codes without growing, else a new one.
pub fn codes(len: usize) -> Vec<i8> {
    let kept = FREE.with_borrow_mut(|free| {
        let best = (free.iter().enumerate())
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)?;
        Some(free.swap_remove(best))
    });
    match kept {
        Some(mut b) => {
            // Codes up to the old length stay as they are; only a longer buffer is zeroed past it.
            b.resize(len, 0);
            b
        }
        None => vec![0; len],
    }
}

/// Keeps `t`'s codes for [`codes`] (a quantized tensor's; anything else is dropped), within
/// [`KEEP`] buffers and [`KEEP_BYTES`] bytes (the smallest buffers go first).
pub fn give(t: Tensor) {
    let Data::Q { data, .. } = t.data else {
        return;
    };
    if data.capacity() == 0 || data.capacity() > KEEP_BYTES {
        return;
    }
    FREE.with_borrow_mut(|free| {
        free.push(data);
        free.sort_by_key(|b| std::cmp::Reverse(b.capacity()));
        while free.len() > KEEP || free.iter().map(Vec::capacity).sum::<usize>() > KEEP_BYTES {
            free.pop();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{QParams, Scheme};

    fn q(codes: Vec<i8>) -> Tensor {
        let qp = QParams {
            scale: 1.0,
            zero_point: 0,
            bits: 8,
            scheme: Scheme::Asymmetric,
        };
        Tensor::q(vec![codes.len()], codes, qp)
    }

    #[test]
    fn a_kept_buffer_serves_the_next_output_of_its_size_or_less() {
        std::thread::spawn(|| {
            give(q(vec![7; 1000]));
            let b = codes(600);
            assert_eq!((b.len(), b.capacity()), (600, 1000), "the kept buffer, cut");
            assert!(b.iter().all(|&v| v == 7), "stale codes, not zeroed");
            // None kept now: a new, zeroed buffer.
            let c = codes(10);
            assert_eq!(c, vec![0; 10]);
            // A real tensor is not kept; more than KEEP buffers keep the largest.
            give(Tensor::f32(vec![4], vec![0.0; 4]));
            for n in 1..=KEEP + 2 {
                give(q(vec![1; n * 10]));
            }
            let d = codes(1);
            assert_eq!(
                d.capacity(),
                30,
                "the smallest kept that holds 1: {}",
                d.capacity()
            );
            // A request larger than every kept buffer gets a new one.
            assert_eq!(codes(5000).capacity(), 5000);
        })
        .join()
        .unwrap();
    }
}
