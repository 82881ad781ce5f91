//! Recycled code buffers for the integer engine: when a value's last reader has run, its codes
//! go back to a short per-thread list, and the next conv, residual Add or layout copy takes its
//! output buffer from there. From the second batch on a thread, a run allocates no memory for
//! those outputs (a buffer shorter than its new value is zeroed past its old length, as `Vec`
//! must). A buffer taken holds stale codes of an earlier value (or zeros): every user writes
//! all of it.

use crate::engine::tensor::{Data, Tensor};
use std::cell::RefCell;

/// Buffers a thread keeps at most (a graph's values come in a few dozen sizes at most).
const KEEP: usize = 32;

/// Bytes a thread keeps at most (a part of a batch holds a few such activations).
const KEEP_BYTES: usize = 32 << 20;

thread_local! {
    static FREE: RefCell<Vec<Vec<i8>>> = const { RefCell::new(Vec::new()) };
    static NEW: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Buffers [`codes`] has allocated on this thread so far (none kept would serve): a run that
/// repeats the thread's last one should add none.
pub fn allocated() -> usize {
    NEW.get()
}

/// A buffer of `len` codes with unspecified values (the caller writes every one). Taken from
/// the kept buffers in this order:
/// 1. one whose length is `len` (the same value of the last batch: nothing to zero);
/// 2. the smallest one at least `len` long (a longer value's buffer, cut);
/// 3. the smallest one with room for `len` within twice that, zeroed past its length;
///
/// otherwise a new one. A buffer is never taken for a value under half its size: that would
/// leave the next large value without one, and it would be zeroed again on the way back up.
pub fn codes(len: usize) -> Vec<i8> {
    let kept = FREE.with_borrow_mut(|free| {
        let fits = |b: &Vec<i8>| b.capacity() >= len && b.capacity() / 2 <= len;
        let best = (free.iter().enumerate())
            .filter(|(_, b)| fits(b))
            .min_by_key(|(_, b)| (b.len() != len, b.len() < len, b.capacity()))
            .map(|(i, _)| i)?;
        Some(free.swap_remove(best))
    });
    match kept {
        Some(mut b) => {
            // Codes up to the old length stay as they are; only a longer buffer is zeroed past it.
            b.resize(len, 0);
            b
        }
        None => {
            NEW.set(NEW.get() + 1);
            vec![0; len]
        }
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

    /// A buffer of `len` codes `v` in an allocation of `cap`.
    fn with_room(len: usize, cap: usize, v: i8) -> Tensor {
        let mut b = Vec::with_capacity(cap);
        b.resize(len, v);
        q(b)
    }

    #[test]
    fn a_kept_buffer_serves_the_next_output_of_its_size_or_a_little_less() {
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
            let d = codes(25);
            assert_eq!(d.capacity(), 30, "the smallest kept that holds 25");
            // 10 and 20 were dropped; a request larger than every kept buffer gets a new one.
            assert_eq!(codes(11).capacity(), 11, "none kept within twice 11");
            assert_eq!(codes(5000).capacity(), 5000);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_buffer_of_the_same_length_goes_first_then_one_that_needs_no_zeros() {
        std::thread::spawn(|| {
            give(with_room(100, 180, 1));
            give(with_room(150, 190, 2));
            give(with_room(120, 120, 3));
            // 120 codes: the buffer of exactly that length, though others have room.
            let a = codes(120);
            assert_eq!((a.capacity(), a[0]), (120, 3));
            // 110 codes: the 150-long buffer (cut, no zeros) before the 100-long one.
            let b = codes(110);
            assert_eq!((b.capacity(), b.len(), b[0]), (190, 110, 2));
            // 170 codes: only the 100-long buffer has room; zeroed past its codes.
            let c = codes(170);
            assert_eq!((c.capacity(), c[99], c[100], c[169]), (180, 1, 0, 0));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_large_buffer_is_not_spent_on_a_small_value() {
        std::thread::spawn(|| {
            give(q(vec![5; 1000]));
            let small = codes(400);
            assert_eq!(small.capacity(), 400, "a new buffer, not the 1000");
            let large = codes(900);
            assert_eq!(
                (large.capacity(), large[0]),
                (1000, 5),
                "kept for the large value"
            );
        })
        .join()
        .unwrap();
    }
}
