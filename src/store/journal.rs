//! The crash-safe journal of fallback sales: before a buyer is told about a ticket sold from
//! this instance's reserve, the sale is on local disk, so an instance that crashes during a
//! Redis outage can settle it into the ledger when it restarts ([`dir`] keeps its identity).
//!
//! One writer thread appends framed, checksummed records ([`record`]) to the newest segment
//! and syncs them in groups: every sale that arrived while the previous write was being synced
//! goes into the next write, so an outage's sales cost one `fdatasync` per group, not per sale
//! (group commit, as the Redis batches do). Segments whose sales are all in the ledger are
//! removed at a checkpoint: the supervisor closes the current segment, settles, and then lets
//! every closed segment go.

pub mod dir;
pub mod record;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

pub use self::dir::Opened;
pub use self::record::Record;

/// Why the journal directory cannot be used. Each stops start-up (exit code 64); at run time a
/// failed write answers the buyer `503` instead of a ticket that is not durable.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file could not be created, read, written or synced.
    #[error("--journal-dir: cannot {what} {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another live process holds the directory.
    #[error("--journal-dir: {path} is in use by another live ticketd (pid {pid}); give each instance its own directory")]
    Held {
        /// The directory.
        path: PathBuf,
        /// What the holder wrote into the lock file.
        pid: String,
    },
    /// A file is damaged beyond a torn tail.
    #[error("--journal-dir: {path} is corrupt ({why}); it may hold sales not yet in the ledger: restore it or move it aside on purpose, never delete it blindly")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// An earlier write or sync failed: nothing more is accepted (what reached the disk is
    /// unknown, and a retried `fsync` can report success for data it lost).
    #[error("the journal failed earlier and accepts no more sales")]
    Broken,
}

enum Job {
    Append(Record, oneshot::Sender<Result<(), Arc<JournalError>>>),
    /// Close the current segment if it holds records; answer the highest closed segment.
    Checkpoint(oneshot::Sender<u64>),
    /// Remove every closed segment up to and including this number.
    Forget(u64),
}

/// The handle sellers and the supervisor share.
#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::Sender<Job>,
    /// Some segment holds records that no checkpoint has let go of yet.
    dirty: Arc<AtomicBool>,
    /// A write or sync failed: nothing more is accepted.
    broken: Arc<AtomicBool>,
    /// What each party settling from this journal (one per Redis shard) let go of.
    parties: Arc<parking_lot::Mutex<Vec<Option<u64>>>>,
}

/// Most records written with one sync.
const GROUP_MAX: usize = 4096;

impl Journal {
    /// Starts the writer thread for the directory of `opened`, appending to a new segment after
    /// the ones read at start-up (kept until a checkpoint lets them go).
    ///
    /// # Errors
    /// The new segment cannot be created.
    pub fn start(opened: &Opened) -> Result<Self, JournalError> {
        let mut writer = Writer {
            dir: opened.path.clone(),
            seq: opened.last_segment + 1,
            file: None,
            written: 0,
            oldest: opened.first_segment,
            broken: Arc::new(AtomicBool::new(false)),
        };
        writer.open_segment()?;
        let dirty = Arc::new(AtomicBool::new(!opened.records.is_empty()));
        let broken = writer.broken.clone();
        let (tx, rx) = mpsc::channel();
        let flag = dirty.clone();
        std::thread::Builder::new()
            .name("ticketd-journal".into())
            .spawn(move || writer.run(&rx, &flag))
            .map_err(|source| JournalError::Io {
                path: opened.path.clone(),
                what: "start the writer for",
                source,
            })?;
        Ok(Self {
            tx,
            dirty,
            broken,
            parties: Arc::default(),
        })
    }

    /// Whether a write or sync failed: every later append fails. Sellers check it before they
    /// take a ticket, so a broken journal does not use the reserve up on sales it cannot keep.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Appends `record`; resolves once it is synced to disk.
    ///
    /// # Errors
    /// The write or sync failed, now or earlier ([`JournalError::Broken`]).
    pub async fn append(&self, record: Record) -> Result<(), Arc<JournalError>> {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::Append(record, done)).is_err() {
            return Err(Arc::new(JournalError::Broken));
        }
        wait.await
            .unwrap_or_else(|_| Err(Arc::new(JournalError::Broken)))
    }

    /// Whether some segment may hold records not yet let go of by a checkpoint.
    pub fn dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Closes the current segment (if it holds records) so that every record appended before
    /// this call is in a closed segment. Returns the highest closed segment: once everything
    /// sold before the call is in the ledger, pass it to [`Journal::forget`].
    pub async fn checkpoint(&self) -> Option<u64> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Job::Checkpoint(done)).ok()?;
        wait.await.ok()
    }

    /// Removes the closed segments up to `through`: their records are all settled.
    pub fn forget(&self, through: u64) {
        let _ = self.tx.send(Job::Forget(through));
    }

    /// Registers one more party that settles records of this journal (each Redis Cluster shard
    /// settles the sales of its own events) and returns its number for
    /// [`Journal::forget_for`]. Until every party has let go of a segment, it is kept.
    pub fn join(&self) -> usize {
        let mut parties = self.parties.lock();
        parties.push(None);
        parties.len() - 1
    }

    /// Party `party` owes nothing any more, whatever is journaled (a shard that serves no
    /// slots): it no longer holds segments back.
    pub fn release(&self, party: usize) {
        self.forget_for(party, u64::MAX);
    }

    /// Party `party` took over records it has not settled (a resharding handed it another
    /// shard's unsettled sales): until it reports again, it holds every segment back.
    pub fn reset(&self, party: usize) {
        self.parties.lock()[party] = None;
    }

    /// Party `party` settled every record of its own up to segment `through`: the segments every
    /// party let go of are removed.
    pub fn forget_for(&self, party: usize, through: u64) {
        let all = {
            let mut parties = self.parties.lock();
            let mark = &mut parties[party];
            *mark = Some(mark.map_or(through, |m| m.max(through)));
            parties.iter().copied().min().flatten()
        };
        if let Some(through) = all {
            self.forget(through);
        }
    }
}

struct Writer {
    dir: PathBuf,
    /// The current segment's number.
    seq: u64,
    file: Option<File>,
    /// Records in the current segment.
    written: u64,
    /// The oldest segment that may still be on disk (0: none before the current one).
    oldest: u64,
    broken: Arc<AtomicBool>,
}

impl Writer {
    fn path(&self, n: u64) -> PathBuf {
        self.dir.join(dir::segment_name(n))
    }

    fn open_segment(&mut self) -> Result<(), JournalError> {
        let path = self.path(self.seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| JournalError::Io {
                path: path.clone(),
                what: "create",
                source,
            })?;
        dir::sync_dir(&self.dir)?;
        self.file = Some(file);
        self.written = 0;
        Ok(())
    }

    fn run(mut self, rx: &mpsc::Receiver<Job>, dirty: &AtomicBool) {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut waiting = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            // Take every append that queued meanwhile into one write and one sync; a checkpoint
            // or forget ends the group, so it sees everything appended before it.
            while let Some(job) = next.take() {
                match job {
                    Job::Append(record, done) => {
                        record.encode(&mut buf);
                        waiting.push(done);
                        if waiting.len() < GROUP_MAX {
                            next = rx.try_recv().ok();
                        }
                    }
                    Job::Checkpoint(done) => {
                        self.flush(&mut buf, &mut waiting, dirty);
                        let _ = done.send(self.checkpoint());
                    }
                    Job::Forget(through) => {
                        self.flush(&mut buf, &mut waiting, dirty);
                        self.forget(through, dirty);
                    }
                }
            }
            self.flush(&mut buf, &mut waiting, dirty);
        }
    }

    /// Writes and syncs the group, then tells its sellers.
    fn flush(
        &mut self,
        buf: &mut Vec<u8>,
        waiting: &mut Vec<oneshot::Sender<Result<(), Arc<JournalError>>>>,
        dirty: &AtomicBool,
    ) {
        if waiting.is_empty() {
            return;
        }
        let result = if self.broken.load(Ordering::Acquire) {
            Err(Arc::new(JournalError::Broken))
        } else {
            let file = self.file.as_mut().expect("a segment is open");
            match file.write_all(buf).and_then(|()| file.sync_data()) {
                Ok(()) => {
                    self.written += waiting.len() as u64;
                    dirty.store(true, Ordering::Release);
                    Ok(())
                }
                Err(source) => {
                    self.broken.store(true, Ordering::Release);
                    let e = JournalError::Io {
                        path: self.path(self.seq),
                        what: "write",
                        source,
                    };
                    tracing::error!(error = %e, "JOURNAL FAILED: fallback sales answer 503 from now on (they cannot be made durable)");
                    Err(Arc::new(e))
                }
            }
        };
        buf.clear();
        for done in waiting.drain(..) {
            let _ = done.send(result.clone());
        }
    }

    fn checkpoint(&mut self) -> u64 {
        if self.written > 0 && !self.broken.load(Ordering::Acquire) {
            if self.oldest == 0 {
                self.oldest = self.seq;
            }
            self.seq += 1;
            if let Err(e) = self.open_segment() {
                tracing::error!(error = %e, "JOURNAL FAILED: cannot start a new segment");
                self.broken.store(true, Ordering::Release);
            }
        }
        self.seq - 1
    }

    fn forget(&mut self, through: u64, dirty: &AtomicBool) {
        if self.oldest == 0 || through < self.oldest {
            return;
        }
        let last = through.min(self.seq - 1);
        for n in self.oldest..=last {
            let path = self.path(n);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), error = %e, "journal: cannot remove a settled segment");
                    return;
                }
            }
        }
        let _ = dir::sync_dir(&self.dir);
        self.oldest = if last + 1 < self.seq { last + 1 } else { 0 };
        if self.oldest == 0 && self.written == 0 {
            dirty.store(false, Ordering::Release);
        }
    }
}

/// Opens `path` and starts its journal: what the directory held, and the handle.
///
/// # Errors
/// See [`JournalError`].
pub fn open(path: &Path) -> Result<(Opened, Journal), JournalError> {
    let opened = dir::open(path)?;
    let journal = Journal::start(&opened)?;
    Ok((opened, journal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(n: u64) -> Record {
        Record::test_sale(n)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appended_sales_are_read_back_after_a_restart_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (opened, j) = open(dir.path()).unwrap();
            assert!(opened.records.is_empty() && !j.dirty());
            let appends: Vec<_> = (0..500).map(|n| j.append(sale(n))).collect();
            for r in futures_util::future::join_all(appends).await {
                r.unwrap();
            }
            assert!(j.dirty());
        } // the process "crashes": nothing settled
        let (opened, j) = open(dir.path()).unwrap();
        assert_eq!(opened.records.len(), 500);
        assert_eq!(opened.records[499], sale(499));
        assert!(j.dirty(), "recovered records are still owed");
        j.append(sale(500)).await.unwrap();
        let through = j.checkpoint().await.unwrap();
        j.append(sale(501)).await.unwrap(); // after the checkpoint: kept
        j.forget(through);
        let _ = j.checkpoint().await; // the forget is done once this answers
        assert!(j.dirty());
        drop((opened, j));
        let (opened, _j) = open(dir.path()).unwrap();
        assert_eq!(opened.records, vec![sale(501)]);
    }

    #[tokio::test]
    async fn forgetting_everything_leaves_it_clean() {
        let dir = tempfile::tempdir().unwrap();
        let (_opened, j) = open(dir.path()).unwrap();
        j.append(sale(1)).await.unwrap();
        let through = j.checkpoint().await.unwrap();
        j.forget(through);
        let _ = j.checkpoint().await;
        assert!(!j.dirty());
    }
}
