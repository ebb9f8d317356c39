//! The short CI set of the chaos harness (`chaos/`) against this build of ticketd: a fixed
//! handful of seeds whose schedules together kill Redis (shorter and longer than the reserve
//! lease), pause Redis past the lease, kill and restart an instance (also during a Redis
//! outage), pause an instance past the lease (also right after an outage), and flood
//! `/metrics`. Each schedule runs two instances under buyers, then heals, sells out, stops the
//! instances gracefully and checks the invariants over the whole history. A failure prints the
//! seed, the schedule and the violations; replay one with
//! `cargo run -p chaos -- --ticketd target/debug/ticketd --seed SEED --schedules 1`.
//!
//! The cluster set does the same on a Redis Cluster of six nodes (three primaries with one
//! replica each, one event on each primary): a primary killed (its replica takes over, the node
//! comes back as a replica), a replica killed, a primary paused shorter and longer than the
//! cluster node timeout, and the instance faults. Replay one with
//! `cargo run -p chaos -- --ticketd target/debug/ticketd --redis cluster --seed SEED --schedules 1`.
//! The two tests take turns: side by side they would share two cores, and the faults would no
//! longer land when their schedules say.

use std::collections::BTreeSet;
use std::path::Path;

use chaos::{Binary, Options};

/// Seeds 1, 22 and 27 cover every fault kind; seed 2 kills an instance during an outage again.
const SEEDS: [u64; 4] = [1, 2, 22, 27];

/// Seed 198 pauses a primary shorter than the node timeout, kills another shard's primary and
/// an instance, and pauses an instance shorter than the lease; seed 1431 kills a replica,
/// pauses its shard's primary for 5 s (its replica takes over, and the old primary comes back
/// as a replica) and pauses an instance longer than the lease; seed 1464 pauses a primary for
/// 3.1 s, about when its replica would take over, then kills that shard's primary.
const CLUSTER_SEEDS: [u64; 3] = [198, 1431, 1464];

/// One chaos test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ci_schedules_keep_every_invariant() {
    let _turn = SERIAL.lock().await;
    let binary = Binary::probe(Path::new(env!("CARGO_BIN_EXE_ticketd"))).expect("ticketd runs");
    run_and_judge(
        Options::standard(binary, 2, 64),
        &SEEDS,
        &chaos::schedule::FAULT_KINDS,
        "",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_schedules_keep_every_invariant() {
    let _turn = SERIAL.lock().await;
    let binary = Binary::probe(Path::new(env!("CARGO_BIN_EXE_ticketd"))).expect("ticketd runs");
    run_and_judge(
        Options::cluster(binary, 2, 64),
        &CLUSTER_SEEDS,
        &chaos::schedule::CLUSTER_FAULT_KINDS,
        "--redis cluster ",
    )
    .await;
}

/// Checks that the schedules of `seeds` hold every fault kind of `kinds`, runs them, and fails
/// with the report of every schedule that broke an invariant.
async fn run_and_judge(options: Options, seeds: &[u64], kinds: &[&str], flag: &str) {
    let labels: BTreeSet<String> = seeds
        .iter()
        .flat_map(|&seed| options.schedule(seed).labels())
        .collect();
    for want in kinds {
        assert!(
            labels.contains(*want),
            "the CI seeds no longer cover {want} (schedule generation changed?): pick new ones \
             with `chaos --ticketd x {flag}--dry-run --seed 0 --schedules 200`"
        );
    }

    let mut failures = Vec::new();
    for &seed in seeds {
        let schedule = options.schedule(seed);
        let report = chaos::run(&options, &schedule)
            .await
            .unwrap_or_else(|e| panic!("harness error at seed {seed}: {e}\n{schedule}"));
        println!("{}", report.line());
        if !report.verdict.passed() {
            failures.push(report.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} chaos schedules broke invariants:\n\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}
