//! Every card in `models/` parses and is consistent: labels, and for the shared models
//! the file checksum and the preprocessing the ONNX file itself declares.

use std::path::PathBuf;

use kestrel_e2e::{shared_model, SHARED_MODELS};
use kestrel_tools::card::LoadedCard;
use kestrel_tools::onnx_import;
use kestrel_tools::preprocess::Preprocess;
use kestrel_tools::synth::Arch;
use sha2::{Digest, Sha256};

fn card(stem: &str) -> LoadedCard {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../models/{stem}.toml"));
    LoadedCard::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_arch_has_a_card_with_its_labels() {
    for arch in Arch::ALL.into_iter().filter(|a| !a.is_cifar()) {
        let c = card(arch.name());
        assert_eq!(c.card.model.architecture, arch.name());
        assert!(c.card.model.synthetic_here);
        assert!(c
            .card
            .model
            .obtain
            .contains(&format!("torchvision.models.{arch}")));
        // The recipe is PyTorch's default exporter, the setting of the `*_dynamo` fixtures
        // (tests/tests/intake.rs).
        assert!(c.card.model.obtain.contains("dynamo=True"), "{arch}");
        assert_eq!(c.labels().unwrap().len(), 1000);
        assert_eq!(c.preprocess().size, [224, 224]);
    }
    for arch in Arch::ALL.into_iter().filter(|a| a.is_cifar()) {
        let c = card(&format!("{arch}_cifar10"));
        assert_eq!(c.card.model.architecture, arch.name());
    }
}

#[test]
fn shared_model_cards_match_their_files() {
    for stem in SHARED_MODELS {
        let c = card(stem);
        let bytes = std::fs::read(shared_model(stem)).unwrap();
        let digest = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(
            c.card.model.sha256.as_deref(),
            Some(digest.as_str()),
            "{stem}"
        );
        let graph = onnx_import::import_path(&shared_model(stem)).unwrap();
        let meta = Preprocess::from_metadata(&graph.metadata, c.card.input.size).unwrap();
        assert_eq!(
            c.preprocess(),
            meta,
            "{stem}: card and ONNX metadata disagree"
        );
        let labels = c.labels().unwrap();
        assert_eq!(labels.join(","), graph.metadata["labels"], "{stem}");
    }
}

#[test]
fn a_card_with_a_bad_field_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("kestrel-card-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/resnet20_cifar10.toml"),
    )
    .unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        text.replace("resize = \"nearest\"", "resize = \"lanczos\""),
    )
    .unwrap();
    let e = LoadedCard::load(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.toml") && e.contains("lanczos"), "{e}");
}
