//! Where each packed weight lives: one module per layout ([`blocks4`], [`lanes16`],
//! [`pairs4`]) holds
//! its byte positions, and [`Shape`] everything they share — the padded sizes, where a
//! block of channels starts, and the channel-sum trailer: after the weights, one
//! little-endian `i32` per (padded) channel, the sum of its weights, which VNNI needs to
//! undo its `+128` input offset. These bytes are the file format: the golden tests pin
//! them (`tests/golden_packing.rs`).

pub mod blocks4;
pub mod lanes16;
pub mod pairs4;

use crate::conv::contract::{round_up, Packing, KC};

/// Weights in one reduction step of a block, in every layout: its channels × the steps
/// each keeps side by side ([`Packing::run_len`]).
const STEP_WEIGHTS: usize = 64;
const _: () = {
    let mut i = 0;
    while i < Packing::ALL.len() {
        let p = Packing::ALL[i];
        assert!(p.block_channels() * p.run_len() == STEP_WEIGHTS);
        i += 1;
    }
};

/// The padded shape of one conv's packed weights.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub packing: Packing,
    /// `K` padded to a multiple of [`KC`].
    pub k_pad: usize,
    /// `OC` padded to whole blocks of channels.
    pub oc_pad: usize,
}

impl Shape {
    pub const fn of(packing: Packing, k: usize, oc: usize) -> Shape {
        Shape {
            packing,
            k_pad: round_up(k, KC),
            oc_pad: round_up(oc, packing.block_channels()),
        }
    }

    /// Bytes of weights and channel sums.
    pub const fn bytes(&self) -> usize {
        self.sums_at() + 4 * self.oc_pad
    }

    /// Where the channel sums start.
    pub const fn sums_at(&self) -> usize {
        self.oc_pad * self.k_pad * self.packing.weight_bytes()
    }

    /// Where block `b` of channels starts: its weights are the next
    /// `block_channels · k_pad` bytes.
    #[inline]
    pub const fn block_at(&self, b: usize) -> usize {
        match self.packing {
            Packing::Blocks4 => blocks4::block_at(self.k_pad, b),
            Packing::Lanes16 => lanes16::block_at(self.k_pad, b),
            Packing::Pairs4 => pairs4::block_at(self.k_pad, b),
        }
    }

    /// Where weight `(kk, o)` (its first byte) lives.
    #[inline]
    pub const fn weight_at(&self, kk: usize, o: usize) -> usize {
        match self.packing {
            Packing::Blocks4 => blocks4::at(self.k_pad, kk, o),
            Packing::Lanes16 => lanes16::at(self.k_pad, kk, o),
            Packing::Pairs4 => pairs4::at(self.k_pad, kk, o),
        }
    }

    /// Weight `(kk, o)`.
    #[inline]
    pub fn weight(&self, packed: &[i8], kk: usize, o: usize) -> i32 {
        let at = self.weight_at(kk, o);
        match self.packing.weight_bytes() {
            1 => packed[at] as i32,
            _ => i16::from_le_bytes([packed[at] as u8, packed[at + 1] as u8]) as i32,
        }
    }

    /// The stored sum of channel `o`'s weights.
    #[inline]
    pub fn channel_sum(&self, packed: &[i8], o: usize) -> i32 {
        let b = &packed[self.sums_at() + 4 * o..][..4];
        i32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
    }

    /// Packs `[K][OC]` weights (the portable `[KH][KW][IC][OC]` layout), then the sums.
    #[cfg(feature = "alloc")]
    fn pack(&self, weights: &[i8], k: usize, oc: usize) -> alloc::vec::Vec<i8> {
        assert_eq!(weights.len(), k * oc, "weights are K × OC");
        let mut out = alloc::vec![0i8; self.bytes()];
        let mut sums = alloc::vec![0i32; self.oc_pad];
        for kk in 0..k {
            for o in 0..oc {
                let w = weights[kk * oc + o];
                let at = self.weight_at(kk, o);
                let bytes = (w as i16).to_le_bytes();
                for (j, b) in bytes.iter().take(self.packing.weight_bytes()).enumerate() {
                    out[at + j] = *b as i8;
                }
                sums[o] = sums[o].wrapping_add(w as i32);
            }
        }
        let base = self.sums_at();
        for (o, s) in sums.iter().enumerate() {
            for (j, b) in s.to_le_bytes().iter().enumerate() {
                out[base + 4 * o + j] = *b as i8;
            }
        }
        out
    }

    /// The reduction step (counted from the run's first) whose weight lies at position `p`
    /// of a run of [`Packing::run_len`] weights of one channel: every layout keeps them in
    /// order but for `pairs4`'s even/odd pairs.
    #[inline(always)]
    const fn step_in_run(&self, p: usize) -> usize {
        match self.packing {
            Packing::Blocks4 | Packing::Lanes16 => p,
            // Each word of four holds steps 0, 2, 1, 3.
            Packing::Pairs4 => p / 4 * 4 + [0, 2, 1, 3][p % 4],
        }
    }

    /// Whether packed weights can be trusted by every micro-kernel: no `-128` (the A72
    /// kernel's int16 pair sums need |w| ≤ 127; one rule for every layout), zero
    /// padding, and the stored channel sums equal to the weights' (VNNI relies on them).
    /// Read in storage order, a run of one channel's weights at a time: the parser runs
    /// this on every packed weight of a file, on the board.
    fn is_consistent(&self, packed: &[i8], k: usize, oc: usize) -> bool {
        if packed.len() != self.bytes() {
            return false;
        }
        let (c, run, bytes) = (
            self.packing.block_channels(),
            self.packing.run_len(),
            self.packing.weight_bytes(),
        );
        let value = |w: &[i8]| match bytes {
            1 => w[0] as i32,
            _ => i16::from_le_bytes([w[0] as u8, w[1] as u8]) as i32,
        };
        for b in 0..self.oc_pad / c {
            let block = &packed[self.block_at(b)..self.block_at(b + 1)];
            // A block is its reduction steps in turn, each the `run` weights of each of its
            // `c` channels in turn (`STEP_WEIGHTS` in all). Where a whole step is real (no
            // padded channel or step in it), the weights' sums by position and the check
            // for ±127 run over the step as one fixed-size vector.
            let full = if (b + 1) * c <= oc { k / run } else { 0 };
            let (mut by_position, mut outside) = ([0i32; STEP_WEIGHTS], false);
            let mut steps = block.chunks_exact(STEP_WEIGHTS * bytes);
            for step in steps.by_ref().take(full) {
                if bytes == 1 {
                    let step: &[i8; STEP_WEIGHTS] = step.try_into().expect("a whole step");
                    for (acc, &w) in by_position.iter_mut().zip(step) {
                        *acc = acc.wrapping_add(w as i32);
                        outside |= w == i8::MIN;
                    }
                } else {
                    for (acc, w) in by_position.iter_mut().zip(step.chunks_exact(bytes)) {
                        let w = value(w);
                        *acc = acc.wrapping_add(w);
                        outside |= !(-127..=127).contains(&w);
                    }
                }
            }
            if outside {
                return false;
            }
            let mut sums = [0i32; STEP_WEIGHTS];
            for (n, sum) in sums.iter_mut().take(c).enumerate() {
                *sum = by_position[n * run..][..run]
                    .iter()
                    .fold(0, |a: i32, &v| a.wrapping_add(v));
            }
            // The steps with padding, weight by weight.
            for (i, step) in steps.enumerate() {
                let k0 = (full + i) * run;
                for (n, weights) in step.chunks_exact(run * bytes).enumerate() {
                    for (p, w) in weights.chunks_exact(bytes).enumerate() {
                        let w = value(w);
                        let real = b * c + n < oc && k0 + self.step_in_run(p) < k;
                        if (real && !(-127..=127).contains(&w)) || (!real && w != 0) {
                            return false;
                        }
                        sums[n] = sums[n].wrapping_add(w);
                    }
                }
            }
            if (0..c).any(|n| self.channel_sum(packed, b * c + n) != sums[n]) {
                return false;
            }
        }
        true
    }

    /// [`Shape::is_consistent`] weight by weight through [`Shape::weight_at`]: the
    /// definition the storage-order reading is tested against.
    #[cfg(test)]
    fn is_consistent_by_weight(&self, packed: &[i8], k: usize, oc: usize) -> bool {
        if packed.len() != self.bytes() {
            return false;
        }
        (0..self.oc_pad).all(|o| {
            let mut sum = 0i32;
            for kk in 0..self.k_pad {
                // An int16 weight outside int8 is refused like -128: the values are
                // int8 weights whatever their width in the file.
                let w = self.weight(packed, kk, o);
                let real = o < oc && kk < k;
                if (real && !(-127..=127).contains(&w)) || (!real && w != 0) {
                    return false;
                }
                sum = sum.wrapping_add(w);
            }
            self.channel_sum(packed, o) == sum
        })
    }
}

impl Packing {
    /// Output channels per block of this layout.
    pub const fn block_channels(self) -> usize {
        match self {
            Packing::Blocks4 => blocks4::CHANNELS,
            Packing::Lanes16 => lanes16::CHANNELS,
            Packing::Pairs4 => pairs4::CHANNELS,
        }
    }

    /// Reduction steps of one channel stored side by side (a 128-bit vector's worth for
    /// the 16-deep chunks, one 32-bit lane for `lanes16`).
    pub const fn run_len(self) -> usize {
        match self {
            Packing::Blocks4 | Packing::Pairs4 => KC,
            Packing::Lanes16 => lanes16::LANE_K,
        }
    }

    /// Bytes per stored weight.
    pub const fn weight_bytes(self) -> usize {
        match self {
            Packing::Blocks4 | Packing::Lanes16 => 1,
            Packing::Pairs4 => pairs4::WEIGHT_BYTES,
        }
    }

    /// Bytes of packed weights (and channel sums) for a `K × OC` conv.
    pub const fn packed_len(self, k: usize, oc: usize) -> usize {
        Shape::of(self, k, oc).bytes()
    }

    /// Packs `[K][OC]` weights (the portable `[KH][KW][IC][OC]` layout) this way.
    #[cfg(feature = "alloc")]
    pub fn pack_weights(self, weights: &[i8], k: usize, oc: usize) -> alloc::vec::Vec<i8> {
        Shape::of(self, k, oc).pack(weights, k, oc)
    }

    /// What the file parser checks of packed weights: see [`Shape`]'s consistency rule
    /// (no `-128`, zero padding, true channel sums).
    pub fn is_consistent(self, packed: &[i8], k: usize, oc: usize) -> bool {
        Shape::of(self, k, oc).is_consistent(packed, k, oc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn values(n: usize) -> Vec<i8> {
        (0..n)
            .map(|i| ((i * 37 + 5) % 255) as i8)
            .map(|v| v.max(-127))
            .collect()
    }

    #[test]
    fn packed_weights_are_checked() {
        let w = values(27 * 5);
        for packing in Packing::ALL {
            let shape = Shape::of(packing, 27, 5);
            let good = packing.pack_weights(&w, 27, 5);
            assert!(packing.is_consistent(&good, 27, 5));
            // A -128, a non-zero padded k, a non-zero padded channel, a wrong sum, a
            // wrong length: each refused.
            let mut bad = good.clone();
            bad[shape.weight_at(0, 0)] = -128;
            if packing.weight_bytes() == 2 {
                bad[shape.weight_at(0, 0) + 1] = -1;
            }
            assert!(!packing.is_consistent(&bad, 27, 5));
            if packing.weight_bytes() == 2 {
                // An int16 weight beyond int8's range.
                let mut bad = good.clone();
                bad[shape.weight_at(1, 0) + 1] = 1;
                assert!(!packing.is_consistent(&bad, 27, 5));
            }
            let mut bad = good.clone();
            bad[shape.weight_at(27, 0)] = 1;
            assert!(!packing.is_consistent(&bad, 27, 5));
            let mut bad = good.clone();
            bad[shape.weight_at(3, 5)] = 1;
            assert!(!packing.is_consistent(&bad, 27, 5));
            let mut bad = good.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(!packing.is_consistent(&bad, 27, 5));
            assert!(!packing.is_consistent(&good[1..], 27, 5));
            assert_eq!(good.len(), packing.packed_len(27, 5));
        }
    }

    /// The storage-order reading: each layout's byte of `(kk, o)` is where a block's runs
    /// put it, and the check agrees with the weight-by-weight one on thousands of edits.
    #[test]
    fn the_storage_order_check_is_the_weight_by_weight_one() {
        for packing in Packing::ALL {
            for (k, oc) in [(27, 5), (40, 21), (16, 16), (147, 64), (3, 1)] {
                let shape = Shape::of(packing, k, oc);
                let (c, run, bytes) = (
                    packing.block_channels(),
                    packing.run_len(),
                    packing.weight_bytes(),
                );
                for o in 0..shape.oc_pad {
                    for kk in 0..shape.k_pad {
                        let (b, n) = (o / c, o % c);
                        let p = (0..run)
                            .find(|&p| shape.step_in_run(p) == kk % run)
                            .unwrap();
                        let at = shape.block_at(b) + ((kk / run) * c * run + n * run + p) * bytes;
                        assert_eq!(shape.weight_at(kk, o), at, "{packing:?} ({kk}, {o})");
                    }
                }
                let w = values(k * oc);
                let good = packing.pack_weights(&w, k, oc);
                assert!(shape.is_consistent(&good, k, oc));
                let mut seed = 0x2545_F491u32;
                for _ in 0..2000 {
                    let mut bad = good.clone();
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    let at = seed as usize % bad.len();
                    bad[at] = match seed % 3 {
                        0 => -128,
                        1 => bad[at].wrapping_add(1),
                        _ => (seed >> 8) as i8,
                    };
                    assert_eq!(
                        shape.is_consistent(&bad, k, oc),
                        shape.is_consistent_by_weight(&bad, k, oc),
                        "{packing:?} {k}×{oc}, byte {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_weight_has_its_own_byte_inside_its_block() {
        for packing in Packing::ALL {
            let (k, oc) = (40, 21);
            let shape = Shape::of(packing, k, oc);
            let mut seen = alloc::vec![false; shape.sums_at()];
            for o in 0..shape.oc_pad {
                let block = o / packing.block_channels();
                let range = shape.block_at(block)..shape.block_at(block + 1);
                for kk in 0..shape.k_pad {
                    let first = shape.weight_at(kk, o);
                    let bytes = first..first + packing.weight_bytes();
                    assert!(range.contains(&bytes.start), "{packing:?} ({kk}, {o})");
                    assert!(range.contains(&(bytes.end - 1)), "{packing:?} ({kk}, {o})");
                    for byte in &mut seen[bytes] {
                        assert!(!*byte, "{packing:?} ({kk}, {o}) shares byte {first}");
                        *byte = true;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s));
        }
    }
}
