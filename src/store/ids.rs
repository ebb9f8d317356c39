//! Purchase and batch ids, `<instance>.<generation>:<n>`: the instance id is this instance's
//! identity (kept in `--journal-dir`, so a restarted instance owns the same reserves), the
//! generation counts its runs (so the ids of two runs never collide, whatever was recorded in
//! Redis before a crash), and `n` comes from one counter per run.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use crossbeam_utils::CachePadded;

/// The id source of one run.
#[derive(Debug)]
pub struct Ids {
    instance: Box<str>,
    /// `<instance>.<generation>:`
    prefix: Box<str>,
    next: CachePadded<AtomicU64>,
}

impl Ids {
    /// Ids of run `generation` of instance `instance`.
    pub fn new(instance: &str, generation: u64) -> Self {
        Self {
            instance: instance.into(),
            prefix: format!("{instance}.{generation}:").into(),
            next: CachePadded::new(AtomicU64::new(1)),
        }
    }

    /// A fresh instance that keeps nothing (tests and benches).
    pub fn random() -> Self {
        Self::new(&format!("{:016x}", rand::random::<u64>()), 1)
    }

    /// The instance id: names this instance's reserve keys and leases.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A fresh number, never 0.
    pub fn next(&self) -> u64 {
        self.next.fetch_add(1, Relaxed)
    }

    /// The id of number `n`.
    pub fn id(&self, n: u64) -> Bytes {
        let mut buf = itoa::Buffer::new();
        let n = buf.format(n);
        let mut id = Vec::with_capacity(self.prefix.len() + n.len());
        id.extend_from_slice(self.prefix.as_bytes());
        id.extend_from_slice(n.as_bytes());
        Bytes::from(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_runs_of_one_instance_never_share_an_id() {
        let first = Ids::new("00000000000000aa", 1);
        let second = Ids::new("00000000000000aa", 2);
        assert_eq!(first.instance(), second.instance());
        let (a, b) = (first.id(first.next()), second.id(second.next()));
        assert_eq!(&a[..], b"00000000000000aa.1:1");
        assert_ne!(a, b);
    }
}
