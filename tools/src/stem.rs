//! Streams a stem: an int8 conv whose only reader is the max pooling after it becomes one
//! [`OpKind::ConvMaxPool`] op, so the conv's map (ResNet-18's largest tensor) is never
//! stored whole; the memory plan is then made again without it. The results are the
//! unstreamed ops' bits ([`kestrel_kernels::stream`]).

use std::collections::HashMap;

use kestrel_format::writer::{KesModel, OpRecord};
use kestrel_format::{DType, OpKind, PoolWindow};

use crate::quantize;

/// Pooled rows per band: a ResNet stem then holds five conv rows (3×3 s2 pool), and the
/// band stays small beside the panels while a band's conv rows still fill several tiles.
pub const BAND_ROWS: u16 = 2;

/// Fuses every streamable conv → max pool pair of `model` (unpacked, before
/// [`KesModel::pack_convs_within`] lends scratch) and re-plans its memory. Returns how
/// many it fused.
pub fn stream_stems(model: &mut KesModel) -> usize {
    let mut fused = 0;
    while let Some(i) = (0..model.ops.len().saturating_sub(1)).find(|&i| streamable(model, i)) {
        let pool = model.ops.remove(i + 1);
        let conv = &mut model.ops[i];
        let dropped = conv.output;
        conv.kind = OpKind::ConvMaxPool;
        conv.output = pool.output;
        conv.pool = Some(PoolWindow {
            kernel: pool.kernel,
            stride: pool.stride,
            pads: pool.pads,
            band_rows: BAND_ROWS,
        });
        drop_tensor(model, dropped);
        fused += 1;
    }
    if fused > 0 {
        replan(model);
    }
    fused
}

/// Op `i` is an int8 conv without a residual, op `i + 1` a max pooling of its output,
/// and nothing else reads that output.
fn streamable(model: &KesModel, i: usize) -> bool {
    let (conv, pool) = (&model.ops[i], &model.ops[i + 1]);
    let t = conv.output;
    let int8 = |t: u32| model.tensors[t as usize].dtype == DType::I8;
    let read_elsewhere =
        model.ops.iter().enumerate().any(|(j, op)| {
            j != i + 1 && (op.input == t || op.residual.is_some_and(|r| r.tensor == t))
        });
    conv.kind == OpKind::Conv
        && conv.residual.is_none()
        && conv.layout == kestrel_format::WeightLayout::Portable
        && int8(conv.input)
        && int8(t)
        && pool.kind == OpKind::MaxPool
        && pool.input == t
        // No pooling window wholly in the padding (the streamed op's rule).
        && (0..2).all(|i| pool.pads[i] < pool.kernel[i] && pool.pads[i + 2] < pool.kernel[i])
        && int8(pool.output)
        && !read_elsewhere
        && t != model.output
}

/// Removes tensor `t` (read and written by no op), renumbering those after it.
fn drop_tensor(model: &mut KesModel, t: u32) {
    model.tensors.remove(t as usize);
    let renumber = |v: &mut u32| {
        if *v > t {
            *v -= 1;
        }
    };
    for op in &mut model.ops {
        renumber(&mut op.input);
        renumber(&mut op.output);
        if let Some(r) = &mut op.residual {
            renumber(&mut r.tensor);
        }
    }
    renumber(&mut model.input);
    renumber(&mut model.output);
}

/// Places the tensors again, keeping what shares storage shared: a reshape's output is
/// its input's bytes, an in-place residual's the conv output's.
fn replan(model: &mut KesModel) {
    let mut shares = HashMap::new();
    for op in &model.ops {
        let tensor = |t: u32| &model.tensors[t as usize];
        match op {
            OpRecord {
                kind: OpKind::Reshape,
                ..
            } => {
                shares.insert(op.output, op.input);
            }
            OpRecord {
                residual: Some(r), ..
            } if op.kind == OpKind::Conv && tensor(r.tensor).offset == tensor(op.output).offset => {
                shares.insert(op.output, r.tensor);
            }
            _ => {}
        }
    }
    let placement = quantize::plan_memory(&model.tensors, &model.ops, &shares, model.input);
    for (t, off) in model.tensors.iter_mut().zip(&placement.offsets) {
        t.offset = *off as u32;
    }
    model.plan.arena_bytes = placement.arena_bytes as u64;
    model.plan.lower_bound_bytes = placement.lower_bound_bytes as u64;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_format::writer::TensorRecord;
    use kestrel_format::{Plan, PreprocessInfo, WeightLayout};

    /// Image → conv 3×3 (+ReLU) → max pool → global pool → reshape → dense, every tensor
    /// at its own offset.
    fn stem_and_head(pool_pads: [u8; 4]) -> KesModel {
        let t = |dims: [u32; 4], offset: u32| TensorRecord {
            dtype: DType::I8,
            dims,
            scale: 0.05,
            zero_point: -128,
            offset,
        };
        let mut logits = t([1, 1, 1, 3], 1024);
        logits.dtype = DType::I32;
        logits.zero_point = 0;
        let pooled = if pool_pads[0] > 0 { 5 } else { 4 };
        let tensors = vec![
            t([1, 9, 9, 3], 0),
            t([1, 9, 9, 4], 256),
            t([1, pooled, pooled, 4], 640),
            t([1, 1, 1, 4], 768),
            t([1, 1, 1, 4], 768),
            logits,
        ];
        let mut conv = OpRecord::plain(OpKind::Conv, 0, 1);
        conv.kernel = [3, 3];
        conv.stride = [1, 1];
        conv.pads = [1; 4];
        conv.weights = (0..4 * 27).map(|i| (i % 13) as i8 - 6).collect();
        conv.params = vec![(10, 1 << 30, -4); 4];
        let mut pool = OpRecord::plain(OpKind::MaxPool, 1, 2);
        pool.kernel = [3, 3];
        pool.stride = [2, 2];
        pool.pads = pool_pads;
        let mut dense = OpRecord::plain(OpKind::Dense, 4, 5);
        dense.weights = vec![3; 12];
        dense.params = vec![(0, 1 << 30, 0); 3];
        KesModel {
            tensors,
            ops: vec![
                conv,
                pool,
                OpRecord::plain(OpKind::GlobalAvgPool, 2, 3),
                OpRecord::plain(OpKind::Reshape, 3, 4),
                dense,
            ],
            input: 0,
            output: 5,
            plan: Plan {
                arena_bytes: 1088,
                lower_bound_bytes: 0,
                scratch_offset: 0,
                scratch_bytes: 0,
            },
            preprocess: PreprocessInfo {
                size: [9, 9],
                resize: 1,
                channel_order: 0,
                resize_shorter: 0,
                scale: 1.0 / 255.0,
                mean: [0.5; 3],
                std: [0.25; 3],
            },
            labels: Vec::new(),
            metadata: Vec::new(),
        }
    }

    #[test]
    fn a_stem_is_fused_renumbered_and_replanned() {
        let mut m = stem_and_head([1; 4]);
        assert_eq!(stream_stems(&mut m), 1);
        assert_eq!(m.ops.len(), 4);
        assert_eq!(m.tensors.len(), 5);
        let stem = &m.ops[0];
        assert_eq!(
            (stem.kind, stem.input, stem.output),
            (OpKind::ConvMaxPool, 0, 1)
        );
        assert_eq!(stem.pool.map(|p| p.band_rows), Some(BAND_ROWS));
        // The reshape still aliases the global pool's bytes; the output was renumbered.
        assert_eq!((m.ops[2].input, m.ops[2].output, m.output), (2, 3, 4));
        assert_eq!(m.tensors[2].offset, m.tensors[3].offset);
        // The conv's 324-byte map is gone from the plan.
        assert!(m.plan.arena_bytes < 1088, "{:?}", m.plan);
        for layout in [WeightLayout::Portable, WeightLayout::Lanes16] {
            let mut m = m.clone();
            m.pack_convs(layout);
            // A second packing (already packed) still lends the band and a panel.
            m.pack_convs(layout);
            kestrel_format::KesFile::parse(&m.to_bytes()).unwrap();
        }
    }

    #[test]
    fn a_pool_whose_window_can_lie_in_the_padding_is_left_alone() {
        // 3×3 windows padded by 3 at the top: the first lies wholly above the map.
        let mut m = stem_and_head([3, 1, 1, 1]);
        m.tensors[2].dims = [1, 6, 5, 4];
        assert_eq!(stream_stems(&mut m), 0);
        assert_eq!(m.ops.len(), 5);
        // A conv read by another op besides the pool stays stored too.
        let mut m = stem_and_head([1; 4]);
        m.ops[2].input = 1;
        m.ops[2].output = 3;
        assert_eq!(stream_stems(&mut m), 0);
    }
}
