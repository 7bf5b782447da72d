//! Whole-model inference: the shared CIFAR ResNet-20 and a synthetic ResNet-18 at
//! 224×224 (deterministic weights, BatchNorm statistics from real images; torchvision's
//! weights are not here), compiled for this host (`--target x86-64` on x86, `rpi5` on
//! AArch64), on 1 and all threads. Needs `../shared`.
//!
//! ```text
//! cargo bench -p kestrel-e2e --bench models
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kestrel_e2e::{shared_dir, shared_model};
use kestrel_runtime::pool::ThreadPool;
use kestrel_runtime::{Model, Session};
use kestrel_tools::calibrate::Method;
use kestrel_tools::compile::{self, CompileOptions, Target};
use kestrel_tools::dataset;
use kestrel_tools::synth::{self, Arch, SynthOptions};

fn target() -> Target {
    if cfg!(target_arch = "aarch64") {
        Target::Rpi5
    } else {
        Target::X86_64
    }
}

fn compile(onnx: &std::path::Path) -> Vec<u8> {
    let opts = CompileOptions::new(Method::Percentile(99.99), 16, target());
    compile::compile(
        onnx,
        Some(&shared_dir().join("data/cifar10/calib")),
        None,
        &opts,
    )
    .expect("compiling the benchmark model")
    .0
}

fn resnet18() -> Vec<u8> {
    let opts = SynthOptions::new(Arch::ResNet18);
    let mut model = synth::build(&opts).unwrap();
    let pre = opts.preprocess();
    let all = dataset::list(&shared_dir().join("data/cifar10/calib")).unwrap();
    let images: Vec<Vec<f32>> = dataset::spread(&all, 8)
        .iter()
        .map(|i| pre.load(&i.path).unwrap())
        .collect();
    synth::calibrate_bn(&mut model, &images).unwrap();
    let path = std::env::temp_dir().join(format!("kestrel-bench-r18-{}.onnx", std::process::id()));
    synth::write(&model, &path).unwrap();
    let bytes = compile(&path);
    let _ = std::fs::remove_file(&path);
    bytes
}

fn models(c: &mut Criterion) {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cases = [
        (
            "resnet20_cifar10",
            compile(&shared_model("resnet20_cifar10")),
        ),
        ("resnet18_synthetic_224", resnet18()),
    ];
    for (name, bytes) in cases {
        let model = Model::parse(&bytes).unwrap();
        let macs = kestrel_tools::inspect::inspect(&bytes).unwrap().macs;
        let mut group = c.benchmark_group(format!("model/{name}"));
        group.throughput(Throughput::Elements(macs));
        group.sample_size(20);
        let mut threads = vec![1];
        if all > 1 {
            threads.push(all);
        }
        for t in threads {
            let pool = ThreadPool::new(t, model.scratch_bytes(), false).unwrap();
            let mut arena = vec![0u8; model.arena_bytes()];
            let mut session = Session::new(&model, &mut arena).unwrap();
            session.set_parallel(&pool);
            let kernels = session.kernels();
            let input: Vec<i8> = (0..session.input_mut().len())
                .map(|i| ((i * 37 + 11) % 251) as i8)
                .collect();
            let id = BenchmarkId::new(kernels.name(), format!("{t}-threads"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    // The plan reuses the input's bytes: write it before every run.
                    session.input_mut().copy_from_slice(&input);
                    session.run();
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, models);
criterion_main!(benches);
