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
