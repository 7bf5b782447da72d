//! Every kernel path gives the scalar reference's logits, bit for bit, on whole models:
//! the six shared CIFAR ResNets and synthetic ResNet-18/50 (64×64 here, to keep qemu
//! quick), for both packed weight layouts and 1, 2 and 4 threads. On this x86 host in
//! process (scalar, AVX2, AVX-512 VNNI, as the CPU has them); for AArch64 through the
//! runtime's `bench` example under qemu `-cpu cortex-a72` (scalar, NEON) and `-cpu
//! cortex-a76` (scalar, NEON, `sdot`). The reference file stores the stem's conv map
//! whole; every other file streams it into the max pool (`kestrel_tools::stem`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kestrel_e2e::{shared_dir, shared_model, SHARED_MODELS};
use kestrel_runtime::kestrel_format::OpKind;
use kestrel_runtime::pool::ThreadPool;
use kestrel_runtime::{CpuFeatures, Isa, Model, Session};
use kestrel_tools::calibrate::Method;
use kestrel_tools::compile::{self, CompileOptions, Target};
use kestrel_tools::dataset;
use kestrel_tools::synth::{self, Arch, SynthOptions};

struct Compiled {
    name: String,
    /// Portable weights, the stem not streamed: the scalar reference conv.
    generic: Vec<u8>,
    /// Portable weights, the stem streamed.
    generic_streamed: Vec<u8>,
    /// `--target rpi4`: 4-channel blocks (the A72 kernel).
    blocks4: Vec<u8>,
    /// `--target rpi5`: 16-channel lanes (`sdot` by element, VNNI, AVX2).
    lanes16: Vec<u8>,
}

fn tmp() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kestrel-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn compile_both(name: &str, onnx: &Path) -> Compiled {
    let calib = shared_dir().join("data/cifar10/calib");
    let build = |target, stream_stems| {
        let opts = CompileOptions {
            stream_stems,
            ..CompileOptions::new(Method::Percentile(99.99), 20, target)
        };
        compile::compile(onnx, Some(&calib), None, &opts).unwrap().0
    };
    let compiled = Compiled {
        name: name.to_string(),
        generic: build(Target::Generic, false),
        generic_streamed: build(Target::Generic, true),
        blocks4: build(Target::Rpi4, true),
        lanes16: build(Target::Rpi5, true),
    };
    // Every max pool of these ResNets follows their stem's conv: each is streamed. The
    // torchvision-topology ones have one, the CIFAR ones none.
    let count = |bytes: &[u8], kind: OpKind| {
        let f = Model::parse(bytes).unwrap();
        let file = f.file();
        (0..file.op_count())
            .filter(|&i| file.op(i).unwrap().kind == kind)
            .count()
    };
    let pools = count(&compiled.generic, OpKind::MaxPool);
    assert!(pools == 1 || !name.starts_with("synthetic"), "{name}");
    assert_eq!(count(&compiled.generic, OpKind::ConvMaxPool), 0, "{name}");
    for bytes in [
        &compiled.generic_streamed,
        &compiled.blocks4,
        &compiled.lanes16,
    ] {
        assert_eq!(count(bytes, OpKind::ConvMaxPool), pools, "{name}");
        assert_eq!(count(bytes, OpKind::MaxPool), 0, "{name}");
    }
    compiled
}

fn synthetic(arch: Arch) -> PathBuf {
    let mut opts = SynthOptions::new(arch);
    opts.input_size = 64;
    opts.classes = 10;
    let mut model = synth::build(&opts).unwrap();
    let pre = opts.preprocess();
    let all = dataset::list(&shared_dir().join("data/cifar10/calib")).unwrap();
    let images: Vec<Vec<f32>> = dataset::spread(&all, 8)
        .iter()
        .map(|i| pre.load(&i.path).unwrap())
        .collect();
    synth::calibrate_bn(&mut model, &images).unwrap();
    let path = tmp().join(format!("{}-64.onnx", arch.name()));
    synth::write(&model, &path).unwrap();
    path
}

fn models() -> &'static [Compiled] {
    static MODELS: OnceLock<Vec<Compiled>> = OnceLock::new();
    MODELS.get_or_init(|| {
        let mut out: Vec<Compiled> = SHARED_MODELS
            .iter()
            .map(|stem| compile_both(stem, &shared_model(stem)))
            .collect();
        for arch in [Arch::ResNet18, Arch::ResNet50] {
            out.push(compile_both(
                &format!("synthetic {}", arch.name()),
                &synthetic(arch),
            ));
        }
        out
    })
}

/// Two dev images, decoded to RGB bytes.
fn images() -> Vec<(Vec<u8>, usize, usize)> {
    let all = dataset::list(&shared_dir().join("data/cifar10/dev")).unwrap();
    dataset::spread(&all, 2)
        .iter()
        .map(|i| {
            let img = image::open(&i.path).unwrap().to_rgb8();
            let (w, h) = (img.width() as usize, img.height() as usize);
            (img.into_raw(), w, h)
        })
        .collect()
}

fn logits(bytes: &[u8], isa: Isa, threads: usize, rgb: &[u8], w: usize, h: usize) -> Vec<f32> {
    let model = Model::parse(bytes).unwrap();
    let pool = ThreadPool::new(threads, model.scratch_bytes(), false).unwrap();
    let mut arena = vec![0u8; model.arena_bytes()];
    let mut session = Session::with_kernels(&model, &mut arena, isa).unwrap();
    session.set_parallel(&pool);
    assert_eq!(session.threads(), threads);
    let info = model.file().preprocess;
    let mut scratch = vec![0f32; kestrel_runtime::preprocess::scratch_len(&info, w, h)];
    session.set_input_rgb(rgb, w, h, &mut scratch).unwrap();
    session.run();
    let mut out = vec![0f32; model.classes()];
    session.logits(&mut out).unwrap();
    out
}

#[test]
fn every_x86_kernel_path_gives_the_reference_logits() {
    let cpu = CpuFeatures::available();
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|&i| cpu.supports(i)).collect();
    println!("kernel paths on this CPU: {isas:?}");
    let images = images();
    for m in models() {
        for (rgb, w, h) in &images {
            let reference = logits(&m.generic, Isa::Scalar, 1, rgb, *w, *h);
            assert!(reference.iter().any(|&v| v != reference[0]));
            for threads in [1, 3] {
                assert_eq!(
                    logits(&m.generic_streamed, Isa::Scalar, threads, rgb, *w, *h),
                    reference,
                    "{} (portable, streamed) on {threads} threads",
                    m.name
                );
            }
            for (layout, bytes) in [("blocks4", &m.blocks4), ("lanes16", &m.lanes16)] {
                for &isa in &isas {
                    // Every path on one thread; the fastest also on 2 and 4 (the split
                    // into runs of pixels is the same for every path).
                    let threads: &[usize] = if isa == cpu.best() { &[1, 2, 4] } else { &[1] };
                    for &threads in threads {
                        assert_eq!(
                            logits(bytes, isa, threads, rgb, *w, *h),
                            reference,
                            "{} ({layout}) with {isa} kernels on {threads} threads",
                            m.name
                        );
                    }
                }
            }
        }
    }
}

fn bench_example() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&repo)
            .args([
                "build",
                "--profile",
                "host",
                "-p",
                "kestrel-runtime",
                "--example",
                "bench",
                "--features",
                "std",
                "--target",
                "aarch64-unknown-linux-gnu",
            ])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "building the aarch64 bench example failed"
        );
        repo.join("target/aarch64-unknown-linux-gnu/host/examples/bench")
    })
}

#[test]
fn every_aarch64_kernel_path_under_qemu_gives_the_reference_logits() {
    let bench = bench_example();
    let (rgb, w, h) = images().remove(0);
    let rgb_file = tmp().join("image.rgb");
    std::fs::write(&rgb_file, &rgb).unwrap();
    // Each board's own layout on every path and thread count of its core; the other
    // layout on the SIMD paths once.
    let runs = [
        ("cortex-a72", "blocks4", "scalar", 1),
        ("cortex-a72", "blocks4", "neon", 1),
        ("cortex-a72", "blocks4", "neon", 2),
        ("cortex-a72", "blocks4", "neon", 4),
        ("cortex-a72", "lanes16", "neon", 1),
        ("cortex-a76", "lanes16", "scalar", 1),
        ("cortex-a76", "lanes16", "neon-dot", 1),
        ("cortex-a76", "lanes16", "neon-dot", 2),
        ("cortex-a76", "lanes16", "neon-dot", 4),
        ("cortex-a76", "blocks4", "neon", 1),
        ("cortex-a76", "blocks4", "neon-dot", 1),
    ];
    for (i, m) in models().iter().enumerate() {
        let reference = logits(&m.generic, Isa::Scalar, 1, &rgb, w, h);
        for (layout, bytes) in [("blocks4", &m.blocks4), ("lanes16", &m.lanes16)] {
            std::fs::write(tmp().join(format!("model-{i}-{layout}.kes")), bytes).unwrap();
        }
        for (cpu, layout, kernels, threads) in runs {
            let kes = tmp().join(format!("model-{i}-{layout}.kes"));
            let out = Command::new("qemu-aarch64")
                .args(["-L", "/usr/aarch64-linux-gnu", "-cpu", cpu])
                .arg(bench)
                .arg(&kes)
                .args(["--kernels", kernels, "--rgb"])
                .arg(&rgb_file)
                .args(["--size", &format!("{w}x{h}")])
                .args(["--threads", &threads.to_string()])
                .output()
                .expect("qemu-aarch64 is installed (scripts/setup)");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let what = format!("{} ({layout}) on {cpu}/{kernels}/{threads} threads", m.name);
            assert!(
                out.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            assert_eq!(v["kernels"], kernels);
            assert_eq!(v["threads"], threads);
            let got: Vec<f32> = v["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(got, reference, "{what}");
        }
    }
    // A CPU without the dot product refuses the sdot kernels by name.
    let out = Command::new("qemu-aarch64")
        .args(["-L", "/usr/aarch64-linux-gnu", "-cpu", "cortex-a72"])
        .arg(bench)
        .arg(tmp().join("model-0-lanes16.kes"))
        .args(["--kernels", "neon-dot"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot run the neon-dot kernels"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
