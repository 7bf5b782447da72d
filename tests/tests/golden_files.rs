//! The committed `.kes` files whose logits `crates/kestrel-runtime/tests/golden_files.rs`
//! pins (one per conv weight layout): they are what `kestrel compile` made of the narrow
//! torchvision fixture for their target. `KESTREL_BLESS=1 cargo test -p kestrel-e2e --test
//! golden_files` writes the file of a target that has none yet; re-write the others (then
//! re-bless the logits there) only together with a format version bump
//! (`KESTREL_BLESS=all`): they stand for files already on boards.

use std::path::PathBuf;

use kestrel_runtime::Model;
use kestrel_tools::calibrate::Method;
use kestrel_tools::compile::{self, CompileOptions, Target};
use sha2::{Digest, Sha256};

const TARGETS: [Target; 4] = [
    Target::Generic,
    Target::Rpi4,
    Target::Rpi5,
    Target::CortexM4,
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[test]
fn committed_files_are_the_fixture_compiled_for_each_target() {
    let onnx = dir().join("onnx/tv_basic_ts13.onnx");
    if let Some(bless) = std::env::var_os("KESTREL_BLESS") {
        let calib = dir().join("onnx/inputs_64.npy");
        for target in TARGETS {
            let path = dir().join(format!("kes/{}.kes", target.name()));
            if path.exists() && bless != "all" {
                continue;
            }
            let opts = CompileOptions::new(Method::Percentile(99.99), 64, target);
            let (bytes, _) = compile::compile(&onnx, Some(&calib), None, &opts).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        return;
    }
    let source = format!("{:x}", Sha256::digest(std::fs::read(&onnx).unwrap()));
    for target in TARGETS {
        let name = target.name();
        let bytes = std::fs::read(dir().join(format!("kes/{name}.kes"))).unwrap();
        let model = Model::parse(&bytes).unwrap();
        let meta = |key: &str| {
            model
                .file()
                .metadata()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        };
        assert_eq!(meta("target").as_deref(), Some(name.as_str()));
        assert_eq!(
            meta("source_sha256").as_deref(),
            Some(source.as_str()),
            "{name}"
        );
        let layout = model.file().op(0).map(|op| op.layout).unwrap();
        assert_eq!(layout, target.weight_layout(), "{name}");
    }
}
