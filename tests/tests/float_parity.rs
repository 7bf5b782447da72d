//! The float path on the real trained models: import, fold, run, compare with tract and
//! with onnxruntime's logits recorded in `shared/models/*.ref.json`.

use base64::Engine;
use kestrel_e2e::{shared_dir, shared_model, SHARED_MODELS};
use kestrel_tools::graph::Op;
use kestrel_tools::preprocess::Preprocess;
use kestrel_tools::{check, onnx_import, passes, reference};

#[test]
fn every_shared_model_matches_tract_with_every_batchnorm_folded() {
    for stem in SHARED_MODELS {
        let r = check::check(&shared_model(stem), None, None).unwrap();
        assert!(
            r.within_tolerance,
            "{stem}: max |diff| {} > {}",
            r.max_abs_diff, r.tolerance
        );
        assert_eq!(r.passes.bn_left, 0, "{stem}: BatchNorm left after folding");
        assert_eq!(
            r.passes.bn_folded, r.ops["BatchNormalization"],
            "{stem}: folded count"
        );
        assert!(!r.folded_ops.contains_key("BatchNormalization"));
        assert_eq!(r.argmax_kestrel, r.argmax_tract, "{stem}");
    }
}

#[test]
fn shared_model_on_a_real_image_matches_tract() {
    let image = shared_dir().join("data/cifar10/dev/cat/0000.jpg");
    let r = check::check(&shared_model("resnet20_cifar10"), Some(&image), None).unwrap();
    assert!(r.within_tolerance, "{} > {}", r.max_abs_diff, r.tolerance);
    assert_eq!(r.preprocess_source, "metadata");
}

/// Same decoded pixels as onnxruntime saw (the RGB bytes are in the ref file), so this
/// compares inference alone, against a second runtime.
#[test]
fn folded_reference_matches_onnxruntime_logits() {
    for stem in SHARED_MODELS {
        let path = shared_dir().join(format!("models/{stem}.ref.json"));
        let text = std::fs::read_to_string(&path).unwrap();
        let refs: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut graph = onnx_import::import_path(&shared_model(stem)).unwrap();
        let shape = &graph.values[graph.input].shape;
        let pre = Preprocess::from_metadata(&graph.metadata, [shape[2], shape[3]]).unwrap();
        passes::fold_and_fuse(&mut graph);
        let images = refs["images"].as_array().unwrap();
        assert_eq!(images.len(), 20, "{stem}");
        for img in images {
            let rgb = base64::engine::general_purpose::STANDARD
                .decode(img["rgb_u8_b64"].as_str().unwrap())
                .unwrap();
            assert_eq!(rgb.len(), 32 * 32 * 3);
            let logits = reference::run(&graph, &pre.apply(&rgb, 32, 32)).unwrap();
            let want: Vec<f32> = img["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let diff = logits
                .iter()
                .zip(&want)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= 1e-4 * scale,
                "{stem} {}: max |diff| {diff}",
                img["file"]
            );
            assert_eq!(
                check::argmax(&logits) as u64,
                img["argmax"].as_u64().unwrap(),
                "{stem} {}",
                img["file"]
            );
        }
    }
}

/// Folding removes each BatchNorm's four vectors and adds a bias only where the conv had
/// none; and the importer sees every parameter and MAC that MODELS.md counts.
#[test]
fn folding_changes_the_parameter_count_by_exactly_the_batchnorms() {
    for stem in SHARED_MODELS {
        let mut graph = onnx_import::import_path(&shared_model(stem)).unwrap();
        let unfolded = graph.param_count();
        let bn_params: usize = graph
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::BatchNorm(_)))
            .map(|n| n.op.param_count())
            .sum();
        // MODELS.md counts BN scale and bias only (not the running statistics).
        let published: usize = graph.metadata["params"].parse().unwrap();
        assert_eq!(unfolded - bn_params / 2, published, "{stem}: params");
        let macs: u64 = graph.metadata["macs"].parse().unwrap();
        assert_eq!(graph.macs(), macs, "{stem}: MACs");

        let report = passes::fold_and_fuse(&mut graph);
        assert!(graph
            .nodes
            .iter()
            .all(|n| !matches!(n.op, Op::BatchNorm(_))));
        assert_eq!(
            graph.param_count(),
            unfolded - bn_params + report.bias_params_created,
            "{stem}: folded params"
        );
    }
}
