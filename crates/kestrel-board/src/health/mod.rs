//! Field health: what keeps a board's service honest while nobody watches it.
//!
//! - [`Notifier`] speaks systemd's notify protocol (`Type=notify`): `READY=1` once the
//!   service is up, `STATUS=` lines, `WATCHDOG=1` pings, `STOPPING=1`.
//! - [`watchdog_interval`] reads the `WatchdogSec=` that systemd passes down
//!   (`$WATCHDOG_USEC`, `$WATCHDOG_PID`).
//! - [`Liveness`] is told by the service loop whether it waits for a trigger (idle, for
//!   as long as it likes) or works on a frame (busy, which must not last).
//! - [`Watchdog`] is a thread that pings systemd while the loop is alive and falls silent
//!   when it hangs, so that systemd kills and restarts the service.
//! - [`Counters`] are the loop's lock-free counters, shown in the status line and by
//!   [`MetricsServer`] as a Prometheus text endpoint.

mod counters;
mod notify;
mod watchdog;

pub use counters::{open_fds, resident_memory_bytes, Counter, Counters};
pub use notify::{parse_watchdog, watchdog_interval, Notifier};
pub use watchdog::{Liveness, Watchdog};
