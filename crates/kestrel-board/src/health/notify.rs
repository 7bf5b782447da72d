//! systemd's notify protocol: newline-separated `KEY=value` assignments in one datagram
//! sent to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` for a Linux abstract
//! socket). See sd_notify(3).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends notifications to systemd (or to whatever listens on the notify socket).
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier systemd asked for with `$NOTIFY_SOCKET`, or `None` when the variable
    /// is unset (not started by systemd, or not `Type=notify`) or names no usable
    /// Unix socket.
    pub fn from_env() -> Option<Notifier> {
        let value = std::env::var("NOTIFY_SOCKET").ok()?;
        Notifier::new(&value).ok()
    }

    /// A notifier for a `$NOTIFY_SOCKET`-style address: an absolute path, or `@name` for
    /// an abstract socket.
    pub fn new(address: &str) -> io::Result<Notifier> {
        let addr = if let Some(name) = address.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes())?
        } else if address.starts_with('/') {
            SocketAddr::from_pathname(address)?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("notify socket '{address}' is neither an absolute path nor @name"),
            ));
        };
        Notifier::with_addr(addr)
    }

    /// A notifier sending to `addr`, from an unbound socket of its own.
    pub fn with_addr(addr: SocketAddr) -> io::Result<Notifier> {
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            addr,
        })
    }

    /// A second notifier to the same address (for another thread), with its own socket.
    pub fn try_clone(&self) -> io::Result<Notifier> {
        Ok(Notifier {
            socket: self.socket.try_clone()?,
            addr: self.addr.clone(),
        })
    }

    /// Sends `state` as it is: one or more `KEY=value` lines.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        Ok(())
    }

    /// `READY=1`: start-up is done (a `Type=notify` unit is "starting" until then).
    pub fn ready(&self) -> io::Result<()> {
        self.notify("READY=1")
    }

    /// `WATCHDOG=1`: the service is alive.
    pub fn watchdog(&self) -> io::Result<()> {
        self.notify("WATCHDOG=1")
    }

    /// `STATUS=...`, shown by `systemctl status`. A line break in `status` would start a
    /// new assignment, so each is sent as a space.
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.notify(&status_assignment(status))
    }

    /// `STOPPING=1`: the service is shutting down on purpose.
    pub fn stopping(&self) -> io::Result<()> {
        self.notify("STOPPING=1")
    }
}

/// `STATUS=` with `status` on one line.
pub(crate) fn status_assignment(status: &str) -> String {
    let line: String = status
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("STATUS={line}")
}

/// The watchdog timeout systemd set for this process (`WatchdogSec=`), from
/// `$WATCHDOG_USEC`; `None` when there is none, or when `$WATCHDOG_PID` names another
/// process (the variables were inherited from a parent). Ping at half of it.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] over given values: `usec` must be a positive integer; `pid`, when
/// given, must be `our_pid`. Anything malformed means no watchdog.
pub fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    match usec?.trim().parse::<u64>().ok()? {
        0 => None,
        usec => Some(Duration::from_micros(usec)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// Plays systemd's side: a datagram socket bound where `$NOTIFY_SOCKET` would point.
    pub(crate) struct FakeSystemd {
        pub socket: UnixDatagram,
        /// The `$NOTIFY_SOCKET` value for it.
        pub address: String,
        dir: Option<PathBuf>,
    }

    impl FakeSystemd {
        /// Bound to a path in a fresh temporary folder.
        pub fn at_path() -> FakeSystemd {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("kestrel-health-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("notify");
            let socket = UnixDatagram::bind(&path).unwrap();
            FakeSystemd {
                socket,
                address: path.to_str().unwrap().to_string(),
                dir: Some(dir),
            }
        }

        /// Bound to the abstract name `kestrel-test-<pid>-<tag>`.
        pub fn abstract_name(tag: &str) -> FakeSystemd {
            let name = format!("kestrel-test-{}-{tag}", std::process::id());
            let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let socket = UnixDatagram::bind_addr(&addr).unwrap();
            FakeSystemd {
                socket,
                address: format!("@{name}"),
                dir: None,
            }
        }

        pub fn notifier(&self) -> Notifier {
            Notifier::new(&self.address).unwrap()
        }

        /// The next datagram within `timeout`, if any.
        pub fn recv(&self, timeout: Duration) -> Option<String> {
            self.socket
                .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
                .unwrap();
            let mut buf = [0u8; 4096];
            match self.socket.recv(&mut buf) {
                Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    None
                }
                Err(e) => panic!("notify socket: {e}"),
            }
        }

        /// Every datagram that arrives until `deadline`.
        pub fn collect_until(&self, deadline: Instant) -> Vec<String> {
            let mut got = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return got;
                }
                if let Some(msg) = self.recv(left) {
                    got.push(msg);
                }
            }
        }
    }

    impl Drop for FakeSystemd {
        fn drop(&mut self) {
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn ready_status_watchdog_stopping_arrive_at_a_path() {
        let systemd = FakeSystemd::at_path();
        let notifier = systemd.notifier();
        notifier.ready().unwrap();
        notifier.status("frames 3,\nerrors 0").unwrap();
        notifier.watchdog().unwrap();
        notifier.stopping().unwrap();
        assert_eq!(systemd.recv(5 * SECOND).as_deref(), Some("READY=1"));
        assert_eq!(
            systemd.recv(5 * SECOND).as_deref(),
            Some("STATUS=frames 3, errors 0")
        );
        assert_eq!(systemd.recv(5 * SECOND).as_deref(), Some("WATCHDOG=1"));
        assert_eq!(systemd.recv(5 * SECOND).as_deref(), Some("STOPPING=1"));
        // One datagram each, nothing more.
        let rest = systemd.collect_until(Instant::now() + Duration::from_millis(50));
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[test]
    fn ready_arrives_at_an_abstract_socket() {
        let systemd = FakeSystemd::abstract_name("ready");
        assert!(systemd.address.starts_with("@kestrel-test-"));
        let notifier = systemd.notifier();
        notifier.ready().unwrap();
        assert_eq!(systemd.recv(5 * SECOND).as_deref(), Some("READY=1"));
        let clone = notifier.try_clone().unwrap();
        drop(notifier);
        clone.watchdog().unwrap();
        assert_eq!(systemd.recv(5 * SECOND).as_deref(), Some("WATCHDOG=1"));
    }

    #[test]
    fn addresses_must_be_absolute_or_abstract() {
        for bad in ["", "relative/notify", "vsock:2:1234"] {
            let err = Notifier::new(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        // A path longer than sun_path holds.
        assert!(Notifier::new(&format!("/{}", "x".repeat(200))).is_err());
        // Nobody listens: sending fails, it does not panic or block.
        let notifier = Notifier::new("/nonexistent/kestrel/notify").unwrap();
        assert!(notifier.ready().is_err());
    }

    #[test]
    fn watchdog_usec_and_pid() {
        let ms = Duration::from_millis;
        assert_eq!(parse_watchdog(Some("30000000"), None, 7), Some(ms(30_000)));
        assert_eq!(parse_watchdog(Some("500000"), Some("7"), 7), Some(ms(500)));
        assert_eq!(
            parse_watchdog(Some(" 1500 "), Some("7\n"), 7),
            Some(ms(1) + Duration::from_micros(500))
        );
        // Inherited from a parent.
        assert_eq!(parse_watchdog(Some("500000"), Some("8"), 7), None);
        // None set, or zero (disabled).
        assert_eq!(parse_watchdog(None, None, 7), None);
        assert_eq!(parse_watchdog(None, Some("7"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        // Malformed.
        for bad in ["", "-5", "1.5", "30s", "abc", "99999999999999999999999"] {
            assert_eq!(parse_watchdog(Some(bad), None, 7), None, "usec {bad:?}");
        }
        for bad in ["", "-7", "seven", "0x7"] {
            assert_eq!(
                parse_watchdog(Some("500000"), Some(bad), 7),
                None,
                "pid {bad:?}"
            );
        }
    }
}
