//! Snapshots: the frame behind a result, saved as a JPEG in a size-capped ring directory.
//!
//! A result whose top class passes the `[snapshots]` filter ([`Snapshots::wanted`]) has its
//! frame saved ([`Snapshots::save`]) as `<frame id, 12 digits>.jpg`, and the result names
//! that file. MJPEG frames are written byte for byte; other formats are encoded from the
//! frame's RGB. Files are written to `<name>.tmp` and renamed, so a reader (or a power cut)
//! never sees half a JPEG. The directory's snapshots stay within `max_mb`: the oldest (the
//! lowest frame ids) are deleted to make room, and the ones already there are counted when
//! the ring is opened, so the bound holds across restarts. Other files in the directory are
//! left alone and not counted.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;
use serde::Deserialize;

use crate::frame::{Frame, PixelFormat, RgbImage};

/// JPEG quality of snapshots encoded from raw frames.
pub const JPEG_QUALITY: u8 = 85;

/// Digits of the zero-padded frame id in a snapshot's name (ids past 10^12 get more
/// digits; the ring orders by the number, not the name).
const ID_DIGITS: usize = 12;

const MIB: u64 = 1024 * 1024;

/// The `[snapshots]` table of a board's config.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSettings {
    /// The ring directory (created if missing).
    pub dir: PathBuf,
    /// Save only results whose top class is one of these; empty: every class.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Save only results whose top score is at least this.
    #[serde(default)]
    pub min_score: f32,
    /// Cap on the bytes of the directory's snapshots, in MiB.
    #[serde(default = "default_max_mb")]
    pub max_mb: u64,
}

fn default_max_mb() -> u64 {
    256
}

impl SnapshotSettings {
    /// Settings for `dir` with the defaults: every class, any score, 256 MiB.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SnapshotSettings {
            dir: dir.into(),
            classes: Vec::new(),
            min_score: 0.0,
            max_mb: default_max_mb(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("[snapshots] {0}")]
    Settings(String),
    #[error("cannot create snapshot directory {}: {source}", .path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot read snapshot directory {}: {source}", .path.display())]
    ReadDir { path: PathBuf, source: io::Error },
    #[error("cannot write snapshot {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot delete old snapshot {}: {source}", .path.display())]
    Remove { path: PathBuf, source: io::Error },
    #[error("cannot encode snapshot {} as JPEG: {reason}", .path.display())]
    Encode { path: PathBuf, reason: String },
    #[error("snapshot {} is {bytes} bytes, more than the whole ring may hold ({max_bytes})", .path.display())]
    TooLarge {
        path: PathBuf,
        bytes: u64,
        max_bytes: u64,
    },
}

/// One snapshot in the ring.
#[derive(Clone, Copy, Debug)]
struct Entry {
    frame_id: u64,
    bytes: u64,
}

/// The snapshot ring directory.
pub struct Snapshots {
    settings: SnapshotSettings,
    max_bytes: u64,
    /// Oldest first.
    ring: VecDeque<Entry>,
    total_bytes: u64,
    /// The JPEG of the frame being saved, kept across saves.
    jpeg: Vec<u8>,
}

impl Snapshots {
    /// Opens (creates) the ring directory with the cap `settings.max_mb` MiB.
    pub fn open(settings: SnapshotSettings) -> Result<Self, SnapshotError> {
        if settings.max_mb == 0 {
            return Err(SnapshotError::Settings(
                "max_mb must be at least 1".to_string(),
            ));
        }
        let max_bytes = settings.max_mb.saturating_mul(MIB);
        Self::open_with_max_bytes(settings, max_bytes)
    }

    /// [`Snapshots::open`] with the cap in bytes (`settings.max_mb` is ignored).
    pub fn open_with_max_bytes(
        settings: SnapshotSettings,
        max_bytes: u64,
    ) -> Result<Self, SnapshotError> {
        if !settings.min_score.is_finite() {
            return Err(SnapshotError::Settings(format!(
                "min_score must be a number, not {}",
                settings.min_score
            )));
        }
        if max_bytes == 0 {
            return Err(SnapshotError::Settings(
                "the size cap must be more than 0 bytes".to_string(),
            ));
        }
        let dir = &settings.dir;
        fs::create_dir_all(dir).map_err(|source| SnapshotError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let read_dir = |source| SnapshotError::ReadDir {
            path: dir.clone(),
            source,
        };
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(read_dir)? {
            let entry = entry.map_err(read_dir)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.strip_suffix(".tmp").and_then(parse_name).is_some() {
                // Left by a save that was cut short: never renamed, so never named in a
                // result.
                remove(&entry.path())?;
                continue;
            }
            let Some(frame_id) = parse_name(name) else {
                continue;
            };
            let meta = entry.metadata().map_err(read_dir)?;
            if meta.is_file() {
                found.push(Entry {
                    frame_id,
                    bytes: meta.len(),
                });
            }
        }
        found.sort_by_key(|e| e.frame_id);
        let mut snapshots = Snapshots {
            total_bytes: found.iter().map(|e| e.bytes).sum(),
            ring: found.into(),
            settings,
            max_bytes,
            jpeg: Vec::new(),
        };
        // The cap may have been lowered since the last run.
        snapshots.make_room(0)?;
        Ok(snapshots)
    }

    pub fn settings(&self) -> &SnapshotSettings {
        &self.settings
    }

    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }

    /// The cap on the snapshots' bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes of the snapshots in the ring now.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Snapshots in the ring now.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Whether a result with this top class and score gets a snapshot.
    pub fn wanted(&self, label: &str, score: f32) -> bool {
        // A NaN score compares false: no snapshot.
        score >= self.settings.min_score
            && (self.settings.classes.is_empty()
                || self.settings.classes.iter().any(|c| c == label))
    }

    /// The path the snapshot of frame `frame_id` gets.
    pub fn path_for(&self, frame_id: u64) -> PathBuf {
        self.settings.dir.join(file_name(frame_id))
    }

    /// Saves `frame` (whose RGB is `rgb`) as the snapshot of `frame_id` and returns its
    /// path. Older snapshots are deleted first, oldest first, until the new one fits under
    /// the cap. A snapshot already saved under the same id (a frame counter that was reset)
    /// is replaced.
    pub fn save(
        &mut self,
        frame: &Frame,
        rgb: &RgbImage,
        frame_id: u64,
    ) -> Result<PathBuf, SnapshotError> {
        let path = self.path_for(frame_id);
        let mut jpeg = std::mem::take(&mut self.jpeg);
        let result = self.save_with(&mut jpeg, &path, frame, rgb, frame_id);
        self.jpeg = jpeg;
        result.map(|()| path)
    }

    fn save_with(
        &mut self,
        jpeg: &mut Vec<u8>,
        path: &Path,
        frame: &Frame,
        rgb: &RgbImage,
        frame_id: u64,
    ) -> Result<(), SnapshotError> {
        let bytes: &[u8] = if frame.format == PixelFormat::Mjpeg {
            frame.data
        } else {
            encode_jpeg(jpeg, rgb).map_err(|reason| SnapshotError::Encode {
                path: path.to_path_buf(),
                reason,
            })?;
            jpeg
        };
        let len = bytes.len() as u64;
        if len > self.max_bytes {
            return Err(SnapshotError::TooLarge {
                path: path.to_path_buf(),
                bytes: len,
                max_bytes: self.max_bytes,
            });
        }
        if let Some(i) = self.ring.iter().position(|e| e.frame_id == frame_id) {
            let old = self.ring.remove(i).expect("index from position");
            self.total_bytes -= old.bytes;
            remove(path)?;
        }
        // Room first, then the write: the cap holds at every moment (bar the `.tmp`).
        self.make_room(len)?;
        write_atomically(path, bytes).map_err(|source| SnapshotError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        self.ring.push_back(Entry {
            frame_id,
            bytes: len,
        });
        self.total_bytes += len;
        Ok(())
    }

    /// Deletes the oldest snapshots until `incoming` more bytes fit under the cap.
    fn make_room(&mut self, incoming: u64) -> Result<(), SnapshotError> {
        while self.total_bytes.saturating_add(incoming) > self.max_bytes {
            let Some(oldest) = self.ring.front().copied() else {
                break;
            };
            remove(&self.path_for(oldest.frame_id))?;
            self.ring.pop_front();
            self.total_bytes -= oldest.bytes;
        }
        Ok(())
    }
}

/// Deletes a snapshot; one already gone (deleted by hand) is fine.
fn remove(path: &Path) -> Result<(), SnapshotError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SnapshotError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn file_name(frame_id: u64) -> String {
    format!("{frame_id:0ID_DIGITS$}.jpg")
}

/// The frame id of a snapshot's file name, for names [`file_name`] makes and no others.
fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".jpg")?;
    if digits.len() < ID_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id = digits.parse().ok()?;
    (file_name(id) == name).then_some(id)
}

fn encode_jpeg(out: &mut Vec<u8>, rgb: &RgbImage) -> Result<(), String> {
    let (w, h) = (rgb.width, rgb.height);
    let (Ok(w32), Ok(h32)) = (u32::try_from(w), u32::try_from(h)) else {
        return Err(format!("{w}×{h} is too large"));
    };
    if w == 0 || h == 0 || w > 65535 || h > 65535 {
        return Err(format!("a JPEG cannot be {w}×{h}"));
    }
    if rgb.rgb.len() != w * h * 3 {
        return Err(format!(
            "{w}×{h} RGB needs {} bytes, got {}",
            w * h * 3,
            rgb.rgb.len()
        ));
    }
    out.clear();
    JpegEncoder::new_with_quality(&mut *out, JPEG_QUALITY)
        .encode(rgb.rgb, w32, h32, ExtendedColorType::Rgb8)
        .map_err(|e| e.to_string())
}

/// Writes `<path>.tmp`, flushes it to the disk, then renames it to `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        // A board loses power without warning: the data must be on the card before the
        // name is, or a result could name an empty file.
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::RgbConverter;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kestrel-snapshot-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// A `w × h` gradient as interleaved RGB.
    fn gradient(w: usize, h: usize) -> Vec<u8> {
        (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                [(x * 255 / w) as u8, (y * 255 / h) as u8, 128]
            })
            .collect()
    }

    fn rgb_frame(data: &[u8], w: usize, h: usize) -> Frame<'_> {
        Frame {
            format: PixelFormat::Rgb24,
            width: w,
            height: h,
            data,
            origin: "test",
        }
    }

    /// Saves a raw `w × h` frame as `frame_id`.
    fn save_raw(snaps: &mut Snapshots, w: usize, h: usize, frame_id: u64) -> PathBuf {
        let data = gradient(w, h);
        let frame = rgb_frame(&data, w, h);
        let rgb = RgbImage {
            rgb: &data,
            width: w,
            height: h,
        };
        snaps.save(&frame, &rgb, frame_id).unwrap()
    }

    fn jpg_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".jpg"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_mjpeg_frame_is_written_byte_for_byte() {
        let (w, h) = (40, 30);
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 60)
            .encode(&gradient(w, h), w as u32, h as u32, ExtendedColorType::Rgb8)
            .unwrap();
        let frame = Frame {
            format: PixelFormat::Mjpeg,
            width: 0,
            height: 0,
            data: &jpeg,
            origin: "test",
        };
        let mut converter = RgbConverter::default();
        let rgb = converter.convert(&frame).unwrap();
        let dir = temp_dir("mjpeg");
        let mut snaps = Snapshots::open(SnapshotSettings::new(&dir)).unwrap();
        let path = snaps.save(&frame, &rgb, 1234).unwrap();
        assert_eq!(path, dir.join("000000001234.jpg"));
        assert_eq!(fs::read(&path).unwrap(), jpeg);
        assert_eq!(snaps.total_bytes(), jpeg.len() as u64);
        // Nothing else is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_raw_frame_is_encoded_as_a_jpeg_of_its_size() {
        let (w, h) = (64, 48);
        // BGR in, so the snapshot comes from the converted RGB, not the frame's bytes.
        let bgr: Vec<u8> = gradient(w, h)
            .chunks_exact(3)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect();
        let frame = Frame {
            format: PixelFormat::Bgr24,
            width: w,
            height: h,
            data: &bgr,
            origin: "test",
        };
        let mut converter = RgbConverter::default();
        let rgb = converter.convert(&frame).unwrap();
        let dir = temp_dir("raw");
        let mut snaps = Snapshots::open(SnapshotSettings::new(&dir)).unwrap();
        let path = snaps.save(&frame, &rgb, 7).unwrap();
        assert_eq!(path.file_name().unwrap(), "000000000007.jpg");
        let decoded = image::open(&path).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (w as u32, h as u32));
        // Lossy, but the colours are the RGB ones (not swapped): red rises to the right.
        let left = decoded.get_pixel(2, 24).0;
        let right = decoded.get_pixel(61, 24).0;
        assert!(right[0] > left[0] + 150, "{left:?} {right:?}");
        assert!(left[2].abs_diff(128) < 20 && right[2].abs_diff(128) < 20);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_ring_stays_under_its_cap_across_a_reopen() {
        let dir = temp_dir("ring");
        let mut snaps = Snapshots::open(SnapshotSettings::new(&dir)).unwrap();
        let one = save_raw(&mut snaps, 32, 32, 1);
        let size = fs::metadata(&one).unwrap().len();
        drop(snaps);
        // Room for three snapshots of that size (the gradient encodes to the same bytes).
        let cap = size * 3 + size / 2;
        let mut snaps = Snapshots::open_with_max_bytes(SnapshotSettings::new(&dir), cap).unwrap();
        // The one from before is counted.
        assert_eq!((snaps.len(), snaps.total_bytes()), (1, size));
        for id in 2..=5 {
            save_raw(&mut snaps, 32, 32, id);
            assert!(snaps.total_bytes() <= cap);
        }
        assert_eq!(
            jpg_names(&dir),
            ["000000000003.jpg", "000000000004.jpg", "000000000005.jpg"]
        );
        // A restart with a smaller cap trims the oldest at once; files that are not
        // snapshots are neither counted nor deleted.
        drop(snaps);
        fs::write(dir.join("notes.txt"), vec![b'x'; 10 * size as usize]).unwrap();
        fs::write(dir.join("000000000009.jpg.tmp"), b"half a jpeg").unwrap();
        let snaps = Snapshots::open_with_max_bytes(SnapshotSettings::new(&dir), size * 2).unwrap();
        assert_eq!(snaps.total_bytes(), size * 2);
        assert_eq!(jpg_names(&dir), ["000000000004.jpg", "000000000005.jpg"]);
        assert!(dir.join("notes.txt").exists());
        assert!(!dir.join("000000000009.jpg.tmp").exists());
        // Ids past twelve digits still order by number.
        let mut snaps = snaps;
        save_raw(&mut snaps, 32, 32, 10_000_000_000_000);
        drop(snaps);
        let mut snaps =
            Snapshots::open_with_max_bytes(SnapshotSettings::new(&dir), size * 2).unwrap();
        save_raw(&mut snaps, 32, 32, 10_000_000_000_001);
        assert_eq!(
            jpg_names(&dir),
            ["10000000000000.jpg", "10000000000001.jpg"]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_same_frame_id_replaces_its_snapshot_and_too_large_is_refused() {
        let dir = temp_dir("replace");
        let mut snaps = Snapshots::open(SnapshotSettings::new(&dir)).unwrap();
        save_raw(&mut snaps, 32, 32, 3);
        let path = save_raw(&mut snaps, 48, 32, 3);
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps.total_bytes(), fs::metadata(&path).unwrap().len());
        let mut small = Snapshots::open_with_max_bytes(SnapshotSettings::new(&dir), 100).unwrap();
        // Opening with a cap below the one snapshot deletes it.
        assert!(small.is_empty() && jpg_names(&dir).is_empty());
        let data = gradient(32, 32);
        let rgb = RgbImage {
            rgb: &data,
            width: 32,
            height: 32,
        };
        let err = small.save(&rgb_frame(&data, 32, 32), &rgb, 4).unwrap_err();
        assert!(matches!(err, SnapshotError::TooLarge { .. }), "{err}");
        assert!(jpg_names(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_class_filter_and_the_score_threshold() {
        let dir = temp_dir("filter");
        let every = Snapshots::open(SnapshotSettings::new(&dir)).unwrap();
        assert!(every.wanted("cat", 0.0) && every.wanted("dog", 0.99));
        assert!(!every.wanted("cat", f32::NAN));
        let settings = SnapshotSettings {
            classes: vec!["cat".into(), "bird".into()],
            min_score: 0.6,
            ..SnapshotSettings::new(&dir)
        };
        let some = Snapshots::open(settings).unwrap();
        assert!(some.wanted("cat", 0.6) && some.wanted("bird", 0.9));
        assert!(!some.wanted("cat", 0.59));
        assert!(!some.wanted("dog", 0.99));
        assert!(!some.wanted("Cat", 0.99));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_settings_table_parses_with_its_defaults() {
        let s: SnapshotSettings =
            toml::from_str(r#"dir = "/var/lib/kestrel-rpi5/snapshots""#).unwrap();
        assert_eq!(s, SnapshotSettings::new("/var/lib/kestrel-rpi5/snapshots"));
        assert_eq!(s.max_mb, 256);
        let s: SnapshotSettings =
            toml::from_str("dir = \"/s\"\nclasses = [\"cat\"]\nmin_score = 0.8\nmax_mb = 32")
                .unwrap();
        assert_eq!(
            (s.classes, s.min_score, s.max_mb),
            (vec!["cat".into()], 0.8, 32)
        );
        assert!(toml::from_str::<SnapshotSettings>("dir = \"/s\"\nmax_size = 3").is_err());
        let zero = SnapshotSettings {
            max_mb: 0,
            ..SnapshotSettings::new(temp_dir("zero"))
        };
        assert!(matches!(
            Snapshots::open(zero),
            Err(SnapshotError::Settings(_))
        ));
    }

    #[test]
    fn an_unwritable_directory_is_a_typed_error_naming_it() {
        // Below a regular file: fails even for root.
        let base = temp_dir("unwritable");
        fs::create_dir_all(&base).unwrap();
        let file = base.join("a-file");
        fs::write(&file, b"").unwrap();
        let dir = file.join("snapshots");
        let err = Snapshots::open(SnapshotSettings::new(&dir)).err().unwrap();
        assert!(matches!(err, SnapshotError::CreateDir { .. }), "{err}");
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );

        // The directory vanishing under a running ring: the save says so, nothing panics.
        let dir = base.join("snapshots");
        let mut snaps = Snapshots::open(SnapshotSettings::new(&dir)).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        fs::write(&dir, b"now a file").unwrap();
        let data = gradient(8, 8);
        let rgb = RgbImage {
            rgb: &data,
            width: 8,
            height: 8,
        };
        let err = snaps.save(&rgb_frame(&data, 8, 8), &rgb, 1).unwrap_err();
        assert!(matches!(err, SnapshotError::Write { .. }), "{err}");
        assert!(err.to_string().contains("000000000001.jpg"), "{err}");
        assert!(snaps.is_empty());
        fs::remove_dir_all(&base).unwrap();
    }
}
