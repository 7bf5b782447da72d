//! A bounded first-in first-out queue of results on disk, one file per result.
//!
//! A result is written to a temporary name and renamed into place, so a reader never sees
//! half a result (and a killed process loses nothing: the page cache outlives it). Files
//! are fsync'd in batches, against power cuts: by [`Spool::sync`], which the outbox calls
//! from its own thread a few times a second so that the camera loop never waits for the
//! card, and inline once [`SpoolLimits::sync_every`] results are waiting. When
//! the queue is over its bound the oldest results are dropped and counted. A new process
//! on the same directory resumes where the last one stopped.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How much a spool may hold, and how often it syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolLimits {
    pub max_results: u64,
    pub max_bytes: u64,
    /// fsync in the writer's call once this many results wait for a sync (1: every
    /// result); a bound, since the outbox syncs them sooner from its own thread.
    pub sync_every: usize,
}

impl Default for SpoolLimits {
    fn default() -> Self {
        SpoolLimits {
            max_results: 100_000,
            max_bytes: 64 << 20,
            sync_every: 512,
        }
    }
}

/// One queued result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the queue: increases by one per result (from 0 again in an empty
    /// spool opened anew).
    pub seq: u64,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "spool {path}: a result of {len} bytes is larger than the spool's bound ({max} bytes)"
    )]
    TooLarge { path: String, len: u64, max: u64 },
}

struct Queue {
    /// (seq, length) of every file in the spool, oldest first.
    entries: VecDeque<(u64, u64)>,
    bytes: u64,
    next_seq: u64,
    dropped: u64,
    /// Removed as delivered, since the spool was opened.
    removed: u64,
    /// Written but not yet fsync'd (by seq: holding the files open would hold a
    /// descriptor per result).
    unsynced: Vec<u64>,
}

pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    queue: Mutex<Queue>,
    changed: Condvar,
}

const SUFFIX: &str = ".json";
const TEMP_PREFIX: &str = "tmp-";

impl Spool {
    /// Opens (creating) the spool in `dir`, taking up any results a previous process left.
    pub fn open(dir: &Path, limits: SpoolLimits) -> Result<Spool, SpoolError> {
        let io_err = |source| SpoolError::Io {
            path: dir.display().to_string(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        let mut entries = Vec::new();
        for item in fs::read_dir(dir).map_err(io_err)? {
            let item = item.map_err(io_err)?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TEMP_PREFIX) {
                // A write that a crash interrupted before its rename: never accepted.
                let _ = fs::remove_file(item.path());
                continue;
            }
            let Some(seq) = name
                .strip_suffix(SUFFIX)
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let len = item.metadata().map_err(io_err)?.len();
            if len == 0 {
                // Renamed but lost its data in a power cut before the batch's fsync.
                let _ = fs::remove_file(item.path());
                continue;
            }
            entries.push((seq, len));
        }
        entries.sort_unstable();
        let next_seq = entries.last().map_or(0, |&(s, _)| s + 1);
        let bytes = entries.iter().map(|&(_, l)| l).sum();
        Ok(Spool {
            dir: dir.to_path_buf(),
            limits,
            queue: Mutex::new(Queue {
                entries: entries.into(),
                bytes,
                next_seq,
                dropped: 0,
                removed: 0,
                unsynced: Vec::new(),
            }),
            changed: Condvar::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SUFFIX}"))
    }

    fn err(&self, source: io::Error) -> SpoolError {
        SpoolError::Io {
            path: self.dir.display().to_string(),
            source,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic elsewhere while holding the lock leaves the queue consistent: every
        // change to it is made after the file operation it records.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a result; returns how many old results were dropped to make room.
    pub fn push(&self, bytes: &[u8]) -> Result<u64, SpoolError> {
        let len = bytes.len() as u64;
        if len > self.limits.max_bytes {
            return Err(SpoolError::TooLarge {
                path: self.dir.display().to_string(),
                len,
                max: self.limits.max_bytes,
            });
        }
        let mut q = self.lock();
        let seq = q.next_seq;
        let temp = self.dir.join(format!("{TEMP_PREFIX}{seq}"));
        File::create(&temp)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| self.err(e))?;
        fs::rename(&temp, self.path_of(seq)).map_err(|e| self.err(e))?;
        q.next_seq += 1;
        q.entries.push_back((seq, len));
        q.bytes += len;
        q.unsynced.push(seq);
        let mut dropped = 0;
        while q.entries.len() as u64 > self.limits.max_results || q.bytes > self.limits.max_bytes {
            let (old, old_len) = q.entries.pop_front().expect("over the bound, so not empty");
            // Already gone (delivered and removed meanwhile) is fine.
            let _ = fs::remove_file(self.path_of(old));
            q.bytes -= old_len;
            dropped += 1;
        }
        q.dropped += dropped;
        let batch = if q.unsynced.len() >= self.limits.sync_every.max(1) {
            std::mem::take(&mut q.unsynced)
        } else {
            Vec::new()
        };
        drop(q);
        self.changed.notify_all();
        if self.sync_batch(batch.clone()).is_err() {
            // The result is queued all the same: the outbox's syncer retries and reports.
            self.lock().unsynced.extend(batch);
        }
        Ok(dropped)
    }

    /// Makes a batch of written results durable, without holding the lock (the writer
    /// goes on meanwhile). One `syncfs` of the spool's file system commits every file
    /// and rename of the batch at once: a journal commit, where an fsync per file would
    /// cost one each.
    fn sync_batch(&self, batch: Vec<u64>) -> Result<(), SpoolError> {
        use std::os::fd::AsRawFd;
        if batch.is_empty() {
            return Ok(());
        }
        let dir = File::open(&self.dir).map_err(|e| self.err(e))?;
        // SAFETY: a plain system call on a descriptor that `dir` keeps open.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(self.err(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Makes every accepted result durable now (a no-op when none waits).
    pub fn sync(&self) -> Result<(), SpoolError> {
        let batch = std::mem::take(&mut self.lock().unsynced);
        self.sync_batch(batch)
    }

    /// Up to `max` results after `after` (or from the oldest), oldest first, waiting up to
    /// `wait` for the first one. A result dropped while being read is skipped.
    pub fn read_after(
        &self,
        after: Option<u64>,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Entry>, SpoolError> {
        let mut q = self.lock();
        let pending = |q: &Queue| {
            q.entries
                .iter()
                .filter(|&&(s, _)| after.is_none_or(|a| s > a))
                .take(max)
                .map(|&(s, _)| s)
                .collect::<Vec<_>>()
        };
        let mut seqs = pending(&q);
        if seqs.is_empty() && !wait.is_zero() {
            q = self
                .changed
                .wait_timeout(q, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            seqs = pending(&q);
        }
        drop(q);
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            match fs::read(self.path_of(seq)) {
                Ok(bytes) => out.push(Entry { seq, bytes }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.err(e)),
            }
        }
        Ok(out)
    }

    /// Removes every result up to and including `seq` (they were delivered).
    pub fn remove_through(&self, seq: u64) -> Result<(), SpoolError> {
        let mut q = self.lock();
        while let Some(&(s, len)) = q.entries.front() {
            if s > seq {
                break;
            }
            match fs::remove_file(self.path_of(s)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.err(e)),
            }
            q.entries.pop_front();
            q.bytes -= len;
            q.removed += 1;
        }
        // The deletions are not synced: a power cut may bring a delivered result back,
        // and it is sent again (a duplicate, which the frame number names), never lost.
        Ok(())
    }

    /// Results waiting to be delivered.
    pub fn depth(&self) -> u64 {
        self.lock().entries.len() as u64
    }

    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Results removed as delivered, since the spool was opened.
    pub fn delivered(&self) -> u64 {
        self.lock().removed
    }

    /// Results dropped because the spool was full, since it was opened.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Wakes a reader blocked in [`Spool::read_after`] (to see a stop request).
    pub fn wake(&self) {
        self.changed.notify_all();
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = self.sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kestrel-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn limits(max_results: u64, max_bytes: u64) -> SpoolLimits {
        SpoolLimits {
            max_results,
            max_bytes,
            sync_every: 3,
        }
    }

    fn payloads(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8(e.bytes.clone()).unwrap())
            .collect()
    }

    #[test]
    fn results_come_out_in_order_and_survive_a_reopen() {
        let dir = temp("order");
        let spool = Spool::open(&dir, limits(100, 1 << 20)).unwrap();
        for i in 0..7 {
            assert_eq!(spool.push(format!("r{i}").as_bytes()).unwrap(), 0);
        }
        let first = spool.read_after(None, 3, Duration::ZERO).unwrap();
        assert_eq!(payloads(&first), ["r0", "r1", "r2"]);
        let next = spool
            .read_after(Some(first[2].seq), 10, Duration::ZERO)
            .unwrap();
        assert_eq!(payloads(&next), ["r3", "r4", "r5", "r6"]);
        spool.remove_through(first[1].seq).unwrap();
        assert_eq!(spool.depth(), 5);
        drop(spool);
        // A leftover temporary file and an empty (unsynced) result are not results.
        fs::write(dir.join("tmp-99"), b"half").unwrap();
        fs::write(dir.join(format!("{:020}{SUFFIX}", 50)), b"").unwrap();
        let spool = Spool::open(&dir, limits(100, 1 << 20)).unwrap();
        assert_eq!(spool.depth(), 5);
        spool.push(b"r7").unwrap();
        let all = spool.read_after(None, 100, Duration::ZERO).unwrap();
        assert_eq!(payloads(&all), ["r2", "r3", "r4", "r5", "r6", "r7"]);
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(!dir.join("tmp-99").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them() {
        let dir = temp("full");
        let spool = Spool::open(&dir, limits(4, 1 << 20)).unwrap();
        let dropped: u64 = (0..10)
            .map(|i| spool.push(format!("r{i}").as_bytes()).unwrap())
            .sum();
        assert_eq!((dropped, spool.dropped(), spool.depth()), (6, 6, 4));
        let all = spool.read_after(None, 100, Duration::ZERO).unwrap();
        assert_eq!(payloads(&all), ["r6", "r7", "r8", "r9"]);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 4);
        // The byte bound: 10-byte results in 25 bytes keep two.
        let spool = Spool::open(&temp("bytes"), limits(100, 25)).unwrap();
        for i in 0..5 {
            spool.push(format!("result-{i:03}").as_bytes()).unwrap();
        }
        assert_eq!((spool.depth(), spool.bytes(), spool.dropped()), (2, 20, 3));
        assert!(matches!(
            spool.push(&[b'x'; 26]),
            Err(SpoolError::TooLarge { len: 26, .. })
        ));
        fs::remove_dir_all(spool.dir()).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reader_waits_for_the_next_result() {
        let dir = temp("wait");
        let spool = std::sync::Arc::new(Spool::open(&dir, SpoolLimits::default()).unwrap());
        let writer = {
            let spool = spool.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                spool.push(b"late").unwrap();
            })
        };
        let got = spool.read_after(None, 1, Duration::from_secs(10)).unwrap();
        assert_eq!(payloads(&got), ["late"]);
        writer.join().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_spool_is_an_error_naming_it() {
        let file = temp("notadir");
        fs::write(&file, b"x").unwrap();
        let e = Spool::open(&file.join("sub"), SpoolLimits::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("notadir"), "{e}");
        fs::remove_file(&file).unwrap();
    }
}
