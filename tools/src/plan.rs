//! Static memory plan: every tensor gets an arena offset, computed ahead of time.
//!
//! Tensors that share storage (a reshape's output and its input; a fused conv's output
//! and the residual it overwrites in place) form one buffer. A buffer is live from the
//! step that writes it to the last step that reads it. Buffers are placed largest first,
//! each in the smallest gap between already placed buffers whose lifetimes overlap it
//! (greedy best fit), at 64-byte aligned offsets.

pub const ALIGN: usize = 64;

#[derive(Clone, Debug)]
pub struct Buffer {
    pub bytes: usize,
    /// First and last op step at which the buffer is live (inclusive).
    pub first: usize,
    pub last: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub offsets: Vec<usize>,
    pub arena_bytes: usize,
    /// The largest sum of live buffer bytes at any step: no plan can use less.
    pub lower_bound_bytes: usize,
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

pub fn place(buffers: &[Buffer]) -> Placement {
    let steps = buffers.iter().map(|b| b.last + 1).max().unwrap_or(0);
    let lower_bound_bytes = (0..steps)
        .map(|s| {
            buffers
                .iter()
                .filter(|b| b.first <= s && s <= b.last)
                .map(|b| b.bytes)
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(buffers[i].bytes), buffers[i].first));
    let mut offsets = vec![usize::MAX; buffers.len()];
    let mut placed: Vec<usize> = Vec::new();
    for i in order {
        let b = &buffers[i];
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| buffers[j].first <= b.last && b.first <= buffers[j].last)
            .map(|&j| (offsets[j], offsets[j] + align(buffers[j].bytes)))
            .collect();
        busy.sort();
        let need = align(b.bytes);
        let mut best: Option<(usize, usize)> = None; // (gap size, offset)
        let mut cursor = 0;
        for &(start, end) in &busy {
            if start >= cursor + need {
                let gap = start - cursor;
                if best.is_none_or(|(g, _)| gap < g) {
                    best = Some((gap, cursor));
                }
            }
            cursor = cursor.max(end);
        }
        offsets[i] = best.map_or(cursor, |(_, off)| off);
        placed.push(i);
    }
    let arena_bytes = buffers
        .iter()
        .zip(&offsets)
        .map(|(b, &o)| o + align(b.bytes))
        .max()
        .unwrap_or(0);
    Placement {
        offsets,
        arena_bytes,
        lower_bound_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap(a: &Buffer, oa: usize, b: &Buffer, ob: usize) -> bool {
        let live = a.first <= b.last && b.first <= a.last;
        live && oa < ob + b.bytes && ob < oa + a.bytes
    }

    #[test]
    fn live_buffers_never_share_bytes_and_dead_ones_are_reused() {
        // A chain a → b → c → d: a and c can share, b and d can share.
        let bufs: Vec<Buffer> = (0..4)
            .map(|i| Buffer {
                bytes: 1000 - i * 100,
                first: i,
                last: i + 1,
            })
            .collect();
        let p = place(&bufs);
        for i in 0..bufs.len() {
            for j in 0..i {
                assert!(
                    !overlap(&bufs[i], p.offsets[i], &bufs[j], p.offsets[j]),
                    "{i} and {j}"
                );
            }
        }
        assert_eq!(p.lower_bound_bytes, 1000 + 900);
        assert!(p.arena_bytes <= align(1000) + align(900), "{p:?}");
    }
}
