//! ResNet-8 on the Cortex-M4F firmware (`boards/mps2-an386`) under qemu-system-arm: the
//! kernel checks pass on the emulated core, and the firmware labels the first dev image
//! of each class as the host's `kestrel run` does with the same `.kes`.

use std::collections::BTreeMap;
use std::process::Command;

use kestrel_e2e::{repo, shared_dir, shared_model, temp_dir};
use kestrel_tools::calibrate::Method;
use kestrel_tools::compile::{self, CompileOptions, Target};
use kestrel_tools::eval::{top_k, Loaded};

/// The emulator and decoder the firmware runs with, or a panic naming the missing one.
fn require_tools() {
    for tool in ["qemu-system-arm", "defmt-print"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} is not installed: scripts/setup installs it");
    }
}

fn mcu_run(args: &[&str]) -> String {
    let out = Command::new(repo().join("scripts/mcu-run"))
        .args(args)
        .env("KESTREL_SHARED", shared_dir())
        .output()
        .expect("scripts/mcu-run starts");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "scripts/mcu-run {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_dsp_kernels_match_the_reference_on_the_emulated_cortex_m4() {
    require_tools();
    let log = mcu_run(&["--kernel-check"]);
    let cases = kestrel_kernels::check::CASES.len();
    for tile in ["smlad_2x4c16", "smlad_2x4p16"] {
        let line = format!("conv {tile}: {cases} cases equal");
        assert!(log.contains(&line), "{line} missing:\n{log}");
    }
    assert!(log.lines().any(|l| l == "kernel check passed"), "{log}");
}

#[test]
fn the_firmware_labels_images_as_the_host_does() {
    require_tools();
    let mut opts = CompileOptions::new(Method::Percentile(99.99), 200, Target::CortexM4);
    opts.bias_correction = true;
    opts.equalize = true;
    let calib = shared_dir().join("data/cifar10/calib");
    let onnx = shared_model("resnet8_tiny_cifar10");
    let (bytes, _) = compile::compile(&onnx, Some(&calib), None, &opts).unwrap();
    let kes = temp_dir("mcu").join("resnet8.cortex-m4.kes");
    std::fs::write(&kes, bytes).unwrap();

    let stdout = mcu_run(&["--model", kes.to_str().unwrap()]);
    let mut firmware = BTreeMap::new();
    let mut instructions = None;
    for line in stdout.lines() {
        if let Some(n) = line.strip_prefix("instructions per inference: ") {
            instructions = Some(n.parse::<u64>().expect("a count"));
        } else if let Some((image, label)) = line.split_once(' ') {
            firmware.insert(image.to_string(), label.to_string());
        }
    }
    assert_eq!(firmware.len(), 10, "one line per class:\n{stdout}");
    let instructions = instructions.expect("the instruction count line");
    // ResNet-8 is 12.5 M multiply-adds: two per SMLAD and a bounded overhead.
    assert!(
        (6_000_000..100_000_000).contains(&instructions),
        "{instructions}"
    );

    let host = Loaded::open(&kes, None).unwrap();
    let mut run = host.runner().unwrap();
    let dev = shared_dir().join("data/cifar10/dev");
    for (image, label) in &firmware {
        let logits = run(&host.preprocess.load(&dev.join(image)).unwrap()).unwrap();
        let best = top_k(&logits, 1)[0];
        assert_eq!(&host.labels[best], label, "{image}");
    }
}
