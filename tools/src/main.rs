//! `kestrel`: the host command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use kestrel_tools::card::LoadedCard;
use kestrel_tools::check::{self, CheckReport};
use kestrel_tools::dataset;
use kestrel_tools::synth::{self, Arch, SynthOptions};

#[derive(Parser)]
#[command(name = "kestrel", version, about = "Int8 ResNets for ARM edge boards")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import an ONNX ResNet, fold BatchNorm, and compare Kestrel's float reference with tract.
    Check {
        model: PathBuf,
        /// Image to run (default: a fixed deterministic synthetic image).
        #[arg(long)]
        image: Option<PathBuf>,
        /// Model card with the preprocessing (default: the ONNX metadata).
        #[arg(long)]
        card: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Write a ResNet with deterministic synthetic weights as ONNX (BatchNorm unfused).
    Synth {
        #[arg(long)]
        arch: Arch,
        /// Number of classes (default: 1000 for ImageNet archs, 10 for CIFAR archs).
        #[arg(long)]
        classes: Option<usize>,
        /// Square input size (default: 224 for ImageNet archs, 32 for CIFAR archs).
        #[arg(long)]
        input_size: Option<usize>,
        /// Folder of `<class>/<image>` files: BatchNorm statistics are measured on them.
        #[arg(long)]
        calib: Option<PathBuf>,
        /// How many calibration images to use, spread over the classes.
        #[arg(long, default_value_t = 32)]
        calib_count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check {
            model,
            image,
            card,
            json,
        } => {
            let card = card.as_deref().map(LoadedCard::load).transpose()?;
            let report = check::check(&model, image.as_deref(), card.as_ref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_check(&report);
            }
            // A model outside tolerance is a failed check, not just a report.
            Ok(if report.within_tolerance {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Synth {
            arch,
            classes,
            input_size,
            calib,
            calib_count,
            seed,
            output,
        } => {
            let mut opts = SynthOptions::new(arch);
            opts.classes = classes.unwrap_or(opts.classes);
            opts.input_size = input_size.unwrap_or(opts.input_size);
            opts.seed = seed;
            let mut model = synth::build(&opts)?;
            match calib {
                Some(dir) => {
                    let images = load_images(&dir, calib_count, &opts)?;
                    let report = synth::calibrate_bn(&mut model, &images)?;
                    eprintln!(
                        "BatchNorm statistics of {} layers set from {} images; logits up to {:.2}, {} distinct predictions",
                        report.batch_norms, report.images, report.max_abs_logit, report.distinct_predictions
                    );
                }
                None => eprintln!("no --calib: BatchNorm statistics left at mean 0, variance 1"),
            }
            synth::write(&model, &output)?;
            eprintln!(
                "wrote {} ({} at {}×{}, {} classes, synthetic weights, seed {})",
                output.display(),
                opts.arch,
                opts.input_size,
                opts.input_size,
                opts.classes,
                opts.seed
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load_images(dir: &Path, count: usize, opts: &SynthOptions) -> anyhow::Result<Vec<Vec<f32>>> {
    let all = dataset::list(dir)?;
    let picked = dataset::spread(&all, count);
    let pre = opts.preprocess();
    let bar = ProgressBar::new(picked.len() as u64).with_style(
        ProgressStyle::with_template("loading images {bar:30} {pos}/{len}")
            .expect("static template"),
    );
    let images = picked
        .iter()
        .map(|img| {
            bar.inc(1);
            pre.load(&img.path)
                .with_context(|| format!("calibration image {}", img.path.display()))
        })
        .collect();
    bar.finish_and_clear();
    images
}

fn print_check(r: &CheckReport) {
    println!("model        {}", r.model);
    println!(
        "input        {} {:?} (preprocessing: {})",
        r.input, r.input_shape, r.preprocess_source
    );
    let ops: Vec<String> = r.ops.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    println!("onnx ops     {}", ops.join(" "));
    let folded: Vec<String> = r
        .folded_ops
        .iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect();
    println!("folded ops   {}", folded.join(" "));
    println!(
        "passes       {} BatchNorm folded ({} left), {} ReLU fused, {} residual Add fused",
        r.passes.bn_folded, r.passes.bn_left, r.passes.relu_fused, r.passes.add_fused
    );
    println!(
        "params       {} unfolded → {} folded; {:.2} M MACs",
        r.params_unfolded,
        r.params_folded,
        r.macs as f64 / 1e6
    );
    println!(
        "vs tract     max |diff| {:.3e} (tolerance {:.3e}, max |logit| {:.3}) → {}",
        r.max_abs_diff,
        r.tolerance,
        r.max_abs_logit,
        if r.within_tolerance { "OK" } else { "FAIL" }
    );
    println!(
        "argmax       kestrel {} / tract {}",
        r.argmax_kestrel, r.argmax_tract
    );
}
