//! The journal directory: one live process at a time (an exclusive lock on `lock`), the
//! instance's identity (`instance`), the run counter that keeps the ids of two runs apart
//! (`generation`), and the segments (`journal-<n>.log`) read back at start-up.
//!
//! Opening it refuses, rather than silently starting afresh, a directory that another live
//! process holds, one that cannot be read or written, and one whose files are corrupt beyond a
//! torn tail (a write cut short by a crash, which is cut off and logged).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::store::journal::record::{decode_segment, End, Record};
use crate::store::journal::JournalError;

/// An open journal directory and what it held.
#[derive(Debug)]
pub struct Opened {
    /// The directory.
    pub path: PathBuf,
    /// Held for the life of the process: the lock on `lock`.
    pub lock: File,
    /// The instance id (16 hex digits), kept across restarts.
    pub instance: String,
    /// This run's number, one more than the last run's.
    pub generation: u64,
    /// Every record of every segment, oldest first.
    pub records: Vec<Record>,
    /// The lowest and the highest segment number on disk (0: none).
    pub first_segment: u64,
    /// See `first_segment`.
    pub last_segment: u64,
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

/// The file name of segment `n`.
pub fn segment_name(n: u64) -> String {
    format!("journal-{n:020}.log")
}

fn segment_number(name: &str) -> Option<u64> {
    name.strip_prefix("journal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Opens (creating if needed) the journal directory `path`.
///
/// # Errors
/// See [`JournalError`]: any of them must stop start-up.
pub fn open(path: &Path) -> Result<Opened, JournalError> {
    std::fs::create_dir_all(path).map_err(io(path, "create"))?;
    let lock_path = path.join("lock");
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io(&lock_path, "open"))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = lock.read_to_string(&mut pid);
            return Err(JournalError::Held {
                path: path.to_owned(),
                pid: pid.trim().to_owned(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(&lock_path, "lock")(e)),
    }
    lock.set_len(0).map_err(io(&lock_path, "write"))?;
    write!(lock, "{}", std::process::id()).map_err(io(&lock_path, "write"))?;

    let instance = match read_small(&path.join("instance"))? {
        Some(text) => {
            let id = text.trim();
            if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(JournalError::Corrupt {
                    path: path.join("instance"),
                    why: format!("not an instance id: {id:?}"),
                });
            }
            id.to_owned()
        }
        None => {
            let id = format!("{:016x}", rand::random::<u64>());
            write_atomically(path, "instance", &id)?;
            id
        }
    };
    let generation = match read_small(&path.join("generation"))? {
        Some(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|_| JournalError::Corrupt {
                path: path.join("generation"),
                why: format!("not a number: {:?}", text.trim()),
            })?,
        None => 0,
    } + 1;
    write_atomically(path, "generation", &generation.to_string())?;

    let mut segments: Vec<u64> = std::fs::read_dir(path)
        .map_err(io(path, "list"))?
        .filter_map(|e| e.ok()?.file_name().to_str().and_then(segment_number))
        .collect();
    segments.sort_unstable();
    let mut records = Vec::new();
    let mut kept = Vec::with_capacity(segments.len());
    for (i, &n) in segments.iter().enumerate() {
        let file = path.join(segment_name(n));
        let buf = std::fs::read(&file).map_err(io(&file, "read"))?;
        if buf.is_empty() {
            // A run that journaled nothing: nothing to keep.
            std::fs::remove_file(&file).map_err(io(&file, "remove"))?;
            continue;
        }
        kept.push(n);
        let (mut got, end) = decode_segment(&buf);
        records.append(&mut got);
        match end {
            End::Clean => {}
            End::Torn(at) if i + 1 == segments.len() => {
                tracing::warn!(file = %file.display(), at, cut = buf.len() - at, "journal: cut a torn tail (a write interrupted by a crash)");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&file)
                    .map_err(io(&file, "open"))?;
                f.set_len(at as u64).map_err(io(&file, "truncate"))?;
                f.sync_all().map_err(io(&file, "sync"))?;
            }
            End::Torn(at) | End::Corrupt(at) => {
                return Err(JournalError::Corrupt {
                    path: file,
                    why: format!("bad record at byte {at}"),
                })
            }
        }
    }
    sync_dir(path)?;
    Ok(Opened {
        path: path.to_owned(),
        lock,
        instance,
        generation,
        records,
        first_segment: kept.first().copied().unwrap_or(0),
        last_segment: segments.last().copied().unwrap_or(0),
    })
}

fn read_small(file: &Path) -> Result<Option<String>, JournalError> {
    match std::fs::read_to_string(file) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(file, "read")(e)),
    }
}

/// Writes `name` in `dir` so that a crash leaves the old content or the new, never a mix.
fn write_atomically(dir: &Path, name: &str, content: &str) -> Result<(), JournalError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io(&tmp, "create"))?;
    f.write_all(content.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp, "write"))?;
    let target = dir.join(name);
    std::fs::rename(&tmp, &target).map_err(io(&target, "rename"))?;
    sync_dir(dir)
}

/// Makes a directory's entries (created, renamed, removed files) durable.
///
/// # Errors
/// The directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "sync"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(n: u64) -> Record {
        Record::test_sale(n)
    }

    #[test]
    fn identity_survives_and_generation_counts_runs() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path()).unwrap();
        assert_eq!(first.generation, 1);
        let id = first.instance.clone();
        drop(first);
        let second = open(dir.path()).unwrap();
        assert_eq!((second.instance.as_str(), second.generation), (&*id, 2));
    }

    #[test]
    fn a_held_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path()).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, JournalError::Held { .. }), "{err}");
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_corruption_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        sale(1).encode(&mut buf);
        sale(2).encode(&mut buf);
        let whole = buf.len();
        let mut torn = buf.clone();
        torn.extend_from_slice(&buf[..7]);
        let file = dir.path().join(segment_name(1));
        std::fs::write(&file, &torn).unwrap();
        let opened = open(dir.path()).unwrap();
        assert_eq!(opened.records, vec![sale(1), sale(2)]);
        assert_eq!(opened.last_segment, 1);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), whole as u64);
        drop(opened);

        // A bad byte followed by a good frame is not a crash: start-up must stop.
        let mut bad = buf.clone();
        bad[12] ^= 1;
        std::fs::write(&file, &bad).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");

        // A torn tail in an older segment is corruption too: newer ones were written after it.
        std::fs::write(&file, &torn).unwrap();
        std::fs::write(dir.path().join(segment_name(2)), &buf).unwrap();
        assert!(matches!(
            open(dir.path()).unwrap_err(),
            JournalError::Corrupt { .. }
        ));
    }

    #[test]
    fn a_bad_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("instance"), "not hex").unwrap();
        assert!(matches!(
            open(dir.path()).unwrap_err(),
            JournalError::Corrupt { .. }
        ));
    }
}
