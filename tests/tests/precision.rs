//! Mixed precision on a real model: layers kept at int16 activations ("16x8") lower the
//! error against float, the agreement budget picks them, and the file says which they are.

use std::path::{Path, PathBuf};

use kestrel_e2e::{shared_dir, shared_model};
use kestrel_tools::calibrate::Method;
use kestrel_tools::compile::{self, CompileOptions, CompileReport, Target};
use kestrel_tools::eval::Loaded;
use kestrel_tools::{dataset, precision};

const MODEL: &str = "resnet8_tiny_cifar10";

fn compile_with(keep_wide: Vec<String>, budget: Option<f64>) -> (PathBuf, CompileReport) {
    let opts = CompileOptions {
        method: Method::Percentile(99.99),
        calib_count: 100,
        target: Target::host(),
        progress: false,
        keep_wide,
        budget,
    };
    let calib = shared_dir().join("data/cifar10/calib");
    let (bytes, report) =
        compile::compile(&shared_model(MODEL), Some(&calib), None, &opts).unwrap();
    let dir = std::env::temp_dir().join(format!("kestrel-precision-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!(
        "{}-{}.kes",
        report.wide_layers.len(),
        budget.unwrap_or(-1.0)
    );
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    (path, report)
}

/// Σ squared logit error against float and top-1 agreement, on 200 dev images.
fn error_and_agreement(kes: &Path) -> (f64, usize) {
    let int = Loaded::open(kes, None).unwrap();
    let float = Loaded::open(&shared_model(MODEL), None).unwrap();
    let (mut run_q, mut run_f) = (int.runner().unwrap(), float.runner().unwrap());
    let images = dataset::spread(
        &dataset::list(&shared_dir().join("data/cifar10/dev")).unwrap(),
        200,
    );
    let (mut error, mut agree) = (0.0, 0);
    for img in images {
        let x = int.preprocess.load(&img.path).unwrap();
        let (q, f) = (run_q(&x).unwrap(), run_f(&x).unwrap());
        error += q
            .iter()
            .zip(&f)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>();
        let top = |v: &[f32]| kestrel_tools::check::argmax(v);
        agree += (top(&q) == top(&f)) as usize;
    }
    (error, agree)
}

#[test]
fn every_layer_kept_wide_lowers_the_error_against_float() {
    let prepared = compile::prepare(&shared_model(MODEL), None).unwrap();
    let all: Vec<String> = precision::candidates(&prepared.graph)
        .into_iter()
        .map(|v| precision::name_of(&prepared.graph, v))
        .collect();
    assert!(
        all.contains(&"input".to_string()) && all.len() > 8,
        "{all:?}"
    );
    let (int8, r8) = compile_with(Vec::new(), None);
    let (wide, rw) = compile_with(all.clone(), None);
    assert!(r8.wide_layers.is_empty());
    assert_eq!(rw.wide_layers.len(), all.len());
    // The file says which tensors are int16 (inspect), and they are the ones asked for.
    let report = kestrel_tools::inspect::inspect(&std::fs::read(&wide).unwrap()).unwrap();
    let int16 = report
        .ops
        .iter()
        .filter(|o| o.output.dtype == "i16")
        .count();
    assert_eq!(report.ops[0].input.dtype, "i16");
    assert!(
        int16 + 1 >= all.len(),
        "{int16} int16 outputs for {} layers",
        all.len()
    );
    let (e8, a8) = error_and_agreement(&int8);
    let (ew, aw) = error_and_agreement(&wide);
    assert!(ew < 0.8 * e8, "logit error {ew} kept wide vs {e8} int8");
    assert!(aw + 2 >= a8, "agreement {aw} kept wide vs {a8} int8");
}

#[test]
fn the_budget_keeps_no_layer_when_int8_meets_it_and_every_one_it_needs_otherwise() {
    let (_, easy) = compile_with(Vec::new(), Some(50.0));
    let easy_budget = easy.budget.unwrap();
    assert!(easy.wide_layers.is_empty() && !easy_budget.unmet);
    assert!(easy_budget.int8_agreement >= 0.5);
    let (_, hard) = compile_with(Vec::new(), Some(100.0));
    let b = hard.budget.unwrap();
    assert!(b.chosen_agreement >= b.int8_agreement);
    assert!(!b.ranking.is_empty());
    if b.unmet {
        // Nothing reaches it: every candidate that can be wide is.
        assert_eq!(hard.wide_layers.len(), b.ranking.len());
    } else {
        assert_eq!(b.chosen_agreement, 1.0);
        assert!(!hard.wide_layers.is_empty());
    }
}

#[test]
fn an_unknown_layer_is_named() {
    let opts = CompileOptions {
        method: Method::Percentile(99.99),
        calib_count: 10,
        target: Target::Generic,
        progress: false,
        keep_wide: vec!["layer9.conv".to_string()],
        budget: None,
    };
    let calib = shared_dir().join("data/cifar10/calib");
    let e = compile::compile(&shared_model(MODEL), Some(&calib), None, &opts).unwrap_err();
    assert!(e.to_string().contains("'layer9.conv'"), "{e}");
}
