//! Helpers for the end-to-end tests: where the shared models and images are.

use std::path::PathBuf;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An empty directory for one test, named by the test and this process (each test binary is
/// its own process, so two binaries never share one).
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kestrel-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `shared/` beside the repository (`<repo>/../shared`), or a panic that says what is
/// missing: these tests need the real models and images and must not pass without them.
pub fn shared_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    assert!(
        dir.join("models/MODELS.md").is_file() && dir.join("data/cifar10/labels.txt").is_file(),
        "the shared models and data are missing: expected them at {} (../shared beside the repository)",
        dir.display()
    );
    dir
}

/// The real trained models in `shared/models`, by file stem.
pub const SHARED_MODELS: [&str; 7] = [
    "resnet20_cifar10",
    "resnet32_cifar10",
    "resnet44_cifar10",
    "resnet56_cifar10",
    "resnet8_tiny_cifar10",
    "resnet18_cifar10_64px",
    "resnet50_cifar10_64px",
];

pub fn shared_model(stem: &str) -> PathBuf {
    let path = shared_dir().join("models").join(format!("{stem}.onnx"));
    assert!(path.is_file(), "missing shared model {}", path.display());
    path
}
