//! What users bring: ResNets exported by PyTorch's two exporters, timm and ONNX Runtime's
//! quantiser (the committed fixtures of `scripts/fixtures/make_onnx_fixtures.py`, each with
//! its own framework's logits), calibration from any image folder or a `.npy`, labels
//! files, and the typed errors of bad input.

use std::path::{Path, PathBuf};

use kestrel_e2e::shared_dir;
use kestrel_tools::calibrate::Method;
use kestrel_tools::compile::{self, CompileOptions, Target};
use kestrel_tools::dataset::{self, DatasetError};
use kestrel_tools::eval::{self, EvalSet, Loaded};
use kestrel_tools::onnx_import::{self, ImportError, TensorProto};
use kestrel_tools::{check, reference};
use prost::Message;

const FLOAT_FIXTURES: [&str; 8] = [
    "tv_basic_dynamo",
    "tv_bottleneck_dynamo",
    "tv_basic_ts13",
    "tv_bottleneck_ts17_dynamic",
    "tv_basic_ts13_preserve",
    "timm_resnet_basic",
    "timm_resnet_d",
    "timm_resnetv2_preact",
];
const QDQ_FIXTURES: [&str; 2] = ["tv_basic_qdq_s8s8", "tv_basic_qdq_u8s8"];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/onnx")
}

fn fixture(name: &str) -> PathBuf {
    let path = fixtures().join(format!("{name}.onnx"));
    assert!(path.is_file(), "missing fixture {}", path.display());
    path
}

/// The fixture's inputs (NCHW float32, eight synthetic images) and its framework's logits.
fn reference_logits(name: &str) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let text = std::fs::read_to_string(fixtures().join(format!("{name}.ref.json"))).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let logits: Vec<Vec<f32>> = json["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let inputs_file = fixtures().join(json["inputs"].as_str().unwrap());
    let inputs = dataset::read_tensors(&inputs_file, 3 * 64 * 64).unwrap();
    assert_eq!(inputs.len(), logits.len());
    (inputs, logits)
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

fn argmax(v: &[f32]) -> usize {
    check::argmax(v)
}

fn options(target: Target) -> CompileOptions {
    CompileOptions::new(Method::Percentile(99.99), 500, target)
}

/// Runs a compiled `.kes` on each input with the kernels this CPU picks.
fn run_int8(bytes: &[u8], inputs: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let model = kestrel_runtime::Model::parse(bytes).unwrap();
    let mut arena = vec![0u8; model.arena_bytes()];
    let mut logits = vec![0f32; model.classes()];
    inputs
        .iter()
        .map(|x| {
            let mut s = kestrel_runtime::Session::new(&model, &mut arena).unwrap();
            s.set_input_nchw_f32(x).unwrap();
            s.run();
            s.logits(&mut logits).unwrap();
            logits.clone()
        })
        .collect()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kestrel-intake-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn exported_float_models_match_torch_and_tract() {
    for name in FLOAT_FIXTURES {
        let path = fixture(name);
        let (inputs, expected) = reference_logits(name);
        let graph = compile::prepare(&path, None).unwrap().graph;
        for (x, want) in inputs.iter().zip(&expected) {
            let got = reference::run(&graph, x).unwrap();
            let tolerance = check::RELATIVE_TOLERANCE * max_abs(want).max(1.0);
            let diff = max_diff(&got, want);
            assert!(diff <= tolerance, "{name}: {diff} from torch's logits");
        }
        let report = check::check(&path, None, None).unwrap();
        assert!(
            report.within_tolerance,
            "{name}: {} vs tract",
            report.max_abs_diff
        );
        assert_eq!(report.passes.bn_left, 0, "{name}");
    }
}

#[test]
fn pre_activation_batch_norms_run_as_channel_affine_ops() {
    let report = check::check(&fixture("timm_resnetv2_preact"), None, None).unwrap();
    assert_eq!(report.passes.bn_affine, 5);
    assert_eq!(report.folded_ops.get("ChannelAffine"), Some(&5));
    assert_eq!(
        report.folded_ops.get("Dense"),
        Some(&1),
        "the 1x1 conv head"
    );
    // ResNet-D: the projection shortcut's 2x2 average pooling stays a pooling op.
    let d = check::check(&fixture("timm_resnet_d"), None, None).unwrap();
    assert!(d.folded_ops.get("AveragePool").is_some_and(|&n| n > 0));
}

#[test]
fn exported_float_models_compile_and_run_close_to_float() {
    let calib = fixtures().join("inputs_64.npy");
    for name in FLOAT_FIXTURES {
        let path = fixture(name);
        let (inputs, expected) = reference_logits(name);
        for target in [Target::Rpi5, Target::Rpi4, Target::Generic] {
            let (bytes, report) =
                compile::compile(&path, Some(&calib), None, &options(target)).unwrap();
            assert_eq!(report.calibration_images, inputs.len(), "{name}");
            let got = run_int8(&bytes, &inputs);
            // int8 logits stay within a tenth of the largest logit of each image.
            for (g, want) in got.iter().zip(&expected) {
                let diff = max_diff(g, want);
                assert!(
                    diff <= 0.1 * max_abs(want),
                    "{name} {target:?}: int8 {g:?} vs torch {want:?}"
                );
            }
        }
    }
}

#[test]
fn qdq_models_compile_without_calibration_and_match_onnxruntime() {
    for name in QDQ_FIXTURES {
        let path = fixture(name);
        let (inputs, expected) = reference_logits(name);
        // The defaults a user gets: equalisation and bias correction ask for nothing here
        // (the model's own scales were chosen for its weights as they are).
        let opts = CompileOptions {
            equalize: true,
            calib_flip: false,
            bias_correction: true,
            ..options(Target::Rpi5)
        };
        let (bytes, report) = compile::compile(&path, None, None, &opts).unwrap();
        assert_eq!(report.calibration_images, 0);
        assert_eq!(report.equalized_pairs, 0, "{name}");
        assert!(report.bias_correction.is_none(), "{name}");
        assert!(
            report.stated_scales > 10,
            "{name}: {}",
            report.stated_scales
        );
        // The model rounds each block's conv before its Add: the Adds stay apart, and the
        // float reference rounds where the model does (it matches tract's QDQ run).
        let report = check::check(&path, None, None).unwrap();
        assert_eq!(report.passes.add_fused, 0, "{name}");
        assert_eq!(report.folded_ops.get("Add"), Some(&4), "{name}");
        assert!(report.within_tolerance, "{name}: {}", report.max_abs_diff);
        let got = run_int8(&bytes, &inputs);
        for (g, want) in got.iter().zip(&expected) {
            // onnxruntime's logits are rounded to its output scale, so its top class can
            // be a tie: Kestrel's choice must be one of onnxruntime's top classes.
            let best = want[argmax(want)];
            assert!(
                want[argmax(g)] >= best - 1e-6,
                "{name}: {g:?} vs onnxruntime {want:?}"
            );
            // onnxruntime rounds the logits to its output scale; Kestrel keeps int32 logits.
            let diff = max_diff(g, want);
            assert!(
                diff <= 0.05 * max_abs(want),
                "{name}: {diff}: {g:?} vs {want:?}"
            );
        }
    }
}

/// Each op's output of a QDQ file, on every kernel path this CPU has, is the QDQ graph's own
/// value at that point (the float reference, which rounds where the model does and matches
/// tract): the same integer on all but near-ties (the reference sums in f32). Rounding
/// requantisation twice (gemmlowp's way) put ~1 value in 1000 a step off in the first conv
/// of ONNX Runtime's QDQ ResNet-20 and ~10% by its last block.
#[test]
fn qdq_files_round_each_layer_where_the_graph_does() {
    let cpu = kestrel_runtime::CpuFeatures::available();
    for isa in kestrel_runtime::Isa::ALL {
        if !cpu.supports(isa) {
            println!("skipped: this CPU has no {} kernels", isa.name());
        }
    }
    for name in QDQ_FIXTURES {
        let path = fixture(name);
        let (inputs, _) = reference_logits(name);
        // Every op's output observed: the stem's conv map stored, not streamed.
        let opts = CompileOptions {
            stream_stems: false,
            ..options(Target::Rpi5)
        };
        let (bytes, _) = compile::compile(&path, None, None, &opts).unwrap();
        let model = kestrel_runtime::Model::parse(&bytes).unwrap();
        let graph = compile::prepare(&path, None).unwrap().graph;
        let ops = model.file().op_count() as usize;
        assert_eq!(ops, graph.nodes.len(), "{name}");
        let mut arena = vec![0u8; model.arena_bytes()];
        for isa in kestrel_runtime::Isa::ALL
            .into_iter()
            .filter(|&i| cpu.supports(i))
        {
            let (mut off, mut total) = (vec![0usize; ops], vec![0usize; ops]);
            for x in &inputs {
                let mut want: Vec<Vec<f32>> = vec![Vec::new(); ops];
                reference::run_observed(&graph, x, |i, _, v| want[i] = v.to_vec()).unwrap();
                let mut s =
                    kestrel_runtime::Session::with_kernels(&model, &mut arena, isa).unwrap();
                s.set_input_nchw_f32(x).unwrap();
                for (i, want) in want.iter().enumerate() {
                    s.run_op(i as u32);
                    let op = model.file().op(i as u32).unwrap();
                    let (info, raw) = s.tensor(op.output).unwrap();
                    if info.dtype == kestrel_runtime::kestrel_format::DType::I32 {
                        continue; // the logits: int32, not rounded to a scale
                    }
                    let got = kestrel_tools::compare::dequantize_nchw(&info, raw);
                    total[i] += got.len();
                    off[i] += got
                        .iter()
                        .zip(want)
                        .filter(|(g, w)| (*g - *w).abs() > 0.5 * info.scale)
                        .count();
                }
            }
            println!("{name} {}: values off per op {off:?}", isa.name());
            let (off_all, all) = (off.iter().sum::<usize>(), total.iter().sum::<usize>());
            assert!(
                off_all * 10_000 <= all,
                "{name} {}: {off_all} of {all} values off a step: {off:?}",
                isa.name()
            );
        }
    }
}

#[test]
fn a_float_model_without_calibration_is_refused_by_name() {
    let err = compile::compile(
        &fixture("tv_basic_ts13"),
        None,
        None,
        &options(Target::Rpi5),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("--calib"), "{err}");
}

#[test]
fn compile_without_a_target_packs_for_this_machine() {
    let host = Target::host();
    #[cfg(target_arch = "x86_64")]
    assert_eq!(host, Target::X86_64);
    #[cfg(target_arch = "aarch64")]
    assert!(matches!(host, Target::Rpi4 | Target::Rpi5), "{host:?}");
    assert_ne!(host, Target::Generic, "a file packed for no SIMD kernel");
}

/// A flat folder, a nested one and an undecodable image: calibration takes every image at
/// any depth, skips the broken one by name, and refuses a folder with no usable image.
#[test]
fn calibration_takes_any_image_folder_and_skips_broken_images() {
    let dev = shared_dir().join("data/cifar10/dev");
    let dir = tmp("calib");
    std::fs::create_dir_all(dir.join("nested/deeper")).unwrap();
    let images = dataset::list(&dev).unwrap();
    for (i, img) in dataset::spread(&images, 6).iter().enumerate() {
        let dest = match i % 3 {
            0 => dir.join(format!("flat_{i}.jpg")),
            1 => dir.join(format!("nested/img_{i}.jpg")),
            _ => dir.join(format!("nested/deeper/img_{i}.jpg")),
        };
        std::fs::copy(&img.path, dest).unwrap();
    }
    std::fs::write(dir.join("broken.jpg"), b"not a jpeg at all").unwrap();
    let (_, report) = compile::compile(
        &fixture("tv_basic_ts13"),
        Some(&dir),
        None,
        &options(Target::Rpi5),
    )
    .unwrap();
    assert_eq!(report.calibration_images, 6);
    assert_eq!(report.calibration_skipped.len(), 1);
    assert!(report.calibration_skipped[0].0.ends_with("broken.jpg"));

    let empty = tmp("calib-broken");
    std::fs::write(empty.join("a.jpg"), b"garbage").unwrap();
    std::fs::write(empty.join("b.png"), b"garbage").unwrap();
    let err = compile::compile(
        &fixture("tv_basic_ts13"),
        Some(&empty),
        None,
        &options(Target::Rpi5),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("no usable calibration image"), "{err}");
    assert!(err.contains("2 could not be decoded"), "{err}");
}

#[test]
fn calibration_tensors_of_the_wrong_shape_are_refused() {
    let err = dataset::read_tensors(&fixtures().join("inputs_64.npy"), 3 * 32 * 32).unwrap_err();
    assert!(matches!(err, DatasetError::Tensors { .. }), "{err}");
    assert!(err.to_string().contains("[8, 3, 64, 64]"), "{err}");
}

/// `path index` (ImageNet's val.txt) and `path,label` files give the same accuracy as the
/// class folders on the same images; a missing image is named with its line.
#[test]
fn eval_takes_a_labels_file() {
    let shared = shared_dir();
    let dev = shared.join("data/cifar10/dev");
    let kes = tmp("labels").join("m.kes");
    let (bytes, _) = compile::compile(
        &shared.join("models/resnet20_cifar10.onnx"),
        Some(&shared.join("data/cifar10/calib")),
        None,
        &CompileOptions {
            calib_count: 50,
            ..options(Target::Generic)
        },
    )
    .unwrap();
    std::fs::write(&kes, bytes).unwrap();
    let model = Loaded::open(&kes, None).unwrap();
    let picked = dataset::spread(&dataset::list(&dev).unwrap(), 40);
    let dir = kes.parent().unwrap();
    let rel = |p: &Path| p.strip_prefix(&dev).unwrap().display().to_string();
    let by_index: String = picked
        .iter()
        .map(|img| {
            let i = model.labels.iter().position(|l| *l == img.class).unwrap();
            format!("{} {i}\n", rel(&img.path))
        })
        .collect();
    let by_label: String = picked
        .iter()
        .map(|img| format!("{},{}\n", rel(&img.path), img.class))
        .collect();
    std::fs::write(dir.join("val.txt"), format!("# comment\n{by_index}")).unwrap();
    std::fs::write(dir.join("val.csv"), by_label).unwrap();
    let a = eval::evaluate(
        &model,
        "a",
        EvalSet::LabelsFile {
            file: &dir.join("val.txt"),
            dir: &dev,
        },
        None,
        false,
    )
    .unwrap();
    let b = eval::evaluate(
        &model,
        "b",
        EvalSet::LabelsFile {
            file: &dir.join("val.csv"),
            dir: &dev,
        },
        None,
        false,
    )
    .unwrap();
    assert_eq!(a.images, 40);
    assert_eq!(a.top1, b.top1);
    assert!(a.top1 > 0.5, "{}", a.top1);

    std::fs::write(
        dir.join("bad.txt"),
        "cat/0000.jpg 3\ncat/no-such-image.jpg 3\n",
    )
    .unwrap();
    let err = dataset::read_labels_file(&dir.join("bad.txt"), &dev).unwrap_err();
    assert!(
        matches!(&err, DatasetError::MissingImage { line: 2, image, .. } if image.ends_with("no-such-image.jpg")),
        "{err}"
    );
}

#[test]
fn missing_or_truncated_external_data_is_a_typed_error() {
    let dir = tmp("external");
    let model = dir.join("m.onnx");
    // The model points at its data file by name: keep the exporter's name.
    std::fs::copy(fixture("tv_basic_dynamo"), dir.join("tv_basic_dynamo.onnx")).unwrap();
    std::fs::rename(dir.join("tv_basic_dynamo.onnx"), &model).unwrap();
    let err = onnx_import::import_path(&model).unwrap_err();
    assert!(
        matches!(&err, ImportError::ExternalData { file, .. } if file.ends_with("tv_basic_dynamo.onnx.data")),
        "{err}"
    );
    let data = std::fs::read(fixtures().join("tv_basic_dynamo.onnx.data")).unwrap();
    std::fs::write(
        dir.join("tv_basic_dynamo.onnx.data"),
        &data[..data.len() / 2],
    )
    .unwrap();
    let err = onnx_import::import_path(&model).unwrap_err();
    assert!(
        matches!(&err, ImportError::ExternalData { reason, .. } if reason.contains("truncated")),
        "{err}"
    );
}

/// The QDQ fixture with one activation's scale or zero point replaced.
fn qdq_with(dir: &Path, file: &str, edit: impl Fn(&mut TensorProto), which: usize) -> PathBuf {
    let mut proto = onnx_import::read_proto(&fixture("tv_basic_qdq_s8s8")).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let input = graph.input[0].name.clone();
    let q = graph
        .node
        .iter()
        .find(|n| n.op_type == "QuantizeLinear" && n.input[0] == input)
        .unwrap();
    let target = q.input[which].clone();
    let t = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == target)
        .unwrap();
    edit(t);
    let path = dir.join(file);
    std::fs::write(&path, proto.encode_to_vec()).unwrap();
    path
}

#[test]
fn bad_quantisation_parameters_are_typed_errors_naming_the_tensor() {
    let dir = tmp("qdq");
    for (file, value) in [
        ("zero.onnx", 0.0f32),
        ("negative.onnx", -0.1),
        ("nan.onnx", f32::NAN),
    ] {
        let path = qdq_with(
            &dir,
            file,
            |t| {
                t.raw_data.clear();
                t.float_data = vec![value];
            },
            1,
        );
        let err = onnx_import::import_path(&path).unwrap_err();
        assert!(
            matches!(&err, ImportError::Quant { tensor, reason, .. } if tensor.contains("scale") && reason.contains("positive and finite")),
            "{file}: {err}"
        );
    }
    let path = qdq_with(
        &dir,
        "zp.onnx",
        |t| {
            t.raw_data.clear();
            t.data_type = 6; // INT32
            t.int32_data = vec![300];
        },
        2,
    );
    let err = onnx_import::import_path(&path).unwrap_err();
    assert!(
        matches!(&err, ImportError::Quant { reason, .. } if reason.contains("300")),
        "{err}"
    );
}
