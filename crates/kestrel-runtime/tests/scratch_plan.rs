//! Each packed conv's scratch is planned like a tensor live only at its step: in arena
//! bytes no live tensor holds, reusing dead space before the arena grows; and a file whose
//! op scratch breaks the rules is refused by name.

mod common;

use kestrel_format::liveness;
use kestrel_format::writer::{KesModel, ScratchPlan};
use kestrel_format::{FormatError, OpScratch, WeightLayout};
use kestrel_runtime::{Error, Model};

#[test]
fn every_packed_convs_scratch_lies_apart_from_the_tensors_live_at_its_step() {
    for layout in [
        WeightLayout::Blocks4,
        WeightLayout::Lanes16,
        WeightLayout::Pairs4,
    ] {
        let portable = common::tiny_model();
        let activations = portable.plan.arena_bytes.div_ceil(64) * 64;
        let path = kestrel_kernels::conv::Packing::Lanes16
            .tile(kestrel_kernels::isa::Isa::Avx2)
            .winograd();
        assert!(path.is_some());
        for (limit, winograd) in [(None, None), (Some(1), None), (None, path)] {
            let mut m = portable.clone();
            m.pack_convs_within(layout, ScratchPlan { limit, winograd });
            let (ranges, life) = (m.tensor_ranges(), m.lifetimes());
            let mut most = 0;
            for (i, op) in m.ops.iter().enumerate() {
                let Some(OpScratch { offset, bytes }) = op.scratch else {
                    assert!(
                        op.layout.packing().is_none(),
                        "op {i} is packed but lent nothing"
                    );
                    continue;
                };
                let s = (offset as u64, offset as u64 + bytes as u64);
                assert!(s.1 <= m.plan.arena_bytes, "{layout:?} op {i}");
                for (a, b) in liveness::occupied(&ranges, &life, i) {
                    assert!(
                        s.1 <= a || b <= s.0,
                        "{layout:?} op {i}: {s:?} meets live {a}..{b}"
                    );
                }
                most = most.max(bytes as u64);
            }
            assert!(most > 0, "{layout:?}: no conv was packed");
            // Grown at most by one conv's scratch (this model's convs run back to back
            // on a full arena, so the space is reused, not stacked).
            assert!(
                m.plan.arena_bytes <= activations + most.div_ceil(64) * 64,
                "{layout:?} {limit:?}: arena {} from {activations}, largest scratch {most}",
                m.plan.arena_bytes
            );
            assert_eq!(m.plan.scratch_bytes, 0);
            assert!(m.plan.lower_bound_bytes <= m.plan.arena_bytes);
            Model::parse(&m.to_bytes()).unwrap();
        }
    }
}

#[test]
fn dead_space_is_lent_before_the_arena_grows() {
    let mut m = common::tiny_model();
    // Give the arena room nothing uses: the convs' scratch goes there.
    m.plan.arena_bytes += 64 * 1024;
    let before = m.plan.arena_bytes;
    m.pack_convs(WeightLayout::Lanes16);
    assert!(m.ops.iter().any(|o| o.scratch.is_some()));
    assert_eq!(m.plan.arena_bytes, before);
    Model::parse(&m.to_bytes()).unwrap();
}

/// A small map is lent the panel its pixels fill, not a panel of a large map's size.
#[test]
fn a_conv_is_lent_no_more_panel_than_its_map_fills() {
    use kestrel_kernels::conv::budget;
    let mut m = common::tiny_model();
    m.pack_convs(WeightLayout::Lanes16);
    let mut smaller = 0;
    for op in &m.ops {
        let Some(OpScratch { bytes, .. }) = op.scratch else {
            continue;
        };
        let (x, y) = (
            &m.tensors[op.input as usize],
            &m.tensors[op.output as usize],
        );
        let k = op.kernel[0] as usize * op.kernel[1] as usize * x.dims[3] as usize;
        let pixels = y.dims[1] as usize * y.dims[2] as usize;
        let (bytes, map) = (bytes as usize, budget::map_scratch_len(k, pixels));
        assert!(
            bytes >= budget::min_scratch_len(k) && bytes <= map,
            "{bytes} for {k} × {pixels}"
        );
        smaller += usize::from(map < budget::scratch_len(k));
    }
    assert!(
        smaller > 0,
        "no conv of the 6×6 maps was lent less than a full panel"
    );
    Model::parse(&m.to_bytes()).unwrap();
}

fn refusal(m: &KesModel) -> &'static str {
    match Model::parse(&m.to_bytes()) {
        Err(Error::Format(FormatError::BadOp { reason, .. })) => reason,
        other => panic!("expected a refused op, got {other:?}"),
    }
}

#[test]
fn a_bad_op_scratch_is_refused_with_its_reason() {
    let mut packed = common::tiny_model();
    packed.pack_convs(WeightLayout::Blocks4);
    let own = packed.ops[0].scratch.expect("conv 0 is lent a scratch");
    let arena = packed.plan.arena_bytes as u32;

    let mut m = packed.clone();
    m.ops[0].scratch = Some(OpScratch { offset: 0, ..own }); // conv 0's input is at 0
    assert_eq!(refusal(&m), "its scratch overlaps one of its operands");

    let mut m = packed.clone();
    m.ops[0].scratch = Some(OpScratch {
        offset: arena - own.bytes + 64,
        ..own
    });
    assert_eq!(refusal(&m), "its scratch lies outside the arena");

    let mut m = packed.clone();
    m.ops[0].scratch = Some(OpScratch { bytes: 64, ..own });
    assert_eq!(refusal(&m), "its scratch is too small for this packed conv");

    let mut m = common::tiny_model();
    m.ops[3].scratch = Some(own); // the max pool
    assert_eq!(
        refusal(&m),
        "only packed convolutions and streamed stems take a scratch of their own"
    );
}

#[test]
fn a_scratch_offset_without_bytes_is_refused() {
    let mut m = common::tiny_model();
    m.plan.arena_bytes += 4096;
    m.ops[0].scratch = Some(OpScratch {
        offset: 464,
        bytes: 0,
    });
    assert_eq!(refusal(&m), "scratch offset without scratch bytes");
}
