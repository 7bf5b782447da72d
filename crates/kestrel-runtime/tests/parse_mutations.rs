//! A valid `.kes` mutated many thousands of ways: every corruption is refused with a
//! typed error, and nothing panics or reads out of bounds (in the parser or, for edits
//! that pass the checks, in a run).

mod common;

use kestrel_format::{FormatError, WeightLayout};
use kestrel_runtime::{CpuFeatures, Error, Isa, Model, Session};

fn try_run(bytes: &[u8]) -> Result<(), Error> {
    let model = Model::parse(bytes)?;
    let mut arena = vec![0u8; model.arena_bytes()];
    let mut session = Session::new(&model, &mut arena)?;
    session
        .input_mut()
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = (i % 251) as i8);
    session.run();
    let mut logits = vec![0.0; model.classes()];
    session.logits(&mut logits)
}

/// A tiny deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn the_hand_built_model_parses_and_runs() {
    let bytes = common::tiny_model().to_bytes();
    try_run(&bytes).unwrap();
    let model = Model::parse(&bytes).unwrap();
    assert_eq!(model.label(2), Some("owl"));
    assert_eq!(
        model.file().metadata().next(),
        Some(("source_model", "hand-built"))
    );
}

/// Every packed-GEMM layout gives the portable layout's logits on every kernel path this
/// CPU runs, and a packed weight of -128 (outside every packed layout's rule) is refused
/// at parse.
#[test]
fn packed_weights_run_like_portable_ones_and_are_checked() {
    for layout in [
        WeightLayout::Blocks4,
        WeightLayout::Lanes16,
        WeightLayout::Pairs4,
    ] {
        packed_layout_runs_like_portable(layout);
    }
}

fn packed_layout_runs_like_portable(layout: WeightLayout) {
    let portable = common::tiny_model();
    let mut packed = portable.clone();
    packed.pack_convs(layout);
    assert!(packed.ops.iter().any(|op| op.scratch.is_some()));
    assert!(packed.ops.iter().any(|op| op.layout == layout));
    let logits = |bytes: &[u8], isa: Isa| {
        let model = Model::parse(bytes).unwrap();
        let mut arena = vec![0u8; model.arena_bytes()];
        let mut session = Session::with_kernels(&model, &mut arena, isa).unwrap();
        for (i, v) in session.input_mut().iter_mut().enumerate() {
            *v = (i * 7 % 251) as i8;
        }
        session.run();
        let mut out = vec![0.0; model.classes()];
        session.logits(&mut out).unwrap();
        out
    };
    let reference = logits(&portable.to_bytes(), Isa::Scalar);
    let cpu = CpuFeatures::available();
    for isa in Isa::ALL.into_iter().filter(|&i| cpu.supports(i)) {
        assert_eq!(
            logits(&packed.to_bytes(), isa),
            reference,
            "{layout:?}/{isa}"
        );
    }
    let mut bad = packed.clone();
    // The first weight's first byte: -128 as int8, 128 or -128 as an int16's low byte.
    bad.ops[0].weights[0] = -128;
    match Model::parse(&bad.to_bytes()) {
        Err(Error::Format(FormatError::BadOp { op: 0, reason })) => {
            assert!(reason.contains("-128"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn every_single_byte_flip_is_refused() {
    let bytes = common::tiny_model().to_bytes();
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut m = bytes.clone();
            m[i] ^= bit;
            assert!(
                Model::parse(&m).is_err(),
                "flip of bit {bit:#x} at byte {i} was accepted"
            );
        }
    }
}

#[test]
fn truncations_and_extensions_are_refused() {
    let bytes = common::tiny_model().to_bytes();
    for len in 0..bytes.len() {
        let e = Model::parse(&bytes[..len]).unwrap_err();
        assert!(
            matches!(e, Error::Format(FormatError::Truncated { .. })),
            "length {len}: {e:?}"
        );
    }
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 64]);
    assert!(Model::parse(&longer).is_err());
}

#[test]
fn a_wrong_version_is_named() {
    let mut bytes = common::tiny_model().to_bytes();
    bytes[8] = 9;
    common::fix_checksums(&mut bytes);
    assert_eq!(
        Model::parse(&bytes).unwrap_err(),
        Error::Format(FormatError::UnsupportedVersion {
            found: 9,
            supported: 1
        })
    );
}

#[test]
fn an_offset_past_the_end_is_refused() {
    let mut bytes = common::tiny_model().to_bytes();
    // First section's offset (table entry 0, bytes 72..80) far past the end.
    bytes[72..80].copy_from_slice(&(1u64 << 40).to_le_bytes());
    common::fix_checksums(&mut bytes);
    assert!(matches!(
        Model::parse(&bytes),
        Err(Error::Format(FormatError::SectionBounds { .. }))
    ));
}

/// Edits with the checksums recomputed reach the semantic checks; whatever parses must run.
#[test]
fn random_edits_with_valid_checksums_never_panic() {
    let mut packed = common::tiny_model();
    packed.pack_convs(WeightLayout::Lanes16);
    let mut blocks = common::tiny_model();
    blocks.pack_convs(WeightLayout::Blocks4);
    let mut pairs = common::tiny_model();
    pairs.pack_convs(WeightLayout::Pairs4);
    let mut stem = common::tiny_stem_model(true);
    stem.pack_convs(WeightLayout::Lanes16);
    let mut portable_stem = common::tiny_stem_model(true);
    portable_stem.pack_convs(WeightLayout::Portable);
    for bytes in [
        stem.to_bytes(),
        portable_stem.to_bytes(),
        common::tiny_model().to_bytes(),
        packed.to_bytes(),
        blocks.to_bytes(),
        pairs.to_bytes(),
        common::tiny_mixed_model().to_bytes(),
        common::tiny_f16_model().to_bytes(),
    ] {
        random_edits(&bytes);
    }
}

fn random_edits(bytes: &[u8]) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut refused, mut accepted) = (0, 0);
    for _ in 0..20_000 {
        let mut m = bytes.to_vec();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(m.len());
            m[i] = match rng.below(4) {
                0 => m[i] ^ (1 << rng.below(8)),
                1 => 0xFF,
                2 => 0,
                _ => rng.next() as u8,
            };
        }
        common::fix_checksums(&mut m);
        match try_run(&m) {
            Ok(()) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    // Most edits land in fields the validators check; some (weights, scales) are legal.
    assert!(
        refused > 1_000 && accepted > 100,
        "refused {refused}, accepted {accepted}"
    );
}
