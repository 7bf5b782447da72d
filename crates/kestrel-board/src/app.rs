//! The board binary's `main`: flags and config, open everything, run the service.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use std::time::Duration;

use crate::backoff::Backoff;
use crate::classifier::{Classifier, ClassifierError};
use crate::config::{usage, BoardProfile, ConfigError, FileConfig, Flags, HostFacts, Settings};
use crate::delivery::{http::HttpSink, mqtt::MqttSink, Outbox, Report, Sink, SinkError};
use crate::frame_counter::FrameCounter;
use crate::health::{watchdog_interval, Counters, Liveness, MetricsServer, Notifier, Watchdog};
use crate::model_update::{target_mismatch, ModelWatch};
use crate::service::{EndReason, Field, ModelSource, Service};
use crate::sink::{ClassIndicator, ClassPin, JsonLines};
use crate::snapshot::{SnapshotError, Snapshots};
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
    #[error("{0}")]
    Sink(#[from] SinkError),
    #[error("frame counter in {path}: {source}")]
    State {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Snapshots(#[from] SnapshotError),
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: String,
        source: std::io::Error,
    },
    #[error("systemd watchdog: {0}")]
    Watchdog(std::io::Error),
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
    let settings = Settings::resolve(profile, file, flags, &HostFacts::read())?;
    // Before anything slow: a `systemctl reload` or stop during start-up must not kill
    // the process with the signal's default action.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).map_err(StartError::Signals)?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .map_err(StartError::Signals)?;
    let (mut classifier, model_name) = match (&settings.model, crate::embedded_model()) {
        (Some(path), _) => (
            Classifier::from_file(path).map_err(StartError::Model)?,
            path.display().to_string(),
        ),
        (None, Some(bytes)) => (
            Classifier::new(bytes.to_vec()).map_err(StartError::EmbeddedModel)?,
            "embedded".to_string(),
        ),
        (None, None) => return Err(StartError::NoModel),
    };
    if let Some(mismatch) = target_mismatch(&classifier, profile.kernels) {
        return Err(StartError::WrongTarget {
            model: model_name,
            mismatch,
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

    classifier
        .set_threads(settings.threads, profile.pin_threads)
        .map_err(|source| StartError::Threads {
            threads: settings.threads,
            source,
        })?;
    // Unlocked: the delivery threads write their events to stdout too, a line at a time.
    let mut sink = JsonLines::new(std::io::stdout());
    let field = open_field(&settings, profile, reload)?;
    let counters = field.counters.clone();
    let metrics = match &settings.metrics {
        Some(addr) => Some(
            MetricsServer::start(addr, counters.clone()).map_err(|source| StartError::Metrics {
                addr: addr.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let model = classifier.model();
    let start = serde_json::json!({
        "board": profile.name,
        "device": settings.device,
        "model": model_name,
        "model_sha256": classifier.sha256(),
        "classes": model.classes(),
        "input": model.input().dims,
        "arena_bytes": model.arena_bytes(),
        "camera": source.name(),
        "trigger": settings.trigger,
        "threads": settings.threads,
        "next_frame": field.counter.peek(),
        "sinks": settings.mqtt.iter().map(|m| m.url.clone()).chain(settings.http.iter().map(|h| h.url.clone())).collect::<Vec<_>>(),
        "spooled": field.outbox.as_ref().map_or(0, Outbox::depth),
        "metrics": metrics.as_ref().map(|m| m.local_addr().to_string()),
    });
    sink.event("start", None, None, start)
        .map_err(StartError::Stdout)?;
    let notifier = Notifier::from_env();
    let _watchdog = match (&notifier, watchdog_interval()) {
        (Some(n), Some(timeout)) => {
            let n = n.try_clone().map_err(StartError::Watchdog)?;
            // A frame that takes half the watchdog's time is a hang.
            Some(
                Watchdog::start(
                    n,
                    timeout / 2,
                    field.liveness.clone(),
                    counters.clone(),
                    timeout / 2,
                )
                .map_err(StartError::Watchdog)?,
            )
        }
        _ => None,
    };
    if let Some(n) = &notifier {
        let _ = n.ready();
        let _ = n.status(&counters.status_line());
    }
    let mut service = Service {
        source,
        trigger,
        classifier,
        sink,
        indicator,
        top_k: settings.top,
        backoff: Backoff::CAMERA,
        field,
    };
    let summary = service.run(&stop);
    if let Some(n) = &notifier {
        let _ = n.stopping();
    }
    // Deliver what the sinks can take in a moment; the rest waits in the spool.
    let spooled = match &service.field.outbox {
        Some(outbox) => {
            outbox.drain(Duration::from_secs(3));
            outbox.depth()
        }
        None => 0,
    };
    let reason = format!("{:?}", summary.reason);
    let _ = service.sink.event(
        "stop",
        None,
        None,
        serde_json::json!({
            "frames": summary.frames,
            "errors": summary.errors,
            "reason": reason,
            "spooled": spooled,
            "next_frame": service.field.counter.peek(),
        }),
    );
    Ok(summary.reason)
}

/// Everything the results need beyond stdout: the frame counter and the remote sinks
/// (both in the state directory), snapshots, the watched model file, health.
fn open_field(
    settings: &Settings,
    profile: &BoardProfile,
    reload: Arc<AtomicBool>,
) -> Result<Field, StartError> {
    let mut field = Field::local(&settings.device);
    if let Some(dir) = &settings.spool {
        let state_err = |source| StartError::State {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(state_err)?;
        field.counter = FrameCounter::open(&dir.join("frame-counter")).map_err(state_err)?;
        let mut sinks = Vec::new();
        if let Some(m) = &settings.mqtt {
            sinks.push(Sink::Mqtt(Box::new(MqttSink::new(m, &settings.device)?)));
        }
        if let Some(h) = &settings.http {
            sinks.push(Sink::Http(HttpSink::new(h)?));
        }
        if !sinks.is_empty() {
            field.outbox = Some(Outbox::start(
                sinks,
                dir,
                settings.spool_limits,
                stdout_report(field.counters.clone()),
                field.counters.clone(),
            )?);
        }
    }
    if let Some(s) = &settings.snapshots {
        field.snapshots = Some(Snapshots::open(s.clone())?);
    }
    if let Some(path) = &settings.model {
        field.model_source = Some(ModelSource {
            watch: ModelWatch::new(path),
            reload,
            kernels: profile.kernels,
        });
    }
    field.liveness = Arc::new(Liveness::new());
    Ok(field)
}

/// Sink events as event lines on stdout (the journal), counted.
fn stdout_report(counters: Arc<Counters>) -> Report {
    Arc::new(move |event, error, detail| {
        if event == "sink_error" {
            counters.errors.inc();
        }
        let _ = JsonLines::new(std::io::stdout()).event(event, error, None, detail);
    })
}
