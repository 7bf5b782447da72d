//! Results to an MQTT broker (3.1.1, rumqttc), from the sink's spool, in order.
//!
//! Each connection is a fresh rumqttc client: whatever it had in flight when the link
//! dropped is forgotten by it and re-sent from the spool by us, so with QoS 1 the spool is
//! the only place a result lives until the broker has acknowledged it. A result may then
//! arrive twice, never not at all; its `frame` number lets a consumer drop the copy. QoS 0
//! is at most once: a result leaves the spool when rumqttc has taken it for the socket,
//! and a link that drops then loses it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, ConnectReturnCode, Connection, Event, MqttOptions, Outgoing, Packet, QoS,
    RecvTimeoutError, TlsConfiguration, Transport,
};
use serde::Deserialize;

use super::spool::Spool;
use super::{Report, SinkError};
use crate::backoff::Backoff;

/// The `[mqtt]` table of the config file (and the `--mqtt*` flags).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// `{device}` and `{class}` (the top class's label) are filled in per result.
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Keep the last result on the broker for subscribers that come later.
    #[serde(default)]
    pub retain: bool,
    /// PEM file of the CA that signed the broker's certificate (`mqtts://`).
    pub ca: Option<std::path::PathBuf>,
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
    pub username: Option<String>,
    /// A file holding the password (its first line), readable by the service only.
    pub password_file: Option<std::path::PathBuf>,
}

impl MqttSettings {
    /// A broker with every other key at the config file's default.
    pub fn new(url: String) -> Self {
        Self {
            url,
            topic: default_topic(),
            qos: default_qos(),
            retain: false,
            ca: None,
            client_cert: None,
            client_key: None,
            username: None,
            password_file: None,
        }
    }
}

fn default_topic() -> String {
    "kestrel/{device}/result".into()
}

fn default_qos() -> u8 {
    1
}

/// Broker address from a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, SinkError> {
        let bad = |why: &str| SinkError::Config(format!("MQTT URL '{url}': {why}"));
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(bad("must start with mqtt:// or mqtts://"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, _)) if !h.ends_with(']') && h.contains(':') => (rest, None),
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None if tls => 8883,
            None => 1883,
        };
        Ok(BrokerUrl {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

/// Everything a connection needs, checked at start-up (a bad CA file is a start-up error,
/// not a retry loop).
pub struct MqttSink {
    options: MqttOptions,
    topic: String,
    device: String,
    qos: QoS,
    retain: bool,
    name: String,
}

/// Results in flight at once: enough to hide a round trip, few enough to re-send cheaply.
const WINDOW: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl MqttSink {
    pub fn new(settings: &MqttSettings, device: &str) -> Result<Self, SinkError> {
        let url = BrokerUrl::parse(&settings.url)?;
        let qos = match settings.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            q => {
                return Err(SinkError::Config(format!(
                    "MQTT QoS {q}: use 0 or 1 (a result carries its frame number, so 1 with de-duplication by the consumer is exactly-once)"
                )))
            }
        };
        check_topic(&settings.topic)?;
        let mut options = MqttOptions::new(client_id(device), &url.host, url.port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        options.set_max_packet_size(1 << 20, 1 << 20);
        if let Some(user) = &settings.username {
            let password = match &settings.password_file {
                Some(path) => read_secret(path)?,
                None => String::new(),
            };
            options.set_credentials(user, password);
        } else if settings.password_file.is_some() {
            return Err(SinkError::Config(
                "MQTT password_file given without a username".into(),
            ));
        }
        if url.tls {
            options.set_transport(Transport::tls_with_config(tls_config(settings)?));
        } else if settings.ca.is_some() || settings.client_cert.is_some() {
            return Err(SinkError::Config(format!(
                "MQTT URL '{}' is not mqtts:// but a CA or client certificate is given",
                settings.url
            )));
        }
        Ok(MqttSink {
            options,
            topic: settings.topic.clone(),
            device: device.to_string(),
            qos,
            retain: settings.retain,
            name: format!("mqtt {}:{}", url.host, url.port),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn topic_for(&self, payload: &[u8]) -> String {
        let topic = self.topic.replace("{device}", &self.device);
        if !topic.contains("{class}") {
            return topic;
        }
        #[derive(Deserialize)]
        struct Top<'a> {
            #[serde(borrow)]
            top: Vec<Label<'a>>,
        }
        #[derive(Deserialize)]
        struct Label<'a> {
            label: &'a str,
        }
        let class = serde_json::from_slice::<Top>(payload)
            .ok()
            .and_then(|t| t.top.first().map(|l| l.label.replace(['/', '+', '#'], "_")))
            .unwrap_or_else(|| "unknown".into());
        topic.replace("{class}", &class)
    }

    /// Delivers from `spool` until `stop`, reconnecting with backoff.
    pub fn run(&self, spool: &Spool, stop: &AtomicBool, report: &Report) {
        let mut backoff = Backoff::SINK.delays();
        while !stop.load(Ordering::Relaxed) {
            let (client, mut connection) = Client::new(self.options.clone(), WINDOW + 8);
            let result = self.session(&client, &mut connection, spool, stop, report);
            match result {
                Ok(()) => return,
                Err(Failure { error, connected }) => {
                    if connected {
                        backoff.reset();
                    }
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

    fn session(
        &self,
        client: &Client,
        connection: &mut Connection,
        spool: &Spool,
        stop: &AtomicBool,
        report: &Report,
    ) -> Result<(), Failure> {
        let fail = |error: String, connected| Failure { error, connected };
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match connection.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    if ack.code != ConnectReturnCode::Success {
                        return Err(fail(format!("broker refused: {:?}", ack.code), false));
                    }
                    break;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(fail(e.to_string(), false)),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(fail("no answer to CONNECT within 10 s".into(), false))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(fail("the MQTT client closed".into(), false))
                }
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
        report(
            "sink_connected",
            None,
            serde_json::json!({ "sink": self.name, "spooled": spool.depth() }),
        );
        // Published, waiting for rumqttc to say which packet id it got.
        let mut unnumbered: VecDeque<u64> = VecDeque::new();
        // Packet id -> spool seq, waiting for the broker's PUBACK.
        let mut in_flight: HashMap<u16, u64> = HashMap::new();
        let mut acked: BTreeSet<u64> = BTreeSet::new();
        let mut last_read: Option<u64> = None;
        // Only a connection that got something through counts as working: one the broker
        // takes and drops at once (another client with our id) keeps backing off.
        let mut acked_any = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let busy = unnumbered.len() + in_flight.len();
            if busy < WINDOW {
                // Idle: wait on the spool a little; busy: only take what is there.
                let wait = if busy == 0 {
                    Duration::from_millis(100)
                } else {
                    Duration::ZERO
                };
                let entries = spool
                    .read_after(last_read, WINDOW - busy, wait)
                    .map_err(|e| fail(e.to_string(), acked_any))?;
                for entry in entries {
                    let topic = self.topic_for(&entry.bytes);
                    client
                        .try_publish(topic, self.qos, self.retain, entry.bytes)
                        .map_err(|e| fail(e.to_string(), acked_any))?;
                    unnumbered.push_back(entry.seq);
                    last_read = Some(entry.seq);
                }
            }
            let wait = if unnumbered.is_empty() && in_flight.is_empty() {
                // Keep-alive and broker packets only; not shorter, since every timeout
                // cancels rumqttc's poll.
                Duration::from_millis(20)
            } else {
                Duration::from_millis(100)
            };
            let event = match connection.recv_timeout(wait) {
                Ok(Ok(event)) => event,
                Ok(Err(e)) => return Err(fail(e.to_string(), acked_any)),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(fail("the MQTT client closed".into(), acked_any))
                }
            };
            let delivered = match event {
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    let Some(seq) = unnumbered.pop_front() else {
                        continue;
                    };
                    if self.qos == QoS::AtMostOnce {
                        acked.insert(seq);
                        true
                    } else {
                        in_flight.insert(pkid, seq);
                        false
                    }
                }
                Event::Incoming(Packet::PubAck(ack)) => match in_flight.remove(&ack.pkid) {
                    Some(seq) => {
                        acked.insert(seq);
                        true
                    }
                    None => false,
                },
                _ => false,
            };
            if delivered {
                acked_any = true;
                // Remove the delivered prefix: everything below the oldest result still
                // waiting for the broker.
                let oldest_waiting = unnumbered
                    .front()
                    .copied()
                    .into_iter()
                    .chain(in_flight.values().copied())
                    .min();
                let through = acked
                    .iter()
                    .copied()
                    .take_while(|&s| oldest_waiting.is_none_or(|w| s < w))
                    .last();
                if let Some(through) = through {
                    spool
                        .remove_through(through)
                        .map_err(|e| fail(e.to_string(), acked_any))?;
                    acked = acked.split_off(&(through + 1));
                }
            }
        }
    }
}

struct Failure {
    error: String,
    /// Results got through on this connection: the next attempt starts with a short delay.
    connected: bool,
}

/// `kestrel-DEVICE-MACHINE`: boards flashed from one image share a host name (and so a
/// default device name), and two clients with one id would take over each other's session.
fn client_id(device: &str) -> String {
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let machine: String = machine.trim().chars().take(8).collect();
    if machine.is_empty() {
        format!("kestrel-{device}")
    } else {
        format!("kestrel-{device}-{machine}")
    }
}

/// A topic template that gives a valid topic name for any device and class.
fn check_topic(template: &str) -> Result<(), SinkError> {
    let sample = template
        .replace("{device}", "device")
        .replace("{class}", "class");
    if sample.is_empty() || sample.contains(['+', '#', '\0']) || sample.contains(['{', '}']) {
        return Err(SinkError::Config(format!(
            "MQTT topic '{template}': a topic to publish to must be non-empty, without '+' or '#'; {{device}} and {{class}} are filled in"
        )));
    }
    Ok(())
}

fn read_secret(path: &std::path::Path) -> Result<String, SinkError> {
    let text = std::fs::read_to_string(path).map_err(|e| SinkError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

fn tls_config(settings: &MqttSettings) -> Result<TlsConfiguration, SinkError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem_err = |path: &std::path::Path, e: rustls::pki_types::pem::Error| SinkError::Read {
        path: path.display().to_string(),
        reason: format!("not a PEM file: {e}"),
    };
    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| pem_err(path, e))? {
                let cert = cert.map_err(|e| pem_err(path, e))?;
                roots.add(cert).map_err(|e| SinkError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SinkError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let config = match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| pem_err(cert, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_err(cert, e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| SinkError::Config(format!("TLS client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(SinkError::Config(
                "MQTT client_cert and client_key go together".into(),
            ))
        }
    };
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let u = BrokerUrl::parse("mqtt://127.0.0.1:18830").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (false, "127.0.0.1", 18830)
        );
        let u = BrokerUrl::parse("mqtts://broker.example").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (true, "broker.example", 8883)
        );
        assert_eq!(BrokerUrl::parse("mqtt://[::1]:1884").unwrap().host, "::1");
        for bad in ["http://x", "mqtt://", "mqtt://host:port"] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    fn settings(url: &str) -> MqttSettings {
        MqttSettings {
            topic: "kestrel/{device}/{class}".into(),
            ..MqttSettings::new(url.into())
        }
    }

    #[test]
    fn topics_name_the_device_and_class() {
        let sink = MqttSink::new(&settings("mqtt://localhost"), "cam-7").unwrap();
        let payload = br#"{"frame":3,"top":[{"label":"cat","index":3,"score":0.9}]}"#;
        assert_eq!(sink.topic_for(payload), "kestrel/cam-7/cat");
        assert_eq!(sink.topic_for(b"not json"), "kestrel/cam-7/unknown");
    }

    #[test]
    fn bad_settings_are_start_up_errors() {
        let mut s = settings("mqtt://localhost");
        s.qos = 2;
        assert!(MqttSink::new(&s, "d").is_err());
        let mut s = settings("mqtts://localhost");
        s.ca = Some("/nonexistent/ca.pem".into());
        let e = MqttSink::new(&s, "d").err().unwrap();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let mut s = settings("mqtt://localhost");
        s.password_file = Some("/etc/hostname".into());
        assert!(MqttSink::new(&s, "d").is_err());
        for topic in ["", "kestrel/+/result", "kestrel/#", "kestrel/{board}"] {
            let mut s = settings("mqtt://localhost");
            s.topic = topic.into();
            assert!(MqttSink::new(&s, "d").is_err(), "{topic}");
        }
        // The default roots (no CA given) build a TLS configuration.
        assert!(MqttSink::new(&settings("mqtts://localhost"), "d").is_ok());
    }
}
