//! The watchdog thread: pings systemd while the service loop is alive, falls silent when
//! it hangs.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::counters::Counters;
use super::notify::{status_assignment, Notifier};

/// `busy_since` while the loop is idle.
const IDLE: u64 = u64::MAX;

/// What the service loop is doing, as the watchdog sees it: idle (waiting for a trigger,
/// which may take hours) or busy since some instant (grabbing, classifying, emitting,
/// which must not take long). It starts idle.
///
/// A long step that is healthy (each attempt of a camera reconnection) calls
/// [`Liveness::busy`] again to restart the clock.
#[derive(Debug)]
pub struct Liveness {
    start: Instant,
    /// Milliseconds since `start` at the last `busy()`, or `IDLE`.
    busy_since: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new()
    }
}

impl Liveness {
    pub fn new() -> Liveness {
        Liveness {
            start: Instant::now(),
            busy_since: AtomicU64::new(IDLE),
        }
    }

    /// The loop is about to wait for its trigger.
    pub fn idle(&self) {
        self.busy_since.store(IDLE, Ordering::Relaxed);
    }

    /// The loop starts work on a frame.
    pub fn busy(&self) {
        let ms = self.now_ms().min(IDLE - 1);
        self.busy_since.store(ms, Ordering::Relaxed);
    }

    /// How long the loop has been busy, or `None` while it is idle.
    pub fn busy_for(&self) -> Option<Duration> {
        match self.busy_since.load(Ordering::Relaxed) {
            IDLE => None,
            since => Some(Duration::from_millis(self.now_ms().saturating_sub(since))),
        }
    }

    /// Idle, or busy for less than `hang_after`.
    pub fn is_alive(&self, hang_after: Duration) -> bool {
        self.busy_for().is_none_or(|busy| busy < hang_after)
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// A thread that, every `interval`, sends `WATCHDOG=1` and a `STATUS=` line with the
/// counters while the loop is alive; once the loop has been busy for `hang_after` it
/// sends `STATUS=hung: busy for N s` once and no more pings, so that systemd's
/// `WatchdogSec=` runs out and the service is restarted. Pings resume if the loop comes
/// back. Dropping it stops and joins the thread.
pub struct Watchdog {
    notifier: Arc<Notifier>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts pinging now. `interval` is what the service pings at: half of systemd's
    /// `WatchdogSec=` (see [`super::watchdog_interval`]).
    pub fn start(
        notifier: Notifier,
        interval: Duration,
        liveness: Arc<Liveness>,
        counters: Arc<Counters>,
        hang_after: Duration,
    ) -> io::Result<Watchdog> {
        if interval.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the watchdog interval must not be zero",
            ));
        }
        let notifier = Arc::new(notifier);
        let (stop, stopped) = mpsc::channel();
        let thread = {
            let notifier = notifier.clone();
            std::thread::Builder::new()
                .name("kestrel-watchdog".into())
                .spawn(move || {
                    ping_loop(
                        &notifier, interval, &liveness, &counters, hang_after, &stopped,
                    )
                })?
        };
        Ok(Watchdog {
            notifier,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The notifier the pings go through, for `STOPPING=1` and the like.
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing the channel wakes the thread.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn ping_loop(
    notifier: &Notifier,
    interval: Duration,
    liveness: &Liveness,
    counters: &Counters,
    hang_after: Duration,
    stopped: &mpsc::Receiver<()>,
) {
    let mut next = Instant::now();
    let mut reported_hang = false;
    loop {
        // Send errors are not fatal: systemd may be restarting, and a missed ping is
        // what the watchdog is there to notice anyway.
        match liveness.busy_for() {
            Some(busy) if busy >= hang_after => {
                if !reported_hang {
                    let status = format!("hung: busy for {:.1} s", busy.as_secs_f64());
                    let _ = notifier.status(&status);
                    reported_hang = true;
                }
            }
            _ => {
                reported_hang = false;
                let status = status_assignment(&counters.status_line());
                let _ = notifier.notify(&format!("WATCHDOG=1\n{status}"));
            }
        }
        // Fixed ticks without drift; after a stall (a suspended board) no burst.
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        match stopped.recv_timeout(next - now) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::notify::tests::FakeSystemd;
    use super::*;
    use crate::frame::{Frame, PixelFormat};
    use crate::source::{FrameSource, SourceError};
    use std::sync::atomic::AtomicBool;
    use std::thread;

    const MS: Duration = Duration::from_millis(1);

    fn pings(messages: &[String]) -> usize {
        messages
            .iter()
            .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    }

    fn statuses(messages: &[String]) -> Vec<&str> {
        messages
            .iter()
            .flat_map(|m| m.lines())
            .filter_map(|l| l.strip_prefix("STATUS="))
            .collect()
    }

    #[test]
    fn liveness_idle_busy_and_hung() {
        let live = Liveness::new();
        assert_eq!(live.busy_for(), None);
        assert!(live.is_alive(Duration::ZERO));
        live.busy();
        assert!(live.busy_for().unwrap() < Duration::from_secs(5));
        assert!(live.is_alive(Duration::from_secs(5)));
        thread::sleep(30 * MS);
        assert!(live.busy_for().unwrap() >= 30 * MS);
        assert!(!live.is_alive(10 * MS));
        live.busy();
        assert!(live.is_alive(Duration::from_secs(5)));
        live.idle();
        assert!(live.is_alive(Duration::ZERO));
    }

    #[test]
    fn pings_arrive_at_about_the_interval() {
        let systemd = FakeSystemd::abstract_name("pings");
        let live = Arc::new(Liveness::new());
        let counters = Arc::new(Counters::default());
        let done = Arc::new(AtomicBool::new(false));
        // A loop that goes busy and idle quickly, as a healthy one does.
        let looping = {
            let (live, counters, done) = (live.clone(), counters.clone(), done.clone());
            thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    live.idle();
                    thread::sleep(2 * MS);
                    live.busy();
                    thread::sleep(MS);
                    counters.frames.inc();
                    counters.record_inference(1.0);
                }
                live.idle();
            })
        };
        let interval = 50 * MS;
        let watchdog = Watchdog::start(
            systemd.notifier(),
            interval,
            live,
            counters,
            Duration::from_secs(1),
        )
        .unwrap();
        // About 20 pings in a second: allow 5x either way.
        let got = systemd.collect_until(Instant::now() + Duration::from_secs(1));
        done.store(true, Ordering::Relaxed);
        looping.join().unwrap();
        drop(watchdog);
        let n = pings(&got);
        assert!((4..=100).contains(&n), "{n} pings in 1 s at 50 ms: {got:?}");
        let status = statuses(&got);
        assert_eq!(status.len(), n, "each ping carries a status: {got:?}");
        assert!(
            status.iter().all(|s| s.starts_with("frames ")),
            "{status:?}"
        );
        assert!(status.last().unwrap().contains("last inference 1.00 ms"));
    }

    /// A camera whose `grab` gives `good` frames, then blocks until released (as a
    /// wedged driver does), then reports it has no more frames.
    struct BlockingCamera {
        good: usize,
        pixel: [u8; 3],
        blocked: mpsc::Sender<Instant>,
        release: mpsc::Receiver<()>,
    }

    impl FrameSource for BlockingCamera {
        fn grab(&mut self) -> Result<Frame<'_>, SourceError> {
            if self.good == 0 {
                let _ = self.blocked.send(Instant::now());
                let _ = self.release.recv();
                return Err(SourceError::Exhausted {
                    source_name: "blocking".into(),
                });
            }
            self.good -= 1;
            Ok(Frame {
                format: PixelFormat::Rgb24,
                width: 1,
                height: 1,
                data: &self.pixel,
                origin: "blocking",
            })
        }

        fn name(&self) -> &str {
            "blocking"
        }
    }

    #[test]
    fn a_hung_loop_stops_the_pings() {
        let systemd = FakeSystemd::at_path();
        let live = Arc::new(Liveness::new());
        let counters = Arc::new(Counters::default());
        let (blocked_tx, blocked) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let mut camera = BlockingCamera {
            good: 20,
            pixel: [1, 2, 3],
            blocked: blocked_tx,
            release: release_rx,
        };
        // The service loop's shape: idle, trigger, busy, grab and classify, emit.
        let looping = {
            let (live, counters) = (live.clone(), counters.clone());
            thread::spawn(move || loop {
                live.idle();
                thread::sleep(5 * MS);
                live.busy();
                match camera.grab() {
                    Ok(frame) => {
                        assert_eq!(frame.data.len(), 3);
                        counters.frames.inc();
                    }
                    Err(_) => {
                        live.idle();
                        return;
                    }
                }
            })
        };
        let (interval, hang_after) = (40 * MS, 300 * MS);
        let watchdog =
            Watchdog::start(systemd.notifier(), interval, live, counters, hang_after).unwrap();

        let blocked_at = blocked.recv_timeout(Duration::from_secs(20)).unwrap();
        // Until the hang is seen (plus slack for a slow machine), pings go on.
        let before = systemd.collect_until(blocked_at + hang_after + 2 * interval + 300 * MS);
        assert!(pings(&before) >= 2, "pings before the hang: {before:?}");
        assert!(
            statuses(&before)
                .iter()
                .any(|s| s.starts_with("frames 20,")),
            "{before:?}"
        );
        // Then silence, but for the one status saying why.
        let during = systemd.collect_until(Instant::now() + Duration::from_secs(1));
        assert_eq!(pings(&during), 0, "pings while hung: {during:?}");
        let all: Vec<String> = before.iter().chain(&during).cloned().collect();
        let hung: Vec<&str> = statuses(&all)
            .into_iter()
            .filter(|s| s.starts_with("hung: busy for "))
            .collect();
        assert_eq!(hung.len(), 1, "{all:?}");
        assert!(hung[0].ends_with(" s"), "{hung:?}");

        // The camera comes back: the loop goes idle and the pings resume.
        release.send(()).unwrap();
        looping.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut after = Vec::new();
        while pings(&after) == 0 && Instant::now() < deadline {
            after.extend(systemd.recv(deadline - Instant::now()));
        }
        assert!(pings(&after) > 0, "no ping after recovery: {after:?}");
        drop(watchdog);
    }

    #[test]
    fn dropping_stops_the_thread_at_once() {
        let systemd = FakeSystemd::abstract_name("drop");
        let watchdog = Watchdog::start(
            systemd.notifier(),
            Duration::from_secs(3600),
            Arc::new(Liveness::new()),
            Arc::new(Counters::default()),
            Duration::from_secs(60),
        )
        .unwrap();
        // The first ping goes out at start.
        let first = systemd.recv(Duration::from_secs(10)).unwrap();
        assert!(
            first.starts_with("WATCHDOG=1\nSTATUS=frames 0,"),
            "{first:?}"
        );
        watchdog.notifier().stopping().unwrap();
        assert_eq!(
            systemd.recv(Duration::from_secs(10)).as_deref(),
            Some("STOPPING=1")
        );
        let t = Instant::now();
        drop(watchdog);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(systemd.recv(100 * MS), None);
    }

    #[test]
    fn a_zero_interval_is_refused() {
        let systemd = FakeSystemd::abstract_name("zero");
        let err = Watchdog::start(
            systemd.notifier(),
            Duration::ZERO,
            Arc::new(Liveness::new()),
            Arc::new(Counters::default()),
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
