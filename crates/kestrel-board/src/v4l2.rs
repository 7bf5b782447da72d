//! USB (UVC) cameras through V4L2, memory-mapped streaming.

use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use crate::frame::{Frame, PixelFormat};
use crate::source::{FrameSource, SourceError};

pub struct V4l2Source {
    path: String,
    size: [u32; 2],
    /// Dropped before the device (field order), as the driver wants.
    stream: Option<Stream<'static>>,
    device: Option<Device>,
    format: PixelFormat,
    /// Capture failed: the next grab reports it until `reopen`.
    broken: bool,
    width: usize,
    height: usize,
}

impl V4l2Source {
    /// Opens `path` and asks for `size` (the driver may pick the nearest it has); MJPEG is
    /// preferred because it keeps USB 2 cameras at full frame rate.
    pub fn open(path: &str, size: [u32; 2]) -> Result<Self, SourceError> {
        let mut s = V4l2Source {
            path: path.to_string(),
            size,
            stream: None,
            device: None,
            format: PixelFormat::Mjpeg,
            broken: false,
            width: 0,
            height: 0,
        };
        s.reopen()?;
        Ok(s)
    }

    fn open_error(&self, what: &str, e: impl std::fmt::Display) -> SourceError {
        SourceError::Open {
            source_name: self.path.clone(),
            reason: format!("{what}: {e}"),
        }
    }
}

impl FrameSource for V4l2Source {
    fn grab(&mut self) -> Result<Frame<'_>, SourceError> {
        let stream = self.stream.as_mut().filter(|_| !self.broken);
        let Some(stream) = stream else {
            return Err(SourceError::Disconnected {
                source_name: self.path.clone(),
                reason: "the device is not open".into(),
            });
        };
        match stream.next() {
            Ok((buf, meta)) => {
                let used = (meta.bytesused as usize).min(buf.len());
                Ok(Frame {
                    format: self.format,
                    width: self.width,
                    height: self.height,
                    data: &buf[..used],
                    origin: &self.path,
                })
            }
            Err(e) => {
                // The stream is dropped on `reopen` (it is borrowed here).
                self.broken = true;
                Err(SourceError::Disconnected {
                    source_name: self.path.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }

    fn name(&self) -> &str {
        &self.path
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        self.stream = None;
        self.device = None;
        self.broken = false;
        let device = Device::with_path(&self.path).map_err(|e| self.open_error("open", e))?;
        let mut format = device
            .format()
            .map_err(|e| self.open_error("get format", e))?;
        format.width = self.size[0];
        format.height = self.size[1];
        let offered: Vec<FourCC> = device
            .enum_formats()
            .map_err(|e| self.open_error("list formats", e))?
            .into_iter()
            .map(|d| d.fourcc)
            .collect();
        let (fourcc, pixel) = [
            (FourCC::new(b"MJPG"), PixelFormat::Mjpeg),
            (FourCC::new(b"YUYV"), PixelFormat::Yuyv),
        ]
        .into_iter()
        .find(|(f, _)| offered.contains(f))
        .ok_or_else(|| self.open_error("formats", "the camera offers neither MJPG nor YUYV"))?;
        format.fourcc = fourcc;
        let set = device
            .set_format(&format)
            .map_err(|e| self.open_error("set format", e))?;
        if set.fourcc != fourcc {
            return Err(self.open_error("set format", "the driver refused the format"));
        }
        let stream = Stream::with_buffers(&device, Type::VideoCapture, 4)
            .map_err(|e| self.open_error("start streaming", e))?;
        self.format = pixel;
        self.width = set.width as usize;
        self.height = set.height as usize;
        self.stream = Some(stream);
        self.device = Some(device);
        Ok(())
    }
}
