//! Packing 4- and 2-bit integers into I32 words (formats.md §6, the compressed-tensors
//! `pack-quantized` layout): each value is offset by +2^(B-1) into an unsigned B-bit field, the
//! first value of a row in the lowest bits, rows padded to whole words.

/// Whether weights of `bits` are stored packed (4 and 2 bits) rather than as I8.
pub fn is_packed(bits: u8) -> bool {
    matches!(bits, 4 | 2)
}

/// Values per 32-bit word at `bits` (4 and 2 bits only).
pub fn per_word(bits: u8) -> usize {
    32 / bits as usize
}

/// Words per row of `cols` values.
pub fn words_per_row(bits: u8, cols: usize) -> usize {
    cols.div_ceil(per_word(bits))
}

/// Packs a row-major [rows, cols] matrix of `bits`-bit signed values into
/// [rows, ceil(cols / (32 / bits))] words. Values must lie in [−2^(B−1), 2^(B−1) − 1].
pub fn pack(q: &[i8], rows: usize, cols: usize, bits: u8) -> Vec<i32> {
    assert!(is_packed(bits), "only 4 and 2 bits are packed");
    assert_eq!(q.len(), rows * cols, "matrix size");
    let per = per_word(bits);
    let wpr = words_per_row(bits, cols);
    let offset = 1i32 << (bits - 1);
    let mask = (1u32 << bits) - 1;
    let mut out = vec![0i32; rows * wpr];
    for r in 0..rows {
        for (c, &v) in q[r * cols..(r + 1) * cols].iter().enumerate() {
            let u = (v as i32 + offset) as u32;
            debug_assert!(u <= mask, "value {v} does not fit {bits} bits");
            let word = &mut out[r * wpr + c / per];
            *word = (*word as u32 | (u & mask) << (bits as usize * (c % per))) as i32;
        }
    }
    out
}

/// Unpacks what [`pack`] made: [rows, cols] signed values.
pub fn unpack(words: &[i32], rows: usize, cols: usize, bits: u8) -> Vec<i8> {
    assert!(is_packed(bits), "only 4 and 2 bits are packed");
    let per = per_word(bits);
    let wpr = words_per_row(bits, cols);
    assert_eq!(words.len(), rows * wpr, "packed size");
    let offset = 1i32 << (bits - 1);
    let mask = (1u32 << bits) - 1;
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            let w = words[r * wpr + c / per] as u32;
            let u = (w >> (bits as usize * (c % per))) & mask;
            out.push((u as i32 - offset) as i8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn int4_layout_by_hand() {
        // Values 1, -2, 7, -8 → fields 9, 6, 15, 0 from the lowest bits up.
        let w = pack(&[1, -2, 7, -8], 1, 4, 4);
        assert_eq!(w, vec![0x0000_0F69]);
        // Eight values fill a word; the ninth starts the next one.
        let q: Vec<i8> = (0..9).map(|i| (i % 16 - 8) as i8).collect();
        let w = pack(&q, 1, 9, 4);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0] as u32, 0x7654_3210);
        assert_eq!(w[1], 8);
    }

    #[test]
    fn int2_layout_by_hand() {
        // Values -2, -1, 0, 1 → fields 0, 1, 2, 3.
        let w = pack(&[-2, -1, 0, 1], 1, 4, 2);
        assert_eq!(w, vec![0b11_10_01_00]);
    }

    #[test]
    fn odd_lengths_round_trip() {
        for bits in [2u8, 4] {
            let lo = -(1i32 << (bits - 1));
            let hi = (1i32 << (bits - 1)) - 1;
            for cols in [1usize, 3, 7, 8, 9, 15, 16, 17, 25, 33] {
                let rows = 3;
                let q: Vec<i8> = (0..rows * cols)
                    .map(|i| (lo + (i as i32 * 7 + 3) % (hi - lo + 1)) as i8)
                    .collect();
                let w = pack(&q, rows, cols, bits);
                assert_eq!(w.len(), rows * cols.div_ceil(32 / bits as usize));
                assert_eq!(unpack(&w, rows, cols, bits), q, "bits {bits} cols {cols}");
            }
        }
    }

    proptest! {
        #[test]
        fn pack_unpack_is_identity(bits in prop_oneof![Just(2u8), Just(4u8)], rows in 1usize..5, cols in 1usize..40, seed in any::<u64>()) {
            let lo = -(1i64 << (bits - 1));
            let span = 1i64 << bits;
            let mut s = seed;
            let q: Vec<i8> = (0..rows * cols).map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (lo + ((s >> 33) as i64).rem_euclid(span)) as i8
            }).collect();
            prop_assert_eq!(unpack(&pack(&q, rows, cols, bits), rows, cols, bits), q);
        }
    }
}
