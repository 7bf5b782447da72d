//! Board profiles, the TOML config file and command-line flags: flags override the file,
//! the file overrides the profile.

use std::path::{Path, PathBuf};

use kestrel_runtime::Isa;
use serde::Deserialize;

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
    pub help: bool,
    pub version: bool,
    pub print_profile: bool,
}

pub fn usage(profile: &BoardProfile) -> String {
    format!(
        "kestrel-{name}: {desc}

Waits for a trigger, grabs a camera frame, classifies it with a Kestrel .kes model and
prints one JSON line per frame on stdout.

Usage: kestrel-{name} [--model PATH] [--camera SOURCE] [--trigger TRIGGER] [--threads N]
                      [--top K] [--config FILE]

  --model PATH       the .kes model (default: the one embedded at build time, if any)
  --camera SOURCE    v4l2:/dev/videoN | pipe:[FORMAT:WxH:]COMMAND | dir:FOLDER | file:IMAGE
                     (default: {camera})
  --trigger TRIGGER  gpio[:CHIP:LINE[:rising|falling|both][:Nms]] | interval:MS | stdin | continuous
                     (default: gpio = {chip} line {line}, rising edge, 20 ms debounce)
  --threads N        inference threads (default {threads})
  --top K            classes per result (default 3)
  --config FILE      TOML file with the same keys (model, camera, camera_size, trigger,
                     threads, top, [output]); flags override it
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
}

impl Settings {
    pub fn resolve(
        profile: &BoardProfile,
        file: FileConfig,
        flags: &Flags,
    ) -> Result<Self, ConfigError> {
        let threads = flags.threads.or(file.threads).unwrap_or(profile.threads);
        let top = flags.top.or(file.top).unwrap_or(3);
        if threads == 0 || top == 0 {
            return Err(ConfigError::Usage(
                "--threads and --top must be at least 1".into(),
            ));
        }
        Ok(Settings {
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
        let s = Settings::resolve(&PROFILE, file, &flags).unwrap();
        assert_eq!(s.threads, 1);
        assert_eq!(s.camera, "dir:/tmp/x");
        assert_eq!(s.trigger, "interval:500");
        assert_eq!(
            s.model.unwrap(),
            PathBuf::from("/usr/share/kestrel/model.kes")
        );
        assert_eq!(s.camera_size, [640, 480]);
        assert_eq!(s.output.unwrap().class, "cat");
        let s = Settings::resolve(&PROFILE, FileConfig::default(), &Flags::default()).unwrap();
        assert_eq!((s.threads, s.trigger.as_str()), (4, "gpio"));
    }

    #[test]
    fn unknown_keys_and_flags_are_errors() {
        assert!(toml::from_str::<FileConfig>("modle = 'x'").is_err());
        let e = Flags::parse(["--modle", "x"].iter().map(Into::into)).unwrap_err();
        assert!(e.to_string().contains("modle"), "{e}");
        assert!(Flags::parse(["--threads", "many"].iter().map(Into::into)).is_err());
    }
}
