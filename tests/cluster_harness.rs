//! The harness's loopback Redis Cluster: six real `redis-server` processes form three primaries
//! with one replica each covering all slots, events spread over the primaries as asked, its key
//! slots agree with Redis's, a SIGKILLed primary's replica takes over, and a restarted or paused
//! and resumed node rejoins.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::Instant;

use support::cluster::{key_slot, SLOTS};
use support::RedisCluster;

#[test]
fn key_slot_follows_redis() {
    // What `CLUSTER KEYSLOT` answers on Redis 7.
    for (key, slot) in [
        ("123456789", 12739),
        ("foo", 12182),
        ("event:{42}:tickets", 8000),
        ("{42}", 8000),
        ("event:{1}:pool", 9842),
        ("{user1000}.following", 3443),
        // An empty tag `{}` does not count: the whole key is hashed.
        ("{}", 15257),
        ("foo{}bar", 14292),
        ("{}{x}", 3257),
        // The tag ends at the first `}` after the first `{`: here it is `{bar`.
        ("foo{{bar}}zap", 4015),
        ("a{b", 13340),
        ("}{x}", 16287),
    ] {
        assert_eq!(key_slot(key), slot, "{key}");
    }
}

#[test]
fn forms_spreads_events_and_fails_over() {
    let began = Instant::now();
    let mut cluster = RedisCluster::start();
    eprintln!("cluster formed in {:?}", began.elapsed());

    let ports = cluster.ports();
    assert_eq!(ports.len(), 6);
    assert_eq!(
        cluster.url().matches("127.0.0.1:").count(),
        6,
        "{}",
        cluster.url()
    );
    for &p in &ports {
        assert!((20_000..22_000).contains(&p), "port {p}");
    }

    // Three primaries, one replica each, all slots covered.
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    let slot_map = cluster.slot_map();
    assert_eq!(slot_map.len(), usize::from(SLOTS));
    let owners: BTreeSet<u16> = slot_map.iter().copied().collect();
    assert_eq!(
        owners,
        primaries.iter().copied().collect(),
        "every slot served"
    );
    for &p in &primaries {
        assert_eq!(cluster.replicas_of(p).len(), 1, "replicas of {p}");
    }
    for slot in [0, 5460, 5461, 10922, 10923, 16383] {
        assert_eq!(cluster.primary_for_slot(slot), slot_map[usize::from(slot)]);
    }

    // key_slot agrees with the cluster itself.
    for key in [
        "event:{42}:tickets",
        "{}",
        "foo{}bar",
        "x{}{y}",
        "a{b}c{d}",
        "event:{7}:pool",
    ] {
        let out = Command::new("redis-cli")
            .args(["-p", &ports[0].to_string(), "CLUSTER", "KEYSLOT", key])
            .output()
            .expect("redis-cli");
        let said: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert_eq!(key_slot(key), said, "{key}");
    }

    // Three events on each primary.
    let events = cluster.events_on_each_primary(3);
    assert_eq!(events.len(), 9, "{events:?}");
    let mut per_primary: HashMap<u16, usize> = HashMap::new();
    for id in &events {
        let slot = key_slot(&format!("event:{{{id}}}:tickets"));
        *per_primary
            .entry(cluster.primary_for_slot(slot))
            .or_default() += 1;
    }
    assert_eq!(per_primary.len(), 3, "{per_primary:?}");
    assert!(per_primary.values().all(|&n| n == 3), "{per_primary:?}");

    // SIGKILL a primary: its replica takes over its slots.
    let victim = primaries[0];
    let former = cluster.replicas_of(victim);
    let began = Instant::now();
    cluster.kill(victim);
    let promoted = cluster.wait_for_failover(victim);
    eprintln!("failover after SIGKILL in {:?}", began.elapsed());
    assert!(former.contains(&promoted), "{promoted} not in {former:?}");
    let now = cluster.primaries();
    assert!(now.contains(&promoted) && !now.contains(&victim), "{now:?}");

    // Restarted, the old primary rejoins as the replica of the one that replaced it.
    let began = Instant::now();
    cluster.restart(victim);
    eprintln!("restarted node rejoined in {:?}", began.elapsed());
    assert_eq!(cluster.replicas_of(promoted), [victim]);

    // SIGSTOP a primary: its replica takes over; resumed, it rejoins as a replica.
    let frozen = promoted;
    let began = Instant::now();
    cluster.pause(frozen);
    let promoted = cluster.wait_for_failover(frozen);
    eprintln!("failover after SIGSTOP in {:?}", began.elapsed());
    assert_eq!(promoted, victim);
    let began = Instant::now();
    cluster.resume(frozen);
    cluster.wait_settled();
    eprintln!("resumed node rejoined in {:?}", began.elapsed());
    assert_eq!(cluster.replicas_of(victim), [frozen]);
    assert_eq!(cluster.primaries().len(), 3);
}
