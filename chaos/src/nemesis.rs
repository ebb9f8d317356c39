//! The nemesis: turns a [`Schedule`] into timed actions on the cluster (SIGKILL, restart,
//! SIGSTOP, SIGCONT of Redis, of Redis Cluster nodes and of instances, `/metrics` floods) and
//! performs them at their offsets while the buyers buy. Before a fault that hits a Redis Cluster
//! node it waits until the cluster has settled from the previous one, and every later fault
//! moves by the time that took.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::error::HarnessError;
use crate::history::{Clock, FallbackWindow};
use crate::http::Conn;
use crate::schedule::{Fault, Schedule};

/// Bound on one scrape of a flood.
const SCRAPE_BOUND: Duration = Duration::from_secs(5);

/// One thing the nemesis does at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL Redis.
    KillRedis,
    /// Start Redis again (same port and directory).
    StartRedis,
    /// SIGSTOP Redis.
    PauseRedis,
    /// SIGCONT Redis.
    ResumeRedis,
    /// SIGKILL an instance.
    KillInstance(usize),
    /// Start an instance again (same arguments).
    StartInstance(usize),
    /// SIGSTOP an instance.
    PauseInstance(usize),
    /// SIGCONT an instance.
    ResumeInstance(usize),
    /// SIGKILL the node serving a shard as primary.
    KillPrimary(usize),
    /// SIGKILL a node replicating a shard's primary.
    KillReplica(usize),
    /// Start the node killed for a shard again (same port and directory).
    StartNode(usize),
    /// SIGSTOP the node serving a shard as primary.
    PausePrimary(usize),
    /// SIGCONT the node stopped for a shard.
    ResumeNode(usize),
    /// Flood every instance with `GET /metrics`.
    Flood {
        /// How long.
        length: Duration,
        /// Concurrent connections.
        connections: usize,
    },
}

/// The actions of `fault`, at offsets from its start, in order.
pub fn actions(fault: &Fault) -> Vec<(Duration, Action)> {
    use Action::*;
    let mut out = match *fault {
        Fault::RedisKill { down } => vec![(Duration::ZERO, KillRedis), (down, StartRedis)],
        Fault::RedisPause { pause } => vec![(Duration::ZERO, PauseRedis), (pause, ResumeRedis)],
        Fault::InstanceKill { instance, down } => vec![
            (Duration::ZERO, KillInstance(instance)),
            (down, StartInstance(instance)),
        ],
        Fault::InstancePause { instance, pause } => vec![
            (Duration::ZERO, PauseInstance(instance)),
            (pause, ResumeInstance(instance)),
        ],
        Fault::ScrapeFlood {
            length,
            connections,
        } => vec![(
            Duration::ZERO,
            Flood {
                length,
                connections,
            },
        )],
        Fault::OutageThenPause {
            outage,
            delay,
            instance,
            pause,
        } => vec![
            (Duration::ZERO, KillRedis),
            (outage, StartRedis),
            (outage + delay, PauseInstance(instance)),
            (outage + delay + pause, ResumeInstance(instance)),
        ],
        Fault::KillDuringOutage {
            outage,
            after,
            instance,
            down,
        } => vec![
            (Duration::ZERO, KillRedis),
            (after, KillInstance(instance)),
            (outage, StartRedis),
            (after + down, StartInstance(instance)),
        ],
        Fault::PrimaryKill { shard, down } => {
            vec![
                (Duration::ZERO, KillPrimary(shard)),
                (down, StartNode(shard)),
            ]
        }
        Fault::ReplicaKill { shard, down } => {
            vec![
                (Duration::ZERO, KillReplica(shard)),
                (down, StartNode(shard)),
            ]
        }
        Fault::PrimaryPause { shard, pause } => {
            vec![
                (Duration::ZERO, PausePrimary(shard)),
                (pause, ResumeNode(shard)),
            ]
        }
    };
    out.sort_by_key(|(at, _)| *at);
    out
}

/// Performs `schedule` on `cluster`; offsets count from `start` on `clock`, plus the time spent
/// waiting for a Redis Cluster to settle before a node fault. Returns when the last action is
/// done and every flood has ended, with the span of every fault that sent instances to the
/// fallback (for the checker's bounds on known buyers).
///
/// # Errors
/// Redis or a cluster node did not come back after a restart, or the cluster did not settle.
pub async fn run(
    cluster: &mut Cluster,
    schedule: &Schedule,
    clock: Clock,
    start: Duration,
) -> Result<Vec<FallbackWindow>, HarnessError> {
    let mut late = Duration::ZERO;
    let mut floods = Vec::new();
    let mut fallback = Vec::new();
    // Steps do not overlap (schedule.rs), so performing them one after the other keeps every
    // action at its offset.
    for step in &schedule.steps {
        if step.fault.hits_a_node() {
            tokio::time::sleep_until(clock.at(start + step.at + late).into()).await;
            cluster.settle().await?;
            late = late.max(clock.now().saturating_sub(start + step.at));
        }
        let mut from = None;
        for (at, action) in actions(&step.fault) {
            tokio::time::sleep_until(clock.at(start + late + step.at + at).into()).await;
            from.get_or_insert(clock.now());
            match action {
                Action::KillRedis => cluster.kill_redis(),
                Action::StartRedis => cluster.restart_redis().await?,
                Action::PauseRedis => cluster.pause_redis(),
                Action::ResumeRedis => cluster.resume_redis(),
                Action::KillInstance(i) => cluster.kill_instance(i),
                Action::StartInstance(i) => cluster.restart_instance(i),
                Action::PauseInstance(i) => cluster.pause_instance(i),
                Action::ResumeInstance(i) => cluster.resume_instance(i),
                Action::KillPrimary(s) => cluster.kill_primary(s).await?,
                Action::KillReplica(s) => cluster.kill_replica(s).await?,
                Action::StartNode(s) => cluster.restart_node(s).await?,
                Action::PausePrimary(s) => cluster.pause_primary(s).await?,
                Action::ResumeNode(s) => cluster.resume_node(s)?,
                Action::Flood {
                    length,
                    connections,
                } => floods.extend(flood(cluster.addrs(), length, connections)),
            }
        }
        if let (Some(shard), Some(from)) = (step.fault.fallback_shard(), from) {
            fallback.push(FallbackWindow {
                shard,
                label: step.fault.label(schedule.lease),
                from,
                to: clock.now(),
            });
        }
    }
    for f in floods {
        // A flood task only loops over bounded requests; a panic there is a harness bug.
        f.await.expect("a flood task does not panic");
    }
    Ok(fallback)
}

/// `connections` connections spread over `addrs`, each scraping `/metrics` back to back for
/// `length`.
fn flood(addrs: Vec<SocketAddr>, length: Duration, connections: usize) -> Vec<JoinHandle<()>> {
    let deadline = Instant::now() + length;
    (0..connections)
        .map(|c| {
            let addr = addrs[c % addrs.len()];
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let Ok(mut conn) = Conn::open(addr, SCRAPE_BOUND).await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    while Instant::now() < deadline {
                        let path = if c % 2 == 0 {
                            "/metrics"
                        } else {
                            "/metrics?format=json"
                        };
                        if conn
                            .send(hyper::Method::GET, path, SCRAPE_BOUND)
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kill_during_an_outage_kills_the_instance_while_redis_is_down() {
        let s = |ms| Duration::from_millis(ms);
        let a = actions(&Fault::KillDuringOutage {
            outage: s(3000),
            after: s(1000),
            instance: 1,
            down: s(500),
        });
        assert_eq!(
            a,
            vec![
                (s(0), Action::KillRedis),
                (s(1000), Action::KillInstance(1)),
                (s(1500), Action::StartInstance(1)),
                (s(3000), Action::StartRedis),
            ]
        );
    }

    #[test]
    fn every_fault_ends_what_it_started() {
        let lease = Duration::from_secs(3);
        let schedules = (0..100).flat_map(|seed| {
            [
                Schedule::generate(seed, 3, lease),
                Schedule::generate_cluster(seed, 3, lease),
            ]
        });
        for schedule in schedules {
            for step in &schedule.steps {
                let a: Vec<Action> = actions(&step.fault).into_iter().map(|x| x.1).collect();
                let count = |x: Action| a.iter().filter(|&&y| y == x).count();
                assert_eq!(count(Action::KillRedis), count(Action::StartRedis));
                assert_eq!(count(Action::PauseRedis), count(Action::ResumeRedis));
                for i in 0..3 {
                    assert_eq!(
                        count(Action::KillInstance(i)),
                        count(Action::StartInstance(i))
                    );
                    assert_eq!(
                        count(Action::PauseInstance(i)),
                        count(Action::ResumeInstance(i))
                    );
                    assert_eq!(
                        count(Action::KillPrimary(i)) + count(Action::KillReplica(i)),
                        count(Action::StartNode(i))
                    );
                    assert_eq!(count(Action::PausePrimary(i)), count(Action::ResumeNode(i)));
                }
                // The last action comes at the fault's end (a flood is one action that lasts).
                let last = actions(&step.fault).last().map_or(Duration::ZERO, |x| x.0);
                let want = match step.fault {
                    Fault::ScrapeFlood { .. } => Duration::ZERO,
                    other => other.duration(),
                };
                assert_eq!(last, want);
            }
        }
    }
}
