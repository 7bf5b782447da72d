//! The service's counters: atomics the loop bumps without locking, read by the watchdog's
//! status line and the metrics endpoint.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// One counter (or gauge, with [`Counter::set`]).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the service has done since it started. Share it as `Arc<Counters>`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames classified.
    pub frames: Counter,
    /// Results emitted (written to the sink).
    pub results: Counter,
    /// Errors of any kind.
    pub errors: Counter,
    /// Camera failures (each disconnection and failed reconnection).
    pub camera_errors: Counter,
    /// Frames that could not be used (short, undecodable).
    pub bad_frames: Counter,
    /// Results waiting in the spool now (a gauge).
    pub spool_depth: Counter,
    /// Results the spool dropped (full).
    pub spool_dropped: Counter,
    /// Spooled results delivered.
    pub delivered: Counter,
    /// Models swapped in while running.
    pub model_swaps: Counter,
    /// Models refused (bad file, wrong target).
    pub model_refused: Counter,
    inferences: Counter,
    inference_us_sum: Counter,
    last_inference_us: Counter,
    model_sha256: Mutex<String>,
    device: Mutex<String>,
}

impl Counters {
    /// Records one inference of `ms` milliseconds (kept to the microsecond).
    pub fn record_inference(&self, ms: f64) {
        // `as` saturates: negative and NaN become 0.
        let us = (ms * 1e3).round() as u64;
        self.last_inference_us.set(us);
        self.inference_us_sum.add(us);
        self.inferences.inc();
    }

    /// The last inference's milliseconds, if there was one.
    pub fn last_inference_ms(&self) -> Option<f64> {
        (self.inferences.get() > 0).then(|| self.last_inference_us.get() as f64 / 1e3)
    }

    /// How many inferences were recorded, and their milliseconds added up.
    pub fn inference_total_ms(&self) -> (u64, f64) {
        (
            self.inferences.get(),
            self.inference_us_sum.get() as f64 / 1e3,
        )
    }

    /// The SHA-256 (hex) of the model being run.
    pub fn set_model_sha256(&self, sha256: &str) {
        *lock(&self.model_sha256) = sha256.to_string();
    }

    /// The device the model runs on (`cpu`, a board name, ...).
    pub fn set_device(&self, device: &str) {
        *lock(&self.device) = device.to_string();
    }

    pub fn model_sha256(&self) -> String {
        lock(&self.model_sha256).clone()
    }

    pub fn device(&self) -> String {
        lock(&self.device).clone()
    }

    /// A one-line summary for systemd's `STATUS=`, e.g.
    /// `frames 120, errors 2, last inference 3.41 ms, spool 0`.
    pub fn status_line(&self) -> String {
        let last = match self.last_inference_ms() {
            Some(ms) => format!("{ms:.2} ms"),
            None => "-".to_string(),
        };
        format!(
            "frames {}, errors {}, last inference {last}, spool {}",
            self.frames.get(),
            self.errors.get(),
            self.spool_depth.get()
        )
    }

    /// The counters and the process's memory and file descriptors in Prometheus' text
    /// exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(2048);
        let counters = [
            ("frames", "Frames classified.", &self.frames),
            ("results", "Results emitted.", &self.results),
            ("errors", "Errors of any kind.", &self.errors),
            (
                "camera_errors",
                "Camera failures and failed reconnections.",
                &self.camera_errors,
            ),
            (
                "bad_frames",
                "Frames that could not be used.",
                &self.bad_frames,
            ),
            (
                "spool_dropped",
                "Results the spool dropped.",
                &self.spool_dropped,
            ),
            ("delivered", "Spooled results delivered.", &self.delivered),
            (
                "model_swaps",
                "Models swapped in while running.",
                &self.model_swaps,
            ),
            ("model_refused", "Models refused.", &self.model_refused),
        ];
        for (name, help, counter) in counters {
            let name = format!("kestrel_{name}_total");
            header(&mut out, &name, "counter", help);
            sample(&mut out, &name, "", counter.get() as f64);
        }
        header(
            &mut out,
            "kestrel_spool_depth",
            "gauge",
            "Results waiting in the spool.",
        );
        sample(
            &mut out,
            "kestrel_spool_depth",
            "",
            self.spool_depth.get() as f64,
        );

        let (count, sum_ms) = self.inference_total_ms();
        header(
            &mut out,
            "kestrel_inference_seconds",
            "summary",
            "Time spent in inference.",
        );
        sample(&mut out, "kestrel_inference_seconds_sum", "", sum_ms / 1e3);
        sample(
            &mut out,
            "kestrel_inference_seconds_count",
            "",
            count as f64,
        );
        header(
            &mut out,
            "kestrel_last_inference_seconds",
            "gauge",
            "The last inference's time.",
        );
        let last_s = self.last_inference_ms().unwrap_or(0.0) / 1e3;
        sample(&mut out, "kestrel_last_inference_seconds", "", last_s);

        header(
            &mut out,
            "kestrel_model_info",
            "gauge",
            "The model being run (always 1).",
        );
        let labels = format!(
            "{{sha256=\"{}\",device=\"{}\"}}",
            escape_label(&self.model_sha256()),
            escape_label(&self.device())
        );
        sample(&mut out, "kestrel_model_info", &labels, 1.0);

        if let Some(bytes) = resident_memory_bytes() {
            header(
                &mut out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
            );
            sample(&mut out, "process_resident_memory_bytes", "", bytes as f64);
        }
        if let Some(fds) = open_fds() {
            header(
                &mut out,
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
            );
            sample(&mut out, "process_open_fds", "", fds as f64);
        }
        out
    }
}

fn lock(m: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    // A panic elsewhere while holding the lock leaves a whole string: keep using it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    let _ = writeln!(out, "{name}{labels} {value}");
}

/// A label value as the text format wants it: `\`, `"` and line feeds escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// This process's resident memory (`VmRSS` in /proc/self/status), in bytes.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => Some(kib * 1024),
        _ => None,
    }
}

/// How many file descriptors this process has open (entries of /proc/self/fd, less the
/// one that reads it).
pub fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some((entries.count() as u64).saturating_sub(1))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Parses the text format: `# HELP`/`# TYPE` comments, then `name{labels} value`
    /// samples, keyed by `name{labels}`. Panics on a line that is neither.
    pub(crate) fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
        let mut types = BTreeMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (kind, name, what) = (parts.next(), parts.next(), parts.next());
                match (kind, name, what) {
                    (Some("HELP"), Some(_), Some(help)) => assert!(!help.is_empty(), "{line}"),
                    (Some("TYPE"), Some(name), Some(t)) => {
                        assert!(
                            ["counter", "gauge", "summary"].contains(&t),
                            "type in {line}"
                        );
                        types.insert(name.to_string(), t.to_string());
                    }
                    _ => panic!("bad comment line {line:?}"),
                }
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("value in {line:?}"));
            let name = match series.split_once('{') {
                Some((name, labels)) => {
                    assert!(labels.ends_with('}'), "labels in {line:?}");
                    for pair in labels[..labels.len() - 1].split(',') {
                        let (key, val) = pair.split_once('=').expect("label key=value");
                        assert!(valid_name(key), "label name in {line:?}");
                        assert!(val.len() >= 2 && val.starts_with('"') && val.ends_with('"'));
                    }
                    name
                }
                None => series,
            };
            assert!(valid_name(name), "metric name in {line:?}");
            let family = ["_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|t| t == "summary"))
                })
                .unwrap_or(name);
            let kind = types
                .get(family)
                .unwrap_or_else(|| panic!("no TYPE before {line:?}"));
            if kind == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "counter {name} must end in _total"
                );
            }
            assert!(
                samples.insert(series.to_string(), value).is_none(),
                "twice: {series}"
            );
        }
        samples
    }

    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// Counters with a value of their own in each field.
    pub(crate) fn sample_counters() -> Counters {
        let c = Counters::default();
        c.frames.add(120);
        c.results.add(118);
        c.errors.add(2);
        c.camera_errors.inc();
        c.bad_frames.inc();
        c.spool_depth.set(5);
        c.spool_depth.set(4);
        c.spool_dropped.add(3);
        c.delivered.add(114);
        c.model_swaps.inc();
        c.model_refused.add(6);
        c.record_inference(3.0);
        c.record_inference(3.41);
        c.set_model_sha256("ab12");
        c.set_device("rpi5 \"a76\"");
        c
    }

    #[test]
    fn status_line_reads_well() {
        let c = Counters::default();
        assert_eq!(
            c.status_line(),
            "frames 0, errors 0, last inference -, spool 0"
        );
        let c = sample_counters();
        assert_eq!(
            c.status_line(),
            "frames 120, errors 2, last inference 3.41 ms, spool 4"
        );
    }

    #[test]
    fn inference_times_keep_microseconds() {
        let c = Counters::default();
        assert_eq!(c.last_inference_ms(), None);
        c.record_inference(1.2344);
        c.record_inference(0.0006);
        c.record_inference(-1.0);
        c.record_inference(f64::NAN);
        assert_eq!(c.last_inference_ms(), Some(0.0));
        let (n, sum) = c.inference_total_ms();
        assert_eq!(n, 4);
        assert!((sum - 1.235).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn prometheus_text_parses_with_the_values_set() {
        let text = sample_counters().prometheus();
        assert!(text.ends_with('\n'));
        let m = parse_exposition(&text);
        let expect = [
            ("kestrel_frames_total", 120.0),
            ("kestrel_results_total", 118.0),
            ("kestrel_errors_total", 2.0),
            ("kestrel_camera_errors_total", 1.0),
            ("kestrel_bad_frames_total", 1.0),
            ("kestrel_spool_depth", 4.0),
            ("kestrel_spool_dropped_total", 3.0),
            ("kestrel_delivered_total", 114.0),
            ("kestrel_model_swaps_total", 1.0),
            ("kestrel_model_refused_total", 6.0),
            ("kestrel_inference_seconds_count", 2.0),
            (
                r#"kestrel_model_info{sha256="ab12",device="rpi5 \"a76\""}"#,
                1.0,
            ),
        ];
        for (series, value) in expect {
            assert_eq!(m.get(series), Some(&value), "{series} in\n{text}");
        }
        let close = |series: &str, want: f64| {
            let got = m[series];
            assert!((got - want).abs() < 1e-9, "{series} = {got}, want {want}");
        };
        close("kestrel_inference_seconds_sum", 0.00641);
        close("kestrel_last_inference_seconds", 0.00341);
        assert!(m["process_resident_memory_bytes"] > 0.0);
        assert!(m["process_open_fds"] > 0.0);
    }

    #[test]
    fn process_memory_and_fds_are_seen() {
        let rss = resident_memory_bytes().unwrap();
        assert!(rss > 0 && rss.is_multiple_of(1024), "{rss}");
        // This file stays open while counting (other tests open and close theirs).
        let _file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(open_fds().unwrap() > 0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }
}
