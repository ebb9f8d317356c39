//! Helpers shared by the benches: running an operation on several threads at once.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// `threads` threads each doing `per_thread` operations, released together; returns the wall
/// time from the release to the last thread's end.
pub fn contended(threads: usize, per_thread: u64, op: Arc<dyn Fn() + Send + Sync>) -> Duration {
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (start, op) = (start.clone(), op.clone());
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..per_thread {
                    op();
                }
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    t.elapsed()
}
