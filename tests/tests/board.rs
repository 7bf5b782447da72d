//! The board side end to end: the service loop on real images and a real model, the board
//! binaries built for aarch64 and run under qemu, and `kestrel package`.
//!
//! Every label a board prints is checked against what `kestrel run` (the same library
//! path, in process) says for the same image.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;
use std::time::Duration;

use kestrel_board::backoff::Backoff;
use kestrel_board::classifier::Classifier;
use kestrel_board::frame::Frame;
use kestrel_board::service::{EndReason, Field, Service};
use kestrel_board::sink::JsonLines;
use kestrel_board::source::{DirSource, FrameSource, SourceError};
use kestrel_board::trigger::Continuous;
use kestrel_e2e::{repo, shared_dir, shared_model, temp_dir};
use kestrel_runtime::Isa;
use kestrel_tools::calibrate::Method;
use kestrel_tools::compile::{self, CompileOptions, Target};
use kestrel_tools::dataset;
use kestrel_tools::eval::{self, Loaded};

/// ResNet-20 (real weights) compiled once for all tests here.
fn resnet20_kes() -> &'static Path {
    static KES: OnceLock<PathBuf> = OnceLock::new();
    KES.get_or_init(|| {
        let opts = CompileOptions::new(Method::Percentile(99.99), 100, Target::Generic);
        let calib = shared_dir().join("data/cifar10/calib");
        let (bytes, _) =
            compile::compile(&shared_model("resnet20_cifar10"), Some(&calib), None, &opts).unwrap();
        let path = temp_dir("model").join("resnet20.kes");
        std::fs::write(&path, bytes).unwrap();
        path
    })
}

/// `count` dev images spread over the classes, copied to `DIR/<class>/<file>`; returns
/// the folder and each copy's path relative to it.
fn dev_images(name: &str, count: usize) -> (PathBuf, Vec<String>) {
    let all = dataset::list(&shared_dir().join("data/cifar10/dev")).unwrap();
    let dir = temp_dir(name);
    let mut rel = Vec::new();
    for img in dataset::spread(&all, count) {
        let r = format!(
            "{}/{}",
            img.class,
            img.path.file_name().unwrap().to_string_lossy()
        );
        std::fs::create_dir_all(dir.join(&img.class)).unwrap();
        std::fs::copy(&img.path, dir.join(&r)).unwrap();
        rel.push(r);
    }
    rel.sort();
    (dir, rel)
}

/// What `kestrel run MODEL IMAGE` puts first, for each image.
fn kestrel_run_labels(kes: &Path, dir: &Path, images: &[String]) -> HashMap<String, String> {
    let loaded = Loaded::open(kes, None).unwrap();
    let mut run = loaded.runner().unwrap();
    images
        .iter()
        .map(|rel| {
            let logits = run(&loaded.preprocess.load(&dir.join(rel)).unwrap()).unwrap();
            let best = eval::top_k(&logits, 1)[0];
            (rel.clone(), loaded.labels[best].clone())
        })
        .collect()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A camera that drops out every `disconnect_every` grabs (and fails its first reconnect
/// attempt each time) and delivers a corrupt frame every `bad_every` grabs.
struct FlakyCamera {
    inner: DirSource,
    grabs: u64,
    disconnect_every: u64,
    bad_every: u64,
    failed_reopens: u64,
    refuse_next_reopen: bool,
}

impl FrameSource for FlakyCamera {
    fn grab(&mut self) -> Result<Frame<'_>, SourceError> {
        self.grabs += 1;
        if self.grabs.is_multiple_of(self.disconnect_every) {
            self.refuse_next_reopen = true;
            return Err(SourceError::Disconnected {
                source_name: "flaky".into(),
                reason: "unplugged (injected)".into(),
            });
        }
        if self.grabs.is_multiple_of(self.bad_every) {
            return Err(SourceError::BadFrame {
                source_name: "flaky".into(),
                reason: "torn frame (injected)".into(),
            });
        }
        self.inner.grab()
    }

    fn name(&self) -> &str {
        "flaky"
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        if std::mem::take(&mut self.refuse_next_reopen) {
            self.failed_reopens += 1;
            return Err(SourceError::Open {
                source_name: "flaky".into(),
                reason: "still unplugged (injected)".into(),
            });
        }
        Ok(())
    }
}

#[test]
fn the_service_survives_a_camera_that_fails_every_few_frames() {
    let kes = resnet20_kes();
    let (dir, images) = dev_images("flaky", 30);
    let expected = kestrel_run_labels(kes, &dir, &images);
    let camera = FlakyCamera {
        inner: DirSource::open(&dir).unwrap(),
        grabs: 0,
        disconnect_every: 4,
        bad_every: 7,
        failed_reopens: 0,
        refuse_next_reopen: false,
    };
    let mut service = Service {
        source: Box::new(camera),
        trigger: Box::new(Continuous),
        classifier: Classifier::from_file(kes).unwrap(),
        sink: JsonLines::new(Vec::new()),
        indicator: None,
        top_k: 3,
        backoff: Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(4),
        },
        field: Field::local("bench-cam"),
    };
    let summary = service.run(&AtomicBool::new(false));
    let Service { sink, .. } = service;
    let lines = json_lines(&String::from_utf8(sink.into_inner()).unwrap());

    assert_eq!(summary.reason, EndReason::SourceExhausted);
    assert_eq!(
        summary.frames,
        images.len() as u64,
        "every image was classified"
    );
    let events = |name: &str| lines.iter().filter(|l| l["event"] == name).count();
    // Each disconnect is reported twice (the drop, then the refused first reconnect).
    let (drops, bad) = (events("camera_error") / 2, events("bad_frame"));
    assert_eq!(events("camera_error"), 2 * drops);
    // Grabs: the 30 images, the injected failures, and the last grab that found the
    // folder empty. Failures fell exactly on every 4th grab, bad frames on every other 7th.
    let grabs = 30 + drops + bad + 1;
    assert_eq!(drops, (1..=grabs).filter(|g| g % 4 == 0).count());
    assert_eq!(
        bad,
        (1..=grabs).filter(|g| g % 7 == 0 && g % 4 != 0).count()
    );
    assert!(drops >= 10 && bad >= 3);
    assert_eq!(
        summary.errors as usize,
        events("camera_error") + events("bad_frame")
    );
    let frames: Vec<_> = lines.iter().filter(|l| l.get("frame").is_some()).collect();
    assert_eq!(frames.len(), images.len());
    for (n, line) in frames.iter().enumerate() {
        assert_eq!(line["frame"], n as u64);
        let source = line["source"].as_str().unwrap();
        assert_eq!(
            line["top"][0]["label"],
            expected[source].as_str(),
            "{source}"
        );
        let scores: Vec<f64> = (0..3)
            .map(|k| line["top"][k]["score"].as_f64().unwrap())
            .collect();
        assert!(scores[0] >= scores[1] && scores[1] >= scores[2] && scores[0] <= 1.0);
        assert!(line["times_ms"]["inference"].as_f64().unwrap() > 0.0);
    }
}

/// The three board binaries for aarch64 glibc, built once (release without fat LTO).
fn board_binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(repo())
            .args([
                "build",
                "--profile",
                "host",
                "--target",
                "aarch64-unknown-linux-gnu",
                "-p",
                "kestrel-rpi5",
                "-p",
                "kestrel-rpi4",
            ])
            .env_remove("KESTREL_EMBED_MODEL")
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building the board binaries for aarch64 failed (scripts/setup installs the target and cross gcc)"
        );
        repo().join("target/aarch64-unknown-linux-gnu/host")
    })
}

/// Runs a board binary under qemu with `-cpu CPU`, a `dir:` camera and a stdin trigger fed
/// one line per image; returns its stdout.
fn run_board_under_qemu(binary: &Path, cpu: &str, args: &[&str], triggers: usize) -> String {
    let mut child = Command::new("qemu-aarch64")
        .args(["-L", "/usr/aarch64-linux-gnu", "-cpu", cpu])
        .arg(binary)
        .args(args)
        .args(["--trigger", "stdin", "--threads", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-aarch64 is installed (scripts/setup)");
    {
        let mut stdin = child.stdin.take().unwrap();
        for _ in 0..triggers {
            writeln!(stdin, "go").unwrap();
        }
    } // closing stdin ends the trigger
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{} exited with {}: {}\n{stdout}",
        binary.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn board_matches_kestrel_run(board: &str, cpu: &str) {
    let kes = resnet20_kes();
    let (dir, images) = dev_images(board, 20);
    let expected = kestrel_run_labels(kes, &dir, &images);
    let binary = board_binaries().join(format!("kestrel-{board}"));
    let camera = format!("dir:{}", dir.display());
    let stdout = run_board_under_qemu(
        &binary,
        cpu,
        &["--model", kes.to_str().unwrap(), "--camera", &camera],
        images.len(),
    );
    let lines = json_lines(&stdout);
    assert_eq!(lines[0]["event"], "start");
    assert_eq!(lines[0]["detail"]["board"], board);
    let frames: Vec<_> = lines.iter().filter(|l| l.get("frame").is_some()).collect();
    assert_eq!(frames.len(), images.len(), "{stdout}");
    for (line, rel) in frames.iter().zip(&images) {
        assert_eq!(line["source"], rel.as_str());
        assert_eq!(
            line["top"][0]["label"],
            expected[rel].as_str(),
            "{board} on {rel}"
        );
        for stage in ["capture", "preprocess", "inference"] {
            assert!(line["times_ms"][stage].is_number(), "{stage} missing");
        }
    }
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "stop");
    assert_eq!(last["detail"]["errors"], 0);
}

#[test]
fn rpi5_binary_under_qemu_cortex_a76_agrees_with_kestrel_run() {
    board_matches_kestrel_run("rpi5", "cortex-a76");
}

#[test]
fn rpi4_binary_under_qemu_cortex_a72_agrees_with_kestrel_run() {
    board_matches_kestrel_run("rpi4", "cortex-a72");
}

#[test]
fn sigterm_ends_the_service_cleanly() {
    use std::io::BufRead;
    let binary = board_binaries().join("kestrel-rpi5");
    let (dir, images) = dev_images("sigterm", 1);
    let image = dir.join(&images[0]);
    let mut child = Command::new("qemu-aarch64")
        .args(["-L", "/usr/aarch64-linux-gnu", "-cpu", "cortex-a76"])
        .arg(&binary)
        .args(["--model", resnet20_kes().to_str().unwrap()])
        .args(["--camera", &format!("file:{}", image.display())])
        .args(["--trigger", "interval:50", "--threads", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait for two classified frames, then ask it to stop as systemd would.
    let mut frames = 0;
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v.get("frame").is_some() {
            frames += 1;
            if frames == 2 {
                break;
            }
        }
    }
    assert_eq!(frames, 2, "the service classified frames on its interval");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<serde_json::Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let code = child.wait().unwrap();
    assert!(code.success(), "exit status after SIGTERM: {code}");
    let last = rest.last().expect("a stop event");
    assert_eq!(last["event"], "stop");
    assert_eq!(last["detail"]["reason"], "Stopped");
}

/// ResNet-8 compiled for the Pi 5 (lanes16 weights, for `sdot`).
fn resnet8_rpi5_kes() -> &'static Path {
    static KES: OnceLock<PathBuf> = OnceLock::new();
    KES.get_or_init(|| {
        let opts = CompileOptions::new(Method::Percentile(99.99), 20, Target::Rpi5);
        let calib = shared_dir().join("data/cifar10/calib");
        let (bytes, _) = compile::compile(
            &shared_model("resnet8_tiny_cifar10"),
            Some(&calib),
            None,
            &opts,
        )
        .unwrap();
        let path = temp_dir("mismatch").join("resnet8-rpi5.kes");
        std::fs::write(&path, bytes).unwrap();
        path
    })
}

#[test]
fn a_model_packed_for_another_cpu_is_refused_by_the_board() {
    // On the Pi 4 binary an rpi5 file would run the portable tile, several times slower.
    let kes = resnet8_rpi5_kes();
    let out = Command::new("qemu-aarch64")
        .args(["-L", "/usr/aarch64-linux-gnu", "-cpu", "cortex-a72"])
        .arg(board_binaries().join("kestrel-rpi4"))
        .args(["--model", kes.to_str().unwrap(), "--camera", "file:/x.jpg"])
        .args(["--trigger", "stdin"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in ["lanes16", "--target rpi5", "neon kernels", "--target rpi4"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}

#[test]
fn which_kernels_have_a_tile_for_a_file_and_package_refuses_the_rest() {
    let bytes = std::fs::read(resnet8_rpi5_kes()).unwrap();
    let model = kestrel_runtime::Model::parse(&bytes).unwrap();
    let mismatch = model
        .kernel_mismatch(Isa::Neon)
        .expect("lanes16 has no NEON tile");
    assert_eq!(mismatch.target, Some("rpi5"));
    assert!(mismatch.to_string().contains("lanes16"), "{mismatch}");
    for isa in [Isa::NeonDot, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni] {
        assert_eq!(model.kernel_mismatch(isa), None, "{isa}");
    }
    assert!(model.kernel_mismatch(Isa::Scalar).is_some());
    // A generic file is not packed: it never mismatches.
    let generic = std::fs::read(resnet20_kes()).unwrap();
    let generic = kestrel_runtime::Model::parse(&generic).unwrap();
    assert!(Isa::ALL
        .iter()
        .all(|&i| generic.kernel_mismatch(i).is_none()));
    // `kestrel package` refuses before building anything.
    let err = kestrel_tools::package::package(&kestrel_tools::package::PackageOptions {
        board: "rpi4".into(),
        model: resnet8_rpi5_kes().to_path_buf(),
        out_dir: temp_dir("package-mismatch"),
        embed: false,
        profile: "release".into(),
        workspace: repo(),
        target: None,
        model_only: false,
        model_version: None,
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--target rpi4") && err.contains("lanes16"),
        "{err}"
    );
    // So does a model-only update, with the same check and message.
    let err = kestrel_tools::package::model_update(&kestrel_tools::package::PackageOptions {
        board: "rpi4".into(),
        model: resnet8_rpi5_kes().to_path_buf(),
        out_dir: temp_dir("package-model-mismatch"),
        embed: false,
        profile: "release".into(),
        workspace: repo(),
        target: None,
        model_only: true,
        model_version: None,
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--target rpi4") && err.contains("lanes16"),
        "{err}"
    );
}

#[test]
fn a_missing_model_camera_or_gpio_line_is_a_clear_error() {
    let binary = board_binaries().join("kestrel-rpi5");
    let kes = resnet20_kes().to_str().unwrap().to_string();
    let cases: [(&[&str], &str); 4] = [
        (&["--camera", "file:/nonexistent.jpg"], "no model"),
        (
            &[
                "--model",
                &kes,
                "--camera",
                "dir:/no/such/dir",
                "--trigger",
                "stdin",
            ],
            "/no/such/dir",
        ),
        (
            &[
                "--model",
                &kes,
                "--camera",
                "file:/x.jpg",
                "--trigger",
                "gpio:/dev/gpiochip99:17",
            ],
            "/dev/gpiochip99",
        ),
        (&["--model", "/no/model.kes"], "/no/model.kes"),
    ];
    for (args, needle) in cases {
        let out = Command::new("qemu-aarch64")
            .args(["-L", "/usr/aarch64-linux-gnu", "-cpu", "cortex-a76"])
            .arg(&binary)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn kestrel_package_writes_a_deb_and_a_tarball_with_the_model_embedded() {
    let kes = resnet20_kes();
    let out = temp_dir("package");
    let report = kestrel_tools::package::package(&kestrel_tools::package::PackageOptions {
        board: "rpi5".into(),
        model: kes.to_path_buf(),
        out_dir: out.clone(),
        embed: true,
        profile: "host".into(),
        workspace: repo(),
        target: None,
        model_only: false,
        model_version: None,
    })
    .unwrap();
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&report.deb)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8(listing.stdout).unwrap();
    for path in [
        "./usr/bin/kestrel-rpi5",
        "./usr/share/kestrel-rpi5/model.kes",
        "./etc/kestrel/rpi5.toml",
        "./usr/lib/systemd/system/kestrel-rpi5.service",
    ] {
        assert!(listing.contains(path), "{path} not in the .deb:\n{listing}");
    }
    let model_line = listing.lines().find(|l| l.ends_with("model.kes")).unwrap();
    let model_len = std::fs::metadata(kes).unwrap().len().to_string();
    assert!(model_line.contains(&model_len), "{model_line}");
    let info = Command::new("dpkg-deb")
        .arg("-I")
        .arg(&report.deb)
        .output()
        .unwrap();
    let info = String::from_utf8(info.stdout).unwrap();
    assert!(info.contains("Architecture: arm64"), "{info}");
    assert!(info.contains("postinst"), "systemd scripts missing: {info}");

    // The tarball holds the same files and an install script.
    let tar = Command::new("tar")
        .arg("tzf")
        .arg(&report.tarball)
        .output()
        .unwrap();
    let tar = String::from_utf8(tar.stdout).unwrap();
    for f in [
        "bin/kestrel-rpi5",
        "model.kes",
        "kestrel-rpi5.service",
        "rpi5.toml",
        "install.sh",
    ] {
        assert!(
            tar.contains(&format!("kestrel-rpi5/{f}")),
            "{f} not in:\n{tar}"
        );
    }

    // The packaged binary is aarch64 and carries the model: it runs without --model.
    let unpacked = out.join("unpacked");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&report.deb)
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    let image = dev_images("package-image", 10).0;
    let stdout = run_board_under_qemu(
        &unpacked.join("usr/bin/kestrel-rpi5"),
        "cortex-a76",
        &["--camera", &format!("dir:{}", image.display())],
        10,
    );
    let lines = json_lines(&stdout);
    assert_eq!(lines[0]["detail"]["model"], "embedded");
    assert_eq!(
        lines.iter().filter(|l| l.get("frame").is_some()).count(),
        10
    );
}

/// `dpkg-deb -f DEB FIELD`.
fn deb_field(deb: &Path, field: &str) -> String {
    let out = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg(field)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn kestrel_package_model_only_writes_a_deb_with_just_the_model() {
    use kestrel_tools::package::{model_update, PackageOptions};
    let kes = resnet20_kes();
    let out = temp_dir("package-model-only");
    let opts = |version: Option<&str>| PackageOptions {
        board: "rpi5".into(),
        model: kes.to_path_buf(),
        out_dir: out.clone(),
        embed: false,
        profile: "release".into(),
        workspace: repo(),
        target: None,
        model_only: true,
        model_version: version.map(str::to_string),
    };
    let report = model_update(&opts(Some("2.5+1"))).unwrap();
    assert_eq!(report.deb, out.join("kestrel-rpi5-model_2.5+1_arm64.deb"));
    assert_eq!(report.tarball, out.join("kestrel-rpi5-model-2.5+1.tar.gz"));
    for (field, value) in [
        ("Package", "kestrel-rpi5-model"),
        ("Version", "2.5+1"),
        ("Architecture", "arm64"),
        ("Depends", "kestrel-rpi5"),
        ("Replaces", "kestrel-rpi5"),
    ] {
        assert_eq!(deb_field(&report.deb, field), value, "{field}");
    }
    let model_len = std::fs::metadata(kes).unwrap().len();
    let kib: u64 = deb_field(&report.deb, "Installed-Size").parse().unwrap();
    assert_eq!(kib, model_len.div_ceil(1024));
    // No maintainer scripts: the service hot-swaps the model, nothing restarts it.
    let info = Command::new("dpkg-deb")
        .arg("-I")
        .arg(&report.deb)
        .output()
        .unwrap();
    let info = String::from_utf8(info.stdout).unwrap();
    for script in ["postinst", "preinst", "prerm", "postrm"] {
        assert!(!info.contains(script), "{script}: {info}");
    }

    // One file, the full package's model path, owned by root, and nothing but its folders.
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&report.deb)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8(listing.stdout).unwrap();
    let files: Vec<&str> = listing.lines().filter(|l| !l.starts_with('d')).collect();
    assert_eq!(files.len(), 1, "{listing}");
    assert!(
        files[0].ends_with("./usr/share/kestrel-rpi5/model.kes"),
        "{listing}"
    );
    assert!(files[0].starts_with("-rw-r--r-- root/root"), "{listing}");
    assert!(files[0].contains(&model_len.to_string()), "{listing}");
    assert!(
        listing
            .lines()
            .filter(|l| l.starts_with('d'))
            .all(|l| l.starts_with("drwxr-xr-x root/root")),
        "{listing}"
    );
    let unpacked = out.join("unpacked");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&report.deb)
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read(unpacked.join("usr/share/kestrel-rpi5/model.kes")).unwrap(),
        std::fs::read(kes).unwrap()
    );
    // The full package is the one whose model path the update replaces.
    let manifest = std::fs::read_to_string(repo().join("boards/rpi5/Cargo.toml")).unwrap();
    assert!(manifest.contains(r#""usr/share/kestrel-rpi5/model.kes""#));
    assert!(manifest.contains(r#"replaces = "kestrel-rpi5-model""#));

    // The tarball: the same model and an install note.
    let tar = Command::new("tar")
        .arg("tzf")
        .arg(&report.tarball)
        .output()
        .unwrap();
    let tar = String::from_utf8(tar.stdout).unwrap();
    let mut names: Vec<&str> = tar.lines().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "kestrel-rpi5-model-2.5+1/INSTALL",
            "kestrel-rpi5-model-2.5+1/model.kes"
        ]
    );
    let from_tar = Command::new("tar")
        .arg("xzOf")
        .arg(&report.tarball)
        .arg("kestrel-rpi5-model-2.5+1/model.kes")
        .output()
        .unwrap();
    assert_eq!(from_tar.stdout, std::fs::read(kes).unwrap());

    // The default version is the crate's plus a UTC timestamp, which sorts above the last.
    let later = model_update(&opts(None)).unwrap();
    let prefix = format!("{}+", env!("CARGO_PKG_VERSION"));
    let stamp = later.version.strip_prefix(&prefix).unwrap();
    assert!(
        stamp.len() == 14 && stamp.bytes().all(|b| b.is_ascii_digit()),
        "{}",
        later.version
    );
    assert_eq!(deb_field(&later.deb, "Version"), later.version);
    let older = format!("{prefix}20200101000000");
    let sorts_higher = Command::new("dpkg")
        .args(["--compare-versions", &later.version, "gt", &older])
        .status()
        .unwrap();
    assert!(sorts_higher.success(), "{} > {older}", later.version);
    // Nothing staged is left behind.
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    left.sort();
    assert!(left.is_empty(), "{left:?}");
}

/// A template's commented-out examples (`# key = …`, `# [table]`) with the `# ` taken off.
fn uncomment_examples(template: &str) -> String {
    template
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    }) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_config_templates_and_units_carry_the_field_service_settings() {
    for board in kestrel_tools::package::BOARDS {
        let debian = repo().join("boards").join(board).join("debian");
        let template = std::fs::read_to_string(debian.join(format!("{board}.toml"))).unwrap();
        let all = uncomment_examples(&template);
        let table: toml::Table = toml::from_str(&all).unwrap_or_else(|e| panic!("{board}: {e}"));
        for key in [
            "model",
            "device",
            "spool",
            "spool_max_results",
            "spool_max_mb",
            "metrics",
        ] {
            assert!(table.contains_key(key), "{board}: {key}");
        }
        assert_eq!(
            table["spool"].as_str(),
            Some(&*format!("/var/lib/kestrel-{board}"))
        );
        let mqtt = table["mqtt"].as_table().unwrap();
        for key in [
            "url",
            "topic",
            "qos",
            "retain",
            "ca",
            "client_cert",
            "client_key",
            "username",
            "password_file",
        ] {
            assert!(mqtt.contains_key(key), "{board}: mqtt.{key}");
        }
        let http = table["http"].as_table().unwrap();
        assert!(http.contains_key("url") && http.contains_key("timeout_ms"));
        let snapshots: kestrel_board::snapshot::SnapshotSettings =
            table["snapshots"].clone().try_into().unwrap();
        assert!(snapshots
            .dir
            .starts_with(format!("/var/lib/kestrel-{board}")));

        let unit =
            std::fs::read_to_string(debian.join(format!("kestrel-{board}.service"))).unwrap();
        for line in [
            "Type=notify",
            "NotifyAccess=main",
            "WatchdogSec=30",
            &format!("StateDirectory=kestrel-{board}"),
            "ExecReload=/bin/kill -HUP $MAINPID",
            "Restart=always",
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
        ] {
            assert!(unit.lines().any(|l| l == line), "{board}: {line}");
        }
    }
}
