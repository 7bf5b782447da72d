//! The result's `frame` number: it increases across restarts (even after SIGKILL), so a
//! consumer can drop a result it has seen twice by its (device, frame).
//!
//! Writing the counter on every frame would cost an fsync per frame. Instead the file
//! holds a number no frame has reached yet; a block of numbers is reserved ahead, and a
//! restart starts at the reservation: numbers may be skipped, never repeated.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const BLOCK: u64 = 1000;

pub struct FrameCounter {
    file: Option<PathBuf>,
    next: u64,
    reserved: u64,
    /// The last reservation that could not be written (the numbers go on in memory).
    failed: Option<io::Error>,
}

impl FrameCounter {
    /// A counter that starts at 0 with every process (no state directory).
    pub fn in_memory() -> Self {
        FrameCounter {
            file: None,
            next: 0,
            reserved: u64::MAX,
            failed: None,
        }
    }

    /// The counter kept in `file`.
    pub fn open(file: &Path) -> io::Result<Self> {
        let next = match fs::read_to_string(file) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: not a frame number ({e})", file.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let mut counter = FrameCounter {
            file: Some(file.to_path_buf()),
            next,
            reserved: next,
            failed: None,
        };
        counter.reserve()?;
        Ok(counter)
    }

    fn reserve(&mut self) -> io::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let reserved = self.next + BLOCK;
        let temp = path.with_extension("tmp");
        let mut f = fs::File::create(&temp)?;
        writeln!(f, "{reserved}")?;
        f.sync_all()?;
        fs::rename(&temp, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        self.reserved = reserved;
        Ok(())
    }

    /// The next frame's number. If the reservation cannot be written (a full disk), the
    /// numbers go on in memory and [`FrameCounter::take_error`] says why.
    pub fn take(&mut self) -> u64 {
        if self.next >= self.reserved {
            if let Err(e) = self.reserve() {
                self.failed = Some(e);
                self.reserved = self.next + BLOCK;
            }
        }
        let n = self.next;
        self.next += 1;
        n
    }

    /// Why the last reservation failed, once.
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.failed.take()
    }

    /// The number the next frame will get.
    pub fn peek(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_never_repeat_across_restarts() {
        let dir = std::env::temp_dir().join(format!("kestrel-counter-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("frame-counter");
        let mut seen = Vec::new();
        for run in 0..3 {
            // Each "process" takes a different count and is dropped without any shutdown.
            let mut c = FrameCounter::open(&file).unwrap();
            for _ in 0..(BLOCK as usize + 7 * run) {
                seen.push(c.take());
                assert!(c.take_error().is_none());
            }
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        assert_eq!(seen[0], 0);
        fs::write(&file, "garbage").unwrap();
        let e = FrameCounter::open(&file).err().unwrap();
        assert!(e.to_string().contains("frame-counter"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
        let mut m = FrameCounter::in_memory();
        assert_eq!((m.take(), m.take(), m.peek()), (0, 1, 2));
    }
}
