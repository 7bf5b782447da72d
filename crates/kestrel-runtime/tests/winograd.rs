//! A file whose plan lends its 3×3 stride-1 convs the Winograd paths' scratch (x86-64's,
//! the Cortex-A72's) gives the reference's logits on every kernel path and thread count, and names the path.

mod common;

use kestrel_format::writer::{KesModel, OpRecord, ScratchPlan, TensorRecord};
use kestrel_format::{DType, OpKind, Plan, PreprocessInfo, Residual, WeightLayout};
use kestrel_kernels::conv::winograd;
use kestrel_kernels::window::Window;
use kestrel_runtime::{CpuFeatures, Isa, Model};

const SIDE: u32 = 13;
const CHANNELS: u32 = 32;

/// A 3×3 conv from the RGB input, then conv 3×3 (+ReLU) → conv 3×3 + residual → global
/// pool → dense, on a 13×13×32 map: the last two convs the Winograd path's (49 tiles
/// each), a last tile row and column half outside; small enough that threads split them
/// by output channels where the path has a pass for each (2 on AVX2, 4 on the A72).
fn model() -> KesModel {
    let map = (SIDE * SIDE * CHANNELS) as usize;
    let apart = map.div_ceil(64) * 64;
    let tensor = |dims, zero_point, offset: usize| TensorRecord {
        dtype: DType::I8,
        dims,
        scale: 0.05,
        zero_point,
        offset: offset as u32,
    };
    let map_at = |offset, zero_point| tensor([1, SIDE, SIDE, CHANNELS], zero_point, offset);
    let tensors = vec![
        tensor([1, SIDE, SIDE, 3], 3, 0),       // 0 input
        map_at(apart, -128),                    // 1 conv + ReLU
        map_at(2 * apart, -128),                // 2 conv + ReLU
        map_at(0, -7),                          // 3 conv + residual 1
        tensor([1, 1, 1, CHANNELS], -7, apart), // 4 global pool
        tensor([1, 1, 1, CHANNELS], -7, apart), // 5 reshape (alias)
        TensorRecord {
            dtype: DType::I32,
            dims: [1, 1, 1, 4],
            scale: 0.001,
            zero_point: 0,
            offset: apart as u32 + 64,
        }, // 6 logits
    ];
    let conv = |input, output, in_c: i32, seed: i32| {
        let mut op = OpRecord::plain(OpKind::Conv, input, output);
        (op.kernel, op.stride, op.pads) = ([3, 3], [1, 1], [1; 4]);
        op.weights = (0..9 * in_c * CHANNELS as i32)
            .map(|i| ((i * 41 + seed * 13) % 255 - 127) as i8)
            .collect();
        op.params = (0..CHANNELS as i32)
            .map(|c| (c * 300 - 2000, 1_400_000_000 + c * 1_000_000, -10))
            .collect();
        op
    };
    let stem = conv(0, 1, 3, 0);
    let first = conv(1, 2, CHANNELS as i32, 1);
    let mut second = conv(2, 3, CHANNELS as i32, 2);
    second.residual = Some(Residual {
        tensor: 1,
        multiplier: 1_600_000_000,
        shift: -1,
    });
    let gap = OpRecord::plain(OpKind::GlobalAvgPool, 3, 4);
    let reshape = OpRecord::plain(OpKind::Reshape, 4, 5);
    let mut dense = OpRecord::plain(OpKind::Dense, 5, 6);
    dense.weights = (0..4 * CHANNELS as i32)
        .map(|i| ((i * 7) % 31 - 15) as i8)
        .collect();
    dense.params = (0..4).map(|c| (c * 5, 1_800_000_000, 0)).collect();
    KesModel {
        tensors,
        ops: vec![stem, first, second, gap, reshape, dense],
        input: 0,
        output: 6,
        plan: Plan {
            arena_bytes: 3 * apart as u64,
            lower_bound_bytes: 3 * apart as u64,
            scratch_offset: 0,
            scratch_bytes: 0,
        },
        preprocess: PreprocessInfo {
            size: [SIDE, SIDE],
            resize: 1,
            channel_order: 0,
            resize_shorter: 0,
            scale: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.25; 3],
        },
        labels: (0..4).map(|i| format!("class {i}")).collect(),
        metadata: vec![("source_model".into(), "hand-built".into())],
    }
}

#[test]
fn a_winograd_plan_gives_the_reference_logits_on_every_path() {
    let reference = common::logits(&model().to_bytes(), Isa::Scalar, 1);
    assert!(reference.iter().any(|&v| v != reference[0]));
    let window = Window {
        in_h: SIDE as usize,
        in_w: SIDE as usize,
        in_c: CHANNELS as usize,
        out_h: SIDE as usize,
        out_w: SIDE as usize,
        out_c: CHANNELS as usize,
        kernel: [3, 3],
        stride: [1, 1],
        pads: [1; 4],
    };
    let cpu = CpuFeatures::available();
    // Each layout with a Winograd path: x86-64's AVX2 tile, the Cortex-A72's.
    for (layout, path, name) in [
        (WeightLayout::Lanes16, Isa::Avx2, "avx2_winograd_4x8"),
        (WeightLayout::Blocks4, Isa::Neon, "smlal_winograd_4x4"),
    ] {
        let wino = layout.packing().unwrap().tile(path).winograd().unwrap();
        assert_eq!(wino.name, name);
        assert!(winograd::applies(&window, wino.min_tiles));
        let mut m = model();
        m.pack_convs_within(
            layout,
            ScratchPlan {
                limit: None,
                winograd: Some(wino),
            },
        );
        for op in &m.ops[1..3] {
            let lent = op.scratch.expect("a packed conv is lent scratch").bytes as usize;
            assert!(lent >= wino.scratch_len(&window), "{lent}");
        }
        let bytes = m.to_bytes();
        let parsed = Model::parse(&bytes).unwrap();
        assert_eq!(parsed.winograd_convs(path), Some((name, 2)), "{layout:?}");
        assert_eq!(parsed.winograd_convs(Isa::Scalar), None);
        if !cpu.supports(path) {
            println!("skipped {name} itself: this CPU does not run {path}");
        }
        let packing = layout.packing().expect("a packed layout");
        for isa in Isa::ALL.into_iter().filter(|&i| cpu.supports(i)) {
            if !packing.has_tile(isa) && isa != Isa::Scalar {
                continue;
            }
            for threads in [1, 2, 3] {
                assert_eq!(
                    common::logits(&bytes, isa, threads),
                    reference,
                    "{layout:?}: {isa} with {threads} threads"
                );
            }
        }
    }
}
