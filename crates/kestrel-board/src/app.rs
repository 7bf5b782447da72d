//! The board binary's `main`: flags and config, open everything, run the service.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::classifier::{Classifier, ClassifierError};
use crate::config::{usage, BoardProfile, ConfigError, FileConfig, Flags, Settings};
use crate::service::{Backoff, EndReason, Service};
use crate::sink::{ClassIndicator, ClassPin, JsonLines};
use crate::source::SourceError;
use crate::trigger::TriggerError;
use crate::trigger::TriggerSpec;

/// Exit codes: 0 clean stop or end of input, 1 a start-up failure (bad model, camera,
/// GPIO line), 2 bad usage, 3 the loop ended on a failure it cannot retry.
pub fn main(profile: &BoardProfile) -> ExitCode {
    let flags = match Flags::parse(std::env::args_os().skip(1)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kestrel-{}: {e}\n\n{}", profile.name, usage(profile));
            return ExitCode::from(2);
        }
    };
    if flags.help {
        print!("{}", usage(profile));
        return ExitCode::SUCCESS;
    }
    if flags.version {
        println!("kestrel-{} {}", profile.name, env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if flags.print_profile {
        println!("{}", profile_json(profile));
        return ExitCode::SUCCESS;
    }
    match run(profile, &flags) {
        Ok(reason) => match reason {
            EndReason::Stopped | EndReason::SourceExhausted | EndReason::TriggerEnded => {
                ExitCode::SUCCESS
            }
            EndReason::TriggerFailed | EndReason::OutputClosed => ExitCode::from(3),
        },
        Err(e) => {
            eprintln!("kestrel-{}: {e}", profile.name);
            ExitCode::from(1)
        }
    }
}

/// Why the board could not start (exit code 1), naming the part that failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Model(ClassifierError),
    #[error("embedded model: {0}")]
    EmbeddedModel(ClassifierError),
    #[error("no model: pass --model PATH (this binary has none embedded)")]
    NoModel,
    #[error(
        "{model}: {mismatch}; this is the {board} binary: compile the model with --target {board}"
    )]
    WrongTarget {
        model: String,
        mismatch: String,
        board: &'static str,
    },
    #[error("{0}")]
    Trigger(#[from] TriggerError),
    #[error("{0}")]
    Camera(#[from] SourceError),
    #[error("output class '{0}' is not one of the model's labels")]
    UnknownOutputClass(String),
    #[error("output pin: {0}")]
    OutputPin(#[from] crate::sink::PinError),
    #[error("cannot install the signal handler: {0}")]
    Signals(std::io::Error),
    #[error("cannot start {threads} inference threads: {source}")]
    Threads {
        threads: usize,
        source: std::io::Error,
    },
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
}

fn profile_json(p: &BoardProfile) -> serde_json::Value {
    serde_json::json!({
        "board": p.name,
        "description": p.description,
        "cpu": p.cpu,
        "kernels": p.kernels.name(),
        "threads": p.threads,
        "gpiochip": p.gpiochip,
        "trigger_line": p.trigger_line,
        "camera": p.camera,
        "camera_size": p.camera_size,
    })
}

fn run(profile: &BoardProfile, flags: &Flags) -> Result<EndReason, StartError> {
    let file = match &flags.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let settings = Settings::resolve(profile, file, flags)?;
    let (mut classifier, model_name) = match (&settings.model, crate::embedded_model()) {
        (Some(path), _) => (
            Classifier::from_file(path).map_err(StartError::Model)?,
            path.display().to_string(),
        ),
        (None, Some(bytes)) => (
            Classifier::new(bytes).map_err(StartError::EmbeddedModel)?,
            "embedded".to_string(),
        ),
        (None, None) => return Err(StartError::NoModel),
    };
    if let Some(mismatch) = classifier.model().kernel_mismatch(profile.kernels) {
        return Err(StartError::WrongTarget {
            model: model_name,
            mismatch: mismatch.to_string(),
            board: profile.name,
        });
    }
    let trigger_spec =
        TriggerSpec::parse(&settings.trigger, (profile.gpiochip, profile.trigger_line))?;
    let trigger = trigger_spec.open()?;
    let source = crate::source::open(&settings.camera, settings.camera_size)?;
    let indicator: Option<Box<dyn ClassIndicator>> = match &settings.output {
        None => None,
        Some(out) => {
            let class = classifier
                .class_of(&out.class)
                .ok_or_else(|| StartError::UnknownOutputClass(out.class.clone()))?;
            let chip = out.chip.as_deref().unwrap_or(profile.gpiochip);
            let pin = crate::gpio::output_pin(chip, out.line)?;
            let off = out.off.unwrap_or(out.on * 0.75);
            Some(Box::new(ClassPin::new(pin, class, out.on, off)?))
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).map_err(StartError::Signals)?;
    }
    classifier
        .set_threads(settings.threads, profile.pin_threads)
        .map_err(|source| StartError::Threads {
            threads: settings.threads,
            source,
        })?;
    let mut sink = JsonLines::new(std::io::stdout().lock());
    let model = classifier.model();
    let start = serde_json::json!({
        "board": profile.name,
        "model": model_name,
        "classes": model.classes(),
        "input": model.input().dims,
        "arena_bytes": model.arena_bytes(),
        "camera": source.name(),
        "trigger": settings.trigger,
        "threads": settings.threads,
    });
    sink.event("start", None, None, start)
        .map_err(StartError::Stdout)?;
    let mut service = Service {
        source,
        trigger,
        classifier,
        sink,
        indicator,
        top_k: settings.top,
        backoff: Backoff::default(),
    };
    let summary = service.run(&stop);
    let reason = format!("{:?}", summary.reason);
    let _ = service.sink.event(
        "stop",
        None,
        None,
        serde_json::json!({ "frames": summary.frames, "errors": summary.errors, "reason": reason }),
    );
    Ok(summary.reason)
}
