//! Layers kept wider in a `.kes` (int16 activations, "16x8", and f16 weights): they parse, run the same on every
//! kernel path, compute what the int8 file computes to within its rounding, and the new
//! fields are checked.

mod common;

use kestrel_format::{DType, FormatError, OpKind, WeightLayout};
use kestrel_runtime::{CpuFeatures, Error, Isa, Model, Session};

fn logits(bytes: &[u8], isa: Isa, image: &[f32]) -> Result<Vec<f32>, Error> {
    let model = Model::parse(bytes)?;
    let mut arena = vec![0u8; model.arena_bytes()];
    let mut session = Session::with_kernels(&model, &mut arena, isa)?;
    session.set_input_nchw_f32(image)?;
    session.run();
    let mut out = vec![0.0; model.classes()];
    session.logits(&mut out)?;
    Ok(out)
}

fn image() -> Vec<f32> {
    (0..3 * 6 * 6)
        .map(|i| ((i * 29 % 37) as f32 - 18.0) * 0.11)
        .collect()
}

#[test]
fn mixed_file_runs_alike_on_every_path_and_near_the_int8_one() {
    let int8 = common::tiny_model().to_bytes();
    let x = image();
    let reference = logits(&int8, Isa::Scalar, &x).unwrap();
    let cpu = CpuFeatures::detect();
    for layout in [
        WeightLayout::Portable,
        WeightLayout::Blocks4,
        WeightLayout::Lanes16,
        WeightLayout::Pairs4,
    ] {
        let mut mixed = common::tiny_mixed_model();
        mixed.pack_convs(layout);
        // Every conv touches an int16 tensor, so packing leaves them all unpacked.
        assert!(mixed
            .ops
            .iter()
            .filter(|o| o.kind == OpKind::Conv)
            .all(|o| o.layout == WeightLayout::Portable));
        let bytes = mixed.to_bytes();
        let first = logits(&bytes, Isa::Scalar, &x).unwrap();
        for isa in Isa::ALL {
            if !cpu.supports(isa) {
                println!("skipped {isa}: this CPU lacks it");
                continue;
            }
            assert_eq!(logits(&bytes, isa, &x).unwrap(), first, "{isa}, {layout:?}");
        }
        // Same real computation as the int8 file, rounded more finely on the way.
        for (a, b) in first.iter().zip(&reference) {
            assert!(
                (a - b).abs() <= 0.05 * b.abs().max(1.0),
                "{first:?} vs {reference:?}"
            );
        }
    }
}

/// A conv with f16 weights (the int8 weights' own integers) and f32 records gives the
/// fixed-point conv's results to within rounding, the same bits on every path.
#[test]
fn f16_weights_run_alike_on_every_path_and_near_the_int8_ones() {
    let x = image();
    let int = logits(&common::tiny_mixed_model().to_bytes(), Isa::Scalar, &x).unwrap();
    let bytes = common::tiny_f16_model().to_bytes();
    let first = logits(&bytes, Isa::Scalar, &x).unwrap();
    let cpu = CpuFeatures::detect();
    for isa in Isa::ALL {
        if !cpu.supports(isa) {
            println!("skipped {isa}: this CPU lacks it");
            continue;
        }
        assert_eq!(logits(&bytes, isa, &x).unwrap(), first, "{isa}");
    }
    for (a, b) in first.iter().zip(&int) {
        assert!(
            (a - b).abs() <= 0.02 * b.abs().max(1.0),
            "{first:?} vs {int:?}"
        );
    }
}

#[test]
fn f16_fields_are_checked() {
    let refused = |edit: &dyn Fn(&mut kestrel_format::writer::KesModel)| {
        let mut m = common::tiny_f16_model();
        edit(&mut m);
        Model::parse(&m.to_bytes()).unwrap_err()
    };
    Model::parse(&common::tiny_f16_model().to_bytes()).unwrap();
    // An infinite weight (f16 0x7C00).
    let e = refused(&|m| {
        m.ops[2].weights[0] = 0x00;
        m.ops[2].weights[1] = 0x7C;
    });
    assert!(
        matches!(e, Error::Format(FormatError::BadOp { op: 2, .. })),
        "{e:?}"
    );
    // A zero scale, a NaN bias, a non-zero third field.
    for record in [
        (0, 0, 0),
        (f32::NAN.to_bits() as i32, 1.0f32.to_bits() as i32, 0),
        (0, 1.0f32.to_bits() as i32, 7),
    ] {
        let e = refused(&|m| m.ops[2].params[1] = record);
        assert!(
            matches!(e, Error::Format(FormatError::BadOp { op: 2, .. })),
            "{e:?}"
        );
    }
    // f16 weights are for convs and dense layers, at twice the int8 length.
    let e = refused(&|m| {
        let half = m.ops[2].weights.len() / 2;
        m.ops[2].weights.truncate(half)
    });
    assert!(
        matches!(e, Error::Format(FormatError::BadOp { op: 2, .. })),
        "{e:?}"
    );
    let e = refused(&|m| m.ops[3].layout = WeightLayout::F16);
    assert!(
        matches!(e, Error::Format(FormatError::BadOp { op: 3, .. })),
        "{e:?}"
    );
}

#[test]
fn int16_fields_are_checked() {
    let refused = |edit: &dyn Fn(&mut kestrel_format::writer::KesModel)| {
        let mut m = common::tiny_mixed_model();
        edit(&mut m);
        Model::parse(&m.to_bytes()).unwrap_err()
    };
    // int16 is symmetric.
    assert!(matches!(
        refused(&|m| m.tensors[2].zero_point = 3),
        Error::Format(FormatError::BadTensor { tensor: 2, .. })
    ));
    // Packed weights on a conv with an int16 operand.
    let e = refused(&|m| {
        let k = 4 * 9;
        m.ops[2].weights =
            WeightLayout::Lanes16
                .packing()
                .unwrap()
                .pack_weights(&m.ops[2].weights, k, 4);
        m.ops[2].layout = WeightLayout::Lanes16;
    });
    assert!(
        matches!(e, Error::Format(FormatError::BadOp { op: 2, .. })),
        "{e:?}"
    );
    // Ops without a 16x8 kernel refuse int16 tensors: an average pool, and an add.
    let e = refused(&|m| {
        m.tensors[3].dtype = DType::I16;
        m.tensors[3].zero_point = 0;
    });
    assert!(matches!(e, Error::Format(_)), "{e:?}");
    let e = refused(&|m| {
        m.ops[3].kind = OpKind::AvgPool;
        m.tensors[3] = m.tensors[2].clone();
        m.tensors[3].offset = 0;
    });
    assert!(
        matches!(e, Error::Format(FormatError::BadOp { .. })),
        "{e:?}"
    );
    // A pass-through op keeps its input's type.
    let e = refused(&|m| {
        m.tensors[5].dtype = DType::I16;
        m.tensors[5].zero_point = 0;
    });
    assert!(matches!(e, Error::Format(_)), "{e:?}");
}

#[test]
fn mixed_files_survive_byte_flips() {
    for bytes in [
        common::tiny_mixed_model().to_bytes(),
        common::tiny_f16_model().to_bytes(),
    ] {
        for i in 0..bytes.len() {
            let mut m = bytes.clone();
            m[i] ^= 0x80;
            assert!(Model::parse(&m).is_err(), "flip at byte {i} was accepted");
        }
    }
}
