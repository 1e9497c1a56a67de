//! The journal: runtime-route changes appended to `routes.journal.N` segments, flushed by
//! group commit, and folded into `routes.json` in the background once long enough.
//!
//! Why: rewriting the whole state file on every change costs what the table costs (~190 ms
//! at 30 000 routes), and one fsync per change caps a disk at a few hundred changes a
//! second. Here a change costs one `write(2)` of its own line under the daemon's lock;
//! the fsync happens after the lock is released, and one fsync makes durable every line
//! written before it, so concurrent changes share it.
//!
//! Replay is idempotent (a line puts or deletes one key; the last line about a key decides
//! it whatever came before), so `routes.json` plus every segment still on disk, applied in
//! segment order, is the state even when the snapshot already includes some segments: a
//! crash between writing a snapshot and deleting the segments it covers loses nothing.
//! Segments are deleted only after the snapshot covering them is durable.
//!
//! A segment's torn last line (a crash during its write, so never acknowledged) is skipped
//! with a warning; any other line that does not parse is corruption, as in `routes.json`.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex, PoisonError,
    },
};

use serde::{Deserialize, Serialize};

use super::{RawKey, RawRoute, StateError};

/// Segment file names: `routes.journal.<N>`, N counting up across the directory's life.
pub const SEGMENT_PREFIX: &str = "routes.journal.";

/// One journal line.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum Line {
    Put(RawRoute),
    Delete(RawKey),
}

/// A segment being appended to. The daemon's lock serialises appends; flushes come from
/// any thread.
pub(super) struct Segment {
    pub(super) path: PathBuf,
    file: File,
    /// Lines written so far.
    written: AtomicU64,
    /// Lines known durable, behind the lock a flush holds: whoever waits while another
    /// thread flushes finds its line covered when it gets the lock.
    durable: Mutex<u64>,
    /// A flush failed: what was written may not be on disk, so the store must write a
    /// whole snapshot before it trusts this segment again.
    pub(super) broken: AtomicBool,
    /// Bytes written, to cut a partly written batch off again.
    len: Mutex<u64>,
}

impl Segment {
    /// Creates segment `number` in `dir` (never reusing a file) and makes its name durable.
    pub(super) fn create(dir: &Path, number: u64) -> Result<Segment, StateError> {
        let path = dir.join(format!("{SEGMENT_PREFIX}{number}"));
        let io = |action| {
            let path = path.clone();
            move |error| StateError::Io {
                path,
                action,
                error,
            }
        };
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("create the journal segment"))?;
        // Lines flushed into a file whose directory entry is not durable would be lost.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync the state directory for"))?;
        Ok(Segment {
            path,
            file,
            written: AtomicU64::new(0),
            durable: Mutex::new(0),
            broken: AtomicBool::new(false),
            len: Mutex::new(0),
        })
    }

    /// Appends `lines` (each ending in a newline) in one write; returns the line count to
    /// flush up to. On an error nothing stays appended.
    pub(super) fn append(&self, lines: &str, count: u64) -> Result<u64, StateError> {
        let mut len = self.len.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(error) = (&self.file).write_all(lines.as_bytes()) {
            // A partial line in the middle of a segment would read as corruption later.
            if self.file.set_len(*len).is_err() {
                self.broken.store(true, Ordering::SeqCst);
            }
            return Err(StateError::Io {
                path: self.path.clone(),
                action: "append to the journal segment",
                error,
            });
        }
        *len += lines.len() as u64;
        Ok(self.written.fetch_add(count, Ordering::SeqCst) + count)
    }

    /// Makes every line up to `upto` durable: one fsync for all waiting callers.
    pub(super) fn flush(&self, upto: u64) -> Result<(), StateError> {
        let mut durable = self.durable.lock().unwrap_or_else(PoisonError::into_inner);
        if *durable >= upto {
            return Ok(());
        }
        // Read before the fsync: every line counted here was written before it.
        let target = self.written.load(Ordering::SeqCst);
        match self.file.sync_data() {
            Ok(()) => {
                *durable = target;
                Ok(())
            }
            Err(error) => {
                self.broken.store(true, Ordering::SeqCst);
                Err(StateError::Io {
                    path: self.path.clone(),
                    action: "fsync the journal segment",
                    error,
                })
            }
        }
    }
}

/// The segments in `dir`, oldest first.
pub(super) fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StateError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(StateError::Io {
                path: dir.to_path_buf(),
                action: "list the state directory",
                error,
            })
        }
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SEGMENT_PREFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((n, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Parses one segment's text into lines; `path` names it in errors. A last line without
/// its newline is the torn end of a write that was never acknowledged: skipped.
pub(super) fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Line>, StateError> {
    let (whole, torn) = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => (&bytes[..=i], &bytes[i + 1..]),
        None => (&bytes[..0], bytes),
    };
    if !torn.is_empty() {
        tracing::warn!(
            path = %path.display(),
            bytes = torn.len(),
            "journal: skipping the torn end of a write interrupted by a crash (it was never acknowledged)"
        );
    }
    let mut lines = Vec::new();
    for (i, line) in whole.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let parsed = serde_json::from_slice(line).map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("line {}: {e}", i + 1),
        })?;
        lines.push(parsed);
    }
    Ok(lines)
}

/// A background snapshot's outcome, for whoever waits for it.
#[derive(Default)]
pub(super) struct Flight {
    done: Mutex<Option<Result<(), String>>>,
    ready: Condvar,
}

impl Flight {
    pub(super) fn finish(&self, result: Result<(), String>) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
        self.ready.notify_all();
    }

    pub(super) fn wait(&self) -> Result<(), String> {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(r) = &*done {
                return r.clone();
            }
            done = self
                .ready
                .wait(done)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A recorded change on its way to the disk. Waiting makes it durable (or says why not);
/// wait outside any lock, so that concurrent changes share one flush.
#[must_use = "a change is durable only once its commit has been waited for"]
pub struct Commit(Option<Box<dyn FnOnce() -> Result<(), StateError> + Send>>);

impl Commit {
    /// Already durable (or nothing to make durable).
    pub fn done() -> Commit {
        Commit(None)
    }

    /// One whose wait fails with `error` (for fakes of a store).
    pub fn failing(error: StateError) -> Commit {
        Commit::new(move || Err(error))
    }

    /// One whose wait runs `wait` (a store's flush; a fake's model of one).
    pub(crate) fn new(wait: impl FnOnce() -> Result<(), StateError> + Send + 'static) -> Commit {
        Commit(Some(Box::new(wait)))
    }

    pub(super) fn flush(segment: &Arc<Segment>, upto: u64) -> Commit {
        let segment = Arc::clone(segment);
        Commit::new(move || segment.flush(upto))
    }

    pub fn wait(self) -> Result<(), StateError> {
        match self.0 {
            Some(wait) => wait(),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Commit(pending)"
        } else {
            "Commit(done)"
        })
    }
}
