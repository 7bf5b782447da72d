//! Where results go: JSON lines on a writer (stdout), and optionally an output pin.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use embedded_hal::digital::OutputPin;
use serde::Serialize;

/// One ranked class.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Ranked<'a> {
    pub label: &'a str,
    pub index: usize,
    /// Softmax probability.
    pub score: f32,
}

/// Per-stage wall time of one frame, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StageTimes {
    pub capture: f64,
    pub preprocess: f64,
    pub inference: f64,
}

/// A classified frame, one JSON line.
#[derive(Debug, Serialize)]
pub struct Classification<'a> {
    /// Unix time in milliseconds.
    pub ts_ms: u64,
    pub device: &'a str,
    /// Increases across restarts: (device, frame) names a result once.
    pub frame: u64,
    pub source: &'a str,
    pub top: &'a [Ranked<'a>],
    pub times_ms: StageTimes,
    /// The model file that made it.
    pub model_sha256: &'a str,
    /// The saved frame, when snapshots are on and this one was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_pin: Option<bool>,
}

/// Something other than a result: start, stop, a camera or frame failure.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    pub ts_ms: u64,
    pub event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes one JSON object per line and flushes it, so a reader sees each result at once.
/// Each line goes out in one write, so lines from several threads on stdout do not mix.
pub struct JsonLines<W: Write> {
    out: W,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W) -> Self {
        JsonLines { out }
    }

    pub fn write(&mut self, value: &impl Serialize) -> std::io::Result<()> {
        self.write_line(&serde_json::to_vec(value)?)
    }

    /// Writes one serialised object and its newline.
    pub fn write_line(&mut self, json: &[u8]) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(json.len() + 1);
        line.extend_from_slice(json);
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.out.flush()
    }

    pub fn event(
        &mut self,
        event: &str,
        error: Option<&str>,
        retry_in_ms: Option<u64>,
        detail: serde_json::Value,
    ) -> std::io::Result<()> {
        self.write(&Event {
            ts_ms: now_ms(),
            event,
            error,
            retry_in_ms,
            detail,
        })
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Drives an output line high while a chosen class is seen, with hysteresis: it goes high
/// when the class's score reaches `on` and low only when it falls below `off` (≤ `on`),
/// so a score hovering at the threshold does not make the line chatter.
pub struct ClassPin<P> {
    pin: P,
    class: usize,
    on: f32,
    off: f32,
    high: bool,
}

/// What went wrong with the output pin.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("output thresholds must satisfy 0 ≤ off ≤ on ≤ 1 (on {on}, off {off})")]
    Thresholds { on: f32, off: f32 },
    /// The GPIO driver's own error, as it formats it.
    #[error("cannot set the output line: {0}")]
    Line(String),
}

/// What the service needs of an output pin, without knowing its type.
pub trait ClassIndicator {
    /// Updates the line from this frame's scores; returns its level.
    fn update(&mut self, scores: &[f32]) -> Result<bool, PinError>;
}

impl<P: OutputPin> ClassPin<P> {
    /// Drives the pin low to start from a known state.
    pub fn new(mut pin: P, class: usize, on: f32, off: f32) -> Result<Self, PinError> {
        if !(0.0..=1.0).contains(&on) || !(0.0..=on).contains(&off) {
            return Err(PinError::Thresholds { on, off });
        }
        pin.set_low()
            .map_err(|e| PinError::Line(format!("{e:?}")))?;
        Ok(ClassPin {
            pin,
            class,
            on,
            off,
            high: false,
        })
    }

    pub fn into_pin(self) -> P {
        self.pin
    }
}

impl<P: OutputPin> ClassIndicator for ClassPin<P> {
    fn update(&mut self, scores: &[f32]) -> Result<bool, PinError> {
        let score = scores.get(self.class).copied().unwrap_or(0.0);
        let want = if self.high {
            score >= self.off
        } else {
            score >= self.on
        };
        if want != self.high {
            if want {
                self.pin.set_high()
            } else {
                self.pin.set_low()
            }
            .map_err(|e| PinError::Line(format!("{e:?}")))?;
            self.high = want;
        }
        Ok(self.high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    fn scores(p: f32) -> [f32; 3] {
        [1.0 - p, p, 0.0]
    }

    #[test]
    fn output_pin_follows_the_class_with_hysteresis() {
        // Expected writes: low at start, high once 0.7 is reached, low once below 0.4.
        let pin = Mock::new(&[
            Transaction::set(State::Low),
            Transaction::set(State::High),
            Transaction::set(State::Low),
            Transaction::set(State::High),
        ]);
        let mut out = ClassPin::new(pin, 1, 0.7, 0.4).unwrap();
        let seen: Vec<bool> = [0.5, 0.69, 0.7, 0.5, 0.41, 0.69, 0.39, 0.6, 0.95]
            .iter()
            .map(|&p| out.update(&scores(p)).unwrap())
            .collect();
        assert_eq!(
            seen,
            [false, false, true, true, true, true, false, false, true]
        );
        out.into_pin().done();
    }

    #[test]
    fn bad_thresholds_are_refused() {
        for (on, off) in [(0.5, 0.6), (1.5, 0.2), (0.5, -0.1)] {
            let mut pin = Mock::new(&[]);
            assert!(ClassPin::new(pin.clone(), 0, on, off).is_err());
            pin.done();
        }
    }

    #[test]
    fn json_lines_are_one_object_per_line() {
        let mut sink = JsonLines::new(Vec::new());
        let top = [Ranked {
            label: "cat",
            index: 3,
            score: 0.9,
        }];
        sink.write(&Classification {
            ts_ms: 1,
            device: "cam",
            frame: 7,
            source: "dir:x",
            top: &top,
            times_ms: StageTimes::default(),
            model_sha256: "ab",
            snapshot: None,
            output_pin: None,
        })
        .unwrap();
        sink.event(
            "camera_error",
            Some("gone"),
            Some(200),
            serde_json::Value::Null,
        )
        .unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["frame"], 7);
        assert_eq!(lines[0]["top"][0]["label"], "cat");
        assert!(lines[0].get("output_pin").is_none());
        assert_eq!(lines[1]["event"], "camera_error");
        assert_eq!(lines[1]["retry_in_ms"], 200);
    }
}
