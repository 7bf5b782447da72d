//! Results leave the board through sinks besides stdout: an MQTT broker, an HTTP
//! endpoint. Each sink has its own on-disk spool and a thread that empties it in order, so
//! a sink that is down holds back neither the camera loop nor the other sinks, and no
//! accepted result is lost while it is down (or while the process restarts).

pub mod http;
pub mod mqtt;
pub mod spool;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use spool::{Spool, SpoolError, SpoolLimits};

use crate::health::Counters;

/// Reports a sink's events (connected, failed) as the service's event lines: the event's
/// name, its error, and details.
pub type Report = Arc<dyn Fn(&str, Option<&str>, serde_json::Value) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Config(String),
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("cannot start the {sink} delivery thread: {source}")]
    Thread {
        sink: String,
        source: std::io::Error,
    },
}

/// A place results go.
pub enum Sink {
    Mqtt(Box<mqtt::MqttSink>),
    Http(http::HttpSink),
}

impl Sink {
    pub fn name(&self) -> &str {
        match self {
            Sink::Mqtt(s) => s.name(),
            Sink::Http(s) => s.name(),
        }
    }

    /// The spool's directory under the state directory.
    fn spool_name(&self) -> &'static str {
        match self {
            Sink::Mqtt(_) => "spool-mqtt",
            Sink::Http(_) => "spool-http",
        }
    }

    fn run(&self, spool: &Spool, stop: &AtomicBool, report: &Report) {
        match self {
            Sink::Mqtt(s) => s.run(spool, stop, report),
            Sink::Http(s) => s.run(spool, stop, report),
        }
    }
}

/// Sleeps `d` unless a stop is requested first; false when stopped.
pub(crate) fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
    false
}

struct Running {
    name: String,
    spool: Arc<Spool>,
    thread: Option<JoinHandle<()>>,
}

/// What one result's push did to one sink's spool.
#[derive(Debug)]
pub struct Pushed<'a> {
    pub sink: &'a str,
    /// Old results dropped because the spool was full.
    pub dropped: u64,
    pub error: Option<SpoolError>,
}

/// The running sinks: results pushed here are in the spool's files before `push` returns,
/// and synced to the card within [`SYNC_PERIOD`].
pub struct Outbox {
    sinks: Vec<Running>,
    stop: Arc<AtomicBool>,
    syncer: Option<JoinHandle<()>>,
}

/// How much a power cut may take from the spools: the results of the last quarter second.
pub const SYNC_PERIOD: Duration = Duration::from_millis(250);

impl Outbox {
    /// Opens each sink's spool under `state_dir` (taking up what a previous run left) and
    /// starts its delivery thread, and a thread that syncs the spools and keeps
    /// `counters`' spool figures current.
    pub fn start(
        sinks: Vec<Sink>,
        state_dir: &Path,
        limits: SpoolLimits,
        report: Report,
        counters: Arc<Counters>,
    ) -> Result<Outbox, SinkError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut outbox = Outbox {
            sinks: Vec::new(),
            stop: stop.clone(),
            syncer: None,
        };
        for sink in sinks {
            let spool = Arc::new(Spool::open(&state_dir.join(sink.spool_name()), limits)?);
            let name = sink.name().to_string();
            let thread = {
                let (spool, stop, report) = (spool.clone(), stop.clone(), report.clone());
                std::thread::Builder::new()
                    .name(format!("kestrel {}", sink.spool_name()))
                    .spawn(move || sink.run(&spool, &stop, &report))
                    .map_err(|source| SinkError::Thread {
                        sink: name.clone(),
                        source,
                    })?
            };
            outbox.sinks.push(Running {
                name,
                spool,
                thread: Some(thread),
            });
        }
        let spools: Vec<Arc<Spool>> = outbox.sinks.iter().map(|s| s.spool.clone()).collect();
        let syncer = {
            let report = report.clone();
            std::thread::Builder::new()
                .name("kestrel spool sync".into())
                .spawn(move || {
                    while sleep_unless_stopped(SYNC_PERIOD, &stop) {
                        for spool in &spools {
                            if let Err(e) = spool.sync() {
                                report(
                                    "spool_error",
                                    Some(&e.to_string()),
                                    serde_json::Value::Null,
                                );
                            }
                        }
                        counters
                            .spool_depth
                            .set(spools.iter().map(|s| s.depth()).sum());
                        counters
                            .delivered
                            .set(spools.iter().map(|s| s.delivered()).sum());
                    }
                })
                .map_err(|source| SinkError::Thread {
                    sink: "spool sync".into(),
                    source,
                })?
        };
        outbox.syncer = Some(syncer);
        Ok(outbox)
    }

    /// Queues one result for every sink.
    pub fn push(&self, bytes: &[u8]) -> Vec<Pushed<'_>> {
        self.sinks
            .iter()
            .map(|s| match s.spool.push(bytes) {
                Ok(dropped) => Pushed {
                    sink: &s.name,
                    dropped,
                    error: None,
                },
                Err(e) => Pushed {
                    sink: &s.name,
                    dropped: 0,
                    error: Some(e),
                },
            })
            .collect()
    }

    /// Sets the spool figures of `counters`.
    pub fn update(&self, counters: &Counters) {
        counters.spool_depth.set(self.depth());
        counters.spool_dropped.set(self.dropped());
        counters
            .delivered
            .set(self.sinks.iter().map(|s| s.spool.delivered()).sum());
    }

    /// Results not yet delivered, over all sinks.
    pub fn depth(&self) -> u64 {
        self.sinks.iter().map(|s| s.spool.depth()).sum()
    }

    /// Results dropped because a spool was full, over all sinks.
    pub fn dropped(&self) -> u64 {
        self.sinks.iter().map(|s| s.spool.dropped()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Waits up to `limit` for every spool to drain (a clean stop delivers what it can).
    pub fn drain(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while self.depth() > 0 {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in &self.sinks {
            s.spool.wake();
        }
        for s in &mut self.sinks {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
    }
}
