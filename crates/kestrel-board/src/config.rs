//! Board profiles, the TOML config file and command-line flags: flags override the file,
//! the file overrides the profile.

use std::path::{Path, PathBuf};

use kestrel_runtime::Isa;
use serde::Deserialize;

use crate::delivery::http::HttpSettings;
use crate::delivery::mqtt::MqttSettings;
use crate::delivery::spool::SpoolLimits;
use crate::snapshot::SnapshotSettings;

/// What a board binary knows about its board.
#[derive(Clone, Copy, Debug)]
pub struct BoardProfile {
    /// Short name: `rpi5`, also the binary's and the package's suffix.
    pub name: &'static str,
    pub description: &'static str,
    /// The CPU and the kernel path the runtime takes on it: a model packed for other
    /// kernels is refused (it would run the portable tile, several times slower).
    pub cpu: &'static str,
    pub kernels: Isa,
    pub threads: usize,
    /// Keep inference thread `i` on core `i` (steady latency on a board that does
    /// little else).
    pub pin_threads: bool,
    /// Default trigger input line.
    pub gpiochip: &'static str,
    pub trigger_line: u32,
    /// Default camera spec.
    pub camera: &'static str,
    /// Capture size asked of V4L2 cameras.
    pub camera_size: [u32; 2],
}

/// The TOML config file; every key is optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub model: Option<PathBuf>,
    pub camera: Option<String>,
    pub camera_size: Option<[u32; 2]>,
    pub trigger: Option<String>,
    pub threads: Option<usize>,
    pub top: Option<usize>,
    pub output: Option<OutputConfig>,
    /// The name results carry (default: the host name).
    pub device: Option<String>,
    /// Where the spools and the frame counter live (default: `$STATE_DIRECTORY`).
    pub spool: Option<PathBuf>,
    pub spool_max_results: Option<u64>,
    pub spool_max_mb: Option<u64>,
    /// `ADDRESS:PORT` of the Prometheus text endpoint.
    pub metrics: Option<String>,
    pub mqtt: Option<MqttSettings>,
    pub http: Option<HttpSettings>,
    pub snapshots: Option<SnapshotSettings>,
}

/// An output line raised while `class` is seen with a score ≥ `on` (lowered below `off`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub chip: Option<String>,
    pub line: u32,
    pub class: String,
    #[serde(default = "default_on")]
    pub on: f32,
    pub off: Option<f32>,
}

fn default_on() -> f32 {
    0.6
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config {path} is not valid: {reason}")]
    Parse { path: String, reason: String },
    #[error("{0}")]
    Usage(String),
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }
}

/// Flags given on the command line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Flags {
    pub model: Option<PathBuf>,
    pub camera: Option<String>,
    pub trigger: Option<String>,
    pub threads: Option<usize>,
    pub top: Option<usize>,
    pub config: Option<PathBuf>,
    pub mqtt: Option<String>,
    pub mqtt_topic: Option<String>,
    pub mqtt_qos: Option<u8>,
    pub device: Option<String>,
    pub http: Option<String>,
    pub spool: Option<PathBuf>,
    pub snapshots: Option<PathBuf>,
    pub metrics: Option<String>,
    pub help: bool,
    pub version: bool,
    pub print_profile: bool,
}

pub fn usage(profile: &BoardProfile) -> String {
    format!(
        "kestrel-{name}: {desc}

Waits for a trigger, grabs a camera frame, classifies it with a Kestrel .kes model and
prints one JSON line per frame on stdout; optionally also sends it to an MQTT broker and
an HTTP endpoint, spooled on disk while they are unreachable.

Usage: kestrel-{name} [--model PATH] [--camera SOURCE] [--trigger TRIGGER] [--threads N]
                      [--top K] [--config FILE] [--mqtt URL] [--http URL] [--spool DIR] …

  --model PATH       the .kes model (default: the one embedded at build time, if any)
  --camera SOURCE    v4l2:/dev/videoN | pipe:[FORMAT:WxH:]COMMAND | dir:FOLDER | file:IMAGE
                     (default: {camera})
  --trigger TRIGGER  gpio[:CHIP:LINE[:rising|falling|both][:Nms]] | interval:MS | stdin | continuous
                     (default: gpio = {chip} line {line}, rising edge, 20 ms debounce)
  --threads N        inference threads (default {threads})
  --top K            classes per result (default 3)
  --device NAME      the name in every result and MQTT topic (default: the host name)
  --mqtt URL         mqtt://HOST[:PORT] or mqtts://HOST[:PORT]: publish every result
  --mqtt-topic T     topic template, {{device}} and {{class}} filled in
                     (default kestrel/{{device}}/result)
  --mqtt-qos 0|1     (default 1: kept in the spool until the broker acknowledges it)
  --http URL         POST every result as JSON to URL (retried until it answers 2xx)
  --spool DIR        results waiting for a sink, and the frame counter
                     (default: $STATE_DIRECTORY, set by the systemd unit)
  --snapshots DIR    save the frame behind each result as a JPEG (a size-capped ring)
  --metrics ADDR     serve Prometheus text on ADDR:PORT/metrics (e.g. 127.0.0.1:9464)
  --config FILE      TOML file with the same keys (model, camera, camera_size, trigger,
                     threads, top, device, spool, spool_max_results, spool_max_mb,
                     metrics, [output], [mqtt], [http], [snapshots]); flags override it

The model file is watched: a new version (or SIGHUP) is checked and test-run, then
takes over between two frames; a bad one is refused with a model_refused event.
  --print-profile    print this board's profile as JSON and exit
",
        name = profile.name,
        desc = profile.description,
        camera = profile.camera,
        chip = profile.gpiochip,
        line = profile.trigger_line,
        threads = profile.threads,
    )
}

impl Flags {
    pub fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Self, ConfigError> {
        use lexopt::prelude::*;
        let usage_err = |e: lexopt::Error| ConfigError::Usage(e.to_string());
        let mut flags = Flags::default();
        let mut parser = lexopt::Parser::from_args(args);
        while let Some(arg) = parser.next().map_err(usage_err)? {
            match arg {
                Long("model") => flags.model = Some(parser.value().map_err(usage_err)?.into()),
                Long("camera") => flags.camera = Some(string(&mut parser)?),
                Long("trigger") => flags.trigger = Some(string(&mut parser)?),
                Long("threads") => {
                    flags.threads = Some(
                        parser
                            .value()
                            .map_err(usage_err)?
                            .parse()
                            .map_err(usage_err)?,
                    )
                }
                Long("top") => {
                    flags.top = Some(
                        parser
                            .value()
                            .map_err(usage_err)?
                            .parse()
                            .map_err(usage_err)?,
                    )
                }
                Long("config") => flags.config = Some(parser.value().map_err(usage_err)?.into()),
                Long("mqtt") => flags.mqtt = Some(string(&mut parser)?),
                Long("mqtt-topic") => flags.mqtt_topic = Some(string(&mut parser)?),
                Long("mqtt-qos") => {
                    flags.mqtt_qos = Some(
                        parser
                            .value()
                            .map_err(usage_err)?
                            .parse()
                            .map_err(usage_err)?,
                    )
                }
                Long("device") => flags.device = Some(string(&mut parser)?),
                Long("http") => flags.http = Some(string(&mut parser)?),
                Long("spool") => flags.spool = Some(parser.value().map_err(usage_err)?.into()),
                Long("snapshots") => {
                    flags.snapshots = Some(parser.value().map_err(usage_err)?.into())
                }
                Long("metrics") => flags.metrics = Some(string(&mut parser)?),
                Long("print-profile") => flags.print_profile = true,
                Short('h') | Long("help") => flags.help = true,
                Short('V') | Long("version") => flags.version = true,
                _ => return Err(usage_err(arg.unexpected())),
            }
        }
        Ok(flags)
    }
}

fn string(parser: &mut lexopt::Parser) -> Result<String, ConfigError> {
    parser
        .value()
        .map_err(|e| ConfigError::Usage(e.to_string()))?
        .into_string()
        .map_err(|v| ConfigError::Usage(format!("not UTF-8: {v:?}")))
}

/// Everything the service needs, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `None`: the model embedded in the binary.
    pub model: Option<PathBuf>,
    pub camera: String,
    pub camera_size: [u32; 2],
    pub trigger: String,
    pub threads: usize,
    pub top: usize,
    pub output: Option<OutputConfig>,
    pub device: String,
    /// `None`: no state directory, so no remote sinks and a frame counter from 0.
    pub spool: Option<PathBuf>,
    pub spool_limits: SpoolLimits,
    pub metrics: Option<String>,
    pub mqtt: Option<MqttSettings>,
    pub http: Option<HttpSettings>,
    pub snapshots: Option<SnapshotSettings>,
}

/// What the settings take from the machine rather than the user.
#[derive(Clone, Debug)]
pub struct HostFacts {
    pub hostname: String,
    /// `$STATE_DIRECTORY` (systemd's `StateDirectory=`).
    pub state_directory: Option<PathBuf>,
}

impl Default for HostFacts {
    /// A host named `kestrel` outside systemd.
    fn default() -> Self {
        HostFacts {
            hostname: "kestrel".into(),
            state_directory: None,
        }
    }
}

impl HostFacts {
    pub fn read() -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        // systemd joins several directories with ':'; the first is ours.
        let state_directory = std::env::var_os("STATE_DIRECTORY")
            .and_then(|v| {
                v.to_str()
                    .and_then(|s| s.split(':').next())
                    .map(PathBuf::from)
            })
            .filter(|p| !p.as_os_str().is_empty());
        HostFacts {
            hostname: if hostname.is_empty() {
                "kestrel".into()
            } else {
                hostname
            },
            state_directory,
        }
    }
}

impl Settings {
    pub fn resolve(
        profile: &BoardProfile,
        file: FileConfig,
        flags: &Flags,
        host: &HostFacts,
    ) -> Result<Self, ConfigError> {
        let threads = flags.threads.or(file.threads).unwrap_or(profile.threads);
        let top = flags.top.or(file.top).unwrap_or(3);
        if threads == 0 || top == 0 {
            return Err(ConfigError::Usage(
                "--threads and --top must be at least 1".into(),
            ));
        }
        let mqtt = match (flags.mqtt.clone(), file.mqtt) {
            (Some(url), Some(file)) => Some(MqttSettings { url, ..file }),
            (Some(url), None) => Some(MqttSettings::new(url)),
            (None, file) => file,
        };
        let mqtt = match mqtt {
            Some(mut m) => {
                if let Some(t) = &flags.mqtt_topic {
                    m.topic = t.clone();
                }
                if let Some(q) = flags.mqtt_qos {
                    m.qos = q;
                }
                Some(m)
            }
            None if flags.mqtt_topic.is_some() || flags.mqtt_qos.is_some() => {
                return Err(ConfigError::Usage(
                    "--mqtt-topic and --mqtt-qos need a broker: --mqtt URL or [mqtt] url".into(),
                ))
            }
            None => None,
        };
        let http = match (flags.http.clone(), file.http) {
            (Some(url), Some(file)) => Some(HttpSettings { url, ..file }),
            (Some(url), None) => Some(HttpSettings::new(url)),
            (None, file) => file,
        };
        let spool = flags
            .spool
            .clone()
            .or(file.spool)
            .or_else(|| host.state_directory.clone());
        if spool.is_none() && (mqtt.is_some() || http.is_some()) {
            return Err(ConfigError::Usage(
                "--mqtt and --http keep results in a spool until delivered: pass --spool DIR \
                 (the systemd unit's StateDirectory= sets one)"
                    .into(),
            ));
        }
        let defaults = SpoolLimits::default();
        let spool_limits = SpoolLimits {
            max_results: file.spool_max_results.unwrap_or(defaults.max_results),
            max_bytes: file
                .spool_max_mb
                .map_or(defaults.max_bytes, |mb| mb.saturating_mul(1 << 20)),
            ..defaults
        };
        if spool_limits.max_results == 0 || spool_limits.max_bytes == 0 {
            return Err(ConfigError::Usage(
                "spool_max_results and spool_max_mb must be at least 1".into(),
            ));
        }
        let snapshots = match (flags.snapshots.clone(), file.snapshots) {
            (Some(dir), Some(file)) => Some(SnapshotSettings { dir, ..file }),
            (Some(dir), None) => Some(SnapshotSettings::new(dir)),
            (None, file) => file,
        };
        let device = flags
            .device
            .clone()
            .or(file.device)
            .unwrap_or_else(|| host.hostname.clone());
        if device.is_empty() || device.contains(['/', '+', '#']) {
            return Err(ConfigError::Usage(format!(
                "device name '{device}' must be non-empty and free of '/', '+' and '#' (it is part of MQTT topics)"
            )));
        }
        Ok(Settings {
            device,
            spool,
            spool_limits,
            metrics: flags.metrics.clone().or(file.metrics),
            mqtt,
            http,
            snapshots,
            model: flags.model.clone().or(file.model),
            camera: flags
                .camera
                .clone()
                .or(file.camera)
                .unwrap_or_else(|| profile.camera.to_string()),
            camera_size: file.camera_size.unwrap_or(profile.camera_size),
            trigger: flags
                .trigger
                .clone()
                .or(file.trigger)
                .unwrap_or_else(|| "gpio".to_string()),
            threads,
            top,
            output: file.output,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: BoardProfile = BoardProfile {
        name: "test",
        description: "test board",
        cpu: "none",
        kernels: Isa::Scalar,
        threads: 4,
        pin_threads: false,
        gpiochip: "/dev/gpiochip0",
        trigger_line: 17,
        camera: "v4l2:/dev/video0",
        camera_size: [640, 480],
    };

    #[test]
    fn flags_override_the_file_which_overrides_the_profile() {
        let file: FileConfig = toml::from_str(
            r#"
            model = "/usr/share/kestrel/model.kes"
            trigger = "interval:500"
            threads = 2
            [output]
            line = 27
            class = "cat"
            on = 0.8
            off = 0.5
            "#,
        )
        .unwrap();
        let flags = Flags::parse(
            ["--threads", "1", "--camera", "dir:/tmp/x"]
                .iter()
                .map(Into::into),
        )
        .unwrap();
        let s = Settings::resolve(&PROFILE, file, &flags, &HostFacts::default()).unwrap();
        assert_eq!(s.threads, 1);
        assert_eq!(s.camera, "dir:/tmp/x");
        assert_eq!(s.trigger, "interval:500");
        assert_eq!(
            s.model.unwrap(),
            PathBuf::from("/usr/share/kestrel/model.kes")
        );
        assert_eq!(s.camera_size, [640, 480]);
        assert_eq!(s.output.unwrap().class, "cat");
        let host = HostFacts {
            hostname: "pi-7".into(),
            state_directory: None,
        };
        let s =
            Settings::resolve(&PROFILE, FileConfig::default(), &Flags::default(), &host).unwrap();
        assert_eq!((s.threads, s.trigger.as_str()), (4, "gpio"));
        assert_eq!(
            (s.device.as_str(), &s.spool, &s.mqtt),
            ("pi-7", &None, &None)
        );
    }

    #[test]
    fn sink_flags_override_the_file_tables() {
        let file: FileConfig = toml::from_str(
            r#"
            device = "cam-07"
            spool_max_results = 500
            spool_max_mb = 2
            [mqtt]
            url = "mqtts://broker.example"
            topic = "site/{device}/{class}"
            retain = true
            username = "cam"
            password_file = "/etc/kestrel/mqtt.password"
            [http]
            url = "https://example.invalid/hook"
            [snapshots]
            dir = "/var/lib/kestrel-rpi5/snapshots"
            classes = ["cat"]
            min_score = 0.8
            "#,
        )
        .unwrap();
        let host = HostFacts {
            hostname: "pi".into(),
            state_directory: Some("/var/lib/kestrel-test".into()),
        };
        let flags = Flags::parse(
            ["--mqtt", "mqtt://127.0.0.1:1884", "--mqtt-qos", "0"]
                .iter()
                .map(Into::into),
        )
        .unwrap();
        let s = Settings::resolve(&PROFILE, file, &flags, &host).unwrap();
        let m = s.mqtt.unwrap();
        assert_eq!(
            (m.url.as_str(), m.qos, m.retain),
            ("mqtt://127.0.0.1:1884", 0, true)
        );
        assert_eq!(m.topic, "site/{device}/{class}");
        assert_eq!(s.device, "cam-07");
        assert_eq!(s.spool.unwrap(), PathBuf::from("/var/lib/kestrel-test"));
        assert_eq!(s.spool_limits.max_results, 500);
        assert_eq!(s.spool_limits.max_bytes, 2 << 20);
        assert_eq!(s.snapshots.unwrap().classes, ["cat"]);
        assert_eq!(s.http.unwrap().timeout_ms, 5000);
        // A remote sink with nowhere to spool, and a topic without a broker, are refused.
        let no_state = HostFacts::default();
        let flags = Flags::parse(["--http", "http://x/"].iter().map(Into::into)).unwrap();
        let e = Settings::resolve(&PROFILE, FileConfig::default(), &flags, &no_state);
        assert!(e.unwrap_err().to_string().contains("--spool"));
        let flags = Flags::parse(["--mqtt-topic", "t"].iter().map(Into::into)).unwrap();
        assert!(Settings::resolve(&PROFILE, FileConfig::default(), &flags, &no_state).is_err());
        let flags = Flags::parse(["--device", "a/b"].iter().map(Into::into)).unwrap();
        assert!(Settings::resolve(&PROFILE, FileConfig::default(), &flags, &no_state).is_err());
    }

    #[test]
    fn unknown_keys_and_flags_are_errors() {
        assert!(toml::from_str::<FileConfig>("modle = 'x'").is_err());
        let e = Flags::parse(["--modle", "x"].iter().map(Into::into)).unwrap_err();
        assert!(e.to_string().contains("modle"), "{e}");
        assert!(Flags::parse(["--threads", "many"].iter().map(Into::into)).is_err());
    }
}
