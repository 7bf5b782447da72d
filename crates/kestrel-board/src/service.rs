//! The board's loop: wait for the trigger, grab a frame, classify it, emit the result.
//! Camera faults are reported and retried with backoff; only a stop request, the end of
//! a replay or of the trigger's input ends it.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::classifier::Classifier;
use crate::frame::RgbConverter;
use crate::sink::{now_ms, ClassIndicator, Classification, JsonLines, StageTimes};
use crate::source::{FrameSource, SourceError};
use crate::trigger::{sleep_until, Trigger, Wait};

/// Exponential backoff between reconnection attempts.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

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

pub struct Service<W: Write> {
    pub source: Box<dyn FrameSource>,
    pub trigger: Box<dyn Trigger>,
    pub classifier: Classifier,
    pub sink: JsonLines<W>,
    pub indicator: Option<Box<dyn ClassIndicator>>,
    pub top_k: usize,
    pub backoff: Backoff,
}

impl<W: Write> Service<W> {
    pub fn run(&mut self, stop: &AtomicBool) -> Summary {
        let mut converter = RgbConverter::default();
        let mut frames = 0u64;
        let mut errors = 0u64;
        let end = |reason, frames, errors| Summary {
            frames,
            errors,
            reason,
        };
        loop {
            match self.trigger.wait(stop) {
                Ok(Wait::Fire) => {}
                Ok(Wait::Stop) => return end(EndReason::Stopped, frames, errors),
                Ok(Wait::End) => return end(EndReason::TriggerEnded, frames, errors),
                Err(e) => {
                    let _ = self.sink.event(
                        "trigger_error",
                        Some(&e.to_string()),
                        None,
                        serde_json::Value::Null,
                    );
                    return end(EndReason::TriggerFailed, frames, errors + 1);
                }
            }
            let t0 = Instant::now();
            let frame = match self.source.grab() {
                Ok(frame) => frame,
                Err(SourceError::Exhausted { .. }) => {
                    return end(EndReason::SourceExhausted, frames, errors)
                }
                Err(e @ SourceError::BadFrame { .. }) => {
                    errors += 1;
                    let msg = e.to_string();
                    if self.report("bad_frame", &msg, None).is_err() {
                        return end(EndReason::OutputClosed, frames, errors);
                    }
                    continue;
                }
                Err(e) => {
                    errors += 1;
                    let msg = e.to_string();
                    match self.reconnect(&msg, stop, &mut errors) {
                        Ok(true) => continue,
                        Ok(false) => return end(EndReason::Stopped, frames, errors),
                        Err(()) => return end(EndReason::OutputClosed, frames, errors),
                    }
                }
            };
            let t1 = Instant::now();
            let origin = frame.origin.to_string();
            let timing = converter
                .convert(&frame)
                .map_err(|e| e.to_string())
                .and_then(|rgb| self.classifier.classify(&rgb).map_err(|e| e.to_string()));
            let timing = match timing {
                Ok(t) => t,
                Err(msg) => {
                    errors += 1;
                    let msg = format!("frame from {origin}: {msg}");
                    if self.report("bad_frame", &msg, None).is_err() {
                        return end(EndReason::OutputClosed, frames, errors);
                    }
                    continue;
                }
            };
            let output_pin = match self.indicator.as_mut() {
                None => None,
                Some(ind) => match ind.update(self.classifier.scores()) {
                    Ok(level) => Some(level),
                    Err(e) => {
                        errors += 1;
                        let _ = self.report("output_pin_error", &e.to_string(), None);
                        None
                    }
                },
            };
            let top = self.classifier.top(self.top_k);
            let record = Classification {
                ts_ms: now_ms(),
                frame: frames,
                source: &origin,
                top: &top,
                times_ms: StageTimes {
                    capture: micros((t1 - t0).as_secs_f64() * 1e3),
                    preprocess: micros(timing.preprocess_ms),
                    inference: micros(timing.inference_ms),
                },
                output_pin,
            };
            if self.sink.write(&record).is_err() {
                return end(EndReason::OutputClosed, frames, errors);
            }
            frames += 1;
        }
    }

    fn report(&mut self, event: &str, msg: &str, retry: Option<Duration>) -> std::io::Result<()> {
        self.sink.event(
            event,
            Some(msg),
            retry.map(|d| d.as_millis() as u64),
            serde_json::Value::Null,
        )
    }

    /// Re-opens the camera until it works (true) or a stop is requested (false).
    fn reconnect(&mut self, first: &str, stop: &AtomicBool, errors: &mut u64) -> Result<bool, ()> {
        let mut delay = self.backoff.first;
        let mut msg = first.to_string();
        loop {
            self.report("camera_error", &msg, Some(delay))
                .map_err(|_| ())?;
            if !sleep_until(Instant::now() + delay, stop) || stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            match self.source.reopen() {
                Ok(()) => return Ok(true),
                Err(e) => {
                    *errors += 1;
                    msg = e.to_string();
                    delay = (delay * 2).min(self.backoff.max);
                }
            }
        }
    }
}

/// Milliseconds rounded to the microsecond: the clock is not finer than that.
fn micros(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}
