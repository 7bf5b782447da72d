//! The `kestrel` binary on bad input: clear messages naming what is wrong, a non-zero
//! exit code, never a panic (Rust panics exit with 101).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kestrel_tools::synth::{self, Arch, SynthOptions};

fn kestrel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(args)
        .output()
        .expect("the kestrel binary runs")
}

fn tmp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kestrel-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn resnet20(path: &Path) -> synth::OnnxModel {
    let model = synth::build(&SynthOptions::new(Arch::ResNet20)).unwrap();
    synth::write(&model, path).unwrap();
    model
}

fn assert_clean_failure(out: &Output, must_mention: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    for word in must_mention {
        assert!(stderr.contains(word), "stderr lacks '{word}': {stderr}");
    }
}

#[test]
fn an_unsupported_node_is_named_with_its_op_type() {
    let dir = tmp_dir();
    let mut model = resnet20(&dir.join("base.onnx"));
    let node = model
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.name == "layer2.1.relu1")
        .unwrap();
    node.op_type = "LeakyRelu".into();
    let path = dir.join("leaky.onnx");
    synth::write(&model, &path).unwrap();
    let out = kestrel(&["check", path.to_str().unwrap()]);
    assert_clean_failure(&out, &["layer2.1.relu1", "LeakyRelu", "not supported"]);
}

#[test]
fn a_grouped_conv_is_refused_by_name() {
    let dir = tmp_dir();
    let mut model = resnet20(&dir.join("base2.onnx"));
    let node = model
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.name == "layer1.0.conv2")
        .unwrap();
    let mut group = node.attribute[0].clone();
    group.name = "group".into();
    group.r#type = tract_onnx::pb::attribute_proto::AttributeType::Int as i32;
    group.i = 2;
    group.ints.clear();
    node.attribute.push(group);
    let path = dir.join("grouped.onnx");
    synth::write(&model, &path).unwrap();
    let out = kestrel(&["check", path.to_str().unwrap()]);
    assert_clean_failure(&out, &["layer1.0.conv2", "group = 2"]);
}

#[test]
fn truncated_and_non_onnx_files_fail_cleanly() {
    let dir = tmp_dir();
    let good = dir.join("good.onnx");
    resnet20(&good);
    let bytes = std::fs::read(&good).unwrap();
    for (name, data) in [
        ("half.onnx", &bytes[..bytes.len() / 2]),
        ("head.onnx", &bytes[..100]),
        ("text.onnx", &b"this is not a model\n"[..]),
        ("empty.onnx", &[][..]),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        let out = kestrel(&["check", path.to_str().unwrap()]);
        assert_clean_failure(&out, &[name]);
    }
    let out = kestrel(&["check", dir.join("missing.onnx").to_str().unwrap()]);
    assert_clean_failure(&out, &["missing.onnx", "cannot read"]);
}

#[test]
fn check_json_reports_the_parity_fields() {
    let dir = tmp_dir();
    let path = dir.join("json.onnx");
    resnet20(&path);
    let out = kestrel(&["check", path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ops"]["BatchNormalization"], 19);
    assert_eq!(v["ops"]["Slice"], 2);
    assert_eq!(v["bn_folded"], 19);
    assert_eq!(v["relu_fused"], 19);
    let diff = v["max_abs_diff"].as_f64().unwrap();
    let logit = v["max_abs_logit"].as_f64().unwrap();
    assert!(logit > 0.0 && diff <= 1e-4 * logit.max(1.0), "{v}");
    assert!(v["model"].as_str().unwrap().ends_with("json.onnx"));
}

#[test]
fn synth_refuses_bad_arguments() {
    let dir = tmp_dir();
    let out = kestrel(&[
        "synth",
        "--arch",
        "resnet19",
        "-o",
        dir.join("x.onnx").to_str().unwrap(),
    ]);
    assert_clean_failure(&out, &["resnet19"]);
    let out = kestrel(&[
        "synth",
        "--arch",
        "resnet20",
        "--calib",
        dir.join("no-such-folder").to_str().unwrap(),
        "-o",
        dir.join("y.onnx").to_str().unwrap(),
    ]);
    assert_clean_failure(&out, &["no-such-folder"]);
}

/// A labelled folder of small generated images: `<class>/<n>.png` for the CIFAR labels.
fn image_folder(dir: &Path, per_class: usize) -> PathBuf {
    let root = dir.join("images");
    for (c, label) in kestrel_tools::synth::CIFAR10_LABELS.iter().enumerate() {
        std::fs::create_dir_all(root.join(label)).unwrap();
        for n in 0..per_class {
            let img = image::RgbImage::from_fn(32, 32, |x, y| {
                image::Rgb([(x * 8) as u8, (y * 8) as u8, (c * 25 + n * 3) as u8])
            });
            img.save(root.join(label).join(format!("{n}.png"))).unwrap();
        }
    }
    root
}

#[test]
fn compile_run_eval_inspect_report_their_json_fields() {
    let dir = tmp_dir().join("int8");
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("r20.onnx");
    resnet20(&onnx);
    let images = image_folder(&dir, 2);
    let kes = dir.join("r20.kes");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = kestrel(&[
        "compile",
        &s(&onnx),
        "--calib",
        &s(&images),
        "--calib-count",
        "10",
        "-o",
        &s(&kes),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No --target: the file is packed for this machine, and the summary says so.
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("(this machine; --target to choose)"),
        "{summary}"
    );

    let out = kestrel(&["inspect", &s(&kes), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["arena_bytes"].as_u64().unwrap() >= v["arena_lower_bound_bytes"].as_u64().unwrap());
    assert_eq!(v["macs"], 40_551_040u64);
    assert_eq!(
        v["file_bytes"].as_u64().unwrap(),
        std::fs::metadata(&kes).unwrap().len()
    );
    assert!(v["weights_bytes"].as_u64().unwrap() > 269_000);
    assert_eq!(v["ops"].as_array().unwrap().len(), 26);

    let cat = images.join("cat/0.png");
    let out = kestrel(&["run", &s(&kes), &s(&cat), &s(&cat), "--top", "3", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["image"], s(&cat));
    assert_eq!(v[0]["top"].as_array().unwrap().len(), 3);
    assert_eq!(v[0]["logits"].as_array().unwrap().len(), 10);
    assert_eq!(
        v[0]["logits"], v[1]["logits"],
        "the same image gives the same logits"
    );

    let out = kestrel(&["eval", &s(&kes), "--data", &s(&images), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["images"], 20);
    let (top1, top5) = (v["top1"].as_f64().unwrap(), v["top5"].as_f64().unwrap());
    assert!(
        (0.0..=1.0).contains(&top1) && top1 <= top5 && top5 <= 1.0,
        "{v}"
    );
}

#[test]
fn corrupt_kes_and_bad_images_fail_cleanly() {
    let dir = tmp_dir().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("fake.kes");
    std::fs::write(&fake, b"KESTREL\0 and then nothing sensible").unwrap();
    for cmd in ["inspect", "run"] {
        let mut args = vec![cmd, fake.to_str().unwrap()];
        if cmd == "run" {
            args.push("whatever.png");
        }
        assert_clean_failure(&kestrel(&args), &["fake.kes", "truncated"]);
    }
    let onnx = dir.join("r20.onnx");
    resnet20(&onnx);
    let not_image = dir.join("notes.png");
    std::fs::write(&not_image, b"plain text").unwrap();
    assert_clean_failure(
        &kestrel(&["run", onnx.to_str().unwrap(), not_image.to_str().unwrap()]),
        &["notes.png"],
    );
}

/// `kestrel bench` on a packed model: the JSON report holds what benchmarks read, and
/// kernels this machine cannot give, and a thread count of zero, are refused by name.
#[test]
fn bench_reports_latency_and_refuses_what_it_cannot_run() {
    let dir = tmp_dir();
    let onnx = dir.join("bench-r20.onnx");
    resnet20(&onnx);
    let kes = dir.join("bench-r20.kes");
    let calib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar10/calib");
    assert!(
        calib.is_dir(),
        "the shared calibration images are missing: {}",
        calib.display()
    );
    let out = kestrel(&[
        "compile",
        onnx.to_str().unwrap(),
        "--calib",
        calib.to_str().unwrap(),
        "--calib-count",
        "10",
        "--target",
        "x86-64",
        "-o",
        kes.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kestrel(&[
        "bench",
        kes.to_str().unwrap(),
        "--iters",
        "3",
        "--layers",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["latency_ms_median", "latency_ms_p90", "gmacs_per_s"] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {r}");
    }
    assert_eq!(r["threads"], 1);
    let inspect = kestrel(&["inspect", kes.to_str().unwrap(), "--json"]);
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(r["macs"], inspect["macs"]);
    assert_eq!(r["iters"], 3);
    assert!(r["layers"].as_array().unwrap().len() > 20);
    let out = kestrel(&["bench", kes.to_str().unwrap(), "--kernels", "neon-dot"]);
    assert_clean_failure(&out, &["neon-dot"]);
    let out = kestrel(&["bench", kes.to_str().unwrap(), "--kernels", "sse9"]);
    assert_clean_failure(&out, &["sse9"]);
    // Two threads: the worker pool reports itself; zero threads is refused by name.
    let out = kestrel(&[
        "bench",
        kes.to_str().unwrap(),
        "--iters",
        "2",
        "--threads",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["threads"], 2);
    let out = kestrel(&["bench", kes.to_str().unwrap(), "--threads", "0"]);
    assert_clean_failure(&out, &["--threads 0"]);
}
