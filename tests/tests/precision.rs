//! Mixed precision on a real model: layers kept wider (int16 activations, with f16 weights or
//! int8 ones) lower the error against float, the agreement budget picks them, and the file
//! says which they are.

use std::path::{Path, PathBuf};

use kestrel_e2e::{shared_dir, shared_model};
use kestrel_tools::calibrate::Method;
use kestrel_tools::compile::{self, CompileOptions, CompileReport, Target};
use kestrel_tools::dataset;
use kestrel_tools::eval::Loaded;
use kestrel_tools::precision::{self, WideKind};

const MODEL: &str = "resnet8_tiny_cifar10";

fn compile_as(
    keep_wide: Vec<String>,
    budget: Option<f64>,
    wide_as: WideKind,
) -> (PathBuf, CompileReport) {
    let opts = CompileOptions {
        method: Method::Percentile(99.99),
        calib_count: 100,
        target: Target::host(),
        progress: false,
        keep_wide,
        budget,
        budget_data: None,
        wide_as,
        bias_correction: false,
        equalize: false,
        calib_flip: false,
        stream_stems: true,
    };
    let calib = shared_dir().join("data/cifar10/calib");
    let (bytes, report) =
        compile::compile(&shared_model(MODEL), Some(&calib), None, &opts).unwrap();
    let dir = std::env::temp_dir().join(format!("kestrel-precision-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!(
        "{}-{}-{}.kes",
        wide_as.name(),
        report.wide_layers.len(),
        budget.unwrap_or(-1.0)
    );
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    (path, report)
}

/// Every candidate of `kind`, by name, and the logits' layer name.
fn every_layer(kind: WideKind) -> (Vec<String>, String) {
    let prepared = compile::prepare(&shared_model(MODEL), None).unwrap();
    let graph = &prepared.graph;
    let all = precision::candidates(graph, kind)
        .into_iter()
        .map(|v| precision::name_of(graph, v))
        .collect();
    (all, precision::name_of(graph, graph.output))
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

/// The file's logits on 20 dev images, bit for bit the scalar path's on every path this CPU
/// runs (its f16 convs run on the SIMD f16 tiles there), and on 1, 2 and 4 threads.
fn same_logits_on_every_path(kes: &Path) {
    use kestrel_runtime::{CpuFeatures, Isa, Model};
    let bytes = std::fs::read(kes).unwrap();
    let model = Model::parse(&bytes).unwrap();
    let loaded = Loaded::open(kes, None).unwrap();
    let images = dataset::spread(
        &dataset::list(&shared_dir().join("data/cifar10/dev")).unwrap(),
        20,
    );
    let run = |isa: Isa, x: &[f32]| run_on(&model, isa, 1, x);
    let cpu = CpuFeatures::detect();
    let best = cpu.best();
    // The wide convs split their rows over threads: the same bits on 2 and 4.
    for img in images.iter().take(5) {
        let x = loaded.preprocess.load(&img.path).unwrap();
        let want = run(best, &x);
        for threads in [2, 4] {
            assert_eq!(run_on(&model, best, threads, &x), want, "{threads} threads");
        }
    }
    println!("{best}: the same logits on 1, 2 and 4 threads");
    for isa in Isa::ALL.into_iter().filter(|&i| i != Isa::Scalar) {
        if !cpu.supports(isa) {
            println!("skipped {isa}: this CPU lacks it");
            continue;
        }
        for img in &images {
            let x = loaded.preprocess.load(&img.path).unwrap();
            let want = run(Isa::Scalar, &x);
            assert_eq!(run(isa, &x), want, "{isa} on {}", img.path.display());
        }
        println!("{isa}: the scalar path's logits on {} images", images.len());
    }
}

/// Logits of one image on `isa` and `threads` threads.
fn run_on(
    model: &kestrel_runtime::Model<'_>,
    isa: kestrel_runtime::Isa,
    threads: usize,
    x: &[f32],
) -> Vec<f32> {
    let pool =
        kestrel_runtime::pool::ThreadPool::new(threads, model.scratch_bytes(), false).unwrap();
    let mut arena = vec![0u8; model.arena_bytes()];
    let mut session = kestrel_runtime::Session::with_kernels(model, &mut arena, isa).unwrap();
    if threads > 1 {
        session.set_parallel(&pool);
    }
    session.set_input_nchw_f32(x).unwrap();
    session.run();
    let mut out = vec![0.0f32; model.classes()];
    session.logits(&mut out).unwrap();
    out
}

#[test]
fn every_layer_kept_f16_leaves_almost_none_of_the_int8_error() {
    let (all, logits) = every_layer(WideKind::F16);
    assert!(
        all.contains(&"input".to_string()) && all.contains(&logits),
        "{all:?}"
    );
    let (int8, r8) = compile_as(Vec::new(), None, WideKind::F16);
    let (wide, rw) = compile_as(all.clone(), None, WideKind::F16);
    assert!(r8.wide_layers.is_empty());
    assert_eq!(rw.wide_layers.len(), all.len());
    // The file says which tensors are int16 and which weights f16 (inspect).
    let report = kestrel_tools::inspect::inspect(&std::fs::read(&wide).unwrap()).unwrap();
    assert_eq!(report.ops[0].input.dtype, "i16");
    // It names what the f16 convs run on here (a SIMD tile, or the scalar loops).
    assert!(report.f16_tile_here.is_some(), "{:?}", report.f16_tile_here);
    let int16 = report
        .ops
        .iter()
        .filter(|o| o.output.dtype == "i16")
        .count();
    // Every candidate but the input and the int32 logits writes int16.
    assert!(int16 + 2 >= all.len(), "{int16} int16 outputs, {all:?}");
    let weighted = report
        .ops
        .iter()
        .filter(|o| o.op == "conv" || o.op == "dense")
        .count();
    let f16 = report.ops.iter().filter(|o| o.layout == "f16").count();
    assert_eq!(
        f16, weighted,
        "every conv and dense layer kept wide has f16 weights"
    );
    same_logits_on_every_path(&wide);
    let (e8, a8) = error_and_agreement(&int8);
    let (ew, aw) = error_and_agreement(&wide);
    assert!(ew < 0.1 * e8, "logit error {ew} kept f16 vs {e8} int8");
    assert!(
        aw >= a8 && aw >= 199,
        "agreement {aw} kept f16 vs {a8} int8"
    );
}

#[test]
fn int16_activations_alone_lower_the_error_less() {
    let (all, logits) = every_layer(WideKind::Int16);
    assert!(!all.contains(&logits), "{all:?}");
    let (int8, _) = compile_as(Vec::new(), None, WideKind::Int16);
    let (wide, report) = compile_as(all, None, WideKind::Int16);
    assert_eq!(report.wide_as, WideKind::Int16);
    let inspect = kestrel_tools::inspect::inspect(&std::fs::read(&wide).unwrap()).unwrap();
    assert!(inspect.ops.iter().all(|o| o.layout != "f16"));
    // It names what the 16x8 convs run on here, and they give the same bits on every path.
    assert!(inspect.f16_tile_here.is_none() && inspect.int16_tile_here.is_some());
    same_logits_on_every_path(&wide);
    let (e8, _) = error_and_agreement(&int8);
    let (ew, _) = error_and_agreement(&wide);
    // int8 weights stay: the error falls, but far from f16's.
    assert!(
        ew < 0.9 * e8 && ew > 0.01 * e8,
        "logit error {ew} 16x8 vs {e8} int8"
    );
}

#[test]
fn the_budget_keeps_no_layer_when_int8_meets_it_and_what_it_needs_otherwise() {
    let (_, easy) = compile_as(Vec::new(), Some(50.0), WideKind::F16);
    let easy_budget = easy.budget.unwrap();
    assert!(easy.wide_layers.is_empty() && !easy_budget.unmet);
    assert!(easy_budget.int8_agreement >= 0.5);
    let (kes, hard) = compile_as(Vec::new(), Some(99.5), WideKind::F16);
    let b = hard.budget.unwrap();
    // Checked on the calibration folder's images calibration did not use (100 of 1000
    // calibrate): at most 500 of the other 900.
    assert!(
        b.held_out && b.inputs == 500,
        "{} inputs, held out {}",
        b.inputs,
        b.held_out
    );
    assert!(b.int8_agreement < 0.995, "int8 already meets 99.5%");
    assert!(!b.unmet, "f16 everywhere reaches 99.5%");
    assert!(b.chosen_agreement >= 0.995);
    assert!(!hard.wide_layers.is_empty() && hard.wide_layers.len() <= b.ranking.len());
    // And it holds on images the search never saw, to within a few.
    let (_, agree) = error_and_agreement(&kes);
    assert!(agree >= 196, "{agree}/200 on dev images");
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
        budget_data: None,
        wide_as: WideKind::F16,
        bias_correction: false,
        equalize: false,
        calib_flip: false,
        stream_stems: true,
    };
    let calib = shared_dir().join("data/cifar10/calib");
    let e = compile::compile(&shared_model(MODEL), Some(&calib), None, &opts).unwrap_err();
    assert!(e.to_string().contains("'layer9.conv'"), "{e}");
}
