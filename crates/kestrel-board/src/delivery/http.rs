//! Results POSTed as JSON to a URL (a webhook), one at a time and in order, each retried
//! until the server answers 2xx.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;

use super::spool::Spool;
use super::{Backoff, Report, SinkError};

/// The `[http]` table of the config file (and `--http URL`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// `http://…` or `https://…` (checked against the web's root CAs).
    pub url: String,
    /// For the whole request: connect, send, answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5000
}

pub struct HttpSink {
    url: String,
    agent: ureq::Agent,
    name: String,
}

impl HttpSink {
    pub fn new(settings: &HttpSettings) -> Result<Self, SinkError> {
        let uri: ureq::http::Uri = settings
            .url
            .parse()
            .map_err(|e| SinkError::Config(format!("HTTP URL '{}': {e}", settings.url)))?;
        match (uri.scheme_str(), uri.host()) {
            (Some("http" | "https"), Some(_)) => {}
            _ => {
                return Err(SinkError::Config(format!(
                    "HTTP URL '{}': must be http://host/… or https://host/…",
                    settings.url
                )))
            }
        }
        if settings.timeout_ms == 0 {
            return Err(SinkError::Config(
                "HTTP timeout_ms must be at least 1".into(),
            ));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(settings.timeout_ms)))
            .build()
            .into();
        Ok(HttpSink {
            url: settings.url.clone(),
            agent,
            name: format!("http {}", settings.url),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Delivers from `spool` until `stop`.
    pub fn run(&self, spool: &Spool, stop: &AtomicBool, report: &Report) {
        let mut backoff = Backoff::default();
        let mut failing = false;
        while !stop.load(Ordering::Relaxed) {
            let entries = match spool.read_after(None, 1, Duration::from_millis(200)) {
                Ok(e) => e,
                Err(e) => {
                    report(
                        "sink_error",
                        Some(&e.to_string()),
                        serde_json::json!({ "sink": self.name }),
                    );
                    if !super::sleep_unless_stopped(backoff.next(), stop) {
                        return;
                    }
                    continue;
                }
            };
            let Some(entry) = entries.into_iter().next() else {
                continue;
            };
            let sent = self
                .agent
                .post(&self.url)
                .header("content-type", "application/json")
                .send(&entry.bytes[..]);
            match sent {
                Ok(_) => {
                    if let Err(e) = spool.remove_through(entry.seq) {
                        report(
                            "sink_error",
                            Some(&e.to_string()),
                            serde_json::json!({ "sink": self.name }),
                        );
                    }
                    if failing {
                        report(
                            "sink_connected",
                            None,
                            serde_json::json!({ "sink": self.name, "spooled": spool.depth() }),
                        );
                        failing = false;
                    }
                    backoff.reset();
                }
                Err(e) => {
                    failing = true;
                    let delay = backoff.next();
                    report(
                        "sink_error",
                        Some(&e.to_string()),
                        serde_json::json!({ "sink": self.name, "retry_in_ms": delay.as_millis() as u64, "spooled": spool.depth() }),
                    );
                    if !super::sleep_unless_stopped(delay, stop) {
                        return;
                    }
                }
            }
        }
    }
}
