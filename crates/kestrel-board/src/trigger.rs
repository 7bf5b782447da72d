//! What makes the board take a picture:
//!
//! | spec | trigger |
//! | --- | --- |
//! | `gpio` | the board profile's default input line, rising edge, 20 ms debounce |
//! | `gpio:<chip>:<line>[:rising\|falling\|both][:<N>ms]` | a GPIO input line (embedded-hal `InputPin`) |
//! | `interval:<ms>` | every so many milliseconds |
//! | `stdin` | one frame per line read on stdin; end of input ends the service |
//! | `continuous` | as fast as frames are classified |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use embedded_hal::digital::InputPin;

/// What [`Trigger::wait`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Take a frame.
    Fire,
    /// The stop flag was raised (SIGTERM, SIGINT).
    Stop,
    /// The trigger has no more events (stdin closed).
    End,
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("trigger spec '{spec}' is not valid: {reason}")]
    Spec { spec: String, reason: String },
    #[error("cannot open GPIO line {line} on {chip}: {reason}")]
    Gpio {
        chip: String,
        line: u32,
        reason: String,
    },
    #[error("reading the trigger pin failed: {0}")]
    Read(String),
}

pub trait Trigger {
    /// Blocks until the next event, checking `stop` at least every 50 ms.
    fn wait(&mut self, stop: &AtomicBool) -> Result<Wait, TriggerError>;
}

/// Milliseconds and sleeping, so that pin logic can be tested on a fake clock.
pub trait Clock {
    fn now_ms(&self) -> u64;
    fn sleep_ms(&mut self, ms: u64);
}

/// The process's monotonic clock.
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
    fn sleep_ms(&mut self, ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    Rising,
    Falling,
    Both,
}

/// Turns level samples into debounced edges: a new level counts only once it has held
/// for `debounce_ms`, so contact bounce and short glitches fire nothing.
#[derive(Clone, Debug)]
pub struct Debouncer {
    edge: Edge,
    debounce_ms: u64,
    /// The accepted level (`None` until the first sample).
    level: Option<bool>,
    /// A different level seen since this time, not yet accepted.
    pending: Option<(bool, u64)>,
}

impl Debouncer {
    pub fn new(edge: Edge, debounce_ms: u64) -> Self {
        Debouncer {
            edge,
            debounce_ms,
            level: None,
            pending: None,
        }
    }

    /// Feeds one sample; true when it completes a wanted edge.
    pub fn sample(&mut self, high: bool, now_ms: u64) -> bool {
        let Some(level) = self.level else {
            // The line's state at start-up is not an edge.
            self.level = Some(high);
            return false;
        };
        if high == level {
            self.pending = None;
            return false;
        }
        let since = match self.pending {
            Some((p, since)) if p == high => since,
            _ => {
                self.pending = Some((high, now_ms));
                now_ms
            }
        };
        if now_ms.saturating_sub(since) < self.debounce_ms {
            return false;
        }
        self.level = Some(high);
        self.pending = None;
        matches!(
            (self.edge, high),
            (Edge::Both, _) | (Edge::Rising, true) | (Edge::Falling, false)
        )
    }
}

/// A GPIO input line, polled every millisecond through embedded-hal's `InputPin`.
pub struct PinTrigger<P, C> {
    pin: P,
    clock: C,
    debouncer: Debouncer,
    poll_ms: u64,
}

impl<P: InputPin, C: Clock> PinTrigger<P, C> {
    pub fn new(pin: P, clock: C, edge: Edge, debounce_ms: u64) -> Self {
        PinTrigger {
            pin,
            clock,
            debouncer: Debouncer::new(edge, debounce_ms),
            poll_ms: 1,
        }
    }

    /// Gives the pin back (tests check a mock's expectations on it).
    pub fn into_pin(self) -> P {
        self.pin
    }
}

impl<P: InputPin, C: Clock> Trigger for PinTrigger<P, C> {
    fn wait(&mut self, stop: &AtomicBool) -> Result<Wait, TriggerError> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(Wait::Stop);
            }
            let high = self
                .pin
                .is_high()
                .map_err(|e| TriggerError::Read(format!("{e:?}")))?;
            if self.debouncer.sample(high, self.clock.now_ms()) {
                return Ok(Wait::Fire);
            }
            self.clock.sleep_ms(self.poll_ms);
        }
    }
}

/// Fires every `period`, keeping to a fixed schedule.
pub struct IntervalTrigger {
    period: Duration,
    next: Option<Instant>,
}

impl IntervalTrigger {
    pub fn new(period: Duration) -> Self {
        IntervalTrigger { period, next: None }
    }
}

impl Trigger for IntervalTrigger {
    fn wait(&mut self, stop: &AtomicBool) -> Result<Wait, TriggerError> {
        let now = Instant::now();
        let due = *self.next.get_or_insert(now);
        if !sleep_until(due, stop) {
            return Ok(Wait::Stop);
        }
        // If classification took longer than a period, skip the missed ticks.
        let mut next = due + self.period;
        while next <= Instant::now() {
            next += self.period;
        }
        self.next = Some(next);
        Ok(Wait::Fire)
    }
}

/// Sleeps in short steps; false if `stop` was raised first.
pub fn sleep_until(due: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(Duration::from_millis(50)));
    }
}

/// One frame per line on stdin, read on a helper thread so that a stop request is not
/// held up by a blocking read.
pub struct StdinTrigger {
    lines: mpsc::Receiver<()>,
}

impl StdinTrigger {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                if line.is_err() || tx.send(()).is_err() {
                    break;
                }
            }
        });
        StdinTrigger { lines: rx }
    }
}

impl Default for StdinTrigger {
    fn default() -> Self {
        Self::new()
    }
}

impl Trigger for StdinTrigger {
    fn wait(&mut self, stop: &AtomicBool) -> Result<Wait, TriggerError> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(Wait::Stop);
            }
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => return Ok(Wait::Fire),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(Wait::End),
            }
        }
    }
}

/// Always ready.
pub struct Continuous;

impl Trigger for Continuous {
    fn wait(&mut self, stop: &AtomicBool) -> Result<Wait, TriggerError> {
        Ok(if stop.load(Ordering::Relaxed) {
            Wait::Stop
        } else {
            Wait::Fire
        })
    }
}

/// A parsed trigger spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TriggerSpec {
    Gpio {
        chip: String,
        line: u32,
        edge: Edge,
        debounce_ms: u64,
    },
    Interval(Duration),
    Stdin,
    Continuous,
}

pub const DEFAULT_DEBOUNCE_MS: u64 = 20;

impl TriggerSpec {
    /// Parses a spec; `gpio` alone takes `default_line` (chip, line) from the board profile.
    pub fn parse(spec: &str, default_line: (&str, u32)) -> Result<Self, TriggerError> {
        let bad = |reason: &str| TriggerError::Spec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        match kind {
            "stdin" if rest.is_empty() => Ok(TriggerSpec::Stdin),
            "continuous" if rest.is_empty() => Ok(TriggerSpec::Continuous),
            "interval" => {
                let ms: u64 = rest
                    .trim_end_matches("ms")
                    .parse()
                    .ok()
                    .filter(|&ms| ms > 0)
                    .ok_or_else(|| bad("expected interval:<milliseconds>, more than 0"))?;
                Ok(TriggerSpec::Interval(Duration::from_millis(ms)))
            }
            "gpio" => {
                let mut chip = default_line.0.to_string();
                let mut line = default_line.1;
                let mut edge = Edge::Rising;
                let mut debounce_ms = DEFAULT_DEBOUNCE_MS;
                let mut fields = rest.split(':').filter(|f| !f.is_empty()).peekable();
                if let Some(first) = fields.peek() {
                    if first.parse::<u32>().is_err() && !is_option(first) {
                        chip = first.to_string();
                        fields.next();
                    }
                }
                if let Some(Ok(n)) = fields.peek().map(|f| f.parse::<u32>()) {
                    line = n;
                    fields.next();
                }
                for f in fields {
                    match f {
                        "rising" => edge = Edge::Rising,
                        "falling" => edge = Edge::Falling,
                        "both" => edge = Edge::Both,
                        ms if ms.ends_with("ms") => {
                            debounce_ms = ms
                                .trim_end_matches("ms")
                                .parse()
                                .map_err(|_| bad("debounce must be <N>ms"))?
                        }
                        _ => return Err(bad(&format!("unknown gpio option '{f}'"))),
                    }
                }
                if !chip.starts_with('/') {
                    chip = format!("/dev/{chip}");
                }
                Ok(TriggerSpec::Gpio {
                    chip,
                    line,
                    edge,
                    debounce_ms,
                })
            }
            _ => Err(bad(
                "expected gpio[:CHIP:LINE[:EDGE][:Nms]], interval:MS, stdin or continuous",
            )),
        }
    }

    /// Opens the trigger this spec describes.
    pub fn open(&self) -> Result<Box<dyn Trigger>, TriggerError> {
        Ok(match self {
            TriggerSpec::Stdin => Box::new(StdinTrigger::new()),
            TriggerSpec::Continuous => Box::new(Continuous),
            TriggerSpec::Interval(p) => Box::new(IntervalTrigger::new(*p)),
            TriggerSpec::Gpio {
                chip,
                line,
                edge,
                debounce_ms,
            } => {
                let pin = crate::gpio::input_pin(chip, *line)?;
                Box::new(PinTrigger::new(
                    pin,
                    SystemClock::default(),
                    *edge,
                    *debounce_ms,
                ))
            }
        })
    }
}

fn is_option(field: &str) -> bool {
    matches!(field, "rising" | "falling" | "both") || field.ends_with("ms")
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};
    use std::sync::Arc;

    /// A clock that moves only when the trigger sleeps, and raises `stop` when the test's
    /// pin samples run out (so `wait` never reads past them).
    struct FakeClock {
        now: u64,
        limit: u64,
        stop: Arc<AtomicBool>,
    }
    impl Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            self.now
        }
        fn sleep_ms(&mut self, ms: u64) {
            self.now += ms;
            if self.now >= self.limit {
                self.stop.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Feeds one pin sample per millisecond ('0'/'1' in `pattern`); returns the times at
    /// which the trigger fired.
    fn fires(pattern: &str, edge: Edge, debounce: u64) -> Vec<u64> {
        let samples: Vec<Transaction> = pattern
            .bytes()
            .map(|b| Transaction::get(if b == b'1' { State::High } else { State::Low }))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let clock = FakeClock {
            now: 0,
            limit: pattern.len() as u64,
            stop: stop.clone(),
        };
        let mut t = PinTrigger::new(Mock::new(&samples), clock, edge, debounce);
        let mut out = Vec::new();
        while t.wait(&stop).unwrap() == Wait::Fire {
            out.push(t.clock.now);
            t.clock.sleep_ms(1); // the next sample belongs to the next millisecond
        }
        t.into_pin().done(); // every sample was read, none past the end
        out
    }

    #[test]
    fn a_clean_press_fires_once_on_the_rising_edge() {
        // Low for 5 ms, high for 30, low for 30: the press is accepted 20 ms after it
        // starts (25), the release 20 ms after it ends (55).
        let p = format!("{}{}{}", "0".repeat(5), "1".repeat(30), "0".repeat(30));
        assert_eq!(fires(&p, Edge::Rising, 20), vec![25]);
        assert_eq!(fires(&p, Edge::Falling, 20), vec![55]);
        assert_eq!(fires(&p, Edge::Both, 20), vec![25, 55]);
    }

    #[test]
    fn bounces_and_glitches_shorter_than_the_debounce_fire_nothing() {
        // Contact bounce, then a 10 ms glitch: nothing at 20 ms debounce.
        let p = format!("0010101{}{}", "1".repeat(10), "0".repeat(30));
        assert_eq!(fires(&p, Edge::Rising, 20), Vec::<u64>::new());
        // With bounce before a long press, the edge is counted once, from the last bounce.
        let p = format!("0010101{}{}", "1".repeat(40), "0".repeat(5));
        assert_eq!(fires(&p, Edge::Rising, 20), vec![6 + 20]);
        // Debounce 0: every change counts.
        assert_eq!(fires("0101000", Edge::Rising, 0), vec![1, 3]);
    }

    #[test]
    fn a_line_high_at_start_is_not_an_edge() {
        assert_eq!(fires(&"1".repeat(40), Edge::Both, 5), Vec::<u64>::new());
    }

    #[test]
    fn stop_interrupts_a_wait() {
        let stop = Arc::new(AtomicBool::new(true));
        let clock = FakeClock {
            now: 0,
            limit: 1,
            stop: stop.clone(),
        };
        let mut t = PinTrigger::new(Mock::new(&[]), clock, Edge::Rising, 20);
        assert_eq!(t.wait(&stop).unwrap(), Wait::Stop);
        t.into_pin().done();
        assert_eq!(
            IntervalTrigger::new(Duration::from_secs(3600))
                .wait(&stop)
                .unwrap(),
            Wait::Stop
        );
    }

    #[test]
    fn specs() {
        let d = ("/dev/gpiochip0", 17);
        assert_eq!(
            TriggerSpec::parse("gpio", d).unwrap(),
            TriggerSpec::Gpio {
                chip: "/dev/gpiochip0".into(),
                line: 17,
                edge: Edge::Rising,
                debounce_ms: 20
            }
        );
        assert_eq!(
            TriggerSpec::parse("gpio:gpiochip4:23:falling:50ms", d).unwrap(),
            TriggerSpec::Gpio {
                chip: "/dev/gpiochip4".into(),
                line: 23,
                edge: Edge::Falling,
                debounce_ms: 50
            }
        );
        assert_eq!(
            TriggerSpec::parse("interval:250", d).unwrap(),
            TriggerSpec::Interval(Duration::from_millis(250))
        );
        assert_eq!(TriggerSpec::parse("stdin", d).unwrap(), TriggerSpec::Stdin);
        for bad in [
            "interval:0",
            "interval:x",
            "gpio:17:sideways",
            "button",
            "stdin:1",
        ] {
            assert!(TriggerSpec::parse(bad, d).is_err(), "{bad}");
        }
    }
}
