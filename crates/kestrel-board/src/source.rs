//! Camera sources behind one trait, opened from a spec string:
//!
//! | spec | source |
//! | --- | --- |
//! | `v4l2:/dev/video0` | a V4L2 (USB/UVC) camera, MJPEG if it offers it, else YUYV |
//! | `pipe:<command>` | MJPEG frames on a child process's stdout |
//! | `pipe:<format>:<W>x<H>:<command>` | raw frames (`yuv420`, `yuyv`, `rgb24`, `bgr24`) of a fixed size |
//! | `dir:<folder>` | each image under a folder once, in name order (replay) |
//! | `file:<image>` | the same image for every frame |

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use crate::frame::{Frame, PixelFormat};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("camera spec '{spec}' is not valid: {reason}")]
    Spec { spec: String, reason: String },
    #[error("cannot open camera {source_name}: {reason}")]
    Open { source_name: String, reason: String },
    /// The camera went away (unplugged, the child process died): re-open and go on.
    #[error("camera {source_name} failed: {reason}")]
    Disconnected { source_name: String, reason: String },
    /// This one frame is unusable; the next may be fine.
    #[error("bad frame from {source_name}: {reason}")]
    BadFrame { source_name: String, reason: String },
    /// A replay source has no more frames.
    #[error("camera {source_name} has no more frames")]
    Exhausted { source_name: String },
}

/// A camera. `grab` blocks until a frame is there.
pub trait FrameSource {
    fn grab(&mut self) -> Result<Frame<'_>, SourceError>;
    /// What the source is, for logs and the `source` field of results.
    fn name(&self) -> &str;
    /// Reconnects after [`SourceError::Disconnected`].
    fn reopen(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// Opens a camera from its spec. `size` is the capture size asked of V4L2 cameras.
pub fn open(spec: &str, size: [u32; 2]) -> Result<Box<dyn FrameSource>, SourceError> {
    let bad = |reason: &str| SourceError::Spec {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let (kind, rest) = spec
        .split_once(':')
        .ok_or_else(|| bad("expected KIND:ARGUMENT (v4l2:, pipe:, dir:, file:)"))?;
    if rest.is_empty() {
        return Err(bad("the argument after the colon is empty"));
    }
    match kind {
        "dir" => Ok(Box::new(DirSource::open(Path::new(rest))?)),
        "file" => Ok(Box::new(FileSource::open(Path::new(rest))?)),
        "pipe" => Ok(Box::new(PipeSource::open(
            &PipeSpec::parse(rest).map_err(|r| bad(&r))?,
        )?)),
        "v4l2" => open_v4l2(rest, size),
        _ => Err(bad("unknown camera kind (v4l2:, pipe:, dir:, file:)")),
    }
}

#[cfg(feature = "v4l2")]
fn open_v4l2(path: &str, size: [u32; 2]) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(Box::new(crate::v4l2::V4l2Source::open(path, size)?))
}

#[cfg(not(feature = "v4l2"))]
fn open_v4l2(path: &str, _size: [u32; 2]) -> Result<Box<dyn FrameSource>, SourceError> {
    Err(SourceError::Open {
        source_name: path.to_string(),
        reason: "this binary was built without the `v4l2` feature".into(),
    })
}

/// Decodes an image file the way the host tools do (the `image` crate, then RGB8).
fn decode_file(path: &Path) -> Result<(Vec<u8>, usize, usize), String> {
    let img = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err("the image is empty".into());
    }
    Ok((img.into_raw(), w, h))
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| {
            matches!(
                e.to_ascii_lowercase().as_str(),
                "jpg" | "jpeg" | "png" | "bmp" | "ppm" | "pgm"
            )
        })
        .unwrap_or(false)
}

/// Replays every image under a folder (recursively, sorted by path) once.
pub struct DirSource {
    root: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    rgb: Vec<u8>,
    origin: String,
    name: String,
}

impl DirSource {
    pub fn open(root: &Path) -> Result<Self, SourceError> {
        let name = format!("dir:{}", root.display());
        let mut files = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| SourceError::Open {
                source_name: name.clone(),
                reason: format!("{}: {e}", dir.display()),
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if is_image(&path) {
                    files.push(path);
                }
            }
        }
        if files.is_empty() {
            return Err(SourceError::Open {
                source_name: name,
                reason: "no images (.jpg, .png, .bmp, .ppm) in the folder".into(),
            });
        }
        files.sort();
        Ok(DirSource {
            root: root.to_path_buf(),
            files,
            next: 0,
            rgb: Vec::new(),
            origin: String::new(),
            name,
        })
    }
}

impl FrameSource for DirSource {
    fn grab(&mut self) -> Result<Frame<'_>, SourceError> {
        let Some(path) = self.files.get(self.next) else {
            return Err(SourceError::Exhausted {
                source_name: self.name.clone(),
            });
        };
        self.next += 1;
        self.origin = path
            .strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string();
        let (rgb, w, h) = decode_file(path).map_err(|reason| SourceError::BadFrame {
            source_name: self.name.clone(),
            reason: format!("{}: {reason}", self.origin),
        })?;
        self.rgb = rgb;
        Ok(Frame {
            format: PixelFormat::Rgb24,
            width: w,
            height: h,
            data: &self.rgb,
            origin: &self.origin,
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// The same decoded image for every frame.
pub struct FileSource {
    rgb: Vec<u8>,
    width: usize,
    height: usize,
    origin: String,
    name: String,
}

impl FileSource {
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let name = format!("file:{}", path.display());
        let (rgb, width, height) = decode_file(path).map_err(|reason| SourceError::Open {
            source_name: name.clone(),
            reason,
        })?;
        let origin = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(FileSource {
            rgb,
            width,
            height,
            origin,
            name,
        })
    }
}

impl FrameSource for FileSource {
    fn grab(&mut self) -> Result<Frame<'_>, SourceError> {
        Ok(Frame {
            format: PixelFormat::Rgb24,
            width: self.width,
            height: self.height,
            data: &self.rgb,
            origin: &self.origin,
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// `pipe:` arguments: the frame format and the shell command that writes frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipeSpec {
    pub format: PixelFormat,
    /// Needed for raw formats; MJPEG frames carry their own.
    pub size: Option<[usize; 2]>,
    pub command: String,
}

impl PipeSpec {
    /// `<command>` (MJPEG), `mjpeg:<command>` or `<format>:<W>x<H>:<command>`.
    pub fn parse(rest: &str) -> Result<Self, String> {
        let mut parts = rest.splitn(3, ':');
        let first = parts.next().unwrap_or_default();
        let Some(format) = PixelFormat::parse(first) else {
            return Ok(PipeSpec {
                format: PixelFormat::Mjpeg,
                size: None,
                command: rest.to_string(),
            });
        };
        if format == PixelFormat::Mjpeg {
            let command = rest[first.len()..].trim_start_matches(':').to_string();
            return if command.is_empty() {
                Err("no command after mjpeg:".into())
            } else {
                Ok(PipeSpec {
                    format,
                    size: None,
                    command,
                })
            };
        }
        let size = parts
            .next()
            .and_then(|s| s.split_once('x'))
            .and_then(|(w, h)| Some([w.parse().ok()?, h.parse().ok()?]))
            .filter(|[w, h]: &[usize; 2]| *w > 0 && *h > 0)
            .ok_or_else(|| format!("{format} frames need a size: pipe:{format}:WxH:COMMAND"))?;
        let command = parts.next().unwrap_or_default().to_string();
        if command.is_empty() {
            return Err(format!(
                "no command after pipe:{format}:{}x{}:",
                size[0], size[1]
            ));
        }
        Ok(PipeSpec {
            format,
            size: Some(size),
            command,
        })
    }
}

/// Frames from a child process (`sh -c COMMAND`): how CSI cameras are read through
/// `rpicam-vid` on a Pi and `gst-launch-1.0 nvarguscamerasrc` on a Jetson.
pub struct PipeSource {
    spec: PipeSpec,
    child: Option<(Child, ChildStdout)>,
    buf: Vec<u8>,
    /// MJPEG: the frame handed out last, `buf[frame.0..frame.1]`, dropped on the next grab.
    frame: (usize, usize),
    name: String,
}

impl PipeSource {
    pub fn open(spec: &PipeSpec) -> Result<Self, SourceError> {
        let mut source = PipeSource {
            spec: spec.clone(),
            child: None,
            buf: Vec::new(),
            frame: (0, 0),
            name: format!("pipe:{}", spec.command),
        };
        source.reopen()?;
        Ok(source)
    }

    fn disconnected(&mut self, reason: String) -> SourceError {
        if let Some((mut child, _)) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        SourceError::Disconnected {
            source_name: self.name.clone(),
            reason,
        }
    }
}

impl FrameSource for PipeSource {
    fn grab(&mut self) -> Result<Frame<'_>, SourceError> {
        let Some((_, stdout)) = self.child.as_mut() else {
            return Err(self.disconnected("the command is not running".into()));
        };
        if let Some([w, h]) = self.spec.size {
            let len = self.spec.format.frame_len(w, h).unwrap_or(0);
            self.buf.resize(len, 0);
            if let Err(e) = stdout.read_exact(&mut self.buf) {
                return Err(self.disconnected(format!("reading a {len}-byte frame: {e}")));
            }
            return Ok(Frame {
                format: self.spec.format,
                width: w,
                height: h,
                data: &self.buf,
                origin: &self.name,
            });
        }
        // MJPEG: drop the last frame, then read until a whole JPEG is buffered.
        self.buf.drain(..self.frame.1);
        self.frame = (0, 0);
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match find_jpeg(&self.buf) {
                JpegScan::Complete { start, end } => {
                    self.frame = (start, end);
                    return Ok(Frame {
                        format: PixelFormat::Mjpeg,
                        width: 0,
                        height: 0,
                        data: &self.buf[start..end],
                        origin: &self.name,
                    });
                }
                JpegScan::Garbage { skip } => {
                    self.buf.drain(..skip);
                }
                JpegScan::NeedMore => {}
            }
            if self.buf.len() > 64 << 20 {
                self.buf.clear();
                return Err(SourceError::BadFrame {
                    source_name: self.name.clone(),
                    reason: "no complete JPEG in 64 MiB of output".into(),
                });
            }
            let Some((_, stdout)) = self.child.as_mut() else {
                return Err(self.disconnected("the command is not running".into()));
            };
            match stdout.read(&mut chunk) {
                Ok(0) => return Err(self.disconnected("the command's output ended".into())),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.disconnected(format!("reading its output: {e}"))),
            }
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        if let Some((mut child, _)) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.buf.clear();
        self.frame = (0, 0);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.spec.command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| SourceError::Open {
                source_name: self.name.clone(),
                reason: e.to_string(),
            })?;
        let stdout = child.stdout.take().ok_or_else(|| SourceError::Open {
            source_name: self.name.clone(),
            reason: "no stdout".into(),
        })?;
        self.child = Some((child, stdout));
        Ok(())
    }
}

impl Drop for PipeSource {
    fn drop(&mut self) {
        if let Some((mut child, _)) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum JpegScan {
    Complete {
        start: usize,
        end: usize,
    },
    /// Bytes before the next start-of-image marker: not part of any frame.
    Garbage {
        skip: usize,
    },
    NeedMore,
}

/// Finds the first whole JPEG in `buf` by walking its marker segments (so an EXIF
/// thumbnail's end marker is not taken for the frame's), then the entropy-coded data.
fn find_jpeg(buf: &[u8]) -> JpegScan {
    let Some(start) = buf.windows(2).position(|w| w == [0xFF, 0xD8]) else {
        // Keep a trailing 0xFF: it may be the first half of the next marker.
        let skip = buf.len() - usize::from(buf.last() == Some(&0xFF));
        return if skip > 0 {
            JpegScan::Garbage { skip }
        } else {
            JpegScan::NeedMore
        };
    };
    if start > 0 {
        return JpegScan::Garbage { skip: start };
    }
    let mut i = 2;
    loop {
        // Fill bytes: any number of 0xFF before a marker.
        while buf.get(i) == Some(&0xFF) && buf.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (buf.get(i), buf.get(i + 1)) else {
            return if i + 1 >= buf.len() {
                JpegScan::NeedMore
            } else {
                // Not a marker where one must be: resynchronise on the next SOI.
                JpegScan::Garbage { skip: 2 }
            };
        };
        match marker {
            0xD9 => {
                return JpegScan::Complete {
                    start: 0,
                    end: i + 2,
                }
            }
            0xD0..=0xD7 | 0x01 => i += 2,
            _ => {
                let Some(len) = buf.get(i + 2..i + 4) else {
                    return JpegScan::NeedMore;
                };
                i += 2 + u16::from_be_bytes([len[0], len[1]]) as usize;
                if marker == 0xDA {
                    // Entropy-coded data: 0xFF is always followed by 0x00 or a restart
                    // marker inside it, so the next other marker ends it.
                    loop {
                        match (buf.get(i), buf.get(i + 1)) {
                            (Some(&0xFF), Some(&m)) if m != 0x00 && !(0xD0..=0xD7).contains(&m) => {
                                break
                            }
                            (Some(_), Some(_)) => i += 1,
                            _ => return JpegScan::NeedMore,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_jpeg(shade: u8) -> Vec<u8> {
        let rgb = vec![shade; 8 * 8 * 3];
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut out)
            .encode(&rgb, 8, 8, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn jpeg_frames_are_cut_from_a_stream() {
        let a = tiny_jpeg(10);
        let b = tiny_jpeg(200);
        let mut stream = b"junk".to_vec();
        stream.extend(&a);
        stream.extend(&b);
        assert_eq!(find_jpeg(&stream), JpegScan::Garbage { skip: 4 });
        let s = &stream[4..];
        assert_eq!(
            find_jpeg(s),
            JpegScan::Complete {
                start: 0,
                end: a.len()
            }
        );
        for cut in 0..b.len() {
            assert_eq!(find_jpeg(&b[..cut]), JpegScan::NeedMore, "cut at {cut}");
        }
    }

    #[test]
    fn pipe_specs() {
        let p = PipeSpec::parse("rpicam-vid -t 0 --codec mjpeg -o -").unwrap();
        assert_eq!(p.format, PixelFormat::Mjpeg);
        assert_eq!(p.command, "rpicam-vid -t 0 --codec mjpeg -o -");
        let p = PipeSpec::parse("yuv420:640x480:rpicam-vid -o -").unwrap();
        assert_eq!((p.format, p.size), (PixelFormat::I420, Some([640, 480])));
        assert_eq!(p.command, "rpicam-vid -o -");
        assert!(PipeSpec::parse("yuyv:640:cat").is_err());
        assert!(PipeSpec::parse("rgb24:2x2:").is_err());
        assert!(PipeSpec::parse("mjpeg:").is_err());
    }

    #[test]
    fn pipe_source_reads_mjpeg_and_raw_frames_and_reports_the_end() {
        let dir = std::env::temp_dir().join(format!("kestrel-pipe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("two.mjpeg");
        let mut bytes = tiny_jpeg(10);
        bytes.extend(tiny_jpeg(200));
        std::fs::write(&f, &bytes).unwrap();
        let mut src = open(&format!("pipe:cat {}", f.display()), [0, 0]).unwrap();
        for _ in 0..2 {
            let frame = src.grab().unwrap();
            assert_eq!(frame.format, PixelFormat::Mjpeg);
            assert_eq!(&frame.data[..2], &[0xFF, 0xD8]);
        }
        assert!(matches!(src.grab(), Err(SourceError::Disconnected { .. })));
        // Reopening runs the command again.
        src.reopen().unwrap();
        assert!(src.grab().is_ok());

        let mut raw = open("pipe:rgb24:2x1:printf 'abcdef'", [0, 0]).unwrap();
        let frame = raw.grab().unwrap();
        assert_eq!(
            (frame.width, frame.height, frame.data),
            (2, 1, &b"abcdef"[..])
        );
        assert!(raw.grab().is_err());
    }

    #[test]
    fn bad_specs_and_missing_paths_are_named() {
        for spec in ["nonsense", "webcam:/dev/video0", "dir:"] {
            let e = open(spec, [640, 480]).err().unwrap();
            assert!(matches!(e, SourceError::Spec { .. }), "{spec}: {e}");
        }
        let e = open("dir:/no/such/folder", [0, 0]).err().unwrap();
        assert!(e.to_string().contains("/no/such/folder"), "{e}");
        let e = open("file:/no/such.jpg", [0, 0]).err().unwrap();
        assert!(matches!(e, SourceError::Open { .. }), "{e}");
    }
}
