//! Which arena bytes hold a live tensor at each step of the op list: what the writer
//! lends packed convs scratch around, and what `inspect`'s lower bounds count. A tensor is
//! live from the op that writes it (the graph input from the start) to the last op that
//! reads it (the graph output to the end); tensors sharing storage (a reshape, an in-place
//! residual) share their bytes, so bytes are counted as the union of live ranges.

use std::vec::Vec;

/// One op's tensors: `(input, residual if any, output)`.
pub type Operands = (u32, Option<u32>, u32);

/// Each tensor's `(first, last)` live step; `ops.len()` is the step after the last op.
pub fn lifetimes(tensors: usize, input: u32, output: u32, ops: &[Operands]) -> Vec<(usize, usize)> {
    let mut life = std::vec![(usize::MAX, 0usize); tensors];
    let mut touch = |t: u32, step: usize| {
        if let Some(l) = life.get_mut(t as usize) {
            l.0 = l.0.min(step);
            l.1 = l.1.max(step);
        }
    };
    touch(input, 0);
    for (i, &(x, r, y)) in ops.iter().enumerate() {
        touch(x, i);
        if let Some(r) = r {
            touch(r, i);
        }
        touch(y, i);
    }
    touch(output, ops.len());
    life
}

/// The byte ranges `[start, end)` live at `step`, merged and in order.
pub fn occupied(ranges: &[(u64, u64)], life: &[(usize, usize)], step: usize) -> Vec<(u64, u64)> {
    let mut live: Vec<(u64, u64)> = ranges
        .iter()
        .zip(life)
        .filter(|(r, l)| l.0 <= step && step <= l.1 && r.1 > r.0)
        .map(|(r, _)| *r)
        .collect();
    live.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(live.len());
    for (s, e) in live {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// Bytes the merged ranges cover.
pub fn covered(merged: &[(u64, u64)]) -> u64 {
    merged.iter().map(|(s, e)| e - s).sum()
}

/// The most bytes live at any step, each step's `extra(step)` bytes (a conv's scratch)
/// added: the least arena any plan of these tensors needs.
pub fn peak(ranges: &[(u64, u64)], life: &[(usize, usize)], extra: impl Fn(usize) -> u64) -> u64 {
    let steps = life.iter().map(|l| l.1).max().unwrap_or(0);
    (0..=steps)
        .map(|s| covered(&occupied(ranges, life, s)) + extra(s))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_keeps_each_tensor_from_its_writer_to_its_last_reader() {
        // t0 → op0 → t1 → op1 → t2, and op1 also adds t0 as its residual.
        let ops = [(0, None, 1), (1, Some(0), 2)];
        let life = lifetimes(3, 0, 2, &ops);
        assert_eq!(life, [(0, 1), (0, 1), (1, 2)]);
        let ranges = [(0, 100), (100, 150), (0, 100)];
        // Step 1: t0 and t2 share bytes 0..100 (in place), t1 is 100..150.
        assert_eq!(occupied(&ranges, &life, 1), [(0, 150)]);
        assert_eq!(covered(&occupied(&ranges, &life, 2)), 100);
        assert_eq!(peak(&ranges, &life, |_| 0), 150);
        assert_eq!(peak(&ranges, &life, |s| [0, 0, 64][s]), 164);
    }
}
