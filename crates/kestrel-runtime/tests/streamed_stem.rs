//! A stem streamed into its max pool ([`OpKind::ConvMaxPool`]) gives the unstreamed
//! conv and pool's logits on every layout, kernel path and thread count, and a streamed
//! stem's record that breaks the rules is refused by name.

mod common;

use kestrel_format::writer::KesModel;
use kestrel_format::{DType, FormatError, OpKind, OpScratch, WeightLayout};
use kestrel_runtime::{CpuFeatures, Error, Isa, Model};

const LAYOUTS: [WeightLayout; 4] = [
    WeightLayout::Portable,
    WeightLayout::Blocks4,
    WeightLayout::Lanes16,
    WeightLayout::Pairs4,
];

fn packed(mut m: KesModel, layout: WeightLayout) -> KesModel {
    m.pack_convs(layout);
    m
}

#[test]
fn a_streamed_stem_gives_the_unstreamed_logits_everywhere() {
    let reference = common::logits(&common::tiny_stem_model(false).to_bytes(), Isa::Scalar, 1);
    assert!(reference.iter().any(|&v| v != reference[0]));
    let cpu = CpuFeatures::available();
    for layout in LAYOUTS {
        let m = packed(common::tiny_stem_model(true), layout);
        let band = m.ops[0].scratch.expect("the stem is lent its band");
        assert!(band.bytes >= 5 * 9 * 4, "{layout:?}: {band:?}");
        let bytes = m.to_bytes();
        for isa in Isa::ALL.into_iter().filter(|&i| cpu.supports(i)) {
            if layout.packing().is_some_and(|p| !p.has_tile(isa)) {
                continue;
            }
            for threads in [1, 3] {
                assert_eq!(
                    common::logits(&bytes, isa, threads),
                    reference,
                    "{layout:?} on {isa} with {threads} threads"
                );
            }
        }
    }
}

fn refusal(m: &KesModel) -> &'static str {
    match Model::parse(&m.to_bytes()) {
        Err(Error::Format(FormatError::BadOp { op: 0, reason })) => reason,
        other => panic!("expected op 0 refused, got {other:?}"),
    }
}

#[test]
fn a_bad_streamed_stem_is_refused_with_its_reason() {
    for layout in LAYOUTS {
        let good = packed(common::tiny_stem_model(true), layout);
        Model::parse(&good.to_bytes()).unwrap();
        let lent = good.ops[0].scratch.unwrap();
        let edit = |f: &dyn Fn(&mut KesModel)| {
            let mut m = good.clone();
            f(&mut m);
            m
        };
        let pool = |f: &dyn Fn(&mut kestrel_format::PoolWindow)| {
            edit(&|m: &mut KesModel| f(m.ops[0].pool.as_mut().unwrap()))
        };
        assert_eq!(
            refusal(&pool(&|p| p.band_rows = 0)),
            "a streamed stem makes no rows per band"
        );
        assert_eq!(
            refusal(&pool(&|p| p.stride = [1, 1])),
            "output size does not follow from the conv and pool windows"
        );
        assert_eq!(
            refusal(&pool(&|p| p.kernel = [0, 3])),
            "the stem's conv or pool window is empty or larger than its padded map"
        );
        assert_eq!(
            refusal(&pool(&|p| {
                p.kernel = [1, 1];
                p.pads = [1, 0, 0, 0];
            })),
            "a pooling window lies wholly in the padding"
        );
        assert_eq!(
            refusal(&edit(&|m| m.ops[0].scratch = None)),
            "a streamed stem needs a scratch of its own for its band"
        );
        assert_eq!(
            refusal(&edit(&|m| m.ops[0].scratch = Some(OpScratch {
                bytes: 5 * 9 * 4 - 1,
                ..lent
            }))),
            "its scratch is too small for what it runs"
        );
        assert_eq!(
            refusal(&edit(
                &|m| m.ops[0].scratch = Some(OpScratch { offset: 0, ..lent })
            )),
            "its scratch overlaps one of its operands"
        );
        assert_eq!(
            refusal(&edit(&|m| m.ops[0].residual =
                Some(kestrel_format::Residual {
                    tensor: 0,
                    multiplier: 1 << 30,
                    shift: 0,
                }))),
            "a streamed stem takes no residual"
        );
        assert_eq!(
            refusal(&edit(&|m| {
                m.tensors[0].dtype = DType::I16;
                m.tensors[0].zero_point = 0;
            })),
            "int16 tensors only go through conv, dense, max and global pooling, subsample, channel padding and reshape, with unpacked weights, unstreamed"
        );
    }
    // A pool op of any other kind carries no pool window: the streamed kind is named.
    let m = packed(common::tiny_stem_model(true), WeightLayout::Lanes16);
    assert_eq!(
        Model::parse(&m.to_bytes())
            .unwrap()
            .file()
            .op(0)
            .unwrap()
            .kind,
        OpKind::ConvMaxPool
    );
}
