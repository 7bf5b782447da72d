//! `kestrel`: the host command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use kestrel_tools::bench::{self, BenchOptions};
use kestrel_tools::calibrate::Method;
use kestrel_tools::card::LoadedCard;
use kestrel_tools::check;
use kestrel_tools::compile::{self, CompileOptions, Target};
use kestrel_tools::eval::{self, Loaded};
use kestrel_tools::inspect;
use kestrel_tools::package::{self, PackageOptions};
use kestrel_tools::precision;
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
    /// Quantise an ONNX ResNet to int8 with calibration images (or the model's own QDQ
    /// scales) and write a .kes file.
    Compile {
        model: PathBuf,
        /// Calibration inputs: a folder of images (any depth, class sub-folders optional)
        /// or a .npy/.npz of preprocessed NCHW float32 inputs. Optional for a QDQ model.
        #[arg(long)]
        calib: Option<PathBuf>,
        #[arg(long)]
        card: Option<PathBuf>,
        /// Range method: minmax, percentile (99.99), percentile=P, entropy, mse.
        #[arg(long, default_value = "percentile")]
        method: Method,
        /// How many calibration images to use, spread over the classes.
        #[arg(long, default_value_t = 500)]
        calib_count: usize,
        /// Whose kernels the weights are packed for (default: this machine's own).
        #[arg(long, value_enum)]
        target: Option<Target>,
        /// Keep these layers (node names, as `compare` lists them, or `input`) wider than int8.
        #[arg(long, value_delimiter = ',')]
        keep_wide: Vec<String>,
        /// Keep the fewest layers wider than int8 for this top-1 agreement with the float
        /// model, in percent (e.g. 99.9), checked on up to 500 --budget-data images, else on
        /// --calib images calibration did not use.
        #[arg(long)]
        budget: Option<f64>,
        /// Images (a folder, any depth) to check --budget on: ideally ones the model was not
        /// trained on (calibration images often are, and agree more often than new ones).
        #[arg(long, requires = "budget")]
        budget_data: Option<PathBuf>,
        /// What a layer kept wider gets: 16x8 (int16 activations) or f16 (int16
        /// activations and f16 weights).
        #[arg(long, value_enum, default_value = "f16")]
        wide_as: precision::WideKind,
        /// Leave out bias correction (by default each conv's mean drift from float, on the
        /// calibration images, is folded into its bias).
        #[arg(long)]
        no_bias_correction: bool,
        /// Leave out cross-layer equalisation (by default the weight ranges of each conv →
        /// ReLU → conv pair are balanced, exactly in float, before calibrating).
        #[arg(long)]
        no_equalize: bool,
        /// Calibrate on each image and its left-right mirror image (twice the inputs).
        #[arg(long)]
        calib_flip: bool,
        /// Store the stem's conv output whole instead of streaming it into the max pool a
        /// band of rows at a time (same results, more arena).
        #[arg(long)]
        no_stream_stem: bool,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Top-1/top-5 accuracy of a .kes (int8) or .onnx (float) on `DIR/<class>/<image>`,
    /// or on the images a labels file names.
    Eval {
        model: PathBuf,
        #[arg(long)]
        data: PathBuf,
        /// Lines `path index` (ImageNet's val.txt) or `path,label`, paths under --data.
        #[arg(long)]
        labels_file: Option<PathBuf>,
        #[arg(long)]
        card: Option<PathBuf>,
        /// Evaluate this many images, spread over the classes.
        #[arg(long)]
        limit: Option<usize>,
        /// Int8 kernels: scalar, neon, neon-dot, avx2, avx-vnni, avx512-vnni or auto.
        #[arg(long, default_value = "auto", value_parser = parse_kernels)]
        kernels: Kernels,
        /// The float ONNX model the .kes was compiled from: also report how often the two
        /// pick the same class, and the images where they do not.
        #[arg(long)]
        float: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Classify images with a .kes (or .onnx) model.
    Run {
        model: PathBuf,
        #[arg(required_unless_present = "tensors")]
        images: Vec<PathBuf>,
        /// Preprocessed NCHW float32 inputs (.npy or .npz) instead of images.
        #[arg(long, conflicts_with = "images")]
        tensors: Option<PathBuf>,
        #[arg(long)]
        card: Option<PathBuf>,
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Int8 kernels: scalar, neon, neon-dot, avx2, avx-vnni, avx512-vnni or auto.
        #[arg(long, default_value = "auto", value_parser = parse_kernels)]
        kernels: Kernels,
        /// Inference threads (convolutions split over a worker pool).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long)]
        json: bool,
    },
    /// Latency on this machine: a .kes (int8, median and p90 over --iters runs, per layer)
    /// or an .onnx (float, tract: the peer measured in the same process).
    Bench {
        model: PathBuf,
        #[arg(long, default_value_t = 50)]
        iters: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Int8 kernels: scalar, neon, neon-dot, avx2, avx-vnni, avx512-vnni or auto.
        #[arg(long, default_value = "auto", value_parser = parse_kernels)]
        kernels: Kernels,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Add a per-layer time table.
        #[arg(long)]
        layers: bool,
        #[arg(long)]
        json: bool,
    },
    /// Describe a .kes file: memory plan, weights, MACs, ops and their quantisation.
    Inspect {
        model: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Per-layer SQNR of a .kes against its float ONNX model, and top-1 agreement.
    Compare {
        onnx: PathBuf,
        kes: PathBuf,
        #[arg(long)]
        data: PathBuf,
        /// How many images, spread over the classes.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
        /// Also draw the per-layer SQNR as an SVG chart.
        #[arg(long)]
        svg: Option<PathBuf>,
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
    /// Cross-compile a board binary and package it with a model: a .deb (cargo-deb) and a
    /// tarball with an install script. With --model-only: an update holding just the model.
    Package {
        /// rpi4, rpi5 or jetson-orin.
        #[arg(long)]
        board: String,
        #[arg(long)]
        model: PathBuf,
        /// Output folder.
        #[arg(short, long)]
        output: PathBuf,
        /// Also embed the model in the binary, so the binary alone is the firmware.
        #[arg(long)]
        embed: bool,
        /// Cargo profile of the board binary.
        #[arg(long, default_value = "release")]
        profile: String,
        /// Rust target (default: aarch64-unknown-linux-musl if installed, else -gnu).
        #[arg(long)]
        target: Option<String>,
        /// The Kestrel source tree (default: the one this `kestrel` was built from).
        #[arg(long)]
        workspace: Option<PathBuf>,
        /// Then copy the .deb to USER@HOST over ssh and install it with apt.
        #[arg(long, value_name = "USER@HOST")]
        install: Option<String>,
        /// Only the model: kestrel-BOARD-model_VERSION_arm64.deb (built with dpkg-deb,
        /// nothing compiled) replacing the installed package's model, and a tarball. The
        /// running service switches to it without a restart.
        #[arg(long)]
        model_only: bool,
        /// Version of a --model-only package (default: the kestrel version +UTC
        /// timestamp, so a later update sorts higher).
        #[arg(long, value_name = "VERSION", requires = "model_only")]
        model_version: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// What `kestrel run` classifies: an image file, or an already-preprocessed tensor.
enum Input<'a> {
    Image(&'a std::path::Path),
    Tensor(&'a [f32]),
}

/// `--kernels`: a family by name, or `auto` (`None`) for the fastest this CPU runs.
type Kernels = Option<kestrel_runtime::Isa>;

fn parse_kernels(name: &str) -> Result<Kernels, String> {
    if name == "auto" {
        return Ok(None);
    }
    kestrel_runtime::Isa::from_name(name)
        .map(Some)
        .ok_or_else(|| {
            "expected scalar, neon, neon-dot, avx2, avx-vnni, avx512-vnni or auto".to_string()
        })
}

fn main() -> ExitCode {
    // A closed pipe (`kestrel inspect m.kes | head`) ends the process quietly, as it does
    // for other Unix tools, instead of panicking inside println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
                check::print(&report);
            }
            // A model outside tolerance is a failed check, not just a report.
            Ok(if report.within_tolerance {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Compile {
            model,
            calib,
            card,
            method,
            calib_count,
            target,
            keep_wide,
            budget,
            budget_data,
            wide_as,
            no_bias_correction,
            no_equalize,
            calib_flip,
            no_stream_stem,
            output,
        } => {
            let card = card.as_deref().map(LoadedCard::load).transpose()?;
            let opts = CompileOptions {
                method,
                calib_count,
                target: target.unwrap_or_else(Target::host),
                progress: true,
                keep_wide,
                budget,
                budget_data,
                wide_as,
                bias_correction: !no_bias_correction,
                equalize: !no_equalize,
                calib_flip,
                stream_stems: !no_stream_stem,
            };
            let (bytes, report) = compile::compile(&model, calib.as_deref(), card.as_ref(), &opts)?;
            std::fs::write(&output, &bytes)
                .with_context(|| format!("writing {}", output.display()))?;
            eprintln!("{}", compile::summary(&output, &report, target.is_none()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval {
            model,
            data,
            labels_file,
            card,
            limit,
            kernels,
            float,
            json,
        } => {
            let card = card.as_deref().map(LoadedCard::load).transpose()?;
            let mut loaded = Loaded::open(&model, card.as_ref())?;
            loaded.kernels = kernels;
            if let Some(warning) = loaded.kernel_mismatch() {
                eprintln!("warning: {}: {warning}", model.display());
            }
            let set = match &labels_file {
                Some(file) => eval::EvalSet::LabelsFile { file, dir: &data },
                None => eval::EvalSet::ClassFolders(&data),
            };
            let float_model = float
                .as_deref()
                .map(|f| Loaded::open(f, card.as_ref()))
                .transpose()?;
            let float_name = float.as_ref().map(|f| f.display().to_string());
            let r = eval::evaluate_against(
                &loaded,
                &model.display().to_string(),
                float_model.as_ref().zip(float_name.as_deref()),
                set,
                limit,
                !json,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                eval::print(&r, &loaded.labels);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            model,
            images,
            tensors,
            card,
            top,
            kernels,
            threads,
            json,
        } => {
            let card = card.as_deref().map(LoadedCard::load).transpose()?;
            let mut loaded = Loaded::open(&model, card.as_ref())?;
            loaded.kernels = kernels;
            if let Some(warning) = loaded.kernel_mismatch() {
                eprintln!("warning: {}: {warning}", model.display());
            }
            loaded.threads = threads;
            let mut run = loaded.runner()?;
            let mut results = Vec::new();
            let inputs: Vec<(String, Vec<f32>)> = match &tensors {
                Some(file) => {
                    let len = loaded.input_len();
                    kestrel_tools::dataset::read_tensors(file, len)?
                        .into_iter()
                        .enumerate()
                        .map(|(i, x)| (format!("{}[{i}]", file.display()), x))
                        .collect()
                }
                None => Vec::new(),
            };
            let images = images
                .iter()
                .map(|p| (p.display().to_string(), Input::Image(p)))
                .chain(inputs.iter().map(|(n, x)| (n.clone(), Input::Tensor(x))));
            for (name, input) in images {
                let logits = match input {
                    Input::Image(path) => run(&loaded.preprocess.load(path)?)?,
                    Input::Tensor(x) => run(x)?,
                };
                let top: Vec<serde_json::Value> = eval::top_k(&logits, top)
                    .into_iter()
                    .map(|i| {
                        let label = loaded
                            .labels
                            .get(i)
                            .cloned()
                            .unwrap_or_else(|| i.to_string());
                        serde_json::json!({ "label": label, "index": i, "score": logits[i] })
                    })
                    .collect();
                if !json {
                    let best: Vec<String> = top
                        .iter()
                        .map(|t| {
                            format!(
                                "{} {:.3}",
                                t["label"].as_str().unwrap_or(""),
                                t["score"].as_f64().unwrap_or(0.0)
                            )
                        })
                        .collect();
                    println!("{name}: {}", best.join(", "));
                }
                results.push(serde_json::json!({ "image": name, "top": top, "logits": logits }));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            model,
            iters,
            warmup,
            kernels,
            threads,
            layers,
            json,
        } => {
            let bytes = std::fs::read(&model)
                .with_context(|| format!("cannot read {}", model.display()))?;
            let opts = BenchOptions {
                iters,
                warmup,
                kernels,
                threads,
                layers,
            };
            let report = if bytes.starts_with(&kestrel_format::MAGIC) {
                bench::bench(&model.display().to_string(), &bytes, &opts)?
            } else {
                bench::bench_onnx(&model, &opts)?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                bench::print(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Package {
            board,
            model,
            output,
            embed,
            profile,
            target,
            workspace,
            install,
            model_only,
            model_version,
            json,
        } => {
            let opts = PackageOptions {
                board,
                model,
                out_dir: output,
                embed,
                profile,
                workspace: workspace.unwrap_or_else(package::default_workspace),
                target,
                model_only,
                model_version,
            };
            if model_only {
                if embed {
                    anyhow::bail!("--embed builds a binary: it does not go with --model-only");
                }
                let report = package::model_update(&opts)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    package::print_model_update(&report);
                }
                if let Some(dest) = install {
                    package::install_over_ssh(&report.deb, &dest)?;
                    println!("installed on {dest}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let report = package::package(&opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                package::print(&report);
            }
            if let Some(dest) = install {
                package::install_over_ssh(&report.deb, &dest)?;
                println!("installed on {dest}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { model, json } => {
            let bytes = std::fs::read(&model)
                .with_context(|| format!("cannot read {}", model.display()))?;
            let report = inspect::inspect(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", model.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                inspect::print(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Compare {
            onnx,
            kes,
            data,
            limit,
            json,
            svg,
        } => {
            let report = kestrel_tools::compare::compare(&onnx, &kes, &data, limit)?;
            if let Some(path) = &svg {
                kestrel_tools::compare::write_svg(&report, path)?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                kestrel_tools::compare::print(&report);
            }
            Ok(ExitCode::SUCCESS)
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
                    let images = compile::load_images(&dir, calib_count, &opts.preprocess(), true)?;
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
