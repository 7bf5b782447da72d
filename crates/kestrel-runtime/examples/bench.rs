//! Runs a `.kes` model (on one thread unless `--threads N`, which needs the `std`
//! feature for the worker pool): one warm-up inference, then `--iters` inferences
//! between the two ROI markers of `../shared/arm/qcount.sh` (a `prctl` the kit's qemu
//! plugin watches; a real kernel answers EINVAL and nothing happens), so the kit counts
//! the instructions of exactly those inferences. Prints the logits and the wall time.
//!
//! ```text
//! cargo build --release -p kestrel-runtime --example bench --target aarch64-unknown-linux-gnu
//! ../shared/arm/qcount.sh cortex-a76 target/aarch64-unknown-linux-gnu/release/examples/bench resnet18.kes --iters 1
//! bench MODEL.kes [--iters N] [--kernels scalar|neon|neon-dot|avx2|avx-vnni|avx512-vnni|auto]
//!                 [--rgb FILE --size WxH]      (raw interleaved RGB bytes as the input image)
//!                 [--threads N]                (with --features std)
//! ```

use std::process::ExitCode;
use std::time::Instant;

use kestrel_runtime::{Isa, Model, Session};

/// Starts (`true`) or stops counting in qcount.sh's plugin.
#[inline(always)]
fn roi(on: bool) {
    #[cfg(all(target_arch = "aarch64", target_os = "linux"))]
    // SAFETY: prctl with an option number Linux does not know only returns EINVAL.
    unsafe {
        let option: u64 = if on { 0x51C0_DE01 } else { 0x51C0_DE00 };
        core::arch::asm!(
            "svc #0",
            in("x8") 167u64, // __NR_prctl
            inlateout("x0") option => _,
            in("x1") 0u64,
            in("x2") 0u64,
            in("x3") 0u64,
            in("x4") 0u64,
            options(nostack),
        );
    }
    #[cfg(not(all(target_arch = "aarch64", target_os = "linux")))]
    let _ = on;
}

struct Args {
    model: String,
    iters: usize,
    kernels: Option<Isa>,
    rgb: Option<(String, usize, usize)>,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut model = None;
    let (mut iters, mut kernels, mut rgb_file, mut size) = (1, None, None, None);
    let mut threads = 1;
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--iters" => {
                iters = value("--iters")?
                    .parse()
                    .map_err(|_| "--iters takes a number")?
            }
            "--kernels" => {
                let k = value("--kernels")?;
                kernels = match k.as_str() {
                    "auto" => None,
                    name => Some(Isa::from_name(name).ok_or(format!("unknown kernels '{name}'"))?),
                }
            }
            "--rgb" => rgb_file = Some(value("--rgb")?),
            "--threads" => {
                threads = value("--threads")?
                    .parse()
                    .map_err(|_| "--threads takes a number")?
            }
            "--size" => {
                let s = value("--size")?;
                let (w, h) = s.split_once('x').ok_or("--size takes WxH")?;
                size = Some((
                    w.parse().map_err(|_| "bad width")?,
                    h.parse().map_err(|_| "bad height")?,
                ));
            }
            _ if model.is_none() && !a.starts_with("--") => model = Some(a),
            _ => return Err(format!("unexpected argument '{a}'")),
        }
    }
    let rgb = match (rgb_file, size) {
        (Some(f), Some((w, h))) => Some((f, w, h)),
        (None, None) => None,
        _ => return Err("--rgb and --size go together".into()),
    };
    Ok(Args {
        model: model
            .ok_or("usage: bench MODEL.kes [--iters N] [--kernels K] [--rgb FILE --size WxH]")?,
        iters,
        kernels,
        rgb,
        threads,
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let bytes = std::fs::read(&args.model).map_err(|e| format!("{}: {e}", args.model))?;
    let model = Model::parse(&bytes).map_err(|e| format!("{}: {e}", args.model))?;
    #[cfg(feature = "std")]
    let pool = kestrel_runtime::pool::ThreadPool::new(args.threads, model.scratch_bytes(), false)
        .map_err(|e| e.to_string())?;
    #[cfg(not(feature = "std"))]
    if args.threads != 1 {
        return Err("--threads needs the example built with --features std".into());
    }
    let mut arena = vec![0u8; model.arena_bytes()];
    let mut session = match args.kernels {
        Some(k) => Session::with_kernels(&model, &mut arena, k),
        None => Session::new(&model, &mut arena),
    }
    .map_err(|e| e.to_string())?;
    #[cfg(feature = "std")]
    session.set_parallel(&pool);
    match &args.rgb {
        Some((file, w, h)) => {
            let rgb = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
            let info = model.file().preprocess;
            let mut scratch = vec![0f32; kestrel_runtime::preprocess::scratch_len(&info, *w, *h)];
            session
                .set_input_rgb(&rgb, *w, *h, &mut scratch)
                .map_err(|e| e.to_string())?;
        }
        None => {
            // A fixed pattern: the count must not depend on anything outside the binary.
            for (i, v) in session.input_mut().iter_mut().enumerate() {
                *v = ((i * 37 + 11) % 251) as i32 as i8;
            }
        }
    }
    // The memory plan reuses the input's bytes once the input is dead, so every
    // inference starts by writing it again (a copy: a few thousand instructions).
    let input = session.input_mut().to_vec();
    session.run(); // warm-up: first touches of the arena and weights
    let start = Instant::now();
    roi(true);
    for _ in 0..args.iters {
        session.input_mut().copy_from_slice(&input);
        session.run();
    }
    roi(false);
    let ms = start.elapsed().as_secs_f64() * 1e3 / args.iters.max(1) as f64;
    let mut logits = vec![0f32; model.classes()];
    session.logits(&mut logits).map_err(|e| e.to_string())?;
    let list: Vec<String> = logits.iter().map(|v| format!("{v:?}")).collect();
    println!(
        "{{\"kernels\":\"{}\",\"conv_tile\":\"{}\",\"f16_tile\":\"{}\",\"int16_tile\":\"{}\",\"threads\":{},\"iters\":{},\"ms_per_inference\":{ms:.3},\"logits\":[{}]}}",
        session.kernels(),
        model.conv_tile(session.kernels()).map_or("none", |t| t.name()),
        model.f16_tile(session.kernels()).unwrap_or("none"),
        model.int16_tile(session.kernels()).unwrap_or("none"),
        session.threads(),
        args.iters,
        list.join(",")
    );
    Ok(())
}
