//! Fault schedules: a list of (offset, fault) built deterministically from a seed, so that a
//! failing run can be printed and replayed exactly. The repertoire covers single faults (Redis
//! killed or paused, an instance killed or paused, each shorter and longer than the reserve
//! lease; a `/metrics` scrape flood) and the compound faults that hit the fallback's weak spots
//! (an instance paused right after a Redis outage; an instance killed during one).
//!
//! On a Redis Cluster ([`RedisMode::Cluster`]) the Redis faults are node faults instead: a
//! shard's primary killed (its replica takes over; the node comes back later as a replica), a
//! replica killed and restarted, a primary paused shorter or longer than the cluster node
//! timeout; the instance faults stay.

use std::fmt;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::redis::CLUSTER_NODE_TIMEOUT;
use crate::redis_cluster::SHARDS;

/// Where the first fault starts: buyers and heartbeats are going by then.
const FIRST_FAULT: Duration = Duration::from_secs(1);
/// Faults are placed until this offset; the last one may end a few seconds later.
pub const LENGTH: Duration = Duration::from_secs(12);

/// The label of every kind of fault a schedule can hold.
pub const FAULT_KINDS: [&str; 10] = [
    "redis-kill<lease",
    "redis-kill>lease",
    "redis-pause<lease",
    "redis-pause>lease",
    "instance-kill",
    "instance-pause<lease",
    "instance-pause>lease",
    "scrape-flood",
    "outage-then-pause",
    "kill-during-outage",
];

/// The label of every kind of fault a cluster schedule can hold.
pub const CLUSTER_FAULT_KINDS: [&str; 7] = [
    "primary-kill",
    "replica-kill",
    "primary-pause<timeout",
    "primary-pause>timeout",
    "instance-kill",
    "instance-pause<lease",
    "instance-pause>lease",
];

/// What the instances store their tickets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RedisMode {
    /// One redis-server.
    #[default]
    Single,
    /// A Redis Cluster of six nodes: three primaries with one replica each.
    Cluster,
}

impl fmt::Display for RedisMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RedisMode::Single => "single",
            RedisMode::Cluster => "cluster",
        })
    }
}

/// Connections of a scrape flood.
const FLOOD_CONNECTIONS: usize = 64;

/// One fault, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL Redis, restart it on the same port and AOF after `down`.
    RedisKill {
        /// How long Redis stays down.
        down: Duration,
    },
    /// SIGSTOP Redis, SIGCONT after `pause`.
    RedisPause {
        /// How long it is stopped.
        pause: Duration,
    },
    /// SIGKILL an instance, restart it on the same port and journal directory after `down`.
    InstanceKill {
        /// Which instance.
        instance: usize,
        /// How long it stays down.
        down: Duration,
    },
    /// SIGSTOP an instance, SIGCONT after `pause`.
    InstancePause {
        /// Which instance.
        instance: usize,
        /// How long it is stopped.
        pause: Duration,
    },
    /// Many concurrent `GET /metrics` on every instance for `length`.
    ScrapeFlood {
        /// How long.
        length: Duration,
        /// Concurrent connections (spread over the instances).
        connections: usize,
    },
    /// Redis killed for `outage`, and `delay` after its restart an instance is stopped for
    /// `pause`: it cannot renew its lease or settle while the others may reap its reserve.
    OutageThenPause {
        /// How long Redis stays down.
        outage: Duration,
        /// From Redis's restart to the SIGSTOP.
        delay: Duration,
        /// Which instance.
        instance: usize,
        /// How long it is stopped.
        pause: Duration,
    },
    /// Redis killed for `outage`; `after` into the outage an instance (selling from its reserve
    /// by then) is SIGKILLed, and restarted `down` later.
    KillDuringOutage {
        /// How long Redis stays down.
        outage: Duration,
        /// From the Redis kill to the instance's kill.
        after: Duration,
        /// Which instance.
        instance: usize,
        /// How long the instance stays down.
        down: Duration,
    },
    /// SIGKILL the node serving `shard` as primary (its replica takes over after the node
    /// timeout); restart it on its port and directory after `down` (it rejoins as a replica).
    PrimaryKill {
        /// Which shard (numbered by lowest slot).
        shard: usize,
        /// How long the node stays down.
        down: Duration,
    },
    /// SIGKILL a node replicating `shard`'s primary, restart it after `down`.
    ReplicaKill {
        /// Which shard.
        shard: usize,
        /// How long the node stays down.
        down: Duration,
    },
    /// SIGSTOP the node serving `shard` as primary, SIGCONT after `pause`: shorter than the
    /// cluster node timeout it stays primary, longer its replica takes over.
    PrimaryPause {
        /// Which shard.
        shard: usize,
        /// How long it is stopped.
        pause: Duration,
    },
}

/// A fault at an offset from the start of the faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// When it starts.
    pub at: Duration,
    /// What.
    pub fault: Fault,
}

/// The faults of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The seed it was built from.
    pub seed: u64,
    /// Instances it was built for.
    pub instances: usize,
    /// The reserve lease it was built around.
    pub lease: Duration,
    /// One Redis or a cluster.
    pub redis: RedisMode,
    /// The steps, by offset; they do not overlap.
    pub steps: Vec<Step>,
}

impl Fault {
    /// From its start to its last action.
    pub fn duration(&self) -> Duration {
        match *self {
            Fault::RedisKill { down } => down,
            Fault::RedisPause { pause } => pause,
            Fault::InstanceKill { down, .. } => down,
            Fault::InstancePause { pause, .. } => pause,
            Fault::ScrapeFlood { length, .. } => length,
            Fault::OutageThenPause {
                outage,
                delay,
                pause,
                ..
            } => outage + delay + pause,
            Fault::KillDuringOutage {
                outage,
                after,
                down,
                ..
            } => outage.max(after + down),
            Fault::PrimaryKill { down, .. } | Fault::ReplicaKill { down, .. } => down,
            Fault::PrimaryPause { pause, .. } => pause,
        }
    }

    /// Whether it sends instances to the fallback, and which: `Some(None)` for Redis killed or
    /// stopped (every event), `Some(Some(shard))` for a node of that shard killed or stopped
    /// (a replica too: its primary can no longer get a sale acknowledged), `None` for a fault
    /// of instances only.
    pub fn fallback_shard(&self) -> Option<Option<usize>> {
        match *self {
            Fault::RedisKill { .. }
            | Fault::RedisPause { .. }
            | Fault::OutageThenPause { .. }
            | Fault::KillDuringOutage { .. } => Some(None),
            Fault::PrimaryKill { shard, .. }
            | Fault::ReplicaKill { shard, .. }
            | Fault::PrimaryPause { shard, .. } => Some(Some(shard)),
            Fault::InstanceKill { .. }
            | Fault::InstancePause { .. }
            | Fault::ScrapeFlood { .. } => None,
        }
    }

    /// Whether it kills or stops a Redis Cluster node (the nemesis waits for the cluster to
    /// settle before one).
    pub fn hits_a_node(&self) -> bool {
        matches!(
            self,
            Fault::PrimaryKill { .. } | Fault::ReplicaKill { .. } | Fault::PrimaryPause { .. }
        )
    }

    /// A short name; pauses and outages say whether they outlast the lease (`>lease`).
    pub fn label(&self, lease: Duration) -> String {
        let vs = |d: Duration| if d > lease { ">lease" } else { "<lease" };
        match *self {
            Fault::RedisKill { down } => format!("redis-kill{}", vs(down)),
            Fault::RedisPause { pause } => format!("redis-pause{}", vs(pause)),
            Fault::InstanceKill { .. } => "instance-kill".to_owned(),
            Fault::InstancePause { pause, .. } => format!("instance-pause{}", vs(pause)),
            Fault::ScrapeFlood { .. } => "scrape-flood".to_owned(),
            Fault::OutageThenPause { .. } => "outage-then-pause".to_owned(),
            Fault::KillDuringOutage { .. } => "kill-during-outage".to_owned(),
            Fault::PrimaryKill { .. } => "primary-kill".to_owned(),
            Fault::ReplicaKill { .. } => "replica-kill".to_owned(),
            Fault::PrimaryPause { pause, .. } => {
                let vs = if pause > CLUSTER_NODE_TIMEOUT {
                    ">timeout"
                } else {
                    "<timeout"
                };
                format!("primary-pause{vs}")
            }
        }
    }
}

/// A duration in `lo..hi` seconds, rounded to 10 ms so that schedules print exactly.
fn secs(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> Duration {
    Duration::from_millis((rng.random_range(lo..hi) * 100.0).round() as u64 * 10)
}

/// Shorter than the lease (half the time) or longer.
fn around_lease(rng: &mut ChaCha8Rng, lease: f64) -> Duration {
    if rng.random_bool(0.5) {
        secs(rng, 0.3, 0.6 * lease)
    } else {
        secs(rng, 1.2 * lease, 1.6 * lease)
    }
}

impl Schedule {
    /// The schedule of `seed` for `instances` instances, a reserve lease of `lease` and Redis
    /// in `redis` mode.
    pub fn generate_for(redis: RedisMode, seed: u64, instances: usize, lease: Duration) -> Self {
        match redis {
            RedisMode::Single => Self::generate(seed, instances, lease),
            RedisMode::Cluster => Self::generate_cluster(seed, instances, lease),
        }
    }

    /// The schedule of `seed` for `instances` instances and a reserve lease of `lease`, on one
    /// Redis.
    pub fn generate(seed: u64, instances: usize, lease: Duration) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let l = lease.as_secs_f64();
        let n = instances.max(1);
        let mut steps = Vec::new();
        let mut at = FIRST_FAULT;
        while at < LENGTH {
            let instance = rng.random_range(0..n);
            let fault = match rng.random_range(0..13) {
                0 | 1 => Fault::RedisKill {
                    down: around_lease(&mut rng, l),
                },
                2 | 3 => Fault::RedisPause {
                    pause: around_lease(&mut rng, l),
                },
                4 | 5 => Fault::InstanceKill {
                    instance,
                    down: secs(&mut rng, 0.3, 1.3 * l),
                },
                6 | 7 => Fault::InstancePause {
                    instance,
                    pause: around_lease(&mut rng, l),
                },
                8 => Fault::ScrapeFlood {
                    length: secs(&mut rng, 2.0, 4.0),
                    connections: FLOOD_CONNECTIONS,
                },
                9 | 10 => Fault::OutageThenPause {
                    outage: secs(&mut rng, 0.7 * l, 0.95 * l),
                    delay: secs(&mut rng, 0.0, 0.2),
                    instance,
                    pause: secs(&mut rng, 0.4 * l, 0.7 * l),
                },
                _ => {
                    let outage = secs(&mut rng, 0.6 * l, 1.2 * l);
                    Fault::KillDuringOutage {
                        outage,
                        after: Duration::from_millis(
                            (outage.as_millis() as f64 * rng.random_range(0.3..0.8)) as u64 / 10
                                * 10,
                        ),
                        instance,
                        down: secs(&mut rng, 0.3, l),
                    }
                }
            };
            steps.push(Step { at, fault });
            at += fault.duration() + secs(&mut rng, 1.0, 2.0);
        }
        Self {
            seed,
            instances: n,
            lease,
            redis: RedisMode::Single,
            steps,
        }
    }

    /// The schedule of `seed` on a Redis Cluster: node faults of a random shard, and the
    /// instance faults.
    pub fn generate_cluster(seed: u64, instances: usize, lease: Duration) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let l = lease.as_secs_f64();
        let timeout = CLUSTER_NODE_TIMEOUT.as_secs_f64();
        let n = instances.max(1);
        let mut steps = Vec::new();
        let mut at = FIRST_FAULT;
        while at < LENGTH {
            let instance = rng.random_range(0..n);
            let shard = rng.random_range(0..SHARDS);
            let fault = match rng.random_range(0..10) {
                // Down until well after the failover (about 2.5 to 4 s), so that the node comes
                // back as a replica of the promoted one.
                0 | 1 => Fault::PrimaryKill {
                    shard,
                    down: secs(&mut rng, 5.0, 7.0),
                },
                2 | 3 => Fault::ReplicaKill {
                    shard,
                    down: secs(&mut rng, 0.5, 1.3 * l),
                },
                4 | 5 => Fault::PrimaryPause {
                    shard,
                    pause: if rng.random_bool(0.5) {
                        secs(&mut rng, 0.3, 0.8 * timeout)
                    } else {
                        secs(&mut rng, 1.5 * timeout, 3.5 * timeout)
                    },
                },
                6 | 7 => Fault::InstanceKill {
                    instance,
                    down: secs(&mut rng, 0.3, 1.3 * l),
                },
                _ => Fault::InstancePause {
                    instance,
                    pause: around_lease(&mut rng, l),
                },
            };
            steps.push(Step { at, fault });
            at += fault.duration() + secs(&mut rng, 1.0, 2.0);
        }
        Self {
            seed,
            instances: n,
            lease,
            redis: RedisMode::Cluster,
            steps,
        }
    }

    /// The labels of its faults, in order.
    pub fn labels(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|s| s.fault.label(self.lease))
            .collect()
    }

    /// When its last fault ends.
    pub fn end(&self) -> Duration {
        self.steps
            .iter()
            .map(|s| s.at + s.fault.duration())
            .max()
            .unwrap_or_default()
    }
}

/// `1.23s`.
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}s", self.0.as_secs_f64())
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fault::RedisKill { down } => write!(f, "SIGKILL Redis, restart after {}", Secs(down)),
            Fault::RedisPause { pause } => {
                write!(f, "SIGSTOP Redis, SIGCONT after {}", Secs(pause))
            }
            Fault::InstanceKill { instance, down } => write!(
                f,
                "SIGKILL instance {instance}, restart after {}",
                Secs(down)
            ),
            Fault::InstancePause { instance, pause } => write!(
                f,
                "SIGSTOP instance {instance}, SIGCONT after {}",
                Secs(pause)
            ),
            Fault::ScrapeFlood {
                length,
                connections,
            } => write!(
                f,
                "GET /metrics flood, {connections} connections for {}",
                Secs(length)
            ),
            Fault::OutageThenPause {
                outage,
                delay,
                instance,
                pause,
            } => write!(
                f,
                "SIGKILL Redis, restart after {}; {} later SIGSTOP instance {instance} for {}",
                Secs(outage),
                Secs(delay),
                Secs(pause)
            ),
            Fault::KillDuringOutage {
                outage,
                after,
                instance,
                down,
            } => write!(
                f,
                "SIGKILL Redis, restart after {}; at {} SIGKILL instance {instance}, restart {} later",
                Secs(outage),
                Secs(after),
                Secs(down)
            ),
            Fault::PrimaryKill { shard, down } => write!(
                f,
                "SIGKILL the primary of shard {shard}, restart that node after {}",
                Secs(down)
            ),
            Fault::ReplicaKill { shard, down } => write!(
                f,
                "SIGKILL the replica of shard {shard}, restart it after {}",
                Secs(down)
            ),
            Fault::PrimaryPause { shard, pause } => write!(
                f,
                "SIGSTOP the primary of shard {shard}, SIGCONT after {}",
                Secs(pause)
            ),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = match self.redis {
            RedisMode::Single => "",
            RedisMode::Cluster => "Redis Cluster, ",
        };
        writeln!(
            f,
            "schedule of seed {} ({on}{} instances, lease {}, {} faults):",
            self.seed,
            self.instances,
            Secs(self.lease),
            self.steps.len()
        )?;
        for step in &self.steps {
            writeln!(
                f,
                "  at {:>6}  {:<22} {}",
                Secs(step.at).to_string(),
                step.fault.label(self.lease),
                step.fault
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(3);

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        for seed in 0..50 {
            assert_eq!(
                Schedule::generate(seed, 3, LEASE),
                Schedule::generate(seed, 3, LEASE)
            );
        }
        assert_ne!(
            Schedule::generate(1, 3, LEASE),
            Schedule::generate(2, 3, LEASE)
        );
    }

    #[test]
    fn steps_do_not_overlap_and_target_existing_instances() {
        for seed in 0..200 {
            let s = Schedule::generate(seed, 2, LEASE);
            assert!(!s.steps.is_empty());
            for pair in s.steps.windows(2) {
                assert!(pair[0].at + pair[0].fault.duration() < pair[1].at, "{s}");
            }
            for step in &s.steps {
                match step.fault {
                    Fault::InstanceKill { instance, .. }
                    | Fault::InstancePause { instance, .. }
                    | Fault::OutageThenPause { instance, .. }
                    | Fault::KillDuringOutage { instance, .. } => assert!(instance < 2),
                    _ => {}
                }
            }
            assert!(s.end() < LENGTH + Duration::from_secs(8), "{s}");
        }
    }

    #[test]
    fn cluster_schedules_are_deterministic_and_stay_in_bounds() {
        for seed in 0..200 {
            let s = Schedule::generate_cluster(seed, 2, LEASE);
            assert_eq!(s, Schedule::generate_cluster(seed, 2, LEASE));
            assert!(!s.steps.is_empty());
            for pair in s.steps.windows(2) {
                assert!(pair[0].at + pair[0].fault.duration() < pair[1].at, "{s}");
            }
            for step in &s.steps {
                match step.fault {
                    Fault::PrimaryKill { shard, .. }
                    | Fault::ReplicaKill { shard, .. }
                    | Fault::PrimaryPause { shard, .. } => assert!(shard < SHARDS),
                    Fault::InstanceKill { instance, .. }
                    | Fault::InstancePause { instance, .. } => assert!(instance < 2),
                    other => panic!("{other:?} in a cluster schedule"),
                }
            }
            assert!(s.end() < LENGTH + Duration::from_secs(8), "{s}");
        }
        let labels: std::collections::BTreeSet<String> = (0..200)
            .flat_map(|seed| Schedule::generate_cluster(seed, 2, LEASE).labels())
            .collect();
        assert_eq!(
            labels,
            CLUSTER_FAULT_KINDS.map(str::to_owned).into(),
            "every cluster fault kind, and only those"
        );
    }

    #[test]
    fn a_few_hundred_seeds_cover_every_fault_kind() {
        let labels: std::collections::BTreeSet<String> = (0..200)
            .flat_map(|seed| Schedule::generate(seed, 3, LEASE).labels())
            .collect();
        for want in FAULT_KINDS {
            assert!(labels.contains(want), "{want} never generated");
        }
    }
}
