//! A Redis Cluster's layout as ticketd uses it: shards (a primary and its replicas, serving a
//! fixed set of hash slots), read from `CLUSTER SLOTS`, and the table from slot to shard that
//! routes each event.
//!
//! A shard is known by the lowest slot it serves. A failover keeps that (the promoted replica
//! serves the same slots), so the shard's state in this instance (breaker, reserves, journal
//! marks) carries over to the new primary; only the address changes.

use std::sync::Arc;

use fred::types::cluster::ClusterRouting;
use fred::types::Value;
use parking_lot::RwLock;

use crate::event::Event;

/// Hash slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// "No shard" in the [`SlotTable`].
const NONE: u16 = u16::MAX;

/// One shard of the cluster as `CLUSTER SLOTS` shows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// The lowest slot served: the shard's name across failovers.
    pub key: u16,
    /// The slot ranges served, inclusive, in order.
    pub ranges: Vec<(u16, u16)>,
    /// `host:port` of the primary.
    pub primary: String,
}

impl Shard {
    /// `0-5460` or `0-5460,10923-12000`: the label of the shard in logs and metrics.
    pub fn label(&self) -> String {
        self.ranges
            .iter()
            .map(|(a, b)| format!("{a}-{b}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The shards, ordered by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Every shard serving at least one slot.
    pub shards: Vec<Shard>,
}

impl Topology {
    /// Reads a `CLUSTER SLOTS` reply of the node at `host`.
    ///
    /// # Errors
    /// A reply that is not a slot map.
    pub fn from_cluster_slots(reply: Value, host: &str) -> Result<Self, String> {
        let routing =
            ClusterRouting::from_cluster_slots(reply, host).map_err(|e| e.details().to_owned())?;
        let mut shards: Vec<Shard> = Vec::new();
        for range in routing.slots() {
            let primary = format!("{}:{}", range.primary.host, range.primary.port);
            match shards.iter_mut().find(|s| s.primary == primary) {
                Some(shard) => shard.ranges.push((range.start, range.end)),
                None => shards.push(Shard {
                    key: range.start,
                    ranges: vec![(range.start, range.end)],
                    primary,
                }),
            }
        }
        for shard in &mut shards {
            shard.ranges.sort_unstable();
            shard.key = shard.ranges[0].0;
        }
        shards.sort_by_key(|s| s.key);
        Ok(Self { shards })
    }

    /// Whether every slot is served.
    pub fn covers_all(&self) -> bool {
        let served: usize = self
            .shards
            .iter()
            .flat_map(|s| &s.ranges)
            .map(|&(a, b)| usize::from(b - a) + 1)
            .sum();
        served == SLOTS
    }
}

/// Slot to shard number (the position in the cluster store's list of shards), swapped as a
/// whole when the layout changes.
#[derive(Debug)]
pub struct SlotTable(RwLock<Arc<[u16]>>);

impl Default for SlotTable {
    fn default() -> Self {
        Self(RwLock::new(vec![NONE; SLOTS].into()))
    }
}

impl SlotTable {
    /// The shard number serving `slot`, if any.
    pub fn shard_of(&self, slot: u16) -> Option<usize> {
        match self.0.read()[usize::from(slot)] {
            NONE => None,
            n => Some(usize::from(n)),
        }
    }

    /// Routes each range of `shards` to its number (the position in that list; `None` entries
    /// are skipped).
    pub fn set(&self, shards: &[Option<&Shard>]) {
        let mut table = vec![NONE; SLOTS];
        for (n, shard) in shards.iter().enumerate() {
            for &(a, b) in shard.iter().flat_map(|s| &s.ranges) {
                table[usize::from(a)..=usize::from(b)].fill(n as u16);
            }
        }
        *self.0.write() = table.into();
    }
}

/// The events a store serves: all of them (one Redis), or those of one shard.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every event (one Redis).
    All,
    /// The events whose slot routes to shard `index`.
    Shard {
        /// The routing table.
        table: Arc<SlotTable>,
        /// The shard's number in it.
        index: usize,
    },
}

impl Scope {
    /// Whether `event` belongs to this store now.
    pub fn owns(&self, event: &Event) -> bool {
        match self {
            Scope::All => true,
            Scope::Shard { table, index } => table.shard_of(event.slot) == Some(*index),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64, id: &str) -> Value {
        Value::Array(vec![host.into(), port.into(), id.into()])
    }

    fn range(a: i64, b: i64, primary: Value, replica: Value) -> Value {
        Value::Array(vec![a.into(), b.into(), primary, replica])
    }

    #[test]
    fn shards_from_cluster_slots() {
        let reply = Value::Array(vec![
            range(
                5461,
                10922,
                node("127.0.0.1", 7001, "b"),
                node("127.0.0.1", 7004, "e"),
            ),
            range(
                0,
                5460,
                node("127.0.0.1", 7000, "a"),
                node("127.0.0.1", 7003, "d"),
            ),
            range(
                10923,
                16383,
                node("127.0.0.1", 7002, "c"),
                node("127.0.0.1", 7005, "f"),
            ),
            range(
                100,
                100,
                node("127.0.0.1", 7002, "c"),
                node("127.0.0.1", 7005, "f"),
            ),
        ]);
        let t = Topology::from_cluster_slots(reply, "127.0.0.1").unwrap();
        let keys: Vec<u16> = t.shards.iter().map(|s| s.key).collect();
        assert_eq!(keys, [0, 100, 5461]);
        assert_eq!(t.shards[1].primary, "127.0.0.1:7002");
        assert_eq!(t.shards[1].label(), "100-100,10923-16383");
        assert!(!t.covers_all(), "slot 100 is counted twice, 0-5460 once");

        let table = SlotTable::default();
        assert_eq!(table.shard_of(7), None);
        table.set(&[Some(&t.shards[0]), None, Some(&t.shards[2])]);
        assert_eq!(table.shard_of(7), Some(0));
        assert_eq!(table.shard_of(6000), Some(2));
        assert_eq!(table.shard_of(12000), None);
        assert!(Topology::from_cluster_slots(Value::Null, "h").is_ok_and(|t| t.shards.is_empty()));
    }

    #[test]
    fn scope_follows_the_table() {
        let e = Event::new("42", 1, 0);
        let table = Arc::new(SlotTable::default());
        let scope = Scope::Shard {
            table: table.clone(),
            index: 1,
        };
        assert!(!scope.owns(&e));
        let all = Shard {
            key: 0,
            ranges: vec![(0, 16383)],
            primary: "h:1".into(),
        };
        table.set(&[None, Some(&all)]);
        assert!(scope.owns(&e));
        assert!(Scope::All.owns(&e));
    }
}
