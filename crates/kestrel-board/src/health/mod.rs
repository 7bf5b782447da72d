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
//!
//! A sketch of the wiring (the service does this; nothing here starts by itself):
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use kestrel_board::health::{watchdog_interval, Counters, Liveness, MetricsServer, Notifier, Watchdog};
//!
//! # fn main() -> std::io::Result<()> {
//! let counters = Arc::new(Counters::default());
//! let liveness = Arc::new(Liveness::new());
//! let _metrics = MetricsServer::start("127.0.0.1:9464", counters.clone())?;
//! let mut _watchdog = None;
//! if let Some(notifier) = Notifier::from_env() {
//!     notifier.ready()?;
//!     if let Some(timeout) = watchdog_interval() {
//!         let hang_after = Duration::from_secs(30);
//!         _watchdog = Some(Watchdog::start(notifier, timeout / 2, liveness.clone(), counters.clone(), hang_after)?);
//!     }
//! }
//! loop {
//!     liveness.idle();
//!     // ... wait for the trigger ...
//!     liveness.busy();
//!     // ... grab, classify, emit ...
//!     counters.frames.inc();
//!     # break;
//! }
//! # Ok(())
//! # }
//! ```

mod counters;
mod metrics;
mod notify;
mod watchdog;

pub use counters::{open_fds, resident_memory_bytes, Counter, Counters};
pub use metrics::MetricsServer;
pub use notify::{parse_watchdog, watchdog_interval, Notifier};
pub use watchdog::{Liveness, Watchdog};
