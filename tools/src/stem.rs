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
