//! `kestrel synth`: the nine archs have the published topology and parameter counts,
//! their BatchNorm statistics come from real images, and our float path matches tract.

use kestrel_e2e::shared_dir;
use kestrel_tools::dataset;
use kestrel_tools::synth::{self, Arch, SynthOptions};
use kestrel_tools::{check, onnx_import};

/// Parameters as torchvision counts them (conv and fc weights, fc bias, BN weight and
/// bias; 1000 classes): the figures published with torchvision's ImageNet weights.
/// CIFAR figures are those of the akamaster checkpoints in shared/models (MODELS.md).
const PUBLISHED_PARAMS: [(Arch, usize); 9] = [
    (Arch::ResNet18, 11_689_512),
    (Arch::ResNet34, 21_797_672),
    (Arch::ResNet50, 25_557_032),
    (Arch::ResNet101, 44_549_160),
    (Arch::ResNet152, 60_192_808),
    (Arch::ResNet20, 269_722),
    (Arch::ResNet32, 464_154),
    (Arch::ResNet44, 658_586),
    (Arch::ResNet56, 853_018),
];

fn calib_images(opts: &SynthOptions, count: usize) -> Vec<Vec<f32>> {
    let all = dataset::list(&shared_dir().join("data/cifar10/calib")).unwrap();
    let pre = opts.preprocess();
    dataset::spread(&all, count)
        .iter()
        .map(|i| pre.load(&i.path).unwrap())
        .collect()
}

fn write_tmp(model: &kestrel_tools::synth::OnnxModel, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kestrel-synth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    synth::write(model, &path).unwrap();
    path
}

#[test]
fn synthetic_archs_have_the_published_parameter_counts() {
    for (arch, published) in PUBLISHED_PARAMS {
        let model = synth::build(&SynthOptions::new(arch)).unwrap();
        let graph = onnx_import::import_proto(&model, None).unwrap();
        let bn_stats: usize = graph
            .nodes
            .iter()
            .filter(|n| n.op.kind() == "BatchNormalization")
            .map(|n| n.op.param_count() / 2)
            .sum();
        assert_eq!(graph.param_count() - bn_stats, published, "{arch}");
    }
}

/// Every arch, calibrated on real images, at a reduced input size for the ImageNet archs
/// (the topology does not depend on it; ResNet-18 at 224 has its own test).
#[test]
fn every_synthetic_arch_matches_tract_after_folding() {
    for arch in Arch::ALL {
        let mut opts = SynthOptions::new(arch);
        if !arch.is_cifar() {
            opts.input_size = 64;
            opts.classes = 10;
        }
        let mut model = synth::build(&opts).unwrap();
        let cal = synth::calibrate_bn(&mut model, &calib_images(&opts, 8)).unwrap();
        assert!(cal.batch_norms > 0);
        let path = write_tmp(&model, &format!("{arch}.onnx"));
        let r = check::check(&path, None, None).unwrap();
        assert!(
            r.within_tolerance,
            "{arch}: max |diff| {} > {}",
            r.max_abs_diff, r.tolerance
        );
        assert_eq!(r.passes.bn_left, 0, "{arch}");
        assert_eq!(r.passes.bn_folded, cal.batch_norms, "{arch}");
        assert_eq!(r.preprocess_source, "metadata", "{arch}");
    }
}

#[test]
fn resnet18_at_224_calibrated_on_real_images_matches_tract() {
    let opts = SynthOptions::new(Arch::ResNet18);
    let mut model = synth::build(&opts).unwrap();
    let cal = synth::calibrate_bn(&mut model, &calib_images(&opts, 16)).unwrap();
    assert_eq!(cal.batch_norms, 20);
    // Calibrated BatchNorm and the centred classifier give image-dependent predictions.
    assert!(cal.distinct_predictions > 1, "{cal:?}");
    let path = write_tmp(&model, "resnet18-224.onnx");
    let r = check::check(&path, None, None).unwrap();
    assert!(
        r.within_tolerance,
        "max |diff| {} > {}",
        r.max_abs_diff, r.tolerance
    );
    assert_eq!(r.input_shape, vec![1, 3, 224, 224]);
    assert_eq!(r.passes.add_fused, 8);
    // torchvision's ResNet-18: 1.814 G multiply-accumulates at 224×224.
    assert_eq!(r.macs / 1_000_000, 1_814);
}

#[test]
fn synthetic_weights_are_deterministic_per_seed() {
    let mut opts = SynthOptions::new(Arch::ResNet20);
    let encode = |o: &SynthOptions| prost::Message::encode_to_vec(&synth::build(o).unwrap());
    let first = encode(&opts);
    assert_eq!(first, encode(&opts));
    opts.seed = 1;
    assert_ne!(first, encode(&opts));
}
