//! Results POSTed as JSON to a URL (a webhook), one at a time and in order, each retried
//! until the server answers 2xx.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;

use super::spool::Spool;
use super::{Report, SinkError};
use crate::backoff::Backoff;

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

impl HttpSettings {
    /// A webhook with the config file's default timeout.
    pub fn new(url: String) -> Self {
        Self {
            url,
            timeout_ms: default_timeout_ms(),
        }
    }
}

fn default_timeout_ms() -> u64 {
    5000
}

/// What the server did with one result.
enum Outcome {
    Taken,
    Rejected(u16),
    Retry(String),
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
        // No redirects: ureq would follow a 301-303 as a GET without the body, and a
        // result "delivered" that way is lost. A 3xx is an answer to fix in the URL.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(settings.timeout_ms)))
            .max_redirects(0)
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
        let mut backoff = Backoff::SINK.delays();
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
                    if !super::sleep_unless_stopped(backoff.next_delay(), stop) {
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
            let outcome = match sent {
                Ok(resp) if resp.status().is_success() => Outcome::Taken,
                Ok(resp) => Outcome::Retry(format!("HTTP {} (not a 2xx)", resp.status())),
                // A request the server will never take (bad JSON for it, too large): held
                // back, it would block every result behind it for ever.
                Err(ureq::Error::StatusCode(code))
                    if (400..500).contains(&code) && code != 408 && code != 429 =>
                {
                    Outcome::Rejected(code)
                }
                Err(e) => Outcome::Retry(e.to_string()),
            };
            match outcome {
                Outcome::Taken | Outcome::Rejected(_) => {
                    if let Outcome::Rejected(code) = outcome {
                        report(
                            "sink_rejected",
                            Some(&format!(
                                "HTTP {code}: the server refuses this result; dropped"
                            )),
                            serde_json::json!({ "sink": self.name, "spool_seq": entry.seq }),
                        );
                    }
                    if let Err(e) = spool.remove_through(entry.seq) {
                        report(
                            "sink_error",
                            Some(&e.to_string()),
                            serde_json::json!({ "sink": self.name }),
                        );
                        if !super::sleep_unless_stopped(backoff.next_delay(), stop) {
                            return;
                        }
                        continue;
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
                Outcome::Retry(error) => {
                    failing = true;
                    let delay = backoff.next_delay();
                    report(
                        "sink_error",
                        Some(&error),
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
