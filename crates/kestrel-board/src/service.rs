//! The board's loop: wait for the trigger, grab a frame, classify it, emit the result.
//! Camera faults are reported and retried with backoff; only a stop request, the end of
//! a replay or of the trigger's input ends it. Between frames it takes up a replaced
//! model file.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kestrel_runtime::Isa;

use crate::backoff::Backoff;
use crate::classifier::Classifier;
use crate::delivery::Outbox;
use crate::frame::{Frame, RgbConverter, RgbImage};
use crate::frame_counter::FrameCounter;
use crate::health::{Counters, Liveness};
use crate::model_update::{self, ModelWatch};
use crate::sink::{now_ms, ClassIndicator, Classification, JsonLines, StageTimes};
use crate::snapshot::Snapshots;
use crate::source::{FrameSource, SourceError};
use crate::trigger::{sleep_until, Trigger, Wait};

/// Why the loop ended, and what it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub frames: u64,
    pub errors: u64,
    pub reason: EndReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// SIGTERM/SIGINT (or the caller's stop flag).
    Stopped,
    /// The replay source ran out of frames.
    SourceExhausted,
    /// The trigger has no more events (stdin closed).
    TriggerEnded,
    /// The trigger itself failed (a GPIO read error): not retried.
    TriggerFailed,
    /// The results could not be written (stdout closed).
    OutputClosed,
}

/// Where a model comes from when it is replaced while running.
pub struct ModelSource {
    pub watch: ModelWatch,
    /// Set by SIGHUP: re-read the file even if it looks unchanged.
    pub reload: Arc<AtomicBool>,
    /// The kernels of this board: a file packed for others is refused.
    pub kernels: Isa,
}

/// What the results carry and where they go besides the journal.
pub struct Field {
    pub device: String,
    pub counter: FrameCounter,
    pub outbox: Option<Outbox>,
    pub snapshots: Option<Snapshots>,
    pub model_source: Option<ModelSource>,
    pub counters: Arc<Counters>,
    pub liveness: Arc<Liveness>,
}

impl Field {
    /// Stdout only, frame numbers from 0, no model watching.
    pub fn local(device: &str) -> Self {
        Field {
            device: device.to_string(),
            counter: FrameCounter::in_memory(),
            outbox: None,
            snapshots: None,
            model_source: None,
            counters: Arc::new(Counters::default()),
            liveness: Arc::new(Liveness::new()),
        }
    }
}

pub struct Service<W: Write> {
    pub source: Box<dyn FrameSource>,
    pub trigger: Box<dyn Trigger>,
    pub classifier: Classifier,
    pub sink: JsonLines<W>,
    pub indicator: Option<Box<dyn ClassIndicator>>,
    pub top_k: usize,
    pub backoff: Backoff,
    pub field: Field,
}

/// The loop's tallies for one run.
struct Tally {
    frames: u64,
    errors: u64,
}

impl Tally {
    fn end(&self, reason: EndReason) -> Summary {
        Summary {
            frames: self.frames,
            errors: self.errors,
            reason,
        }
    }
}

impl<W: Write> Service<W> {
    pub fn run(&mut self, stop: &AtomicBool) -> Summary {
        let mut converter = RgbConverter::default();
        let mut tally = Tally {
            frames: 0,
            errors: 0,
        };
        self.field
            .counters
            .set_model_sha256(self.classifier.sha256());
        self.field.counters.set_device(&self.field.device);
        loop {
            self.field.liveness.idle();
            match self.trigger.wait(stop) {
                Ok(Wait::Fire) => {}
                Ok(Wait::Stop) => return tally.end(EndReason::Stopped),
                Ok(Wait::End) => return tally.end(EndReason::TriggerEnded),
                Err(e) => {
                    let _ = self.sink.event(
                        "trigger_error",
                        Some(&e.to_string()),
                        None,
                        serde_json::Value::Null,
                    );
                    tally.errors += 1;
                    self.field.counters.errors.inc();
                    return tally.end(EndReason::TriggerFailed);
                }
            }
            self.field.liveness.busy();
            if self.update_model().is_err() {
                return tally.end(EndReason::OutputClosed);
            }
            let t0 = Instant::now();
            let frame = match self.source.grab() {
                Ok(frame) => frame,
                Err(SourceError::Exhausted { .. }) => return tally.end(EndReason::SourceExhausted),
                Err(e @ SourceError::BadFrame { .. }) => {
                    tally.errors += 1;
                    self.field.counters.errors.inc();
                    self.field.counters.bad_frames.inc();
                    let msg = e.to_string();
                    if report(&mut self.sink, "bad_frame", &msg, None).is_err() {
                        return tally.end(EndReason::OutputClosed);
                    }
                    continue;
                }
                Err(e) => {
                    let msg = e.to_string();
                    match self.reconnect(&msg, stop, &mut tally.errors) {
                        Ok(true) => continue,
                        Ok(false) => return tally.end(EndReason::Stopped),
                        Err(()) => return tally.end(EndReason::OutputClosed),
                    }
                }
            };
            let t1 = Instant::now();
            let origin = frame.origin.to_string();
            let classified = converter
                .convert(&frame)
                .map_err(|e| e.to_string())
                .and_then(|rgb| {
                    let timing = self.classifier.classify(&rgb).map_err(|e| e.to_string())?;
                    Ok((rgb, timing))
                });
            let (rgb, timing) = match classified {
                Ok(t) => t,
                Err(msg) => {
                    tally.errors += 1;
                    self.field.counters.errors.inc();
                    self.field.counters.bad_frames.inc();
                    let msg = format!("frame from {origin}: {msg}");
                    if report(&mut self.sink, "bad_frame", &msg, None).is_err() {
                        return tally.end(EndReason::OutputClosed);
                    }
                    continue;
                }
            };
            self.field.counters.frames.inc();
            self.field.counters.record_inference(timing.inference_ms);
            let output_pin = match self.indicator.as_mut() {
                None => None,
                Some(ind) => match ind.update(self.classifier.scores()) {
                    Ok(level) => Some(level),
                    Err(e) => {
                        tally.errors += 1;
                        self.field.counters.errors.inc();
                        let _ = report(&mut self.sink, "output_pin_error", &e.to_string(), None);
                        None
                    }
                },
            };
            let frame_id = self.field.counter.take();
            if let Some(e) = self.field.counter.take_error() {
                let msg = format!("frame counter: {e}");
                let _ = report(&mut self.sink, "state_error", &msg, None);
            }
            let snapshot = match self.field.snapshots.as_mut() {
                Some(snaps) => snapshot(
                    snaps,
                    &self.classifier,
                    &mut self.sink,
                    &frame,
                    &rgb,
                    frame_id,
                ),
                None => None,
            };
            let top = self.classifier.top(self.top_k);
            let record = Classification {
                ts_ms: now_ms(),
                device: &self.field.device,
                frame: frame_id,
                source: &origin,
                top: &top,
                times_ms: StageTimes {
                    capture: micros((t1 - t0).as_secs_f64() * 1e3),
                    preprocess: micros(timing.preprocess_ms),
                    inference: micros(timing.inference_ms),
                },
                model_sha256: self.classifier.sha256(),
                snapshot: snapshot.as_deref(),
                output_pin,
            };
            let Ok(line) = serde_json::to_vec(&record) else {
                return tally.end(EndReason::OutputClosed);
            };
            // Spooled first: once the journal shows a result, a kill cannot lose it.
            self.spool(&line);
            if self.sink.write_line(&line).is_err() {
                return tally.end(EndReason::OutputClosed);
            }
            self.field.counters.results.inc();
            tally.frames += 1;
        }
    }

    /// Queues the result for the remote sinks; a full spool's drops are events.
    fn spool(&mut self, line: &[u8]) {
        let Some(outbox) = &self.field.outbox else {
            return;
        };
        for pushed in outbox.push(line) {
            if pushed.dropped > 0 {
                let _ = self.sink.event(
                    "spool_dropped",
                    Some("spool full: oldest results dropped"),
                    None,
                    serde_json::json!({ "sink": pushed.sink, "dropped": pushed.dropped, "dropped_total": outbox.dropped() }),
                );
            }
            if let Some(e) = pushed.error {
                self.field.counters.errors.inc();
                let _ = self.sink.event(
                    "spool_error",
                    Some(&e.to_string()),
                    None,
                    serde_json::json!({ "sink": pushed.sink }),
                );
            }
        }
        outbox.update(&self.field.counters);
    }

    /// Takes up a replaced model file, or refuses it with an event. Err: output closed.
    fn update_model(&mut self) -> std::io::Result<()> {
        let Some(src) = self.field.model_source.as_mut() else {
            return Ok(());
        };
        let forced = src.reload.swap(false, Ordering::Relaxed);
        if !src.watch.changed() && !forced {
            return Ok(());
        }
        let path = src.watch.path().to_path_buf();
        match model_update::load_successor(&self.classifier, &path, src.kernels) {
            Ok(next) => {
                let previous = self.classifier.sha256().to_string();
                if next.sha256() == previous {
                    return Ok(());
                }
                self.classifier = next;
                self.field.counters.model_swaps.inc();
                self.field
                    .counters
                    .set_model_sha256(self.classifier.sha256());
                self.sink.event(
                    "model_swapped",
                    None,
                    None,
                    serde_json::json!({
                        "model": path.display().to_string(),
                        "model_sha256": self.classifier.sha256(),
                        "previous_sha256": previous,
                    }),
                )
            }
            Err(refusal) => {
                self.field.counters.model_refused.inc();
                self.sink.event(
                    "model_refused",
                    Some(&refusal.to_string()),
                    None,
                    serde_json::json!({
                        "model": path.display().to_string(),
                        "running_sha256": self.classifier.sha256(),
                    }),
                )
            }
        }
    }

    /// Re-opens the camera until it works (true) or a stop is requested (false).
    fn reconnect(&mut self, first: &str, stop: &AtomicBool, errors: &mut u64) -> Result<bool, ()> {
        let mut delays = self.backoff.delays();
        let mut delay = delays.next_delay();
        let mut msg = first.to_string();
        loop {
            *errors += 1;
            self.field.counters.errors.inc();
            self.field.counters.camera_errors.inc();
            report(&mut self.sink, "camera_error", &msg, Some(delay)).map_err(|_| ())?;
            // Waiting out a backoff is not a hang.
            self.field.liveness.idle();
            if !sleep_until(Instant::now() + delay, stop) || stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            self.field.liveness.busy();
            match self.source.reopen() {
                Ok(()) => return Ok(true),
                Err(e) => {
                    msg = e.to_string();
                    delay = delays.next_delay();
                }
            }
        }
    }
}

/// Saves the frame when the snapshot filter wants it; its path for the result.
fn snapshot<W: Write>(
    snaps: &mut Snapshots,
    classifier: &Classifier,
    sink: &mut JsonLines<W>,
    frame: &Frame<'_>,
    rgb: &RgbImage<'_>,
    id: u64,
) -> Option<String> {
    let best = classifier.top(1);
    let best = best.first()?;
    if !snaps.wanted(best.label, best.score) {
        return None;
    }
    match snaps.save(frame, rgb, id) {
        Ok(path) => Some(path.display().to_string()),
        Err(e) => {
            let _ = report(sink, "snapshot_error", &e.to_string(), None);
            None
        }
    }
}

fn report<W: Write>(
    sink: &mut JsonLines<W>,
    event: &str,
    msg: &str,
    retry: Option<Duration>,
) -> std::io::Result<()> {
    sink.event(
        event,
        Some(msg),
        retry.map(|d| d.as_millis() as u64),
        serde_json::Value::Null,
    )
}

/// Milliseconds rounded to the microsecond: the clock is not finer than that.
fn micros(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}
